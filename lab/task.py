"""The session's task: its classes, their support and query images, uploads and the limits on them, as tensors."""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import streamlit as st
import torch
from PIL import Image, ImageFilter, ImageStat

from lab.models import model_path, shared_model
from lab.text import plural
from metacore.bodies import model_inputs
from metacore.errors import MetacoreError
from metacore.images import InputSpec, decode, preprocess
from metacore.isolation import compute_slot

MAX_TASK_IMAGES = 400  # each image is kept at <= 320 px on its shorter side (~0.4 MB): ~160 MB per session at most
MAX_UPLOAD_BYTES = 64 * 1024 * 1024  # a 200-megapixel phone JPEG is 20-50 MB


@dataclass
class Item:
    """One image a user added: its (EXIF-upright, L/RGB, shorter side at most KEEP_SIDE px) picture and a name."""

    name: str
    image: Image.Image
    inputs: dict[InputSpec, torch.Tensor] = field(default_factory=dict, repr=False)  # model inputs, per spec
    thumbnails: dict[int, Image.Image] = field(default_factory=dict, repr=False)  # made once per size: pages rerun
    png: bytes | None = field(default=None, repr=False)  # the image as PNG, made once (a saved task holds it)

    def as_png(self) -> bytes:
        if self.png is None:
            self.png = image_to_png(self.image)
        return self.png

    def thumbnail(self, size: int = 72) -> Image.Image:
        if size not in self.thumbnails:
            thumb = self.image.copy()
            shrink = max(thumb.size) / size
            if shrink > 1.4 and thumb.mode in ("L", "1") and ImageStat.Stat(thumb.convert("L")).mean[0] > 200:
                # thin dark strokes on white (a drawing, an Omniglot character) fade when shrunk: thicken first
                thumb = thumb.convert("L").filter(ImageFilter.MinFilter(3 if shrink < 3 else 5))
            thumb.thumbnail((size, size))
            self.thumbnails[size] = thumb
        return self.thumbnails[size]


_class_ids = itertools.count()


@dataclass
class TaskClass:
    name: str
    support: list[Item] = field(default_factory=list)
    query: list[Item] = field(default_factory=list)
    uid: int = field(default_factory=lambda: next(_class_ids))  # stable widget keys across edits


def make_item(name: str, data: bytes | Image.Image) -> Item:
    """Validate and normalise an upload; raises MetacoreError with a message for the user."""
    if isinstance(data, bytes) and len(data) > MAX_UPLOAD_BYTES:
        raise MetacoreError(f"{name}: file is larger than {MAX_UPLOAD_BYTES // 2**20} MB")
    return Item(name, decode(data, name))  # the same pixels the CLI and the Python API get from this file


def image_to_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def session_classes() -> list[TaskClass]:
    """The session's task; a new session starts with Home's example, whichever page it opens on (a bookmark)."""
    if "classes" not in st.session_state:
        from lab.examples import load_example  # it builds on this module
        from metacore.examples import sample_characters_task

        load_example(sample_characters_task(way=5, shot=1, query=5, seed=0), "Omniglot characters 5-way 1-shot")
    return st.session_state.classes


def task_size(classes: list[TaskClass]) -> int:
    return sum(len(c.support) + len(c.query) for c in classes)


def add_uploads(target: list[Item], files: list[tuple[str, bytes]], room: int = MAX_TASK_IMAGES) -> list[str]:
    """Add valid files to `target` while there is `room`; return one message per file that was refused
    (and one for all the files beyond the room, which are not even decoded)."""
    problems = []
    for index, (name, data) in enumerate(files):
        if room <= 0:
            left = len(files) - index
            problems.append(
                f"{plural(left, 'file')} not added ({name}{', ...' if left > 1 else ''}): a task holds at most "
                f"{MAX_TASK_IMAGES} images, so that every session's task fits in the server's memory"
            )
            break
        try:
            target.append(make_item(name, data))
            room -= 1
        except MetacoreError as exc:
            problems.append(str(exc))
    return problems


def task_problems(classes: list[TaskClass]) -> list[str]:
    problems = []
    if len(classes) < 2:
        problems.append("A task needs at least 2 classes.")
    names = [c.name.strip() for c in classes]
    if any(not n for n in names):
        problems.append("Every class needs a name.")
    if len(set(names)) < len(names):
        problems.append("Class names must be different.")
    for c in classes:
        if not c.support:
            problems.append(f"Class '{c.name}' has no images: add at least one support image.")
    return problems


@dataclass
class TaskTensors:
    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor | None
    query_y: torch.Tensor | None
    names: list[str]
    support_items: list[Item]
    query_items: list[Item]


def item_inputs(items: list[Item], spec: InputSpec, progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """The model's inputs for these items, each computed once per spec (a photo body runs once per image),
    8 images per turn of the server's compute slot; `progress(done, total)` after each 8."""
    new = [item for item in items if spec not in item.inputs]
    for start in range(0, len(new), 8):
        part = new[start : start + 8]
        with compute_slot():
            inputs = model_inputs(torch.stack([preprocess(item.image, spec) for item in part]), spec)
        for item, x in zip(part, inputs):
            item.inputs[spec] = x
        if progress:
            progress(start + len(part), len(new))
    return torch.stack([item.inputs[spec] for item in items])


def task_tensors(classes: list[TaskClass], spec: InputSpec, device: torch.device) -> TaskTensors:
    s_labels, q_labels, s_items, q_items = [], [], [], []
    for label, c in enumerate(classes):
        s_items += c.support
        s_labels += [label] * len(c.support)
        q_items += c.query
        q_labels += [label] * len(c.query)
    return TaskTensors(
        item_inputs(s_items, spec).to(device),
        torch.tensor(s_labels, device=device),
        item_inputs(q_items, spec).to(device) if q_items else None,
        torch.tensor(q_labels, device=device) if q_items else None,
        [c.name for c in classes],
        s_items,
        q_items,
    )


def task_signature(tensors: TaskTensors) -> tuple:
    """What a result computed from this task depends on: the model, and each image (by identity) with its class
    and set. Equal signatures on two reruns of a page mean the same task."""
    return (
        model_path(),
        tuple(tensors.names),
        tuple(map(id, tensors.support_items)),
        tuple(tensors.support_y.tolist()),
        tuple(map(id, tensors.query_items)),
        () if tensors.query_y is None else tuple(tensors.query_y.tolist()),
    )


def require_task() -> tuple[list[TaskClass], TaskTensors]:
    """The session's task as tensors, or (with a message and a link to fix it) stop the page."""
    classes = session_classes()
    problems = task_problems(classes)
    if problems:
        for problem in problems:
            st.warning(problem)
        st.page_link("pages/build.py", label="Build a task first", icon="🧩")
        st.stop()
    shipped, _ = shared_model()
    spec = shipped.backbone.input_spec
    new = [item for c in classes for item in c.support + c.query if spec not in item.inputs]
    if spec.body and new:  # a photo body runs once per image: say so on a first visit instead of a blank page
        network = "the ImageNet network" if spec.body == "efficientnet_lite2" else "your network"
        what = f"Computing the features of {plural(len(new), 'image')} with {network} (once per image)"
        bar = st.progress(0.0, text=f"{what} ...")
        item_inputs(new, spec, lambda done, total: bar.progress(done / total, text=f"{what}: {done} of {total}"))
        bar.empty()
    return classes, task_tensors(classes, spec, shipped.backbone.device)
