"""Saving the session's task (images, class names, the picked model and its settings) as one zip, and opening one."""

from __future__ import annotations

import re

import streamlit as st

from lab.memo import remembered
from lab.models import available_models, model_label, takes_drawings
from lab.runs import lr_key, reset_runs, run_steps_key
from lab.task import Item, TaskClass, session_classes
from metacore.task_archive import SavedClass, SavedTask, read_task, write_task


def task_zip() -> bytes:
    """The session's task and the settings it is used with, as a zip (`metacore.task_archive`)."""
    label = model_label()
    settings = {
        "model": label,
        "photos": not takes_drawings(),
        "example": st.session_state.get("example"),
        "lr": st.session_state.get(lr_key()),
        "run_steps": st.session_state.get(run_steps_key()),
    }
    classes = [
        SavedClass(c.name, [i.as_png() for i in c.support], [i.as_png() for i in c.query]) for c in session_classes()
    ]
    return write_task(SavedTask(classes, {k: v for k, v in settings.items() if v is not None}))


def saved_task_zip() -> bytes:
    """`task_zip()`, made again only when the task or its settings changed (the Build page reruns on every click)."""
    classes = session_classes()
    key = (
        tuple((c.name, tuple(map(id, c.support)), tuple(map(id, c.query))) for c in classes),
        model_label(),
        st.session_state.get(lr_key()),
        st.session_state.get(run_steps_key()),
        st.session_state.get("example"),
    )
    return remembered("task_zip", key, task_zip, keep=[list(c.support + c.query) for c in classes])


def open_task(data: bytes, file_name: str) -> str:
    """Replace the session's task with a saved one; returns what was restored, in a sentence. Raises
    MetacoreError (one sentence) and leaves the session as it was when the file is not a saved task."""
    saved = read_task(data)  # everything is checked and decoded before the session changes
    st.session_state.classes = [
        TaskClass(
            c.name,
            [Item(f"{c.name} support {i + 1}", image) for i, image in enumerate(c.support)],
            [Item(f"{c.name} query {i + 1}", image) for i, image in enumerate(c.query)],
        )
        for c in saved.classes
    ]
    settings = saved.settings
    example = re.sub(r" \(from [^()]*\)$", "", str(settings.get("example") or "saved task"))  # not nested on resave
    st.session_state.example = f"{example} (from {file_name})"
    st.session_state.example_photos = settings.get("photos")
    reset_runs()
    said = f"Opened {file_name}: {len(saved.classes)} classes, {sum(len(c.support) for c in saved.classes)} support"
    said += f" and {sum(len(c.query) for c in saved.classes)} query images"
    label = settings.get("model")
    if label in available_models():
        st.session_state.model_label = label
        st.session_state.new_pick = True  # the sidebar's radio starts again, at this model
        for key, value, low, high in (
            (lr_key(), settings.get("lr"), 1e-5, 10.0),  # the widgets' ranges
            (run_steps_key(), settings.get("run_steps"), 1, 50),
        ):
            if isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high:
                st.session_state[key] = type(low)(value)
        return said + f", with the model it was saved with ({label}) and its settings."
    if label:
        return said + f". It was saved with '{label}', which this session does not have: the picked model is used."
    return said + "."
