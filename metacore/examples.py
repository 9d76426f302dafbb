"""Example tasks as PIL images: scikit-learn's bundled digits (no download) and Omniglot (a data root)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from metacore.data import EpisodeSampler, open_dataset
from metacore.errors import MetacoreError
from metacore.images import open_image

ExampleTask = dict[str, dict[str, list[Image.Image]]]  # class name -> {"support": [...], "query": [...]}


def digits_task(way: int = 5, shot: int = 1, query: int = 5, seed: int = 0) -> ExampleTask:
    """Handwritten digits from scikit-learn's bundled copy (8x8, upscaled), one class per digit."""
    from sklearn.datasets import load_digits

    if not 2 <= way <= 10:
        raise MetacoreError("the digits example has 10 classes: choose 2 to 10")
    digits = load_digits()
    rng = np.random.default_rng(seed)
    task: ExampleTask = {}
    for digit in sorted(rng.choice(10, size=way, replace=False).tolist()):
        picks = rng.choice(np.flatnonzero(digits.target == digit), size=shot + query, replace=False)
        images = [
            Image.fromarray((digits.images[i] * (255 / 16)).astype(np.uint8)).resize((56, 56), Image.Resampling.NEAREST)
            for i in picks
        ]
        task[f"digit {digit}"] = {"support": images[:shot], "query": images[shot:]}
    return task


def omniglot_task(data_root: str | Path, way: int = 5, shot: int = 1, query: int = 5, seed: int = 0) -> ExampleTask:
    """An N-way K-shot task from the Omniglot evaluation alphabets (never seen in training)."""
    dataset = open_dataset(data_root, "omniglot", "evaluation")
    sampler = EpisodeSampler(dataset, way, shot, query, seed)
    rng = sampler.rng
    task: ExampleTask = {}
    for index in rng.choice(len(dataset), size=way, replace=False):
        cls = dataset.classes[int(index)]
        files = [cls.files[i] for i in rng.choice(len(cls.files), size=shot + query, replace=False)]
        images = [open_image(f) for f in files]
        task[cls.name.replace("/character", " #")] = {"support": images[:shot], "query": images[shot:]}
    return task


def omniglot_available(data_root: str | Path) -> bool:
    return (Path(data_root) / "omniglot-py" / "images_evaluation").is_dir()


def download_omniglot(data_root: str | Path) -> None:
    """Fetch Omniglot with torchvision (an explicit user action); a clear error when offline."""
    from torchvision.datasets import Omniglot

    try:
        for background in (True, False):
            Omniglot(str(data_root), background=background, download=True)
    except Exception as exc:  # network errors come in many types
        raise MetacoreError(f"could not download Omniglot ({type(exc).__name__}: {exc}); are you offline?") from None
