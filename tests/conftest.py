"""Shared test helpers: tiny models and synthetic tasks the tests make themselves."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metacore.data import Task
from metacore.models import Backbone

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
OMNIGLOT = SHARED_DATA / "omniglot-py"

needs_omniglot = pytest.mark.skipif(
    not OMNIGLOT.is_dir(), reason=f"Omniglot not found at {OMNIGLOT} (the shared data folder is absent)"
)


def tiny_backbone(dtype: torch.dtype = torch.float64, seed: int = 0) -> Backbone:
    torch.manual_seed(seed)
    return Backbone("conv4", hidden=4, groups=2).to("cpu", dtype)


def random_task(way: int = 3, shot: int = 2, query: int = 3, dtype: torch.dtype = torch.float64, seed: int = 0) -> Task:
    """Class-dependent synthetic images: each class has its own mean pattern plus noise."""
    g = torch.Generator().manual_seed(seed)
    patterns = torch.rand(way, 1, 28, 28, generator=g, dtype=dtype)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(way).repeat_interleave(n)
        images = patterns[labels] + 0.3 * torch.randn(len(labels), 1, 28, 28, generator=g, dtype=dtype)
        return images, labels

    sx, sy = draw(shot)
    qx, qy = draw(query)
    return Task(sx, sy, qx, qy, [f"class{i}" for i in range(way)])


def photo(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A synthetic 'photo': a coloured disc on a textured background; the colour depends on the seed's class."""
    rng = np.random.default_rng(seed)
    colour = np.array([(220, 40, 40), (40, 60, 220), (40, 180, 60)][seed % 3])
    h, w = size[1], size[0]
    arr = rng.integers(90, 160, (h, w, 3)).astype(np.float64)
    yy, xx = np.mgrid[:h, :w]
    cy, cx, r = h / 2 + rng.integers(-30, 30), w / 2 + rng.integers(-40, 40), rng.integers(50, 90)
    arr[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = colour + rng.normal(0, 10, 3)
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8))


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()
