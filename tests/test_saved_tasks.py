"""Saving a task as one zip and opening it again (metacore.task_archive, lab.saved_tasks, the Build page): the same
images, names, model and settings come back; a hostile zip is refused in one sentence and the session keeps its task."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest
from test_app import page, start

from metacore.errors import MetacoreError
from metacore.examples import digits_task
from metacore.task_archive import SavedClass, SavedTask, read_task, write_task


def small_task() -> SavedTask:
    task = digits_task(3, 2, 1, seed=0)
    classes = [SavedClass(name, parts["support"], parts["query"]) for name, parts in task.items()]
    return SavedTask(classes, {"model": "Characters (Conv-4, Omniglot)", "lr": 0.002})


def test_a_saved_task_reads_back_pixel_for_pixel() -> None:
    task = small_task()
    back = read_task(write_task(task))
    assert [c.name for c in back.classes] == [c.name for c in task.classes]
    assert back.settings == task.settings
    for saved, read in zip(task.classes, back.classes):
        for part in ("support", "query"):
            for a, b in zip(getattr(saved, part), getattr(read, part), strict=True):
                assert np.array_equal(np.asarray(a.convert("L")), np.asarray(b.convert("L")))


def zipped(entries: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def with_entries(extra: dict[str, bytes], listed: dict | None = None) -> bytes:
    """A valid saved task's entries, plus `extra` ones, its task.json's classes replaced by `listed` if given."""
    with zipfile.ZipFile(io.BytesIO(write_task(small_task()))) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    if listed is not None:
        record = json.loads(entries["task.json"])
        entries["task.json"] = json.dumps(record | listed).encode()
    return zipped(entries | extra)


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (20, 20), 255).save(buffer, "PNG")
    return buffer.getvalue()


HOSTILE = {
    "not a zip": (b"PK\x03\x04 but nothing after", "not a zip file"),
    "dot-dot entry": (with_entries({"../escape.png": png_bytes()}), "points outside the archive"),
    "absolute entry": (with_entries({"/etc/passwd.png": png_bytes()}), "points outside the archive"),
    "a bomb": (zipped({"task.json": b"{}", "bomb.png": b"\0" * 10_000_000}, zipfile.ZIP_DEFLATED), "zip bomb"),
    "too many files": (zipped({f"{i}.png": b"x" for i in range(450)}), "at most 400 images"),
    "a stray file": (with_entries({"notes.txt": b"hello"}), "'notes.txt' is not one of the task's images"),
    "no index": (zipped({"a.png": png_bytes()}), "no task.json"),
    "bad json": (zipped({"task.json": b"{not json"}), "not valid JSON"),
    "one class": (with_entries({}, {"classes": [{"name": "a", "support": []}]}), "2 to 20 classes"),
    "not an image": (
        zipped(
            {
                "task.json": json.dumps(
                    {
                        "format": "metacore-task/1",
                        "classes": [
                            {"name": "a", "support": ["images/x.png"]},
                            {"name": "b", "support": ["images/y.png"]},
                        ],
                    }
                ).encode(),
                "images/x.png": b"text",
                "images/y.png": png_bytes(),
            }
        ),
        "images/x.png",
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_zip_is_refused_in_one_sentence(case: str) -> None:
    data, message = HOSTILE[case]
    with pytest.raises(MetacoreError) as refused:
        read_task(data)
    said = str(refused.value)
    assert said.startswith("not a saved task: ") and message in said and "\n" not in said


def saved_in_a_session() -> bytes:
    """What the Build page's Save button gives, from a session with the digits example and the lr set to 0.002."""

    def script() -> None:
        import streamlit as st

        from lab.examples import load_example
        from lab.runs import lr_key
        from lab.saved_tasks import task_zip
        from metacore.examples import digits_task

        load_example(digits_task(3, 2, 1, seed=0), "digits 3-way 2-shot")
        st.session_state[lr_key()] = 0.002
        st.session_state.zipped = task_zip()

    at = AppTest.from_function(script, default_timeout=60).run()
    assert not at.exception
    return at.session_state["zipped"]


def test_save_then_open_in_another_session_restores_the_task_the_model_and_the_lr() -> None:
    data = saved_in_a_session()
    at = page(start(), "build")  # a new session, on the built-in characters
    at.file_uploader(key="task_upload_0").set_value(("week1.zip", data, "application/zip")).run()
    assert not at.exception
    classes = at.session_state["classes"]
    assert [c.name for c in classes] == list(digits_task(3, 2, 1, seed=0))
    assert [(len(c.support), len(c.query)) for c in classes] == [(2, 1)] * 3
    assert at.session_state["lr:Characters (Conv-4, Omniglot)"] == 0.002
    assert at.session_state["example"] == "digits 3-way 2-shot (from week1.zip)"
    assert any(s.value.startswith("Opened week1.zip: 3 classes, 6 support and 3 query images") for s in at.success)


def test_a_hostile_zip_on_the_build_page_keeps_the_task() -> None:
    at = page(start(), "build")
    before = [(c.name, len(c.support), len(c.query)) for c in at.session_state["classes"]]
    at.file_uploader(key="task_upload_0").set_value(("evil.zip", HOSTILE["dot-dot entry"][0], "application/zip"))
    at.run()
    assert not at.exception
    assert any("evil.zip: not a saved task: the entry '../escape.png'" in e.value for e in at.error)
    assert [(c.name, len(c.support), len(c.query)) for c in at.session_state["classes"]] == before


def test_a_link_opens_a_bundled_example() -> None:
    at = AppTest.from_file(
        str(__import__("pathlib").Path(__file__).resolve().parents[1] / "app.py"), default_timeout=120
    )
    at.query_params["example"] = "digits"
    at.query_params["way"] = "4"
    at.run()
    assert not at.exception
    assert len(at.session_state["classes"]) == 4
    assert at.session_state["example"] == "digits 4-way 1-shot (from a link)"
    at.query_params["example"] = "nonsense"
    at.run()
    assert any("the lab bundles characters and digits" in w.value for w in at.warning)
    assert len(at.session_state["classes"]) == 4  # the task stays
