"""`metacore export --support`: a task's adapted model as ONNX + a standalone predict.py that agrees with `classify`.

predict.py runs in a subprocess where `import torch` (and metacore) fails, so it cannot lean on them unnoticed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import photo
from metacore.__main__ import main
from metacore.examples import sample_characters_task
from metacore.paths import PHOTO_MODEL

WITHOUT_TORCH = (
    "import runpy, sys; sys.modules['torch'] = None; sys.modules['metacore'] = None; "
    "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


def run_predict(folder: Path, files: list[Path]) -> tuple[int, list[list[str]], str]:
    """predict.py from the export, in a fresh interpreter without torch: (exit code, its rows, its stderr)."""
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCH, str(folder / "predict.py"), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=folder.parent,  # not the repository: nothing of metacore on the path
    )
    return done.returncode, [line.split("\t") for line in done.stdout.splitlines()], done.stderr


def classify_json(capsys, args: list[str]) -> list[dict]:
    capsys.readouterr()
    assert main(["classify", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def characters(tmp_path: Path) -> tuple[Path, list[Path]]:
    """The built-in example as a support folder (1 shot) and 25 query files."""
    support, queries = tmp_path / "support", []
    for name, parts in sample_characters_task(way=5, shot=1, query=5, seed=0).items():
        (support / name).mkdir(parents=True)
        parts["support"][0].save(support / name / "1.png")
        for i, image in enumerate(parts["query"]):
            queries.append(tmp_path / f"{name}_{i}.png")
            image.save(queries[-1])
    return support, queries


def test_exported_task_runs_without_torch_and_agrees_with_classify(tmp_path: Path, capsys) -> None:
    support, queries = characters(tmp_path)
    out = tmp_path / "export"
    assert main(["export", "--support", str(support), "--out", str(out)]) == 0
    assert {f.name for f in out.iterdir()} == {"model.onnx", "model.pt2", "predict.py"}

    code, rows, stderr = run_predict(out, queries)
    assert code == 0, stderr
    expected = classify_json(capsys, ["--support", str(support), *map(str, queries)])
    assert [row[0] for row in rows] == [r["file"] for r in expected]
    assert [row[1] for row in rows] == [r["predicted"] for r in expected]  # top-1: the same on every image
    for row, r in zip(rows, expected):  # the same preprocessing: the same probabilities
        assert float(row[2]) == pytest.approx(r["probabilities"][r["predicted"]], abs=1e-4)


def test_the_pt2_export_gives_the_onnx_models_probabilities(tmp_path: Path) -> None:
    import runpy

    import numpy as np
    import onnxruntime
    import torch

    support, queries = characters(tmp_path)
    out = tmp_path / "export"
    assert main(["export", "--support", str(support), "--out", str(out)]) == 0
    extra = {"classes": "", "input": ""}
    program = torch.export.load(str(out / "model.pt2"), extra_files=extra)
    classes, spec = json.loads(extra["classes"]), json.loads(extra["input"])
    assert classes == sorted(p.name for p in support.iterdir())
    pixels = np.stack([runpy.run_path(str(out / "predict.py"))["pixels"](str(q), spec) for q in queries])
    with torch.no_grad():
        from_pt2 = program.module()(torch.from_numpy(pixels)).numpy()
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    [from_onnx] = session.run(None, {"image": pixels})
    assert from_pt2.shape == (len(queries), len(classes))
    np.testing.assert_allclose(from_pt2, from_onnx, atol=1e-5)


def test_an_unreadable_image_is_named_and_the_others_are_classified(tmp_path: Path) -> None:
    support, queries = characters(tmp_path)
    out = tmp_path / "export"
    assert main(["export", "--support", str(support), "--out", str(out)]) == 0
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    code, rows, stderr = run_predict(out, [queries[0], broken])
    assert code == 1 and len(rows) == 1 and "broken.png: cannot be read as an image" in stderr


@pytest.mark.skipif(not PHOTO_MODEL.is_file(), reason="the photo model is not in this checkout")
def test_the_photo_models_task_exports_with_its_body(tmp_path: Path, capsys) -> None:
    support, queries = tmp_path / "support", []
    for label, name in enumerate(["red", "blue", "green"]):
        (support / name).mkdir(parents=True)
        for i in range(2):
            photo(label + 3 * i).save(support / name / f"{i}.jpg")
        queries.append(tmp_path / f"{name}.png")
        photo(label + 30).save(queries[-1])
    out = tmp_path / "export"
    assert main(["export", str(PHOTO_MODEL), "--support", str(support), "--out", str(out)]) == 0
    code, rows, stderr = run_predict(out, queries)
    assert code == 0, stderr
    expected = classify_json(capsys, ["--checkpoint", str(PHOTO_MODEL), "--support", str(support), *map(str, queries)])
    assert [row[1] for row in rows] == [r["predicted"] for r in expected]
    for row, r in zip(rows, expected):
        assert float(row[2]) == pytest.approx(r["probabilities"][r["predicted"]], abs=1e-4)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "x.onnx", "--support", "S"], "--out is a folder for a task"),
        (["models/photo_lite2.pt", "--checkpoint", "other.pt", "--out", "x"], "two checkpoints given"),
        (["--out", "x"], "--support is needed"),
    ],
)
def test_export_mistakes_get_one_line(args: list[str], message: str, capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    args = [str(tmp_path / a) if a in ("x", "x.onnx") else a for a in args]
    assert main(["export", *args]) == 2
    assert message in capsys.readouterr().err


def test_the_classify_page_exports_the_adapted_task_as_a_zip(tmp_path: Path) -> None:
    import io
    import zipfile

    from test_app import button, page, start

    at = page(start(), "classify")
    button(at, "Prepare the export").click().run()
    assert not at.exception
    key, data = at.session_state["export_zip"]
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path)
    assert {f"few_shot_model/{n}" for n in ("model.onnx", "model.pt2", "predict.py", "README.txt")} == names
    classes = [c.name for c in at.session_state["classes"]]
    query = tmp_path / "query.png"
    at.session_state["classes"][2].query[0].image.save(query)
    code, rows, stderr = run_predict(tmp_path / "few_shot_model", [query])
    assert code == 0, stderr
    assert rows[0][1] == classes[2]  # a query image of the third class (the adapted model gets it right)
