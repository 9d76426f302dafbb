"""Feature extraction and classification with a (possibly adapted) learner."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from metacore.algorithms import MAML
from metacore.bodies import model_inputs
from metacore.data import folder_classes
from metacore.errors import MetacoreError
from metacore.images import IMAGE_SUFFIXES, InputSpec, load_pixels
from metacore.inner import run_to_end
from metacore.models import Params


@dataclass
class LabelledImages:
    images: Tensor
    labels: Tensor
    classes: list[str]
    files: list[Path]


def load_support_folder(folder: str | Path, spec: InputSpec) -> LabelledImages:
    """A folder of class subfolders -> images, labels, class names and file paths."""
    classes = folder_classes(Path(folder))
    if len(classes) < 2:
        raise MetacoreError(f"{folder} must hold at least 2 class folders, found {len(classes)}")
    files = [f for cls in classes for f in cls.files]
    labels = [label for label, cls in enumerate(classes) for _ in cls.files]
    return LabelledImages(load_images(files, spec), torch.tensor(labels), [c.name for c in classes], files)


def query_files(paths: list[str | Path]) -> list[Path]:
    """Expand files and folders (recursively) into a sorted list of image files."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            found.append(p)
        else:
            raise MetacoreError(f"query path not found: {p}")
    if not found:
        raise MetacoreError("no query images found in " + ", ".join(map(str, paths)))
    return found


def adapted_params(learner: MAML, support: LabelledImages, steps: int | None = None, lr: float | None = None) -> Params:
    """The learner's parameters after adapting to `support` (no outer graph is kept)."""
    device = next(iter(learner.params.values())).device
    with torch.no_grad():
        last = run_to_end(
            learner.adapt(
                support.images.to(device), support.labels.to(device), steps=steps, lr=lr, way=len(support.classes)
            )
        )
    return last.params


def embed(learner: MAML, images: Tensor, params: Params | None = None, batch_size: int = 256) -> Tensor:
    """Feature vectors of `images` under `params` (default: the meta-learned initialisation)."""
    params = learner.params if params is None else params
    device = next(iter(params.values())).device
    with torch.no_grad():
        chunks = [
            learner.backbone.features(params, images[i : i + batch_size].to(device))
            for i in range(0, len(images), batch_size)
        ]
    return torch.cat(chunks).cpu() if chunks else torch.empty(0, learner.backbone.feature_dim)


def predict_proba(learner: MAML, params: Params, images: Tensor, batch_size: int = 256) -> Tensor:
    """Class probabilities under adapted `params` (which include the task head)."""
    device = next(iter(params.values())).device
    with torch.no_grad():
        chunks = [
            learner.logits(params, images[i : i + batch_size].to(device)).softmax(-1)
            for i in range(0, len(images), batch_size)
        ]
    return torch.cat(chunks).cpu()


def load_images(files: list[Path], spec: InputSpec) -> Tensor:
    """Image files -> the model's inputs (pixels, or a frozen body's features)."""
    return model_inputs(load_pixels(files, spec), spec)
