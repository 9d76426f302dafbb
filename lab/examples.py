"""Example tasks a session loads (built in, or from the data root) and whether they suit the picked model."""

from __future__ import annotations

from pathlib import Path

import streamlit as st
from PIL import Image

from lab.models import takes_drawings
from lab.runs import reset_runs
from lab.task import TaskClass, make_item
from metacore.data import ImageClass, open_dataset
from metacore.errors import MetacoreError
from metacore.examples import digits_task, sample_characters_task
from metacore.paths import default_data_root


def data_root() -> Path:
    """Where the real data sets are: METACORE_DATA_ROOT, else ../shared/data, else ./data."""
    return default_data_root()


@st.cache_resource(show_spinner=False)
def listed_classes(root: str, dataset: str, split: str | None) -> tuple[ImageClass, ...]:
    """A data set's classes, listed once per server (listing Omniglot's evaluation alphabets takes ~0.3 s)."""
    return tuple(open_dataset(root, dataset, split).classes)


def load_example(task: dict[str, dict[str, list[Image.Image]]], label: str, photos: bool = False) -> None:
    """Replace the session's task with an example (class -> support and query images) and drop its runs."""
    st.session_state.classes = [
        TaskClass(
            name,
            [make_item(f"{name} support {i + 1}", im) for i, im in enumerate(parts["support"])],
            [make_item(f"{name} query {i + 1}", im) for i, im in enumerate(parts["query"])],
        )
        for name, parts in task.items()
    ]
    st.session_state.example = label
    st.session_state.example_photos = photos
    reset_runs()


def example_mismatch() -> str | None:
    """One sentence when the loaded example does not suit the picked model (photos for the character model, or
    characters for the photo model), else None."""
    if "example" not in st.session_state or st.session_state.get("example_photos") is None:
        return None
    photos = bool(st.session_state.example_photos)
    if photos == (not takes_drawings()):
        return None
    kind, other = ("photos", "Photos") if photos else ("characters", "Characters")
    return (
        f"This example is {kind}, but the picked model reads {'characters' if photos else 'photos'}: expect poor "
        f"accuracy. Pick **{other}** in the sidebar, or another example."
    )


LINKED_EXAMPLES = {"characters": (sample_characters_task, "Omniglot characters"), "digits": (digits_task, "digits")}


def open_linked_example(params: dict[str, str]) -> str | None:
    """Load the bundled example a link names (`?example=characters&way=5&shot=1&query=5`, or `digits`); returns a
    sentence when the link cannot be followed (the session's task is then left as it was)."""
    name = params.get("example", "")
    if name not in LINKED_EXAMPLES:
        return f"The link asks for the example '{name}'; the lab bundles {' and '.join(LINKED_EXAMPLES)}."
    try:
        way, shot, query = (int(params.get(key, default)) for key, default in (("way", 5), ("shot", 1), ("query", 5)))
        make, title = LINKED_EXAMPLES[name]
        task = make(way, shot, query, seed=0)
    except ValueError:
        return "The link's way, shot and query must be whole numbers."
    except MetacoreError as exc:
        return f"The link's example cannot be made: {exc}."
    load_example(task, f"{title} {way}-way {shot}-shot (from a link)")
    return None
