"""Image loading and the one preprocessing function per backbone input spec.

Every path into a model (training, evaluation, CLI, app uploads) goes through
`load_image` and `preprocess`, so a photo from a phone and an Omniglot PNG are
treated the same way.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from metacore.errors import MetacoreError

# Images above this many pixels are refused before decoding (decompression bombs).
MAX_PIXELS = 40_000_000
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class InputSpec:
    """What a backbone expects: size, channels, stroke inversion, normalisation."""

    size: int = 28
    channels: int = 1
    invert: str = "auto"  # "auto": make strokes bright on a dark ground; "never"
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    crop: float = 0.0  # 0: stretch the whole image to size x size; else keep the centre `crop` of the shorter side
    #                    (all of it for a thumbnail under half the input size)
    body: str = ""  # a frozen pretrained body (metacore.bodies) that turns the pixels into the model's input

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> InputSpec:
        d = dict(d)
        for key in ("mean", "std"):
            if key in d:
                d[key] = tuple(float(v) for v in d[key])
        return cls(**d)


CHARACTER_SPEC = InputSpec()
# EfficientNet-Lite's own normalisation, (pixel - 127) / 128, its resolution (Lite2: 260 px) and ImageNet's usual
# centre crop of 87.5% of the shorter side.
PHOTO_SPEC = InputSpec(
    size=260, channels=3, invert="never", mean=(127 / 255,) * 3, std=(128 / 255,) * 3, crop=0.875,
    body="efficientnet_lite2",
)  # fmt: skip


def open_image(source: str | Path | bytes | BinaryIO, name: str | None = None, draft: int = 0) -> Image.Image:
    """Open and fully decode an image, raising MetacoreError with a clear reason.

    `draft` > 0 lets a JPEG decode at a reduced scale that still covers draft x draft pixels (a phone's
    12-megapixel photo decodes several times faster, with no visible change after resizing).
    """
    label = name or (str(source) if isinstance(source, (str, Path)) else "image")
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise MetacoreError(f"{label}: file not found")
        data = path.read_bytes()
    elif isinstance(source, bytes):
        data = source
    else:
        data = source.read()
    if len(data) == 0:
        raise MetacoreError(f"{label}: the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise MetacoreError(
                    f"{label}: image is too large ({width}x{height} pixels, limit {MAX_PIXELS:,});"
                    " it may be a decompression bomb"
                )
            if draft and image.format == "JPEG":
                image.draft(image.mode, (draft, draft))
            image.load()
    except MetacoreError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise MetacoreError(f"{label}: image is too large; refused as a possible decompression bomb") from None
    except UnidentifiedImageError:
        raise MetacoreError(f"{label}: not an image file (or an unsupported format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise MetacoreError(f"{label}: the image is corrupt or truncated ({exc})") from None
    return image


def to_standard_mode(image: Image.Image) -> Image.Image:
    """Apply EXIF orientation and convert any PIL mode to 'L' or 'RGB'."""
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode in ("L", "RGB"):
        return image
    if mode == "1":
        return image.convert("L")
    if mode.startswith("I") or mode == "F":  # 16/32-bit integer or float greyscale
        arr = np.asarray(image, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        return Image.fromarray(((arr - lo) * scale).astype(np.uint8), mode="L")
    if mode == "P":
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        ground = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(ground, rgba).convert("RGB")
    return image.convert("RGB")  # CMYK, YCbCr, LAB, HSV, ...


def resize_shorter_side(image: Image.Image, side: int) -> Image.Image:
    """The image scaled (bilinear, antialiased when shrinking) so that its shorter side is `side` pixels."""
    scale = side / min(image.size)
    size = (max(side, round(image.width * scale)), max(side, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)


def preprocess(image: Image.Image, spec: InputSpec) -> torch.Tensor:
    """PIL image -> float tensor of shape (channels, size, size) for a backbone."""
    image = to_standard_mode(image)
    image = image.convert("L" if spec.channels == 1 else "RGB")
    if spec.crop:
        width, height = image.size
        # A thumbnail (shorter side under half the input size) has no margin to spare: keep all of its shorter side.
        keep = spec.crop if 2 * min(width, height) >= spec.size else 1.0
        image = resize_shorter_side(image, round(spec.size / keep))
        left, top = (image.width - spec.size) // 2, (image.height - spec.size) // 2
        image = image.crop((left, top, left + spec.size, top + spec.size))
    else:
        image = image.resize((spec.size, spec.size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    arr = np.asarray(image, dtype=np.float32) / 255.0
    tensor = torch.from_numpy(arr.copy())
    tensor = tensor.unsqueeze(0) if spec.channels == 1 else tensor.permute(2, 0, 1)
    if spec.invert == "auto" and tensor.mean() > 0.5:
        tensor = 1.0 - tensor  # dark strokes on a light ground -> bright strokes
    mean = torch.tensor(spec.mean).view(-1, 1, 1)
    std = torch.tensor(spec.std).view(-1, 1, 1)
    return (tensor - mean) / std


def decode_size(spec: InputSpec) -> int:
    """The fewest pixels per side that preprocessing needs (a JPEG may decode at a reduced scale down to it)."""
    return round(spec.size / spec.crop) if spec.crop else spec.size


def load_image(source: str | Path | bytes | BinaryIO, spec: InputSpec, name: str | None = None) -> torch.Tensor:
    """Open, decode and preprocess one image (pixels; `metacore.bodies.load_input` gives the model's input)."""
    return preprocess(open_image(source, name, draft=decode_size(spec)), spec)


def load_pixels(sources: Sequence[str | Path | bytes], spec: InputSpec) -> torch.Tensor:
    """Many images -> one (n, channels, size, size) tensor, decoded in threads (a JPEG decoder releases the GIL:
    on 2 cores, 25 phone photos decode in about half the time)."""
    if not sources:
        return torch.zeros(0, spec.channels, spec.size, spec.size)
    with ThreadPoolExecutor(max_workers=min(len(sources), os.cpu_count() or 1, 8)) as pool:
        return torch.stack(list(pool.map(lambda source: load_image(source, spec), sources)))


def image_files(folder: Path) -> list[Path]:
    """Image files directly inside a folder, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
