"""Feature extraction and classification with a (possibly adapted) learner."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from metacore.algorithms import MAML
from metacore.bodies import model_inputs
from metacore.data import folder_classes
from metacore.errors import MetacoreError
from metacore.images import InputSpec, image_files, try_load_pixels
from metacore.inner import diverged
from metacore.models import Params


@dataclass
class LabelledImages:
    images: Tensor
    labels: Tensor
    classes: list[str]
    files: list[Path]


PROGRESS_FROM = 1000  # support sets this large show a progress bar with its ETA on stderr (smaller ones take < 2 s)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def read_inputs(
    files: list[Path],
    spec: InputSpec,
    skip_bad: bool = False,
    chunk: int = 64,
    on_skip: Callable[[str], None] = warn,
    progress: bool = False,
) -> tuple[Tensor, list[Path]]:
    """The model's inputs for image files and the files they came from, read `chunk` at a time so that a large
    set keeps only its inputs (for photos: features), never all its pixels.

    An unreadable file stops the read with one MetacoreError that names each such file and why; with
    `skip_bad` each is reported to `on_skip` instead and left out. `progress` shows a bar with its ETA on stderr.
    """
    from tqdm import tqdm

    inputs, kept, problems = [], [], []
    bar = tqdm(total=len(files), desc="reading images", unit="img", disable=not progress, leave=False)
    for start in range(0, len(files), chunk):
        part = files[start : start + chunk]
        results = try_load_pixels(part, spec)
        problems += [str(r) for r in results if isinstance(r, MetacoreError)]
        good = [(f, r) for f, r in zip(part, results) if not isinstance(r, MetacoreError)]
        if good:
            kept += [f for f, _ in good]
            inputs.append(model_inputs(torch.stack([r for _, r in good]), spec))
        bar.update(len(part))
    bar.close()
    listed = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
    if problems and not skip_bad:
        raise MetacoreError(
            f"{len(problems)} of {len(files)} files cannot be read ({listed}); fix or remove them, "
            "or pass --skip-bad to leave them out"
        )
    if not kept:  # each file's name and why, as for a support folder
        raise MetacoreError(f"none of the files could be read ({listed or 'no files'})")
    for problem in problems:
        on_skip(f"skipped {problem}")
    return torch.cat(inputs), kept


def load_support_folder(folder: str | Path, spec: InputSpec, skip_bad: bool = False) -> LabelledImages:
    """A folder of class subfolders -> model inputs, labels, class names and file paths."""
    classes = folder_classes(Path(folder))
    if len(classes) < 2:
        raise MetacoreError(f"{folder} must hold at least 2 class folders, found {len(classes)}")
    label_of = {f: label for label, cls in enumerate(classes) for f in cls.files}
    inputs, files = read_inputs(list(label_of), spec, skip_bad, progress=len(label_of) >= PROGRESS_FROM)
    empty = [c.name for label, c in enumerate(classes) if label not in {label_of[f] for f in files}]
    if empty:
        raise MetacoreError(f"class folder '{empty[0]}' in {folder} has no readable images")
    return LabelledImages(inputs, torch.tensor([label_of[f] for f in files]), [c.name for c in classes], files)


def query_files(paths: list[str | Path]) -> list[Path]:
    """Expand files and folders (recursively) into a sorted list of files to read."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += image_files(p, recursive=True)
        elif p.is_file():
            found.append(p)
        else:
            raise MetacoreError(f"query path not found: {p}")
    if not found:
        raise MetacoreError("no query images found in " + ", ".join(map(str, paths)))
    return found


def adapted_params(learner: MAML, support: LabelledImages, steps: int | None = None, lr: float | None = None) -> Params:
    """The learner's parameters after adapting to `support` (no outer graph is kept); a large support set shows a
    bar with its ETA on stderr, one tick a step."""
    from tqdm import tqdm

    device = next(iter(learner.params.values())).device
    total = (learner.inner_steps if steps is None else steps) + 1
    large = len(support.labels) >= PROGRESS_FROM
    with torch.no_grad(), tqdm(total=total, desc="adapting", unit="step", disable=not large, leave=False) as bar:
        snapshots = learner.adapt(
            support.images.to(device),
            support.labels.to(device),
            steps=steps,
            lr=lr,
            way=len(support.classes),
            chunk=256,  # a support set of thousands of images adapts in bounded memory
        )
        first = last = None
        for last in snapshots:
            first = last if first is None else first
            bar.update(1)
    start, end = float(first.support_loss), float(last.support_loss)
    if diverged(start, end):
        rate = f"lr {lr:g}" if lr is not None else "the model's own rates"
        warn(f"the adaptation diverged: the support loss went from {start:.3g} to {end:.3g} in {last.step} steps "
             f"at {rate}; its answers are not to be trusted (try a smaller --inner-lr)")  # fmt: skip
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
    probabilities = torch.cat(chunks).cpu()
    if not torch.isfinite(probabilities).all():  # e.g. adaptation at a huge lr blew the head up
        raise MetacoreError("the adapted model gives NaN or infinite probabilities (its adaptation diverged; try a "
                            "smaller --inner-lr or fewer --steps)")  # fmt: skip
    return probabilities
