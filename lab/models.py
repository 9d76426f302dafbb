"""The models the sidebar's picker offers, each loaded once per server and shared, never mutated, by every session."""

from __future__ import annotations

import json
from pathlib import Path

import streamlit as st
import torch
from PIL import Image

from lab.yours import YourModel, loaded, whole_learner, your_models
from lab.yours import learner as your_learner
from metacore.algorithms import ANIL, MAML, ProtoNet
from metacore.bodies import model_inputs
from metacore.checkpoint import load_checkpoint
from metacore.checkpoint import meta_trained as checkpoint_meta_trained
from metacore.device import resolve_device
from metacore.images import preprocess
from metacore.models import Backbone
from metacore.openset import card_entry
from metacore.paths import LSTM_MODEL, PHOTO_MODEL, SHIPPED_MODEL

DEFAULT_MODEL = SHIPPED_MODEL
MODELS = {  # what the sidebar's picker offers: label -> checkpoint
    "Characters (Conv-4, Omniglot)": SHIPPED_MODEL,
    "Photos (EfficientNet-Lite2, ImageNet features)": PHOTO_MODEL,
    "Characters, learned optimiser (LSTM meta-learner)": LSTM_MODEL,
}
INITS = {  # where an adaptation starts: the Adapt page's choices
    "maml": "Meta-trained init (the picked model)",
    "anil": "Meta-trained init, head only (ANIL)",
    "random": "Random init (no meta-learning)",
    "protonet": "ProtoNet (the model's features, no steps)",
}
NOT_META_TRAINED_INITS = {  # a model `metacore init` wrote (the photo model): nothing meta-trained to compare with
    "maml": "The model's features (pre-trained, not meta-trained), a zero head adapting",
    "protonet": "ProtoNet (the same features, no steps)",
}
YOUR_INITS = {  # your model: its frozen features, nothing meta-trained to compare with
    "maml": "Your model's features (frozen), a zero head adapting",
    "whole": "Your whole network: every layer adapting (slower)",
    "protonet": "ProtoNet (your model's features, no steps)",
}


def available_models() -> dict[str, Path]:
    """The shipped models, those meta-trained and saved in this session (the Meta-train page), and its uploads."""
    yours = {label: Path(entry.path) for label, entry in your_models().items()}
    return MODELS | st.session_state.get("trained_models", {}) | yours


def picked_yours() -> YourModel | None:
    """The picked model's entry when it is one the session uploaded, else None."""
    return your_models().get(model_label())


def inits() -> dict[str, str]:
    """The Adapt page's starting points for the picked model (your whole network when it is a torch module)."""
    entry = picked_yours()
    if entry is None:
        return INITS if meta_trained() else NOT_META_TRAINED_INITS
    return {k: v for k, v in YOUR_INITS.items() if k != "whole" or whole_learner(entry) is not None}


def meta_trained() -> bool:
    """Whether the picked model was meta-trained (False for one `metacore init` wrote, e.g. the photo model)."""
    return checkpoint_meta_trained(shared_model()[1])


def model_label() -> str:
    """The model this session picked in the sidebar (characters by default)."""
    label = st.session_state.get("model_label")
    return label if label in available_models() else next(iter(MODELS))


def model_path() -> str:
    return str(available_models()[model_label()])


@st.cache_resource(show_spinner=False)  # the sidebar says what is loading, in the page
def _load_model(path: str) -> tuple[MAML, dict]:
    learner, meta = load_checkpoint(path, resolve_device("auto"))
    warm_up(learner)
    return learner, meta


def warm_up(learner: MAML) -> None:
    """One step on a blank two-image task: torch's first calls cost ~1 s (kernel choice, vmap set-up), paid
    here once per server instead of by the first Step someone presses."""
    spec = learner.backbone.input_spec
    blank = preprocess(Image.new("L", (spec.size, spec.size)), spec)
    x = model_inputs(torch.stack([blank, blank]), spec).to(learner.backbone.device)
    y = torch.tensor([0, 1], device=x.device)
    for _ in learner.adapt(x, y, x, y, steps=1, way=2):
        pass


def shared_model() -> tuple[MAML, dict]:
    """The picked model, loaded once per process and shared (never mutated) by every session."""
    entry = picked_yours()
    if entry is not None:
        model = loaded(entry)
        return your_learner(entry), {
            "your_model": model.name,
            "kind": model.kind,
            "sha256": model.sha256,
            "input_spec": model.spec.to_dict(),
            "preprocessing": model.spec_source,
        }
    return _load_model(model_path())


@st.cache_resource
def _random_init(path: str) -> MAML:
    shipped, _ = _load_model(path)
    torch.manual_seed(0)
    backbone = Backbone(shipped.backbone.name, input_spec=shipped.backbone.input_spec, **shipped.backbone.kwargs)
    return MAML(backbone.to(shipped.backbone.device), shipped.inner_lr, shipped.inner_steps, "zero")


def random_init_model() -> MAML:
    """The same architecture, not meta-trained, with a zero head: fine-tuning from scratch."""
    return _random_init(model_path())


def learner_for(init: str) -> MAML:
    """The learner an adaptation from `init` (a key of INITS) runs with; all share the picked model's backbone."""
    shipped, _ = shared_model()
    if init == "whole":
        return whole_learner(picked_yours())
    if init == "random":
        return random_init_model()
    if init == "protonet":
        return ProtoNet(shipped.backbone)
    if init == "anil":
        return ANIL(
            shipped.backbone, shipped.inner_lr, shipped.inner_steps, shipped.head,
            way_scaled_head=shipped.way_scaled_head,
        )  # fmt: skip
    return shipped


@st.cache_data
def model_card(path: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def picked_card() -> dict:
    """The picked model's card (its .json beside the checkpoint), or {} when it has none."""
    return model_card(str(Path(model_path()).with_suffix(".json")))


def unsure_threshold() -> dict | None:
    """The picked model's "none of these" threshold and its measured rates (`python -m metacore unsure`), if any."""
    return card_entry(picked_card())


def takes_drawings() -> bool:
    """Whether the picked model reads characters (drawings make sense) rather than photos."""
    shipped, _ = shared_model()
    return not shipped.backbone.input_spec.body
