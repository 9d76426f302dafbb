"""The sidebar every page shares: the model picker, the device and the picked model's card."""

from __future__ import annotations

import json
from pathlib import Path

import streamlit as st

from lab.models import available_models, model_label, model_path, picked_card, picked_yours, shared_model
from lab.runs import lr_key, reset_runs, run_steps_key
from lab.text import adapts_plainly
from lab.yours import MAX_MB, YourModel, add, describe, loaded, save_upload, your_models
from metacore.errors import MetacoreError
from metacore.yours import restated


def leave_the_legacy_pages_mode() -> None:
    """Streamlit (1.67) runs a `pages/` folder as a legacy multipage app until some session has called
    `st.navigation`: a fresh server's first visit through a page's own address (a bookmark of /adapt) got file names
    for a menu and no `app.py` (no wide layout), and so did every visit after it until someone opened /. Here that
    mode is switched off, as `st.navigation` does, and a session's first page run again, now framed by `app.py`
    (a later run could carry a click that a rerun would drop; AppTest starts each run in that mode)."""
    from streamlit.runtime.pages_manager import PagesManager

    first_run = "frame_seen" not in st.session_state
    st.session_state.frame_seen = True
    if getattr(PagesManager, "uses_pages_directory", None):
        PagesManager.uses_pages_directory = False
        if first_run:
            st.rerun()


def sidebar() -> None:
    """Drawn by each page first (AppTest runs a switched-to page without app.py, so the frame is per page)."""
    leave_the_legacy_pages_mode()
    loading = st.empty()  # the top of the page: where the model's loading is said, not in the sidebar
    with st.sidebar:
        if run := st.session_state.get("live_run"):
            run.seen()  # a meta-training run stops once its session has been gone for a while
        models = list(available_models())
        if st.session_state.pop("new_pick", False):  # a model just uploaded: the radio starts again, at it
            st.session_state.pop("model_picker", None)
        label = st.radio("Model", models, index=models.index(model_label()), key="model_picker")
        if label != model_label():
            pick(label)
        your_model_upload()
        with loading.container(), st.spinner(f"Loading the model: {model_label()} ..."):
            try:
                learner, meta = shared_model()
                problem = None
            except MetacoreError as exc:
                problem = str(exc)
        if problem:
            st.error(f"Model could not be loaded: {problem}")
            st.stop()  # every page needs the model; the picker above stays usable
        card = picked_card()
        st.caption(f"Model: **{Path(model_path()).name}**, adapts {adapts_plainly(learner)}")
        if card.get("accuracy"):
            st.caption(
                f"{card.get('benchmark', 'Accuracy')}: "
                + ", ".join(f"{k} {v['accuracy']:.1f}%" for k, v in card["accuracy"].items())
            )
        st.caption(f"Device: **{learner.backbone.device}**")
        with st.expander("Model card"):
            st.caption(f"{learner.name} ({learner.head} head), {learner.rates_in_words()}")
            st.json({k: v for k, v in meta.items() if k not in ("training",)}, expanded=False)


def pick(label: str) -> None:
    """Switch the session to another model: its runs go, and Adapt's settings start at the new model's defaults
    (they are otherwise kept across pages, and would come back from an earlier pick of the same model)."""
    st.session_state.model_label = label
    reset_runs()  # runs were made with the other model
    for key in (lr_key(), run_steps_key(), "own_rates"):
        st.session_state.pop(key, None)
    st.rerun()


def your_model_upload() -> None:
    """The "Your model" expander: upload a network (a state dict with its architecture) and use it everywhere."""
    entry = picked_yours()
    with st.expander("Your model", icon="📦", expanded=entry is not None or bool(st.session_state.get("your_error"))):
        counter = st.session_state.setdefault("your_upload", 0)
        upload = st.file_uploader(
            "Model file", key=f"your_upload_{counter}", max_upload_size=MAX_MB,
            help=".pt2 (torch.export), .onnx, TorchScript, a state dict (.pt / .safetensors) with its architecture, "
            "or a metacore checkpoint. Never unpickled.",
        )  # fmt: skip
        arch = st.text_input(  # text, not a list: listing torchvision's models imports them (1.3 s of a first page)
            "torchvision architecture, for a state dict",
            key="your_arch",
            placeholder="e.g. resnet18",
            help="Needed only for weights saved with torch.save(model.state_dict()) or .safetensors",
        ).strip()
        if upload is not None:
            st.session_state.your_upload += 1
            try:
                path = save_upload(upload.name, upload.getvalue())
                label = add(YourModel(str(path), arch or None))
                st.session_state.your_error = None
            except MetacoreError as exc:
                st.session_state.your_error = str(exc)
                st.rerun()
            st.session_state.new_pick = True
            pick(label)
        if st.session_state.get("your_error"):
            st.error(st.session_state.your_error, icon="🚫")
        if entry is not None:
            preprocessing(entry)


def preprocessing(entry: YourModel) -> None:
    """The picked upload's preprocessing, stated, and changeable (a new spec is a new model: it is checked again)."""
    model = loaded(entry)
    st.caption(describe(model))
    with st.form("your_spec", border=False):
        spec = model.spec
        size = st.number_input("Input size (px)", 8, 1024, spec.size)
        channels = st.radio("Channels", [3, 1], index=0 if spec.channels == 3 else 1, horizontal=True,
                            format_func={3: "RGB", 1: "grey"}.get)  # fmt: skip
        mean = st.text_input("Mean", ", ".join(f"{v:g}" for v in spec.mean))
        std = st.text_input("Std", ", ".join(f"{v:g}" for v in spec.std))
        if st.form_submit_button("Apply"):
            try:
                new = restated(spec, size, channels, mean, std)
            except MetacoreError as exc:
                st.error(str(exc)[0].upper() + str(exc)[1:] + ".", icon="🚫")
                return
            changed = YourModel(entry.path, entry.arch, json.dumps(new.to_dict()))
            try:
                loaded(changed)
            except MetacoreError as exc:
                st.error(str(exc), icon="🚫")
                return
            your_models()[entry.label] = changed
            reset_runs()  # made with the old preprocessing
            st.rerun()
