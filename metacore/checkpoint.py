"""Checkpoints: parameters + metadata in one file, loaded with `torch.load(weights_only=True)`."""

from __future__ import annotations

import hashlib
import io
import pickle
import zipfile
from pathlib import Path

import torch

from metacore.algorithms import ALGORITHMS, MAML
from metacore.algorithms.maml import RULE_PREFIXES
from metacore.bodies import BODIES
from metacore.errors import MetacoreError, check_number  # noqa: F401  (check_number: re-exported)
from metacore.images import InputSpec
from metacore.models import BACKBONES, HEADS, Backbone

MAX_INNER_STEPS = 100  # each step passes the whole support set forward and back (2 x 5,000 images: ~8 s on 2 cores)
MAX_INNER_LR = 1000.0
LEARNER_FIELDS = {"algorithm", "inner_lr", "inner_steps", "head", "way_scaled_head", "body_rates_only", "first_order"}
SPEC_LIMITS = {"size": (8, 1024), "channels": (1, 3)}

FORMAT = "metacore-checkpoint"
VERSION = 1


def build_learner(
    algorithm: str,
    backbone: Backbone,
    inner_lr: float,
    inner_steps: int,
    head: str = "zero",
    way_scaled_head: bool = False,
    body_rates_only: bool = False,
    first_order: bool = False,
) -> MAML:
    if algorithm not in ALGORITHMS:
        raise MetacoreError(f"unknown algorithm '{algorithm}' (choose: {', '.join(ALGORITHMS)})")
    if body_rates_only and algorithm != "metasgd":
        raise MetacoreError("body_rates_only is a Meta-SGD setting (learned rates for the body only)")
    if way_scaled_head and algorithm == "protonet":
        raise MetacoreError("way_scaled_head scales the head's inner steps; ProtoNet takes none")
    if algorithm == "lstm" and way_scaled_head:
        raise MetacoreError("way_scaled_head scales a fixed head rate; the LSTM meta-learner learns its own steps")
    if first_order and algorithm != "lstm":
        raise MetacoreError("first_order is the LSTM meta-learner's setting (first-order MAML is --algo fomaml)")
    if algorithm == "lstm" and not 0 < inner_lr < 1:
        raise MetacoreError(f"the LSTM's input gate starts at the inner lr, which must be in (0, 1); got {inner_lr:g}")
    extra = {"body_rates_only": True} if body_rates_only else {}
    if way_scaled_head:
        extra["way_scaled_head"] = True
    if first_order:
        extra["first_order"] = True
    return ALGORITHMS[algorithm](backbone, inner_lr, inner_steps, head, **extra)


def checkpoint_payload(learner: MAML, params: dict[str, torch.Tensor], **metadata) -> dict:
    backbone = learner.backbone
    return {
        "format": FORMAT,
        "version": VERSION,
        "backbone": {"name": backbone.name, "kwargs": backbone.kwargs, "input_spec": backbone.input_spec.to_dict()},
        "learner": learner.config(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in params.items()},
        **metadata,
    }


def adapted_checkpoint(learner: MAML, params: dict[str, torch.Tensor], classes: list[str], **metadata) -> bytes:
    """An adapted model as checkpoint bytes: the adapted body and its task head, with the class names.

    Any command that takes --checkpoint loads it (its body is the starting point); `classify` without
    --support predicts with its head directly.
    """
    rule = {k: v for k, v in learner.params.items() if k.startswith(RULE_PREFIXES)}  # Meta-SGD's rates, the LSTM
    buffer = io.BytesIO()
    torch.save(checkpoint_payload(learner, rule | params, classes=list(classes), **metadata), buffer)
    return buffer.getvalue()


