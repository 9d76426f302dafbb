"""Your own network as a feature extractor: loaded by content, never unpickled, checked before it is used.

Formats: `torch.export` programs (.pt2), ONNX (onnxruntime), TorchScript, a torchvision architecture by name plus a
state dict (.pt read with weights_only=True, or .safetensors; its classifier removed), and metacore checkpoints.
Every model ends as `FeatureModel`: preprocessed pixels (n, C, H, W) -> features (n, d), in eval mode, batch by
batch. Preprocessing is stated (`InputSpec`), read from the file where the format records it, else ImageNet's.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import threading
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metacore.checkpoint import FORMAT as METACORE_FORMAT
from metacore.checkpoint import load_checkpoint, sha256
from metacore.errors import MetacoreError
from metacore.images import InputSpec

MAX_MODEL_BYTES = 500 * 2**20
IMAGENET_SPEC = InputSpec(  # torchvision's ImageNet preprocessing: 224 px centre crop of 87.5%, RGB, mean/std
    size=224, channels=3, invert="never", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), crop=0.875
)
SPEC_KEY = "metacore_input_spec"  # where `metacore export` writes the preprocessing into a .pt2 or ONNX file
BATCH = 32


@dataclass
class FeatureModel:
    """A network as a feature extractor: preprocessed pixels -> one feature vector per image."""

    name: str  # the file's name, for messages and reports
    kind: str  # "torch.export", "onnx", "torchscript", "torchvision resnet18", "metacore"
    sha256: str
    spec: InputSpec
    spec_source: str  # where the preprocessing came from, said in the UI and the report
    run: Callable[[Tensor], Tensor]  # one batch of pixels -> features
    fixed_batch: int | None = None  # an ONNX input whose batch size is fixed (e.g. 1)
    architecture: str | None = None  # a torchvision name: the random-init baseline is known
    module: nn.Module | None = None  # a torch module with parameters (None for ONNX and feature files)
    feature_dim: int = 0
    path: str = ""  # the file it was loaded from

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.module.parameters()) if self.module is not None else 0

    def features(self, pixels: Tensor, batch: int = BATCH) -> Tensor:
        """Features of preprocessed pixels, `batch` images at a time (the fixed batch of an ONNX file, if any)."""
        step = self.fixed_batch or batch
        with torch.inference_mode():
            parts = [self._run(pixels[i : i + step]) for i in range(0, len(pixels), step)]
        return torch.cat(parts) if parts else torch.zeros(0, self.feature_dim)

    def _run(self, pixels: Tensor) -> Tensor:
        """One batch; a file exported with a fixed batch size gets its last batch padded to that size."""
        n = len(pixels)
        if self.fixed_batch and n < self.fixed_batch:
            pixels = torch.cat([pixels, pixels.new_zeros(self.fixed_batch - n, *pixels.shape[1:])])
        return self._checked(self.run(pixels))[:n]

    def _checked(self, out: Tensor) -> Tensor:
        if out.dim() != 2:
            raise MetacoreError(
                f"{self.name} returns shape {tuple(out.shape)} for a batch of images: a feature extractor must "
                "return one vector per image, (batch, features) (pool or flatten its last layer)"
            )
        return out.float()

    def with_spec(self, spec: InputSpec, source: str = "set by you") -> FeatureModel:
        return replace(self, spec=spec, spec_source=source)


def restated(
    spec: InputSpec,
    size: int | None = None,
    channels: int | None = None,
    mean: str | None = None,
    std: str | None = None,
) -> InputSpec:
    """`spec` with what a person changed: the input size, 1 or 3 channels, and mean / std as text ("0.5" or
    "0.485, 0.456, 0.406"); one sentence when a value does not fit."""
    if size is not None and not 8 <= int(size) <= 1024:
        raise MetacoreError(f"the input size must be from 8 to 1024 pixels, got {size}")
    channels = channels or spec.channels
    same = channels == spec.channels

    def per_channel(text: str | None, name: str, kept: tuple[float, ...]) -> tuple[float, ...]:
        if not text:
            return kept if same else (0.5,) * channels
        try:
            values = tuple(float(v) for v in text.split(","))
        except ValueError:
            raise MetacoreError(f"{name} must be numbers separated by commas, e.g. 0.5,0.5,0.5") from None
        values = values * channels if len(values) == 1 else values
        if len(values) != channels:
            raise MetacoreError(f"{name} needs one value per channel ({channels}), got {len(values)}")
        return values

    means, stds = per_channel(mean, "mean", spec.mean), per_channel(std, "std", spec.std)
    if min(stds) <= 0:
        raise MetacoreError("std values must be above 0")
    return replace(spec, size=int(size or spec.size), channels=channels, mean=means, std=stds)


def spec_from_record(record: str | dict | None) -> InputSpec | None:
    """The InputSpec a file records (metacore export writes it), or None."""
    if not record:
        return None
    try:
        fields = json.loads(record) if isinstance(record, str) else dict(record)
        return InputSpec.from_dict({k: v for k, v in fields.items() if k in InputSpec.__dataclass_fields__})
    except (TypeError, ValueError):
        return None


def sniff(path: Path) -> str:
    """What a file holds, by its content (its suffix only breaks ties): pt2, torchscript, torch-zip, onnx,
    safetensors, pickle, npy, npz, csv."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK"):
        try:
            names = zipfile.ZipFile(path).namelist()
        except zipfile.BadZipFile:
            raise MetacoreError(f"{path.name} is a damaged zip archive") from None
        tails = {n.split("/", 1)[-1] for n in names}
        if any(t.endswith(".npy") for t in tails) and path.suffix == ".npz":
            return "npz"
        if "archive_format" in tails or any(t.startswith(("models/", "serialized_exported_program")) for t in tails):
            return "pt2"
        if any(t.startswith("code/") for t in tails) or "constants.pkl" in tails:
            return "torchscript"
        if "data.pkl" in tails:
            return "torch-zip"
        if any(t.endswith(".npy") for t in tails):
            return "npz"
        raise MetacoreError(f"{path.name} is a zip archive, but not a model format metacore reads")
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{":
        header = int.from_bytes(head[:8], "little")
        if 0 < header < 100 * 2**20:
            return "safetensors"
    if path.suffix.lower() == ".onnx" or head[:1] == b"\x08":
        return "onnx"
    if path.suffix.lower() in (".csv", ".tsv", ".txt"):
        return "csv"
    raise MetacoreError(
        f"{path.name}: not a format metacore reads (torch.export .pt2, ONNX, TorchScript, a state dict .pt or "
        ".safetensors with --arch, a metacore checkpoint, or features .csv / .npy / .npz)"
    )


def check_file(path: str | Path, max_bytes: int = MAX_MODEL_BYTES) -> Path:
    path = Path(path)
    if not path.is_file():
        raise MetacoreError(f"model file not found: {path}")
    size = path.stat().st_size
    if size > max_bytes:
        raise MetacoreError(
            f"{path.name} is {size / 2**20:.0f} MB, over the {max_bytes / 2**20:.0f} MB limit (raise it with "
            "--max-mb, or METACORE_MAX_MODEL_MB in the app)"
        )
    if size == 0:
        raise MetacoreError(f"{path.name} is empty")
    return path


def load_model(
    path: str | Path, arch: str | None = None, spec: InputSpec | None = None, max_bytes: int = MAX_MODEL_BYTES
) -> FeatureModel:
    """Your model file as a checked FeatureModel; MetacoreError with one sentence naming the file and the cause."""
    path = check_file(path, max_bytes)
    kind = sniff(path)
    digest = sha256(path)
    if kind == "pickle":
        raise MetacoreError(
            f"{path.name} is a Python pickle: metacore never unpickles a file (it could run any code). Save the "
            "weights with torch.save(model.state_dict()) and pass --arch, or export the model (torch.export, ONNX)"
        )
    if kind in ("npy", "npz", "csv"):
        raise MetacoreError(f"{path.name} holds features, not a model: check it with --features (see `check --help`)")
    if arch is not None and kind not in ("torch-zip", "safetensors"):
        raise MetacoreError(f"--arch takes a state dict (.pt or .safetensors); {path.name} is a {kind} file")
    if kind == "pt2":
        model = _load_export(path, digest)
    elif kind == "onnx":
        model = _load_onnx(path, digest)
    elif kind == "torchscript":
        model = _load_torchscript(path, digest)
    elif kind == "safetensors":
        model = _load_state_dict(path, digest, arch, _read_safetensors(path))
    else:  # a torch.save zip: a metacore checkpoint, or a state dict for --arch
        payload = _read_weights_only(path)
        if isinstance(payload, dict) and payload.get("format") == METACORE_FORMAT:
            model = _load_metacore(path, digest)
        else:
            model = _load_state_dict(path, digest, arch, payload)
    if spec is not None:
        model = model.with_spec(spec)
    return validate(replace(model, path=str(path)))


def _read_weights_only(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 (a refused pickle, a damaged file: one sentence either way)
        text = str(exc).strip()
        if "WeightsUnpickler error:" in text:
            cause = text.split("WeightsUnpickler error:", 1)[1].split(" was not ", 1)[0].strip()
            raise MetacoreError(
                f"{path.name} holds Python objects beyond tensors ({cause[:120]}), which metacore does not unpickle: "
                "save model.state_dict() instead, or export the model"
            ) from None
        first = (text.splitlines() or ["?"])[0][:160]
        raise MetacoreError(f"{path.name} cannot be read as a torch file ({first})") from None


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        from safetensors.torch import load_file

        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001
        raise MetacoreError(f"{path.name} is not a readable .safetensors file ({str(exc)[:160]})") from None


def _load_export(path: Path, digest: str) -> FeatureModel:
    extra = {SPEC_KEY: ""}
    try:
        program = torch.export.load(str(path), extra_files=extra)
        module = program.module()
    except Exception as exc:  # noqa: BLE001
        raise MetacoreError(f"{path.name} is not a loadable torch.export program ({str(exc)[:160]})") from None
    recorded = spec_from_record(extra.get(SPEC_KEY))
    shape = _export_input_shape(program)
    spec, source = _spec_and_source(recorded, shape)
    fixed = shape[0] if shape and isinstance(shape[0], int) else None  # exported without a dynamic batch
    return FeatureModel(path.name, "torch.export", digest, spec, source, module, fixed_batch=fixed, module=module)


def _export_input_shape(program) -> tuple | None:
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder"]
    user = set(program.graph_signature.user_inputs)
    shapes = [tuple(n.meta["val"].shape) for n in placeholders if n.name in user and "val" in n.meta]
    return shapes[0] if len(shapes) == 1 else None


def _spec_and_source(recorded: InputSpec | None, shape: tuple | None) -> tuple[InputSpec, str]:
    """The file's own preprocessing if it records one, else ImageNet's at the input size the file fixes."""
    if recorded is not None:
        return recorded, "recorded in the file"
    dims = [d if isinstance(d, int) else None for d in (shape or ())]
    if len(dims) == 4 and dims[1] in (1, 3) and dims[2] and dims[2] == dims[3]:
        channels, size = dims[1], dims[2]
        grey = channels == 1
        spec = replace(
            IMAGENET_SPEC,
            size=size,
            channels=channels,
            mean=(0.5,) if grey else IMAGENET_SPEC.mean,
            std=(0.5,) if grey else IMAGENET_SPEC.std,
        )
        return spec, f"input size {size} px, {'grey' if grey else 'RGB'} read from the file; ImageNet mean/std"
    return IMAGENET_SPEC, "ImageNet defaults (the file does not fix its input size)"


def _load_onnx(path: Path, digest: str) -> FeatureModel:
    try:
        import onnxruntime as ort
    except ImportError:
        raise MetacoreError("ONNX models need onnxruntime: pip install onnxruntime") from None
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # noqa: BLE001
        if "external data" in str(exc).lower():
            raise MetacoreError(
                f"{path.name} keeps its weights in a separate file ({path.name}.data) that is not beside it: export "
                "with torch.onnx.export(..., external_data=False) for one file, or put both files together"
            ) from None
        raise MetacoreError(f"{path.name} is not a loadable ONNX model ({str(exc).splitlines()[0][:160]})") from None
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise MetacoreError(f"{path.name} takes {len(inputs)} inputs; a feature extractor takes one batch of images")
    name, shape = inputs[0].name, tuple(inputs[0].shape)
    meta = session.get_modelmeta().custom_metadata_map
    spec, source = _spec_and_source(spec_from_record(meta.get(SPEC_KEY)), shape)
    fixed = shape[0] if shape and isinstance(shape[0], int) else None

    def run(pixels: Tensor) -> Tensor:
        return torch.from_numpy(session.run(None, {name: pixels.detach().cpu().numpy().astype(np.float32)})[0])

    return FeatureModel(path.name, "onnx", digest, spec, source, run, fixed_batch=fixed)


def _load_torchscript(path: Path, digest: str) -> FeatureModel:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit is deprecated in torch 2.14; reading old files still works
            module = torch.jit.load(str(path), map_location="cpu")
        module.eval()
    except Exception as exc:  # noqa: BLE001
        raise MetacoreError(f"{path.name} is not a loadable TorchScript file ({str(exc)[:160]})") from None
    spec, source = _spec_and_source(None, None)
    return FeatureModel(path.name, "torchscript", digest, spec, source, module, module=module)


def torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def torchvision_body(arch: str) -> tuple[nn.Module, str]:
    """A torchvision classifier at random initialisation (seed 0) with its last linear layer replaced by the
    identity, and that layer's name."""
    import torchvision

    if arch not in torchvision_names():
        close = [n for n in torchvision_names() if n.startswith(arch[:4])][:5]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise MetacoreError(f"--arch {arch}: not a torchvision classifier{hint}")
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None)
    name = _last_linear(model)
    if name is None:
        raise MetacoreError(f"--arch {arch}: no final linear layer to remove, so its features are not defined here")
    _set_module(model, name, nn.Identity())
    return model.eval(), name


def _last_linear(model: nn.Module) -> str | None:
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    return last


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _load_state_dict(path: Path, digest: str, arch: str | None, state: object) -> FeatureModel:
    if arch is None:
        raise MetacoreError(
            f"{path.name} holds weights only: say which torchvision architecture they are for with --arch (e.g. "
            "--arch resnet18)"
        )
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        else:
            raise MetacoreError(f"{path.name} is not a state dict (a dict of tensors)")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    model, classifier = torchvision_body(arch)
    expected = set(model.state_dict())
    state = {k: v for k, v in state.items() if not k.startswith(classifier + ".")}  # the removed classifier
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise MetacoreError(
            f"{path.name} does not fit torchvision's {arch}: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    wrong = [k for k, v in model.state_dict().items() if state[k].shape != v.shape]
    if wrong:
        raise MetacoreError(
            f"{path.name} does not fit torchvision's {arch}: '{wrong[0]}' has shape {tuple(state[wrong[0]].shape)}, "
            f"{arch} needs {tuple(model.state_dict()[wrong[0]].shape)}"
        )
    model.load_state_dict(state)
    model = model.eval().to(memory_format=torch.channels_last)
    spec, _ = _spec_and_source(None, None)
    source = "torchvision's ImageNet preprocessing (224 px, RGB, ImageNet mean/std)"
    return FeatureModel(
        path.name, f"torchvision {arch}", digest, spec, source, _channels_last(model), architecture=arch, module=model
    )


def _channels_last(module: nn.Module) -> Callable[[Tensor], Tensor]:
    def run(pixels: Tensor) -> Tensor:
        return module(pixels.contiguous(memory_format=torch.channels_last))

    return run


def _load_metacore(path: Path, digest: str) -> FeatureModel:
    from metacore.bodies import model_inputs

    learner, _ = load_checkpoint(path)
    backbone = learner.backbone
    spec = backbone.input_spec

    def run(pixels: Tensor) -> Tensor:
        return backbone.features(backbone.params, model_inputs(pixels, spec))

    return FeatureModel(path.name, "metacore", digest, spec, "recorded in the checkpoint", run)


def validate(model: FeatureModel) -> FeatureModel:
    """Run the model on three random images at its stated input: refuse a failure, a wrong rank, non-finite
    values, or an answer for one image that depends on the rest of its batch (BatchNorm in training mode)."""
    spec = model.spec
    probe = torch.randn(3, spec.channels, spec.size, spec.size, generator=torch.Generator().manual_seed(0))
    try:
        together = model.features(probe)
        alone = model.features(probe[:1])
    except MetacoreError:
        raise
    except Exception as exc:  # noqa: BLE001 (the user's model: whatever it raises becomes one sentence)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise MetacoreError(
            f"{model.name} fails on a batch of {spec.channels}x{spec.size}x{spec.size} images ({first}); set the "
            "input size and channels it expects"
        ) from None
    if together.shape[0] != 3:
        raise MetacoreError(f"{model.name} returns {together.shape[0]} rows for 3 images")
    if not torch.isfinite(together).all():
        raise MetacoreError(f"{model.name} returns NaN or infinite values on ordinary images")
    scale = together.abs().max().clamp_min(1e-6)
    if model.fixed_batch is None and not torch.allclose(together[:1], alone, atol=1e-4 * float(scale), rtol=1e-3):
        raise MetacoreError(
            f"{model.name} gives one image different features depending on the rest of its batch (is it in training "
            "mode, with BatchNorm using batch statistics? call model.eval() before exporting)"
        )
    return replace(model, feature_dim=int(together.shape[1]))


@dataclass
class FeatureTable:
    """Precomputed features with one label per row: no model at all."""

    name: str
    features: Tensor  # (n, d)
    labels: Tensor  # (n,)
    classes: list[str]


def load_features(path: str | Path, labels: str | Path | None = None, max_bytes: int = MAX_MODEL_BYTES) -> FeatureTable:
    """Features from a .csv (a `label` column, the rest numbers), a .npz (`features` and `labels`), or a .npy with
    its labels in a second file (.npy, or text with one label per line)."""
    path = check_file(path, max_bytes)
    kind = sniff(path) if path.suffix.lower() != ".csv" else "csv"
    if kind == "csv":
        features, names = _read_csv(path)
    elif kind == "npz":
        with np.load(path, allow_pickle=False) as data:
            if "features" not in data or "labels" not in data:
                raise MetacoreError(f"{path.name} must hold arrays named 'features' and 'labels' (has {list(data)})")
            features, names = data["features"], [str(x) for x in data["labels"]]
    elif kind == "npy":
        features = _read_npy(path)
        if labels is None:
            raise MetacoreError(f"{path.name} holds features only: give their labels with --labels (.npy or .txt)")
        labels = check_file(labels, max_bytes)
        if sniff(labels) == "npy":
            names = [str(x) for x in _read_npy(labels).reshape(-1)]
        else:
            names = [line.strip() for line in labels.read_text(errors="replace").splitlines() if line.strip()]
    else:
        raise MetacoreError(f"{path.name} is a {kind} file, not features (.csv, .npz, or .npy with --labels)")
    features = np.asarray(features)
    if features.ndim != 2 or not np.issubdtype(features.dtype, np.number):
        raise MetacoreError(f"{path.name}: features must be a 2-D numeric array, got shape {features.shape}")
    if len(names) != len(features):
        raise MetacoreError(f"{path.name}: {len(features)} feature rows but {len(names)} labels")
    if not np.isfinite(features).all():
        raise MetacoreError(f"{path.name}: features hold NaN or infinite values")
    classes = sorted(set(names))
    index = {c: i for i, c in enumerate(classes)}
    return FeatureTable(
        path.name, torch.from_numpy(features.astype(np.float32)), torch.tensor([index[n] for n in names]), classes
    )


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise MetacoreError(f"{path.name}: {exc} (object arrays are pickles: metacore does not read them)") from None


def _read_csv(path: Path) -> tuple[np.ndarray, list[str]]:
    import csv

    text = path.read_text(errors="replace")
    rows = list(csv.reader(io.StringIO(text)))
    if len(rows) < 2:
        raise MetacoreError(f"{path.name}: a features CSV needs a header and at least one row")
    header = [h.strip() for h in rows[0]]
    if "label" not in header:
        raise MetacoreError(f"{path.name}: no 'label' column (columns: {', '.join(header[:6])} ...)")
    at = header.index("label")
    skip = {i for i, h in enumerate(header) if h in ("label", "file", "name", "stage", "set")}
    names, values = [], []
    for number, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        try:
            values.append([float(v) for i, v in enumerate(row) if i not in skip])
        except ValueError:
            raise MetacoreError(f"{path.name}: line {number} has a value that is not a number") from None
        names.append(row[at])
    if len({len(v) for v in values}) != 1:
        raise MetacoreError(f"{path.name}: rows have different numbers of values")
    return np.array(values), names


def random_init(arch: str, spec: InputSpec) -> FeatureModel:
    """The same torchvision architecture at random initialisation (seed 0): what training added, by contrast."""
    model, _ = torchvision_body(arch)
    model = model.to(memory_format=torch.channels_last)
    digest = hashlib.sha256(f"random-init {arch} seed 0".encode()).hexdigest()
    name = f"{arch} at random init"
    return validate(
        FeatureModel(
            name,
            f"torchvision {arch}",
            digest,
            spec,
            "as the model's",
            _channels_last(model),
            architecture=arch,
            module=model,
        )
    )


class _Body(nn.Module):
    """`metacore.bodies`' view of a FeatureModel: `features(pixels)`; the model itself is not a submodule, so moving
    this wrapper (to channels-last) never changes it."""

    def __init__(self, model: FeatureModel) -> None:
        super().__init__()
        self.model = [model]

    def features(self, pixels: Tensor) -> Tensor:
        return self.model[0].features(pixels)


def register_body(model: FeatureModel) -> str:
    """Make `model` a frozen body (metacore.bodies) named by its content; returns the name."""
    from metacore.bodies import BODIES, BodySpec

    name = f"yours-{model.sha256[:12]}-{hashlib.sha256(json.dumps(model.spec.to_dict()).encode()).hexdigest()[:6]}"
    if name not in BODIES:
        BODIES[name] = BodySpec(lambda: _Body(model), model.feature_dim, "", f"{model.name} ({model.kind})")
    return name


def feature_learner(model: FeatureModel, steps: int = 10, lr: float = 0.1):
    """Your model as a lab learner: its frozen features, CL2N, and a zero head adapting `steps` steps at `lr`."""
    from metacore.algorithms.frozen import FrozenFeatures
    from metacore.models import Backbone

    spec = replace(model.spec, body=register_body(model))
    backbone = Backbone("centred_norm", input_spec=spec, in_dim=model.feature_dim, scale=10.0)
    return FrozenFeatures(backbone, lr, steps, "zero")


class ModuleBackbone:
    """Your torch network as a metacore backbone: explicit parameters and a functional forward (features centred and
    L2-normalised times `scale`, as `CentredNorm`). Each thread calls its own copy of the module, since
    `functional_call` swaps parameters into the module it is given."""

    name = "your network"

    def __init__(self, module: nn.Module, spec: InputSpec, feature_dim: int, scale: float = 10.0) -> None:
        self.module, self.input_spec, self.feature_dim = module, spec, feature_dim
        self.kwargs: dict = {}
        like = next(module.parameters())
        self.params = {k: v.detach() for k, v in module.named_parameters()}
        self.params |= {"center": like.new_zeros(feature_dim), "scale": like.new_tensor(scale)}
        self._local = threading.local()

    def _template(self) -> nn.Module:
        module = getattr(self._local, "module", None)
        if module is None:
            module = self._local.module = copy.deepcopy(self.module).eval()
        return module

    def raw_features(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        weights = {k: v for k, v in params.items() if k not in ("center", "scale") and not k.startswith("head.")}
        return torch.func.functional_call(self._template(), weights, (x,))

    def features(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        return params["scale"] * F.normalize(self.raw_features(params, x) - params["center"], dim=-1)

    @property
    def device(self) -> torch.device:
        return next(iter(self.params.values())).device


def whole_network_learner(model: FeatureModel, steps: int = 5, lr: float = 0.1):
    """Your whole network adapting (`WholeNetwork`), when it is a torch module with parameters that
    `functional_call` can drive (not TorchScript, not ONNX); else None."""
    from metacore.algorithms.whole import WholeNetwork

    module = model.module
    if module is None or isinstance(module, torch.jit.ScriptModule) or not any(True for _ in module.parameters()):
        return None
    return WholeNetwork(ModuleBackbone(module, model.spec, model.feature_dim), lr, steps)
