"""State and helpers shared by the lab's pages: the cached model, the session's task and runs.

All learning happens in `metacore`; this module only keeps what a browser session has built.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pandas  # noqa: F401 (the pages' libraries, imported here once; see app.py)
import plotly.express  # noqa: F401
import plotly.graph_objects  # noqa: F401
import streamlit as st
import torch
from PIL import Image

from metacore.algorithms import ANIL, MAML, ProtoNet
from metacore.bodies import model_inputs
from metacore.checkpoint import load_checkpoint
from metacore.data import ImageClass, open_dataset
from metacore.device import resolve_device
from metacore.errors import MetacoreError
from metacore.images import InputSpec, decode, preprocess
from metacore.inner import layer_shift
from metacore.isolation import compute_slot
from metacore.models import Backbone
from metacore.openset import card_entry
from metacore.paths import PHOTO_MODEL, SHIPPED_MODEL, default_data_root

DEFAULT_MODEL = SHIPPED_MODEL
MODELS = {  # what the sidebar's picker offers: label -> checkpoint
    "Characters (Conv-4, Omniglot)": SHIPPED_MODEL,
    "Photos (EfficientNet-Lite2 + meta-learned adapter)": PHOTO_MODEL,
}
MAX_TASK_IMAGES = 400  # each image is kept at <= 320 px on its shorter side (~0.4 MB): ~160 MB per session at most
MAX_UPLOAD_BYTES = 64 * 1024 * 1024  # a 200-megapixel phone JPEG is 20-50 MB
INITS = {
    "maml": "Meta-trained init (the picked model)",
    "anil": "Meta-trained init, head only (ANIL)",
    "random": "Random init (no meta-learning)",
    "protonet": "ProtoNet (the model's features, no steps)",
}


def data_root() -> Path:
    return default_data_root()


# -- the shared, never-mutated models ----------------------------------------------------------


def available_models() -> dict[str, Path]:
    """The shipped models, then those meta-trained and saved in this session (the Meta-train page)."""
    return MODELS | st.session_state.get("trained_models", {})


def model_label() -> str:
    """The model this session picked in the sidebar (characters by default)."""
    label = st.session_state.get("model_label")
    return label if label in available_models() else next(iter(MODELS))


def model_path() -> str:
    return str(available_models()[model_label()])


@st.cache_resource(show_spinner="Loading the meta-trained model ...")
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


@st.cache_resource(show_spinner=False)
def listed_classes(root: str, dataset: str, split: str | None) -> tuple[ImageClass, ...]:
    """A data set's classes, listed once per server (listing Omniglot's evaluation alphabets takes ~0.3 s)."""
    return tuple(open_dataset(root, dataset, split).classes)


@st.cache_data
def model_card(path: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def unsure_threshold() -> dict | None:
    """The picked model's "none of these" threshold and its measured rates (`python -m metacore unsure`), if any."""
    return card_entry(model_card(str(Path(model_path()).with_suffix(".json"))))


def takes_drawings() -> bool:
    """Whether the picked model reads characters (drawings make sense) rather than photos."""
    shipped, _ = shared_model()
    return not shipped.backbone.input_spec.body


def learner_for(init: str) -> MAML:
    shipped, _ = shared_model()
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


# -- the session's task ------------------------------------------------------------------------


@dataclass
class Item:
    """One image a user added: its (EXIF-upright, L/RGB, shorter side at most KEEP_SIDE px) picture and a name."""

    name: str
    image: Image.Image
    inputs: dict[InputSpec, torch.Tensor] = field(default_factory=dict, repr=False)  # model inputs, per spec
    thumbnails: dict[int, Image.Image] = field(default_factory=dict, repr=False)  # made once per size: pages rerun

    def thumbnail(self, size: int = 72) -> Image.Image:
        if size not in self.thumbnails:
            thumb = self.image.copy()
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


def session_classes() -> list[TaskClass]:
    if "classes" not in st.session_state:
        st.session_state.classes = [TaskClass("class 1"), TaskClass("class 2")]
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


def load_example(task: dict[str, dict[str, list[Image.Image]]], label: str, photos: bool = False) -> None:
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


def item_inputs(items: list[Item], spec: InputSpec) -> torch.Tensor:
    """The model's inputs for these items, each computed once per spec (a photo body runs once per image),
    8 images per turn of the server's compute slot."""
    new = [item for item in items if spec not in item.inputs]
    for start in range(0, len(new), 8):
        part = new[start : start + 8]
        with compute_slot():
            inputs = model_inputs(torch.stack([preprocess(item.image, spec) for item in part]), spec)
        for item, x in zip(part, inputs):
            item.inputs[spec] = x
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


def remembered(name: str, key: tuple, compute, keep: object = None):
    """compute()'s value, kept in the session while `key` stays the same: a page reruns on every click, and
    what it shows should not be recomputed each time. `keep` holds the objects whose id() is in `key`, so
    that no new object can take one of those ids while the entry lives."""
    memo = st.session_state.setdefault("remembered", {})
    if name in memo and memo[name][0] == key:
        return memo[name][1]
    value = compute()
    memo[name] = (key, value, keep)
    return value


# -- adaptation runs -----------------------------------------------------------------------------


def reset_runs() -> None:
    st.session_state.runs = {}


