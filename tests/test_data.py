"""Image decoding, preprocessing and episode sampling, on files the tests make themselves."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import OMNIGLOT, needs_omniglot
from metacore.data import EpisodeSampler, augment, open_dataset, parse_range
from metacore.errors import MetacoreError
from metacore.images import CHARACTER_SPEC, InputSpec, load_image, open_image

RGB_SPEC = InputSpec(size=16, channels=3, invert="never", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def png_bytes(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def character(mode: str = "L") -> Image.Image:
    """A dark vertical stroke on a light ground, like an Omniglot scan."""
    arr = np.full((40, 40), 255, np.uint8)
    arr[5:35, 18:22] = 0
    return Image.fromarray(arr).convert(mode) if mode != "L" else Image.fromarray(arr)


@pytest.mark.parametrize("mode", ["L", "1", "P", "RGB", "RGBA", "LA", "CMYK", "I;16", "I", "F"])
def test_every_pil_mode_gives_the_same_character_tensor(mode: str) -> None:
    reference = load_image(png_bytes(character()), CHARACTER_SPEC)
    image = character()
    if mode == "I;16":
        image = Image.fromarray(np.asarray(image).astype(np.uint16) * 257)
    elif mode != "L":
        image = image.convert(mode)
    data = png_bytes(image, "TIFF") if mode in ("CMYK", "I", "F") else png_bytes(image)
    tensor = load_image(data, CHARACTER_SPEC)
    assert tensor.shape == (1, 28, 28)
    assert torch.allclose(tensor, reference, atol=0.02), mode
    # strokes are bright after the automatic inversion
    assert tensor[0, 14, 14] > 0.5 and tensor[0, 2, 2] < 0.1


def test_transparent_png_composites_on_white() -> None:
    arr = np.zeros((40, 40, 4), np.uint8)
    arr[5:35, 18:22] = (0, 0, 0, 255)  # opaque black stroke, transparent elsewhere
    tensor = load_image(png_bytes(Image.fromarray(arr, "RGBA")), CHARACTER_SPEC)
    reference = load_image(png_bytes(character()), CHARACTER_SPEC)
    assert torch.allclose(tensor, reference, atol=0.02)


def test_exif_orientation_is_applied() -> None:
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = 255  # left half white
    image = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    rotated = load_image(png_bytes(image, "JPEG", exif=exif.tobytes(), quality=95), RGB_SPEC)
    upright = load_image(png_bytes(image.transpose(Image.Transpose.ROTATE_270), "JPEG", quality=95), RGB_SPEC)
    assert torch.allclose(rotated, upright, atol=0.15)
    assert rotated[0, 2, 8] > rotated[0, 13, 8]  # white half is on top after rotation


def test_rgb_spec_normalises() -> None:
    tensor = load_image(png_bytes(Image.new("RGB", (30, 20), (255, 128, 0))), RGB_SPEC)
    assert tensor.shape == (3, 16, 16)
    assert torch.allclose(tensor[:, 0, 0], torch.tensor([2.0, 0.0078, -2.0]), atol=0.01)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"this is not an image at all", "not an image"),
        (png_bytes(character())[:60], "corrupt or truncated"),
    ],
)
def test_bad_files_get_clear_messages(data: bytes, message: str) -> None:
    with pytest.raises(MetacoreError, match=message):
        open_image(data, "upload.png")


def test_decompression_bomb_is_refused() -> None:
    bomb = png_bytes(Image.new("1", (10_000, 10_000)))  # 100 MP, a few KB on disk
    assert len(bomb) < 100_000
    with pytest.raises(MetacoreError, match="too large"):
        open_image(bomb, "bomb.png")


def make_class_folders(root: Path, counts: dict[str, int], size: int = 28) -> Path:
    rng = np.random.default_rng(0)
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def test_sampler_is_seeded_and_shaped(tmp_path: Path) -> None:
    make_class_folders(tmp_path / "toy", {f"c{i}": 6 for i in range(5)})
    dataset = open_dataset(tmp_path, "toy")
    a = EpisodeSampler(dataset, 3, 2, 3, seed=7).sample()
    b = EpisodeSampler(dataset, 3, 2, 3, seed=7).sample()
    c = EpisodeSampler(dataset, 3, 2, 3, seed=8).sample()
    assert a.support_x.shape == (6, 1, 28, 28) and a.query_x.shape == (9, 1, 28, 28)
    assert a.support_y.tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.equal(a.support_x, b.support_x) and a.classes == b.classes
    assert not (torch.equal(a.support_x, c.support_x) and a.classes == c.classes)
    # support and query images of one class are distinct draws
    for k in range(3):
        for s in a.support_x[a.support_y == k]:
            assert not any(torch.equal(s, q) for q in a.query_x[a.query_y == k])


def test_image_slices_split_each_class_into_disjoint_parts(tmp_path: Path) -> None:
    make_class_folders(tmp_path / "toy", {"a": 6, "b": 5})
    first = open_dataset(tmp_path, "toy", images="0:3")
    rest = open_dataset(tmp_path, "toy", images="3:")
    assert [len(c.files) for c in first.classes] == [3, 3] and [len(c.files) for c in rest.classes] == [3, 2]
    for one, other in zip(first.classes, rest.classes):
        assert not set(one.files) & set(other.files)


def test_photo_crop_keeps_the_centre_of_the_shorter_side() -> None:
    spec = InputSpec(size=8, channels=3, invert="never", mean=(0.0,) * 3, std=(1.0,) * 3, crop=0.5)
    arr = np.zeros((16, 32, 3), np.uint8)  # wide image: a white centre square, red everywhere else
    arr[..., 0] = 255
    arr[4:12, 12:20] = 255
    tensor = load_image(png_bytes(Image.fromarray(arr)), spec)
    assert tensor.shape == (3, 8, 8)
    assert tensor[1:].min() > 0.9  # only the white centre is left (green and blue channels high)


def test_a_thumbnail_is_not_cropped() -> None:
    spec = InputSpec(size=8, channels=3, invert="never", mean=(0.0,) * 3, std=(1.0,) * 3, crop=0.5)
    arr = np.full((3, 3, 3), 255, np.uint8)
    arr[0, 0] = 0  # a black corner pixel survives: the 3x3 image (under half of 8) is used whole
    tensor = load_image(png_bytes(Image.fromarray(arr)), spec)
    assert tensor.shape == (3, 8, 8) and tensor[:, 0, 0].max() < 0.3  # cropped, it would be 0.57


def test_sampler_errors(tmp_path: Path) -> None:
    make_class_folders(tmp_path / "toy", {"a": 3, "b": 3, "c": 2})
    dataset = open_dataset(tmp_path, "toy")
    with pytest.raises(MetacoreError, match="larger than the number of classes"):
        EpisodeSampler(dataset, 4, 1, 1)
    with pytest.raises(MetacoreError, match="at least shot\\+query = 4"):
        EpisodeSampler(dataset, 2, 1, 3)
    (tmp_path / "toy" / "empty").mkdir()
    with pytest.raises(MetacoreError, match="'empty' .* has no images"):
        open_dataset(tmp_path, "toy")
    with pytest.raises(MetacoreError, match="data root not found"):
        open_dataset(tmp_path / "missing", "toy")
    with pytest.raises(MetacoreError, match="range"):
        parse_range("five", "way")


def test_omniglot_layout_and_rotations(tmp_path: Path) -> None:
    base = tmp_path / "omniglot-py" / "images_background"
    make_class_folders(base / "Alpha", {"character01": 4, "character02": 4})
    make_class_folders(base / "Beta", {"character01": 4})
    plain = open_dataset(tmp_path, "omniglot", "background")
    assert plain.names == ["Alpha/character01", "Alpha/character02", "Beta/character01"]
    rotated = open_dataset(tmp_path, "omniglot", "background", rotations=True)
    assert len(rotated) == 12
    assert torch.equal(rotated.images(1), torch.rot90(plain.images(0), 1, dims=(2, 3)))
    train, val = rotated.split_held_out(0.3)
    assert {c.files for c in train.classes}.isdisjoint({c.files for c in val.classes})
    with pytest.raises(MetacoreError, match="Omniglot not found"):
        open_dataset(tmp_path, "omniglot", "evaluation")


@needs_omniglot
def test_real_omniglot_splits() -> None:
    background = open_dataset(OMNIGLOT.parent, "omniglot", "background")
    evaluation = open_dataset(OMNIGLOT.parent, "omniglot", "evaluation")
    assert len(background) == 964 and len(evaluation) == 659
    task = EpisodeSampler(evaluation, 5, 1, 15, seed=0).sample()
    assert task.query_x.shape == (75, 1, 28, 28)
    # characters are bright strokes on a dark ground after preprocessing
    assert task.support_x.mean() < 0.3


def test_augment_distorts_each_image_its_own_way_and_repeats_with_its_seed() -> None:
    images = torch.zeros(8, 1, 28, 28)
    images[:, :, 8:20, 12:16] = 1.0  # one bar, the same in every image
    out = augment(images, torch.Generator().manual_seed(0))
    again = augment(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and torch.equal(out, again)
    assert all(not torch.allclose(out[i], images[i], atol=1e-3) for i in range(8))  # every image moved
    assert not torch.allclose(out[0], out[1], atol=1e-3)  # each its own way
    assert torch.equal(augment(images, torch.Generator(), shift=0, degrees=0, scale=0), images)  # identity map
    ground = torch.full((2, 1, 28, 28), -0.5)
    assert torch.allclose(augment(ground, torch.Generator().manual_seed(1)), ground)  # edges repeat the ground