def save_checkpoint(path: str | Path, learner: MAML, **metadata) -> None:
    """Write the learner's meta-parameters and everything needed to rebuild it.

    `metadata` (training config, metrics, optimiser state, iteration, ...) must hold only
    plain values and tensors, so the file stays loadable with weights_only=True.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = checkpoint_payload(learner, learner.params, **metadata)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def read_checkpoint(path: str | Path) -> dict:
    """The raw checkpoint dict, or a clear MetacoreError for a missing, malformed or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise MetacoreError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (
        pickle.UnpicklingError,
        RuntimeError,
        EOFError,
        zipfile.BadZipFile,
        ValueError,
        KeyError,
        AttributeError,
        TypeError,
        OSError,
    ) as exc:
        text = str(exc).strip()
        if "WeightsUnpickler error:" in text:  # torch's long advice text: keep only the cause
            text = text.split("WeightsUnpickler error:", 1)[1].split(" was not ", 1)[0].strip() + " is not allowed"
        reason = text.splitlines()[0] if text else type(exc).__name__
        raise MetacoreError(f"{path} is not a readable metacore checkpoint ({reason[:160]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise MetacoreError(f"{path} is not a metacore checkpoint (no '{FORMAT}' header)")
    if payload.get("version", 0) > VERSION:
        raise MetacoreError(f"{path} was written by a newer metacore (format version {payload['version']})")
    for key in ("backbone", "learner", "state_dict"):
        if key not in payload:
            raise MetacoreError(f"{path} is a damaged metacore checkpoint (missing '{key}')")
    return payload


def validated(payload: dict, path: Path) -> tuple[dict, dict, InputSpec]:
    """(learner config, backbone kwargs, input spec) of a checkpoint, each field checked before anything is built
    from it: a file's metadata must not make a command hang or allocate gigabytes."""
    try:
        cfg, info = dict(payload["learner"]), dict(payload["backbone"])
        unknown = set(cfg) - LEARNER_FIELDS
        if unknown:
            raise MetacoreError(f"unknown learner field '{sorted(unknown)[0]}'")
        if cfg.get("algorithm") not in ALGORITHMS:
            raise MetacoreError(f"unknown algorithm {cfg.get('algorithm')!r} (known: {', '.join(ALGORITHMS)})")
        cfg["inner_steps"] = check_number(cfg.get("inner_steps"), "inner_steps", 0, MAX_INNER_STEPS, integer=True)
        cfg["inner_lr"] = check_number(cfg.get("inner_lr"), "inner_lr", 0.0, MAX_INNER_LR)
        if cfg.get("head", "zero") not in HEADS:
            raise MetacoreError(f"unknown head {cfg.get('head')!r} (known: {', '.join(HEADS)})")
        for flag in ("way_scaled_head", "body_rates_only", "first_order"):
            if not isinstance(cfg.get(flag, False), bool):
                raise MetacoreError(f"{flag} must be true or false")
        name = info.get("name")
        if name not in BACKBONES:
            raise MetacoreError(f"unknown backbone {name!r} (known: {', '.join(BACKBONES)})")
        kwargs = dict(info.get("kwargs", {}))
        for key, value in kwargs.items():
            if key not in BACKBONES[name].defaults:
                raise MetacoreError(f"unknown {name} setting '{key}'")
            if isinstance(BACKBONES[name].defaults[key], bool):
                if not isinstance(value, bool):
                    raise MetacoreError(f"{name} setting '{key}' must be true or false")
                continue
            scale = key == "scale"  # a real number; 0 for a conv4 without feature normalisation
            low = 0.0 if key in ("scale", "rank") else 1e-3  # rank 0: an adapter without its residual
            check_number(value, f"{name} setting '{key}'", low, 4096, integer=not scale)
        fields = dict(info.get("input_spec", {}))
        unknown = set(fields) - set(InputSpec.__dataclass_fields__)
        if unknown:
            raise MetacoreError(f"unknown input-spec field '{sorted(unknown)[0]}'")
        for key, (low, high) in SPEC_LIMITS.items():
            if key in fields:
                check_number(fields[key], f"input size field '{key}'", low, high, integer=True)
        spec = InputSpec.from_dict(fields)
        if spec.crop and not 0.1 <= check_number(spec.crop, "input crop", 0.0, 1.0) <= 1.0:
            raise MetacoreError(f"input crop must be from 0.1 to 1, got {spec.crop}")
        if len(spec.mean) != spec.channels or len(spec.std) != spec.channels or min(spec.std) <= 0:
            raise MetacoreError("input mean/std must have one value per channel, std > 0")
        if spec.body and spec.body not in BODIES:
            raise MetacoreError(f"unknown body {spec.body!r} (known: {', '.join(BODIES)})")
    except MetacoreError as exc:
        raise MetacoreError(f"{path}: {exc}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise MetacoreError(f"{path} has malformed metadata ({exc})") from None
    return cfg, kwargs, spec


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[MAML, dict]:
    """Rebuild the learner saved at `path`; returns (learner, the checkpoint's metadata).

    Checked on the way: every metadata field (`validated`), every tensor's shape against the declared
    architecture, and that every weight is finite.
    """
    payload = read_checkpoint(path)
    cfg, kwargs, spec = validated(payload, Path(path))
    state = payload["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MetacoreError(f"{path}: its state_dict is not a dict of tensors")
    half = (torch.float16, torch.bfloat16)  # weights saved in half precision: computed in float32
    state = {k: v.float() if v.dtype in half else v for k, v in state.items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise MetacoreError(f"{path}: {len(bad)} weight tensors hold NaN or infinite values (e.g. {bad[0]})")
    adapted = {k: v for k, v in state.items() if k.startswith("head.")}  # a task head: an adapted model
    body = {k: v.to(device) for k, v in state.items() if not k.startswith((*RULE_PREFIXES, "head."))}
    try:
        backbone = Backbone(payload["backbone"]["name"], body, spec, **kwargs)
    except MetacoreError as exc:
        raise MetacoreError(f"{path}: {exc}") from None
    probe_features(backbone, Path(path))
    learner = build_learner(backbone=backbone, **cfg)  # cfg: the checked learner fields
    rule = {k: v.to(device) for k, v in state.items() if k.startswith(RULE_PREFIXES)}
    expected = {k: v.shape for k, v in learner.params.items() if k.startswith(RULE_PREFIXES)}
    if {k: v.shape for k, v in rule.items()} != expected:
        what = "Meta-SGD learning rates" if learner.name == "metasgd" else f"{learner.name} update-rule weights"
        raise MetacoreError(f"{path}: {what} are missing or do not fit the backbone")
    learner.params |= rule
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    if adapted:
        meta["adapted_head"] = check_head(adapted, backbone.feature_dim, meta.get("classes"), Path(path))
    return learner, meta


def probe_features(backbone: Backbone, path: Path) -> None:
    """Run the backbone once on a fixed random input: finite weights can still overflow (a layer times 1e30), and
    a model whose features are NaN or infinite would answer every image with NaN probabilities."""
    spec = backbone.input_spec
    shape = (2, backbone.kwargs["in_dim"]) if "in_dim" in backbone.kwargs else (2, spec.channels, spec.size, spec.size)
    dtype = next(v.dtype for v in backbone.params.values() if v.is_floating_point())  # float64 models exist
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(backbone.device, dtype)
    with torch.no_grad():
        features = backbone.features(backbone.params, x)
    if not torch.isfinite(features).all():
        largest = max(float(v.abs().max()) for v in backbone.params.values() if v.is_floating_point() and v.numel())
        raise MetacoreError(
            f"{path}: its features overflow to NaN or infinity on a test image (its largest weight is {largest:.3g}): "
            "this model cannot give answers"
        )


def check_head(head: dict[str, torch.Tensor], dim: int, classes, path: Path) -> dict[str, torch.Tensor]:
    """An adapted model's task head: a weight (way, dim) and a bias (way) with one class name per row."""
    weight, bias = head.get("head.weight"), head.get("head.bias")
    way = len(classes) if isinstance(classes, list) and all(isinstance(c, str) for c in classes) else -1
    if set(head) != {"head.weight", "head.bias"} or weight.shape != (way, dim) or bias.shape != (way,):
        raise MetacoreError(f"{path}: its task head does not fit {dim} features and its list of class names")
    return head


def meta_trained(meta: dict) -> bool:
    """Whether a checkpoint's model was meta-trained: False for one `metacore init` wrote (e.g. the photo model)."""
    training = meta.get("training")
    return training.get("meta_trained", True) if isinstance(training, dict) else True


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