def session_runs() -> dict[str, list[dict]]:
    if "runs" not in st.session_state:
        reset_runs()
    return st.session_state.runs


@torch.no_grad()  # applied around each step of the generator, not across its pauses
def adaptation_records(learner: MAML, tensors: TaskTensors, steps: int, lr: float | None):
    """Yield one plain record per inner step (floats, numpy, detached parameters) for charts and replay.
    `lr` None: the learner's own rate(s)."""
    start = None
    snapshots = learner.adapt(
        tensors.support_x,
        tensors.support_y,
        tensors.query_x,
        tensors.query_y,
        steps=steps,
        lr=lr,
        way=len(tensors.names),
    )
    while True:
        with compute_slot():  # one step per turn: other sessions' steps interleave with a long Run
            snap = next(snapshots, None)
            if snap is None:
                return
            params = {k: v.detach() for k, v in snap.params.items()}
            start = start or params
            record = {
                "step": snap.step,
                "support_loss": float(snap.support_loss),
                "support_acc": float(snap.support_acc),
                "query_loss": None if snap.query_loss is None else float(snap.query_loss),
                "query_acc": None if snap.query_acc is None else float(snap.query_acc),
                "query_probs": None if snap.query_logits is None else snap.query_logits.softmax(-1).cpu().numpy(),
                "shift": layer_shift(start, params),
                "params": params,
            }
        yield record


def new_run(learner: MAML, tensors: TaskTensors, steps: int, lr: float | None) -> dict:
    """A session's adaptation run: its records so far, the generator of the next ones, and a lock for it."""
    return {
        "lr": lr,
        "records": [],
        "gen": adaptation_records(learner, tensors, steps, lr),
        "lock": threading.Lock(),
    }


def advance_run(run: dict) -> bool:
    """Take one more step of `run`; False when it has no more.

    A click can start a new script run while the previous one is still inside the generator (waiting for
    the compute slot under load): the lock makes the new run wait for that step instead of failing with
    "generator already executing".
    """
    with run["lock"]:
        if run.get("diverged"):
            return False
        record = next(run["gen"], None)
        if record is None:
            return False
        run["records"].append(record)
        run["diverged"] = divergence(run["records"], run["lr"])
        return not run["diverged"]


def divergence(records: list[dict], lr: float | None) -> str | None:
    """One sentence if the last step diverged (a non-finite support loss, or 10x its step-0 value), else None."""
    first, last = records[0]["support_loss"], records[-1]
    loss = last["support_loss"]
    if math.isfinite(loss) and not (first > 0 and loss > 10 * first):
        return None
    shipped, _ = shared_model()
    what = "is no longer a number" if not math.isfinite(loss) else f"jumped from {first:.3g} to {loss:.3g}"
    if lr is None:
        return (
            f"Stopped at step {last['step']}: the support loss {what}: the model's learned rates overshoot on this "
            "task. Switch them off and try one rate near the model's default."
        )
    default = shipped.inner_lr
    safe = f"{default:g} (this model's default)" if lr > default else f"{lr / 10:g}"
    return (
        f"Stopped at step {last['step']}: the support loss {what}, so lr {lr:g} is too large here (each step "
        f"overshoots). Use at most {safe}."
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
    return classes, task_tensors(classes, shipped.backbone.input_spec, shipped.backbone.device)


def chosen_adaptation(tensors: TaskTensors) -> tuple[MAML, dict[str, torch.Tensor], str]:
    """(learner, adapted parameters, a caption): the step picked on the Adapt page, else the shipped
    model adapted with its default lr and steps."""
    runs = session_runs()
    chosen = st.session_state.get("chosen_step", {})
    init = chosen.get("init")
    if init in runs and runs[init]["records"]:
        records = runs[init]["records"]
        record = records[min(chosen.get("step", len(records) - 1), len(records) - 1)]
        caption = f"{INITS[init]}, adapted for {record['step']} steps (chosen on the Adapt page)"
        return learner_for(init), record["params"], caption
    shipped, _ = shared_model()
    params = remembered(
        "default_adaptation",
        task_signature(tensors),
        lambda: list(adaptation_records(shipped, tensors, shipped.inner_steps, None))[-1]["params"],  # own lr(s)
        keep=(tensors.support_items, tensors.query_items),
    )
    steps = plural(shipped.inner_steps, "step")
    caption = f"{INITS['maml']}, adapted for its default {steps} (pick another on the Adapt page)"
    return shipped, params, caption


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def image_to_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def lr_key() -> str:
    """The Adapt page's lr box, one per model (a widget's value comes back from the browser with every rerun, so
    dropping it from session state would not bring back the new model's default)."""
    return f"lr:{model_label()}"


def sidebar() -> None:
    """Device and model card, on every page."""
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
        card = model_card(str(Path(model_path()).with_suffix(".json")))
        st.caption(f"Model: **{Path(model_path()).name}** ({learner.name}, {learner.head} head)")
        if card.get("accuracy"):
            st.caption(
                f"{card.get('benchmark', 'Accuracy')}: "
                + ", ".join(f"{k} {v['accuracy']:.1f}%" for k, v in card["accuracy"].items())
            )
        st.caption(f"Adapts with {learner.rates_in_words()}, {plural(learner.inner_steps, 'step')}")
        with st.expander("Model card"):
            st.json({k: v for k, v in meta.items() if k not in ("training",)}, expanded=False)
