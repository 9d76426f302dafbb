"""A metacore model's feature extractor as one plain network, exported to a file that runs anywhere.

`python -m metacore export models/photo_lite2.pt --out photo.pt2` (or `.onnx`): pixels (n, C, H, W), preprocessed
as the model's card says, -> the features its task head reads. The preprocessing is written into the file, so
`check` and the lab read it back instead of guessing.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from metacore.bodies import BODIES
from metacore.checkpoint import load_checkpoint
from metacore.errors import MetacoreError
from metacore.models import BACKBONES
from metacore.yours import SPEC_KEY


class FeatureExtractor(nn.Module):
    """The frozen body (if the model has one) followed by the meta-learned backbone, as ordinary modules."""

    def __init__(self, checkpoint: str | Path) -> None:
        super().__init__()
        learner, _ = load_checkpoint(checkpoint)
        backbone = learner.backbone
        self.spec = backbone.input_spec
        self.body = BODIES[self.spec.body].build() if self.spec.body else None
        self.net = BACKBONES[backbone.name].build(**backbone.kwargs)
        self.net.load_state_dict({k: v for k, v in backbone.params.items()})
        self.eval()

    def forward(self, pixels: Tensor) -> Tensor:
        x = self.body.features(pixels) if self.body is not None else pixels
        return self.net(x)


def export(checkpoint: str | Path, out: str | Path) -> Path:
    """Write the checkpoint's feature extractor to `out` (.pt2: torch.export; .onnx: ONNX); returns the path."""
    out = Path(out)
    if out.suffix not in (".pt2", ".onnx"):
        raise MetacoreError(f"--out must end in .pt2 (torch.export) or .onnx, got '{out.name}'")
    model = FeatureExtractor(checkpoint)
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
            _onnx(model, example, out, record)
    return out


def _onnx(model: nn.Module, example: tuple[Tensor], out: Path, record: str) -> None:
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
            input_names=["pixels"],
            output_names=["features"],
            dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}},
            dynamo=True,
            verbose=False,
        )
    proto = onnx.load(str(out))  # with the weights the exporter wrote beside it
    entry = proto.metadata_props.add()
    entry.key, entry.value = SPEC_KEY, record
    onnx.save(proto, str(out))  # one file, weights inside: easy to mail, to upload, to check
    Path(f"{out}.data").unlink(missing_ok=True)
