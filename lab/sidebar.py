"""The sidebar every page shares: the model picker, the device and the picked model's card."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from lab.models import available_models, model_label, model_path, picked_card, shared_model
from lab.runs import reset_runs
from lab.text import plural
from metacore.errors import MetacoreError


def sidebar() -> None:
    """Drawn by each page first (AppTest runs a switched-to page without app.py, so the frame is per page)."""
    with st.sidebar:
        if run := st.session_state.get("live_run"):
            run.seen()  # a meta-training run stops once its session has been gone for a while
        models = list(available_models())
        label = st.radio("Model", models, index=models.index(model_label()), key="model_picker")
        if label != model_label():
            st.session_state.model_label = label
            reset_runs()  # runs were made with the other model
            st.rerun()
        try:
            learner, meta = shared_model()
        except MetacoreError as exc:
            st.error(f"Model could not be loaded: {exc}")
            st.stop()  # every page needs the model; the picker above stays usable
        st.caption(f"Device: **{learner.backbone.device}**")
        card = picked_card()
        st.caption(f"Model: **{Path(model_path()).name}** ({learner.name}, {learner.head} head)")
        if card.get("accuracy"):
            st.caption(
                f"{card.get('benchmark', 'Accuracy')}: "
                + ", ".join(f"{k} {v['accuracy']:.1f}%" for k, v in card["accuracy"].items())
            )
        st.caption(f"Adapts with {learner.rates_in_words()}, {plural(learner.inner_steps, 'step')}")
        with st.expander("Model card"):
            st.json({k: v for k, v in meta.items() if k not in ("training",)}, expanded=False)
