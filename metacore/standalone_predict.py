"""Classify images with an exported few-shot task: needs only onnxruntime, numpy and pillow (no torch, no metacore).

    python predict.py photo1.jpg photo2.png ...

prints one line per image: `file<TAB>class<TAB>probability`. `metacore export --support` writes this file beside
`model.onnx`; the model holds the class names and how it wants its pixels (size, crop, channels) in its metadata.
The preprocessing here is metacore's own (`metacore.images.preprocess`): EXIF orientation, alpha on white, the
shorter side scaled (bilinear) and the centre cropped, or the whole image stretched; the network does the rest
(scaling to 0..1, stroke inversion, normalisation, the frozen body, the adapted head, softmax).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime
from PIL import Image, ImageOps

HERE = Path(__file__).resolve().parent


def standard_mode(image: Image.Image) -> Image.Image:
    """EXIF orientation applied; any PIL mode as 'L' or 'RGB' (transparency on white, wide greys stretched). A copy
    of `metacore.images.to_standard_mode` on purpose (this file must run without metacore); tests/test_export.py
    keeps the two in step (the same probabilities as `classify`)."""
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode in ("L", "RGB"):
        return image
    if mode == "1":
        return image.convert("L")
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(image, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        return Image.fromarray(((arr - lo) * scale).astype(np.uint8), mode="L")
    if mode == "P":
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        ground = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(ground, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def pixels(path: str, spec: dict) -> np.ndarray:
    """One image as the network's input: uint8, (size, size, channels)."""
    with Image.open(path) as opened:
        image = standard_mode(opened)
        image = image.convert("L" if spec["channels"] == 1 else "RGB")
    size, crop = spec["size"], spec["crop"]
    if crop:
        keep = crop if 2 * min(image.size) >= size else 1.0  # a thumbnail keeps all of its shorter side
        side = round(size / keep)
        scale = side / min(image.size)
        shape = (max(side, round(image.width * scale)), max(side, round(image.height * scale)))
        image = image.resize(shape, Image.Resampling.BILINEAR, reducing_gap=2.0)
        left, top = (image.width - size) // 2, (image.height - size) // 2
        image = image.crop((left, top, left + size, top + size))
    else:
        image = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    arr = np.asarray(image, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def main(files: list[str]) -> int:
    if not files:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    session = onnxruntime.InferenceSession(str(HERE / "model.onnx"), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    classes, spec = json.loads(meta["classes"]), json.loads(meta["input"])
    failed = 0
    for path in files:
        try:
            batch = pixels(path, spec)[None]
        except (OSError, ValueError) as exc:  # not an image, unreadable, truncated
            print(f"error: {path}: cannot be read as an image ({exc})", file=sys.stderr)
            failed += 1
            continue
        [probabilities] = session.run(None, {"image": batch})
        best = int(probabilities[0].argmax())
        print(f"{path}\t{classes[best]}\t{probabilities[0][best]:.6f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
