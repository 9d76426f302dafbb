"""A corpus of awkward and hostile image files, made here, pushed through every way an image enters metacore.

Each kind is either accepted or refused with one sentence that names the file; the app's upload path, the
CLI's folder reader and the Python API give the same answer; large kinds stay within a memory bound.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from metacore.errors import MetacoreError
from metacore.images import CHARACTER_SPEC, PHOTO_SPEC, decode, load_image, preprocess

ROOT = Path(__file__).resolve().parents[1]
MEMORY_BOUND_MB = 300


def saved(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def photo_like(size: tuple[int, int] = (64, 48)) -> Image.Image:
    rng = np.random.default_rng(sum(size))
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def float_tiff(values: np.ndarray) -> bytes:
    return saved(Image.fromarray(values.astype(np.float32), "F"), "TIFF")


def with_exif_orientation(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return saved(image, "JPEG", exif=exif.tobytes(), quality=95)


def zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("a.txt", "hello")
    return buffer.getvalue()


nan_pixels = np.random.default_rng(0).random((40, 40))
nan_pixels[3, 4] = np.nan
inf_pixels = np.random.default_rng(1).random((40, 40))
inf_pixels[0, 0] = np.inf
palette = Image.new("P", (40, 30), 1)
palette.info["transparency"] = 1
anim = photo_like()

# name -> (file bytes, None if accepted else a piece of the one-line refusal)
SMALL_KINDS: dict[str, tuple[bytes, str | None]] = {
    "empty.png": (b"", "the file is empty"),
    "text.png": (b"just some text, not pixels", "not an image file"),
    "truncated.png": (saved(photo_like(), "PNG")[:60], "corrupt or truncated"),
    "truncated.jpg": (saved(photo_like(), "JPEG")[:200], "corrupt or truncated"),
    "garbage.jpg": (b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4, "not an image file"),
    "bomb.png": (saved(Image.new("1", (30_000, 30_000)), "PNG"), "decompression bomb"),
    "bomb_60mp.png": (saved(Image.new("1", (10_000, 6_000)), "PNG"), "at most 40 MP are read"),
    "strip.png": (saved(Image.new("RGB", (2, 10_000)), "PNG"), "more than 50 times longer"),
    "line.png": (saved(Image.new("L", (40_000, 1)), "PNG"), "more than 50 times longer"),
    "16bit.png": (saved(Image.fromarray(np.arange(1200, dtype=np.uint16).reshape(30, 40) * 50), "PNG"), None),
    "float.tif": (float_tiff(np.random.default_rng(2).random((30, 40))), None),
    "nan.tif": (float_tiff(nan_pixels), "1 pixels are NaN or infinite"),
    "inf.tif": (float_tiff(inf_pixels), "1 pixels are NaN or infinite"),
    "cmyk.jpg": (saved(photo_like().convert("CMYK"), "JPEG"), None),
    "palette.png": (saved(palette, "PNG"), None),
    "la.png": (saved(Image.new("LA", (30, 30), (10, 200)), "PNG"), None),
    "rgba.png": (saved(Image.new("RGBA", (30, 30), (10, 20, 30, 40)), "PNG"), None),
    "anim.gif": (saved(anim, "GIF", save_all=True, append_images=[anim.rotate(90)]), None),
    "pages.tif": (saved(anim, "TIFF", save_all=True, append_images=[anim.rotate(90)]), None),
    "rotated.jpg": (with_exif_orientation(photo_like(), 6), None),
    "photo.webp": (saved(photo_like(), "WEBP"), None),
    "photo.bmp": (saved(photo_like(), "BMP"), None),
    "icon.ico": (saved(photo_like((32, 32)), "ICO"), None),
    "drawing.svg": (b'<svg xmlns="http://www.w3.org/2000/svg"><circle r="4"/></svg>', "not an image file"),
    "fake.heic": (b"\x00\x00\x00\x18ftypheic" + bytes(64), "not an image file"),
    "doc.pdf": (b"%PDF-1.4\n1 0 obj<<>>endobj\n%%EOF", "not an image file"),
    "archive.zip": (zip_bytes(), "not an image file"),
    "art.eps": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "EPS (PostScript) files are not read"),
    "no_extension": (saved(photo_like(), "PNG"), None),
    "UPPER.PNG": (saved(photo_like(), "PNG"), None),
    "jpeg_named.png": (saved(photo_like(), "JPEG"), None),
}


@pytest.mark.parametrize("name", list(SMALL_KINDS))
def test_each_kind_gets_one_answer_from_the_api_and_the_app(name: str) -> None:
    from lab.task import add_uploads

    data, refusal = SMALL_KINDS[name]
    target: list = []
    problems = add_uploads(target, [(name, data)])  # the uploader's path
    if refusal is None:
        assert problems == [] and len(target) == 1
        assert torch.equal(preprocess(target[0].image, PHOTO_SPEC), load_image(data, PHOTO_SPEC, name))
        assert torch.isfinite(load_image(data, CHARACTER_SPEC, name)).all()
    else:
        with pytest.raises(MetacoreError) as api:
            load_image(data, PHOTO_SPEC, name)
        message = str(api.value)
        assert refusal in message and message.startswith(name) and "\n" not in message
        assert problems == [message] and target == []  # the same sentence, and nothing added


def test_a_sideways_phone_photo_is_turned_upright_also_when_shrunk() -> None:
    wide = Image.new("RGB", (1600, 1200), (250, 250, 250))
    wide.paste((200, 0, 0), (0, 0, 800, 1200))  # left half red
    for size in ((1600, 1200), (160, 120)):  # shrunk by decode, and small enough not to be
        picture = decode(with_exif_orientation(wide.resize(size), 6))
        assert picture.height > picture.width  # orientation 6: rotate 90 degrees clockwise to view
        top, bottom = (
            picture.getpixel((picture.width // 2, 2)),
            picture.getpixel((picture.width // 2, picture.height - 3)),
        )
        assert top[0] > 150 and top[1] < 80 and bottom[1] > 200  # the red half is on top


MEASURE = """
import sys, time
sys.path.insert(0, {root!r})
from metacore.errors import MetacoreError
from metacore.images import PHOTO_SPEC, load_image
from lab.task import make_item

