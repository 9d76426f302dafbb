"""Checkpoints: parameters + metadata in one file, loaded with `torch.load(weights_only=True)`."""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from pathlib import Path

import torch

from metacore.algorithms import ALGORITHMS, MAML, MetaSGD
from metacore.errors import MetacoreError
from metacore.images import InputSpec
from metacore.models import Backbone

FORMAT = "metacore-checkpoint"
VERSION = 1


def build_learner(algorithm: str, backbone: Backbone, inner_lr: float, inner_steps: int, head: str = "zero") -> MAML:
    if algorithm not in ALGORITHMS:
        raise MetacoreError(f"unknown algorithm '{algorithm}' (choose: {', '.join(ALGORITHMS)})")
    return ALGORITHMS[algorithm](backbone, inner_lr, inner_steps, head)


def save_checkpoint(path: str | Path, learner: MAML, **metadata) -> None:
    """Write the learner's meta-parameters and everything needed to rebuild it.

    `metadata` (training config, metrics, optimiser state, iteration, ...) must hold only
    plain values and tensors, so the file stays loadable with weights_only=True.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    backbone = learner.backbone
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "backbone": {"name": backbone.name, "kwargs": backbone.kwargs, "input_spec": backbone.input_spec.to_dict()},
        "learner": learner.config(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in learner.params.items()},
        **metadata,
    }
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


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[MAML, dict]:
    """Rebuild the learner saved at `path`; returns (learner, the checkpoint's metadata)."""
    payload = read_checkpoint(path)
    state = payload["state_dict"]
    info = payload["backbone"]
    body = {k: v.to(device) for k, v in state.items() if not k.startswith("lr.")}
    backbone = Backbone(info["name"], body, InputSpec.from_dict(info["input_spec"]), **info.get("kwargs", {}))
    cfg = payload["learner"]
    learner = build_learner(cfg["algorithm"], backbone, cfg["inner_lr"], cfg["inner_steps"], cfg.get("head", "zero"))
    if isinstance(learner, MetaSGD):
        lrs = {k: v.to(device) for k, v in state.items() if k.startswith("lr.")}
        if set(lrs) != {k for k in learner.params if k.startswith("lr.")}:
            raise MetacoreError(f"{path}: Meta-SGD learning rates are missing or do not fit the backbone")
        learner.params |= lrs
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    return learner, meta


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
