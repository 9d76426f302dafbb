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

# Every image is decoded to at most KEEP_SIDE pixels on its shorter side before anything else (the app, the CLI
# and the Python API alike: one file, one preprocessing): more than any model's input needs (photos: 297, then 260).
KEEP_SIDE = 320
# Whatever its encoding, one image may cost at most ~300 MB to decode (tests/test_hostile_images.py measures each).
# Formats decoded in full (PNG, TIFF, ...) are refused above MAX_PIXELS (40 MP of RGBA is 160 MB); Pillow's WebP
# decoder holds ~15 bytes a pixel, so WebP stops at MAX_WEBP_PIXELS. A baseline JPEG decodes at 1/2, 1/4 or 1/8 scale
# (its DCT allows it), so a 200 MP phone photo costs about 10 MB: JPEGs may have up to MAX_JPEG_PIXELS. A progressive
# JPEG decodes at that scale too, but its decoder first gathers every coefficient of the full image (2 bytes a sample,
# before subsampling): at most MAX_PROGRESSIVE_SAMPLES (pixels x channels), 40 MP of RGB.
MAX_PIXELS = 40_000_000
MAX_WEBP_PIXELS = 16_000_000
MAX_JPEG_PIXELS = 260_000_000
MAX_PROGRESSIVE_SAMPLES = 120_000_000
THREADED_FROM_BYTES = 256 * 1024  # files this large on average decode in threads (a JPEG decoder releases the GIL)
MAX_ASPECT = 50  # longer side / shorter side: a thin strip stretched to a square input shows nothing recognisable
IGNORED_FILES = {"thumbs.db", "desktop.ini"}  # what file managers leave in folders (hidden files are ignored too)
NOT_READ = {"EPS": "EPS (PostScript)"}  # Pillow renders these with Ghostscript where installed: not on every machine
Image.MAX_IMAGE_PIXELS = MAX_JPEG_PIXELS  # Pillow's own bomb guard, raised to ours; check_size applies per format


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
    12-megapixel photo decodes several times faster, a 200-megapixel one in a few MB).
    """
    label = name or (str(source) if isinstance(source, (str, Path)) else "image")
    if isinstance(source, (str, Path)):  # read from the file as it decodes: its bytes are never all held at once
        path = Path(source)
        if not path.is_file():
            raise MetacoreError(f"{label}: file not found")
        empty = path.stat().st_size == 0
    else:
        source = io.BytesIO(source) if isinstance(source, bytes) else source
        empty = source.getbuffer().nbytes == 0 if isinstance(source, io.BytesIO) else False
    if empty:
        raise MetacoreError(f"{label}: the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as opened:
                if opened.format in NOT_READ:
                    raise MetacoreError(
                        f"{label}: {NOT_READ[opened.format]} files are not read; export it as PNG or JPEG"
                    )
                check_size(opened, label, draft)
                if draft and opened.format == "JPEG":
                    opened.draft(opened.mode, (draft, draft))
                opened.load()
                image = opened  # leaving the block closes the file; the decoded pixels stay
    except MetacoreError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise MetacoreError(
            f"{label}: image is too large (its header claims over {MAX_JPEG_PIXELS / 1e6:.0f} MP); "
            "refused as a possible decompression bomb"
        ) from None
    except UnidentifiedImageError:
        raise MetacoreError(f"{label}: not an image file (or an unsupported format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise MetacoreError(f"{label}: the image is corrupt or truncated ({exc})") from None
    return image


def check_size(image: Image.Image, label: str, draft: int) -> None:
    """Refuse, from the header alone, images whose decoding would take too much memory or whose shape is absurd."""
    width, height = image.size
    if width < 1 or height < 1:
        raise MetacoreError(f"{label}: the image has no pixels ({width}x{height})")
    pixels = width * height
    reduced = draft and image.format == "JPEG"
    if reduced and pixels > MAX_JPEG_PIXELS:
        raise MetacoreError(
            f"{label}: image is too large ({width}x{height} = {pixels / 1e6:.0f} MP; JPEGs up to "
            f"{MAX_JPEG_PIXELS / 1e6:.0f} MP are read)"
        )
    if reduced and image.info.get("progressive") and pixels * len(image.getbands()) > MAX_PROGRESSIVE_SAMPLES:
        limit = MAX_PROGRESSIVE_SAMPLES / len(image.getbands()) / 1e6
        raise MetacoreError(
            f"{label}: progressive JPEG too large ({width}x{height} = {pixels / 1e6:.0f} MP; its decoder holds the "
            f"whole image before it can scale it down, so at most {limit:.0f} MP of {image.mode} are read; save it "
            "as a baseline JPEG or smaller)"
        )
    full_limit = MAX_WEBP_PIXELS if image.format == "WEBP" else MAX_PIXELS
    if not reduced and pixels > full_limit:
        kind = image.format or "this format"
        raise MetacoreError(
            f"{label}: image is too large ({width}x{height} = {pixels / 1e6:.0f} MP; {kind} images are decoded in "
            f"full, so at most {full_limit / 1e6:.0f} MP are read, which also stops decompression bombs; "
            "save it smaller or as JPEG)"
        )
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise MetacoreError(
            f"{label}: image is {width}x{height} pixels, more than {MAX_ASPECT} times longer than it is wide; "
            "crop it to the object first"
        )


def to_standard_mode(image: Image.Image, label: str = "image") -> Image.Image:
    """Apply EXIF orientation and convert any PIL mode to 'L' or 'RGB'."""
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode in ("L", "RGB"):
        return image
    if mode == "1":
        return image.convert("L")
    if mode.startswith("I") or mode == "F":  # 16/32-bit integer or float greyscale: stretch its range to 0..255
        arr = np.asarray(image, dtype=np.float32)
        if not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).sum())
            raise MetacoreError(f"{label}: {bad:,} pixels are NaN or infinite; the image cannot be shown to a model")
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


def shrink(image: Image.Image, side: int) -> Image.Image:
    """A large image reduced by a whole factor (box filter) to a shorter side of at least 2 * side, band by band,
    so that no full-size copy is ever made (a 16-bit or palette PNG would otherwise be converted whole)."""
    factor = min(image.size) // (2 * side)
    if factor < 2:
        return image
    mode = {"1": "L", "P": "RGBA", "PA": "RGBA"}.get(image.mode, "I" if image.mode.startswith("I;") else image.mode)
    width, height = image.size[0] // factor * factor, image.size[1] // factor * factor
    out = Image.new(mode, (width // factor, height // factor))
    rows = factor * max(1, 2_000_000 // (width * factor))  # bands of about 2 megapixels
    for top in range(0, height, rows):
        band = image.crop((0, top, width, min(top + rows, height)))
        out.paste((band if band.mode == mode else band.convert(mode)).reduce(factor), (0, top // factor))
    return out


TRANSPOSES = {  # EXIF orientation -> the transpose that makes the picture upright (as ImageOps.exif_transpose)
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def exif_orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(0x0112, 1))
    except Exception:  # a damaged EXIF block: treat the picture as upright, as exif_transpose does
        return 1


def decode(source: str | Path | bytes | BinaryIO | Image.Image, name: str | None = None) -> Image.Image:
    """Any image -> upright 'L' or 'RGB' with its shorter side at most KEEP_SIDE pixels.

    The one way every image enters metacore (uploads, folders, data sets), so the same file gives the
    same pixels, and so the same features, in the app, the CLI and the Python API. Memory is bounded
    by the header checks of `open_image` and by shrinking before any mode conversion.
    """
    label = name or (str(source) if isinstance(source, (str, Path)) else "image")
    if isinstance(source, Image.Image):
        check_size(source, label, draft=0)
        image = source
    else:
        image = open_image(source, name, draft=KEEP_SIDE)
    small = shrink(image, KEEP_SIDE)
    if small is not image and (orientation := exif_orientation(image)) in TRANSPOSES:  # the copy has no EXIF
        small = small.transpose(TRANSPOSES[orientation])
    image = to_standard_mode(small, label)
    return resize_shorter_side(image, KEEP_SIDE) if min(image.size) > KEEP_SIDE else image


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


def load_image(source: str | Path | bytes | BinaryIO, spec: InputSpec, name: str | None = None) -> torch.Tensor:
    """Decode and preprocess one image (pixels; `metacore.bodies.load_input` gives the model's input)."""
    return preprocess(decode(source, name), spec)


def load_pixels(sources: Sequence[str | Path | bytes], spec: InputSpec) -> torch.Tensor:
    """Many images -> one (n, channels, size, size) tensor, decoded in threads (a JPEG decoder releases the GIL:
    on 2 cores, 25 phone photos decode in about half the time). The first unreadable one raises."""
    if not sources:
        return torch.zeros(0, spec.channels, spec.size, spec.size)
    results = try_load_pixels(sources, spec)
    for result in results:
        if isinstance(result, MetacoreError):
            raise result
    return torch.stack(results)


def try_load_pixels(sources: Sequence[str | Path | bytes], spec: InputSpec) -> list[torch.Tensor | MetacoreError]:
    """Each image's pixels, or the MetacoreError that says why it cannot be read; decoded in threads."""

    def attempt(source: str | Path | bytes) -> torch.Tensor | MetacoreError:
        try:
            return load_image(source, spec)
        except MetacoreError as exc:
            return exc

    if not sources:
        return []
    if sum(map(source_bytes, sources)) < THREADED_FROM_BYTES * len(sources):
        return [attempt(source) for source in sources]  # small files: threads only add GIL contention (3.6x slower)
    with ThreadPoolExecutor(max_workers=min(len(sources), os.cpu_count() or 1, 8)) as pool:
        return list(pool.map(attempt, sources))


def source_bytes(source: str | Path | bytes) -> int:
    """A source's size in bytes (0 for a path that is not a file: `load_image` says why)."""
    if isinstance(source, bytes):
        return len(source)
    try:
        return Path(source).stat().st_size
    except OSError:
        return 0


def is_candidate(path: Path) -> bool:
    """Whether a file in a folder is offered to `decode`: every file but hidden ones and file-manager litter.

    Not judged by its suffix: a JPEG named .png, or a file with none, is read; a PDF named .jpg is refused
    by `decode` with its reason, the same sentence the app's uploader shows for it.
    """
    return path.is_file() and not path.name.startswith(".") and path.name.lower() not in IGNORED_FILES


def image_files(folder: Path, recursive: bool = False) -> list[Path]:
    """The files in a folder (and its subfolders, if `recursive`) that `decode` is asked to read, sorted."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    hidden = lambda p: any(part.startswith(".") for part in p.relative_to(folder).parts)  # noqa: E731
    return sorted(p for p in found if is_candidate(p) and not hidden(p))