def status(field):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field + ":")) / 1024

open("/proc/self/clear_refs", "w").write("5")  # Linux: the peak (VmHWM) restarts from the current size
base = status("VmRSS")
started = time.perf_counter()
try:
    x = load_image({path!r}, PHOTO_SPEC)
    y = make_item("upload", open({path!r}, "rb").read()).image
    outcome = "ok"
except MetacoreError as exc:
    outcome = str(exc)
print(outcome, "|", status("VmHWM") - base, "|", time.perf_counter() - started)
"""

MAKE = {
    "200mp.jpg": "im = Image.new('RGB', (16000, 12000), (200, 180, 160)); im.paste((30, 60, 200), (4000, 3000, 12000, "
    "9000)); im.save(path, quality=90)",
    "48mp.jpg": "Image.new('RGB', (8000, 6000), (90, 120, 150)).save(path, quality=90)",
    "16bit_36mp.png": "Image.fromarray(np.add.outer(np.arange(6000), np.arange(6000)).astype(np.uint16) * 5)"
    ".save(path)",
    "rgba_40mp.png": "Image.new('RGBA', (8000, 5000), (10, 20, 30, 128)).save(path)",
    "palette_35mp.png": "Image.new('P', (7000, 5000), 3).save(path)",
    "float_25mp.tif": "Image.fromarray(np.add.outer(np.arange(5000.0), np.arange(5000.0)).astype(np.float32), 'F')"
    ".save(path, compression='tiff_deflate')",
    "progressive_40mp.jpg": "im = Image.new('RGB', (7300, 5470), (200, 180, 160)); im.paste((30, 60, 200), (1000, "
    "1000, 3000, 3000)); im.save(path, quality=90, progressive=True, subsampling=0)",
    "progressive_200mp.jpg": "im = Image.new('RGB', (16000, 12000), (200, 180, 160)); im.paste((30, 60, 200), (4000, "
    "3000, 12000, 9000)); im.save(path, quality=90, progressive=True)",
    "progressive_cmyk_40mp.jpg": "Image.new('CMYK', (7300, 5470), (10, 20, 30, 40)).save(path, progressive=True)",
    "16mp.webp": "Image.new('RGB', (4000, 4000), (90, 120, 150)).save(path, quality=80)",
    "40mp.webp": "Image.new('RGB', (7300, 5470), (90, 120, 150)).save(path, lossless=True)",
}
REFUSED = {  # read within the bound would need more than it: refused from the header, with the reason
    "progressive_200mp.jpg": "progressive JPEG too large",
    "progressive_cmyk_40mp.jpg": "at most 30 MP of CMYK",
    "40mp.webp": "at most 16 MP are read",
}


@pytest.fixture(scope="module")
def large_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("large")
    script = "import numpy as np, sys\nfrom PIL import Image\n" + "".join(
        f"path = {str(folder / name)!r}\n{code}\n" for name, code in MAKE.items()
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)  # ~600 MB while drawing: not here
    return {name: folder / name for name in MAKE}


@pytest.mark.parametrize("name", list(MAKE))
def test_large_images_are_read_within_the_memory_bound(name: str, large_files: dict[str, Path]) -> None:
    """Peak extra memory of reading one file through the API and the app's upload path, in a fresh process."""
    done = subprocess.run(
        [sys.executable, "-c", MEASURE.format(root=str(ROOT), path=str(large_files[name]))],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-1500:]
    outcome, peak_mb, seconds = (part.strip() for part in done.stdout.strip().splitlines()[-1].split("|"))
    if name in REFUSED:
        assert REFUSED[name] in outcome, outcome
    else:
        assert outcome == "ok", outcome
    # the app's path holds the uploaded bytes as well (the uploader has them in memory anyway)
    allowance = MEMORY_BOUND_MB + large_files[name].stat().st_size / 2**20
    assert float(peak_mb) <= allowance, f"{name}: +{float(peak_mb):.0f} MB"


