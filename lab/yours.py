"""Your own model in the lab: an uploaded file kept on the server by its content, loaded once, offered in the picker."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from metacore.errors import MetacoreError
from metacore.images import InputSpec
from metacore.isolation import compute_slot
from metacore.yours import MAX_MODEL_BYTES, FeatureModel, feature_learner, load_model, whole_network_learner

MAX_MB = int(os.environ.get("METACORE_MAX_MODEL_MB", MAX_MODEL_BYTES // 2**20))
FOLDER = Path(tempfile.gettempdir()) / "metacore-yours"
YOURS = "Your model: "  # the picker's label prefix


@dataclass(frozen=True)
class YourModel:
    """One uploaded model as the picker knows it: its file, its torchvision architecture, its preprocessing."""

    path: str
    arch: str | None = None
    spec: str | None = None  # InputSpec as JSON when the user changed it, else the file's own

    @property
    def label(self) -> str:
        return YOURS + Path(self.path).name


def save_upload(name: str, data: bytes) -> Path:
    """Keep an uploaded file under the server's temp folder, named by its content (two sessions, one copy)."""
    if len(data) > MAX_MB * 2**20:
        raise MetacoreError(f"{name} is {len(data) / 2**20:.0f} MB, over the {MAX_MB} MB limit (METACORE_MAX_MODEL_MB)")
    digest = hashlib.sha256(data).hexdigest()[:16]
    path = FOLDER / digest / Path(name).name
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return path


@st.cache_resource(show_spinner="Loading your model ...", max_entries=8)
def loaded(entry: YourModel) -> FeatureModel:
    """The checked FeatureModel of an entry, once per server (loading runs in the shared compute slot)."""
    spec = InputSpec.from_dict(json.loads(entry.spec)) if entry.spec else None
    with compute_slot():
        return load_model(entry.path, entry.arch, spec, MAX_MB * 2**20)


@st.cache_resource(show_spinner=False, max_entries=8)
def learner(entry: YourModel):
    """Your model as the lab's learner: a zero head adapting on its frozen features (`FrozenFeatures`)."""
    return feature_learner(loaded(entry))


@st.cache_resource(show_spinner=False, max_entries=8)
def whole_learner(entry: YourModel):
    """Your whole network adapting (every layer), or None when the file is not a torch module with parameters."""
    return whole_network_learner(loaded(entry))


def your_models() -> dict[str, YourModel]:
    """This session's uploaded models, by picker label."""
    return st.session_state.setdefault("your_models", {})


def add(entry: YourModel) -> str:
    """Load (and so check) an entry, then offer it in the picker; raises MetacoreError with the reason."""
    loaded(entry)
    your_models()[entry.label] = entry
    return entry.label


def describe(model: FeatureModel) -> str:
    spec = model.spec
    colour = "RGB" if spec.channels == 3 else "grey"
    crop = f", centre crop {spec.crop:g}" if spec.crop else ""
    return (
        f"{model.kind}, {model.feature_dim} features; input {spec.size} px {colour}, mean "
        f"{', '.join(f'{m:.3g}' for m in spec.mean)}, std {', '.join(f'{s:.3g}' for s in spec.std)}{crop} "
        f"({model.spec_source})"
    )


@st.cache_resource(show_spinner="Loading the model ...", max_entries=4)
def checkpoint_model(path: str) -> FeatureModel:
    """A metacore checkpoint (shipped, or meta-trained here) as a FeatureModel, for the Check page."""
    with compute_slot():
        return load_model(path)


@st.cache_resource(show_spinner="Loading the baselines ...", max_entries=4)
def _baselines(key: str, _model: FeatureModel) -> dict[str, FeatureModel]:
    from metacore.check import baselines_for

    with compute_slot():
        return baselines_for(_model)


def baselines(model: FeatureModel) -> dict[str, FeatureModel]:
    """The check's baselines for `model` (random init of its architecture, the shipped photo model), once per server."""
    return _baselines(f"{model.sha256}:{json.dumps(model.spec.to_dict())}", model)
