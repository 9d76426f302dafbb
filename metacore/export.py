"""A metacore model's feature extractor as one plain network, exported to a file that runs anywhere.

`python -m metacore export models/photo_lite2.pt --out photo.pt2` (or `.onnx`): pixels (n, C, H, W), preprocessed
as the model's card says, -> the features its task head reads. The preprocessing is written into the file, so
`check` and the lab read it back instead of guessing.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from metacore.algorithms import MAML
from metacore.bodies import BODIES
from metacore.checkpoint import load_checkpoint
from metacore.errors import MetacoreError
from metacore.models import BACKBONES, Backbone, Params
from metacore.yours import SPEC_KEY


class FeatureExtractor(nn.Module):
    """The frozen body (if the model has one) followed by the meta-learned backbone, as ordinary modules."""

    def __init__(self, backbone: Backbone, params: Params | None = None) -> None:
        """`params`: the backbone's own (default), or adapted ones (the body's keys are read, others ignored)."""
        super().__init__()
        params = backbone.params if params is None else params
        self.spec = backbone.input_spec
        self.body = BODIES[self.spec.body].build() if self.spec.body else None
        self.net = BACKBONES[backbone.name].build(**backbone.kwargs)
        self.net.load_state_dict({k: params[k].detach().float().cpu() for k in backbone.params})
        self.eval()

    def forward(self, pixels: Tensor) -> Tensor:
        x = self.body.features(pixels) if self.body is not None else pixels
        return self.net(x)


def export(checkpoint: str | Path, out: str | Path) -> Path:
    """Write the checkpoint's feature extractor to `out` (.pt2: torch.export; .onnx: ONNX); returns the path."""
    out = Path(out)
    if out.suffix not in (".pt2", ".onnx"):
        raise MetacoreError(f"--out must end in .pt2 (torch.export) or .onnx, got '{out.name}'")
    model = FeatureExtractor(load_checkpoint(checkpoint)[0].backbone)
    spec = model.spec
    example = (torch.zeros(2, spec.channels, spec.size, spec.size),)
    record = json.dumps(spec.to_dict() | {"body": ""})  # the exported file holds the body: it takes pixels
    out.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        if out.suffix == ".pt2":
            program = torch.export.export(model, example, dynamic_shapes=({0: batch},))
            torch.export.save(program, str(out), extra_files={SPEC_KEY: record})
        else:
            _onnx(model, example, out, {SPEC_KEY: record})
    return out


def _onnx(
    model: nn.Module,
    example: tuple[Tensor],
    out: Path,
    metadata: dict[str, str],
    names: tuple[list[str], list[str]] = (["pixels"], ["features"]),
) -> None:
    try:
        import onnx
    except ImportError:
        needs = "exporting to ONNX needs the onnx and onnxscript packages (pip install onnx onnxscript)"
        raise MetacoreError(needs) from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            example,
            str(out),
            input_names=names[0],
            output_names=names[1],
            dynamic_axes={name: {0: "batch"} for name in names[0] + names[1]},
            dynamo=True,
            verbose=False,
        )
    proto = onnx.load(str(out))  # with the weights the exporter wrote beside it
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(out))  # one file, weights inside: easy to mail, to upload, to check
    Path(f"{out}.data").unlink(missing_ok=True)


class TaskClassifier(nn.Module):
    """A model adapted to one task, from an image's pixels to class probabilities: uint8 (n, size, size, channels)
    -> scaled to 0..1, strokes inverted when the model does so, normalised, the frozen body (if any), the adapted
    backbone and head, softmax. The resizing and cropping before it are the caller's (`standalone_predict.py`)."""

    def __init__(self, learner: MAML, params: Params) -> None:
        super().__init__()
        self.features = FeatureExtractor(learner.backbone, params)
        self.spec = spec = learner.backbone.input_spec
        self.register_buffer("weight", params["head.weight"].detach().float().cpu())
        self.register_buffer("bias", params["head.bias"].detach().float().cpu())
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std).view(1, -1, 1, 1))
        self.eval()

    def forward(self, image: Tensor) -> Tensor:
        x = image.permute(0, 3, 1, 2).float() / 255.0
        if self.spec.invert == "auto":  # dark strokes on a light ground -> bright strokes, per image
            x = torch.where(x.mean((1, 2, 3), keepdim=True) > 0.5, 1.0 - x, x)
        x = (x - self.mean) / self.std
        return (self.features(x) @ self.weight.T + self.bias).softmax(-1)


def export_task(learner: MAML, params: Params, classes: list[str], out: str | Path) -> Path:
    """Write `out/model.onnx` (pixels -> probabilities, class names and input spec in its metadata),
    `out/predict.py` (onnxruntime, numpy and pillow only) and `out/model.pt2` (torch.export); returns `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = TaskClassifier(learner, params)
    spec = model.spec
    example = (torch.zeros(2, spec.size, spec.size, spec.channels, dtype=torch.uint8),)
    metadata = {"classes": json.dumps(list(classes)), "input": json.dumps(spec.to_dict())}
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        program = torch.export.export(model, example, dynamic_shapes=({0: batch},))
        torch.export.save(program, str(out / "model.pt2"), extra_files=metadata)
        _onnx(model, example, out / "model.onnx", metadata, names=(["image"], ["probabilities"]))
    shutil.copyfile(Path(__file__).with_name("standalone_predict.py"), out / "predict.py")
    return out