def test_one_file_gives_the_same_features_in_the_app_and_the_api(tmp_path: Path) -> None:
    """A 4032x3024 phone-sized JPEG: one preprocessing, whichever way it comes in."""
    from lab.task import make_item

    path = tmp_path / "phone.jpg"
    photo_like((4032, 3024)).resize((4032, 3024)).save(path, quality=92)
    api = load_image(path, PHOTO_SPEC)
    app = preprocess(make_item("phone.jpg", path.read_bytes()).image, PHOTO_SPEC)
    assert torch.equal(api, app)


@pytest.fixture(scope="module")
def good_support(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("support")
    for label, (stroke, colour) in (("a", ((6, 20, 34, 20), (200, 30, 30))), ("b", ((20, 6, 20, 34), (30, 30, 200)))):
        (root / label).mkdir()  # a: a horizontal bar, b: a vertical one (flat squares all look alike to the model)
        for i in range(2):
            image = Image.new("RGB", (40, 40), "white")
            ImageDraw.Draw(image).line(stroke, fill=colour, width=5)
            image.rotate(10 * i, fillcolor="white").save(root / label / f"{i}.png")
    return root


def cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    from metacore.__main__ import main

    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("name", list(SMALL_KINDS))
def test_the_cli_gives_each_kind_the_apps_answer(name: str, good_support: Path, tmp_path: Path, capsys) -> None:
    import shutil

    from lab.task import add_uploads

    data, refusal = SMALL_KINDS[name]
    support = tmp_path / "support"
    shutil.copytree(good_support, support)
    (support / "a" / name).write_bytes(data)
    query = support / "b" / "0.png"
    app = add_uploads([], [(name, data)])
    capsys.readouterr()  # what importing the app printed
    code, out, err = cli(["classify", "--support", str(support), str(query), "--json"], capsys)
    if refusal is None:
        assert code == 0 and app == [], err
    else:
        assert code == 2 and len(err.strip().splitlines()) == 1
        assert app[0].removeprefix(name) in err  # the same reason, after the file's name (the CLI gives its path)
        code, out, err = cli(["classify", "--support", str(support), "--skip-bad", str(query)], capsys)
        assert code == 0 and f"warning: skipped {support / 'a' / name}" in err


def test_an_unreadable_query_is_reported_and_the_others_are_classified(good_support: Path, tmp_path, capsys) -> None:
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a picture")
    good = good_support / "a" / "1.png"
    code, out, err = cli(["classify", "--support", str(good_support), str(good), str(bad), "--json"], capsys)
    rows = json.loads(out)
    assert code == 1
    assert rows[0]["file"] == str(good) and rows[0]["predicted"] == "a"
    assert rows[1] == {"file": str(bad), "error": f"{bad}: not an image file (or an unsupported format)"}


def test_the_app_stops_adding_at_its_task_limit_with_one_message() -> None:
    from lab.task import MAX_TASK_IMAGES, add_uploads

    target: list = []
    tiny = saved(Image.new("L", (28, 28), 255), "PNG")
    problems = add_uploads(target, [(f"{i}.png", tiny) for i in range(10_000)], room=5)
    assert len(target) == 5
    assert problems == [
        f"9,995 files not added (5.png, ...): a task holds at most {MAX_TASK_IMAGES} images, so that every "
        "session's task fits in the server's memory"
    ]
