"""Your own model in the lab (AppTest): uploaded in the sidebar, used by every page, checked on the Check page."""

from __future__ import annotations

import io
import pickle
import time
import zipfile
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest
from test_check import Body, Boom, coloured_folders, small_resnet

APP = str(Path(__file__).resolve().parents[1] / "app.py")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> bytes:
    """A feature extractor exported with torch.export at a fixed 64 px input (the lab reads that size)."""
    path = tmp_path_factory.mktemp("yours") / "mine.pt2"
    body = Body(small_resnet()).eval()
    batch = torch.export.Dim("batch", min=1, max=256)
    program = torch.export.export(body, (torch.randn(2, 3, 64, 64),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return path.read_bytes()


def upload(at: AppTest, name: str, data: bytes) -> AppTest:
    return at.sidebar.file_uploader[0].set_value((name, data, "application/octet-stream")).run()


def run_the_check(at: AppTest, seconds: float = 120) -> None:
    """Press "Run the check", wait for its thread, and redraw the page with the result (no error)."""
    next(b for b in at.button if b.label == "Run the check").click().run()
    started = time.monotonic()
    while at.session_state["check_run"].running and time.monotonic() - started < seconds:
        time.sleep(0.5)
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]


def test_an_uploaded_model_is_picked_and_every_page_uses_it(exported: bytes) -> None:
    at = upload(AppTest.from_file(APP, default_timeout=180).run(), "mine.pt2", exported)
    assert not at.exception
    assert at.session_state["model_label"] == "Your model: mine.pt2"
    assert any("input 64 px RGB" in c.value and "read from the file" in c.value for c in at.sidebar.caption)
    for name in ("build", "adapt", "features", "classify"):
        at.switch_page(f"pages/{name}.py").run()
        assert not at.exception, name
        assert at.session_state["model_label"] == "Your model: mine.pt2", name
        if name == "adapt":
            frozen, whole, protonet = at.selectbox(key="init").options  # a .pt2 is a torch module: all three
            assert "features (frozen)" in frozen and "whole network" in whole and "ProtoNet" in protonet
            next(b for b in at.button if b.label == "Step").click().run()
            records = at.session_state["runs"]["maml"]["records"]
            assert [r["step"] for r in records] == [0, 1]
            assert records[0]["support_acc"] == pytest.approx(1 / len(at.session_state["classes"]))  # zero head
            assert records[1]["support_loss"] < records[0]["support_loss"]  # the head learned in its step
            shift = records[1]["shift"]
            assert shift["head"] > 0 and shift["center"] == 0 and shift["scale"] == 0  # only the head moves


def test_a_bad_upload_says_why_and_keeps_the_task_and_the_model(tmp_path: Path) -> None:
    at = AppTest.from_file(APP, default_timeout=180).run()
    before = [(c.name, len(c.support)) for c in at.session_state["classes"]]
    at = upload(at, "evil.pkl", pickle.dumps(Boom()))
    assert not at.exception
    assert any("Python pickle" in e.value for e in at.sidebar.error)
    assert at.sidebar.radio[0].value.startswith("Characters")
    assert [(c.name, len(c.support)) for c in at.session_state["classes"]] == before
    assert not Path("/tmp/metacore-pickle-ran").exists()


def test_the_check_page_runs_on_a_zip_of_class_folders(exported: bytes, tmp_path: Path) -> None:
    folders = coloured_folders(tmp_path / "set", classes=5, per_class=8)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for f in sorted(folders.rglob("*.png")):
            archive.write(f, f"set/{f.relative_to(folders)}")
    at = upload(AppTest.from_file(APP, default_timeout=180).run(), "mine.pt2", exported)
    at.switch_page("pages/check.py").run()
    at.radio(key="ck_src").set_value("Upload a .zip of class folders").run()
    at.file_uploader(key="ck_zip").set_value(("set.zip", buffer.getvalue(), "application/zip")).run()
    at.select_slider(key="ck_episodes").set_value(100).run()
    at.toggle(key="ck_baselines").set_value(False).run()
    run_the_check(at)
    assert any("40 images" in m.value and "5 classes" in m.value for m in at.markdown)
    table = at.dataframe[0].value
    assert list(table["features"]) == ["mine.pt2", "raw pixels (32x32)"]
    assert len(at.get("plotly_chart")) == 3 and len(at.get("download_button")) == 2


def test_the_check_page_takes_a_features_file_without_a_model(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    centres = 3 * torch.randn(5, 8, generator=g)
    rows = [f"c{k}," + ",".join(f"{v:.4f}" for v in (centres[k] + torch.randn(8, generator=g)).tolist())
            for k in range(5) for _ in range(7)]  # fmt: skip
    csv = ("label," + ",".join(f"f{i}" for i in range(8)) + "\n" + "\n".join(rows)).encode()
    at = AppTest.from_file(APP, default_timeout=180).run()
    at.switch_page("pages/check.py").run()
    at.radio(key="ck_src").set_value("A features file (no model)").run()
    at.file_uploader(key="ck_features").set_value(("mine.csv", csv, "text/csv")).run()
    assert any("35 rows of 8 features, 5 classes" in c.value for c in at.caption)
    at.select_slider(key="ck_episodes").set_value(100).run()
    run_the_check(at)
    assert list(at.dataframe[0].value["features"]) == ["mine.csv"]  # no images: no baselines
    assert len(at.get("plotly_chart")) == 3  # accuracy, the zero head's curve, the map


def test_your_whole_network_adapts_step_by_step_on_the_adapt_page(exported: bytes) -> None:
    at = upload(AppTest.from_file(APP, default_timeout=300).run(), "mine.pt2", exported)
    at.switch_page("pages/adapt.py").run()
    at.selectbox(key="init").set_value("whole").run()
    assert any("Every layer of your network adapts" in c.value for c in at.caption)
    for _ in range(2):
        next(b for b in at.button if b.label == "Step").click().run()
    assert not at.exception
    records = at.session_state["runs"]["whole"]["records"]
    assert [r["step"] for r in records] == [0, 1, 2]
    assert records[2]["support_loss"] < records[1]["support_loss"] < records[0]["support_loss"]
    assert records[1]["shift"]["net"] == 0  # a zero head passes no gradient back: step 1 moves the head only
    assert records[2]["shift"]["net"] > 0 and records[2]["shift"]["center"] == 0  # then every layer moves
    at.switch_page("pages/features.py").run()
    assert not at.exception and any("frozen" in c.value for c in at.caption)  # the frozen view's adaptation
