import base64
import io

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
import torch

from lab.charts import PALETTE
from lab.memo import remembered
from lab.models import shared_model
from lab.runs import chosen_adaptation
from lab.sidebar import sidebar
from lab.task import Item, require_task, task_signature
from lab.text import plural
from metacore.checkpoint import adapted_checkpoint
from metacore.errors import MetacoreError
from metacore.features import embed, predict_proba
from metacore.isolation import compute_slot, run_isolated
from metacore.projection import distinct_points, project, separation_scores, valid_perplexity

sidebar()
st.title("🗺️ What the features learned")

_, tensors = require_task()
shipped, _ = shared_model()
learner, adapted, caption = chosen_adaptation(tensors)
st.caption(f"After adaptation = {caption}. ProtoNet takes no steps, so its 'after' equals 'before'.")

images = [tensors.support_x] + ([tensors.query_x] if tensors.query_x is not None else [])
all_x = torch.cat(images)
labels = torch.cat([tensors.support_y] + ([tensors.query_y] if tensors.query_y is not None else [])).cpu().numpy()
items = tensors.support_items + tensors.query_items
sets = ["support"] * len(tensors.support_items) + ["query"] * len(tensors.query_items)


def features_and_predictions() -> tuple[np.ndarray, ...]:
    """Each image's features, and its class probabilities, before adapting (step 0: the task head as it starts)
    and after."""
    with compute_slot():
        start = next(learner.adapt(tensors.support_x, tensors.support_y, steps=0, way=len(tensors.names))).params
        return (
            embed(learner, all_x).numpy(),
            embed(learner, all_x, adapted).numpy(),
            predict_proba(learner, start, all_x).numpy(),
            predict_proba(learner, adapted, all_x).numpy(),
        )


# a click on a map reruns the page: the same task and adaptation are not computed again
try:
    before, after, first, last = remembered(
        "features", (task_signature(tensors), caption, id(adapted)), features_and_predictions, keep=adapted
    )
except MetacoreError as exc:  # a diverged adaptation picked on the Adapt page
    st.error(f"{str(exc)[0].upper()}{str(exc)[1:]}: pick an earlier step or a smaller lr on the Adapt page.")
    st.stop()

controls = st.columns([2, 3, 2])
method = controls[0].radio("Map", ["t-SNE", "PCA"], horizontal=True, key="proj", persist_state="session")
n = len(all_x)
if n < 3:
    st.warning("A map needs at least 3 images in the task.")
    st.stop()
max_perplexity = valid_perplexity(n, 50)
perplexity = controls[1].slider(
    "t-SNE perplexity",
    1.0,
    max(1.01, max_perplexity),
    min(30.0, max_perplexity),
    disabled=method == "PCA",
    help=f"kept below (n−1)/3 = {max_perplexity:.1f} for {n} images",
)
thumbs = controls[2].toggle("Draw the images", value=n <= 60, key="thumbs", persist_state="session")


@st.cache_data(show_spinner="Computing the map ...", max_entries=32)
def cached_projection(features: np.ndarray, method: str, perplexity: float) -> np.ndarray:
    # in a worker process: native t-SNE code that crashes takes down that worker, not the server
    return run_isolated(project, features, "pca" if method == "PCA" else "tsne", perplexity, what="The map")


def overlapping(features: np.ndarray) -> int:
    """How many images share their feature vector with an earlier one (drawn on top of it)."""
    try:
        return len(features) - len(distinct_points(features)[0])
    except MetacoreError:
        return 0


def png_uri(item: Item) -> str:
    buffer = io.BytesIO()
    item.thumbnail(48).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def item_index(point: dict) -> int | None:
    """The task image behind a selected point (its custom data, which plotly may send as a list or a dict)."""
    data = point.get("customdata")
    if isinstance(data, dict):
        data = list(data.values())
    if isinstance(data, (list, tuple)):
        data = data[0] if data else None
    return None if data is None else int(data)


SYMBOLS = {"support": "circle", "query": "x"}


def scatter(coords: np.ndarray, title: str, highlight: set[int]) -> go.Figure:
    """One legend entry per class (its colour); support and query told apart by marker shape; the images
    drawn beside their points, not over them; `highlight`: points picked in either map."""
    fig = go.Figure()
    for label, name in enumerate(tensors.names):
        members = np.flatnonzero(labels == label)
        fig.add_trace(
            go.Scatter(
                x=coords[members, 0],
                y=coords[members, 1],
                mode="markers",
                name=name,
                marker={
                    "color": PALETTE[label % len(PALETTE)],
                    "symbol": [SYMBOLS[sets[i]] for i in members],
                    "size": 11,
                    "line": {"width": 1, "color": "white"},
                },
                customdata=members,
                hovertext=[f"{items[i].name} ({name}, {sets[i]})" for i in members],
                hoverinfo="text",
                selectedpoints=[j for j, i in enumerate(members) if i in highlight] if highlight else None,
            )
        )
    for set_name, symbol in SYMBOLS.items():  # legend keys for the two marker shapes
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=set_name, marker={"color": "grey",
                                 "symbol": symbol, "size": 11}, hoverinfo="skip"))  # fmt: skip
    if thumbs:
        span = max(np.ptp(coords[:, 0]), np.ptp(coords[:, 1]), 1e-6)
        images = [
            {
                "source": png_uri(item),
                "x": x + span / 80,  # beside the point: its marker stays visible
                "y": y + span / 80,
                "xref": "x",
                "yref": "y",
                "sizex": span / 14,
                "sizey": span / 14,
                "xanchor": "left",
                "yanchor": "bottom",
                "opacity": 0.75,
                "layer": "below",
            }
            for (x, y), item in zip(coords, items)
        ]
        fig.update_layout(images=images)  # at once: add_layout_image one by one costs ~10 ms an image
    fig.update_layout(title=title, height=480, margin={"t": 40, "b": 10}, legend_title_text="")
    fig.update_xaxes(showticklabels=False, title="")
    fig.update_yaxes(showticklabels=False, title="")
    return fig


def picked_in(key: str) -> set[int]:
    """Images picked (clicked, boxed or lassoed) in one map at the last interaction; the other map highlights
    them (a map's own figure stays as it was, so that its selection is kept)."""
    try:
        points = st.session_state[key]["selection"]["points"]
    except (KeyError, TypeError):  # no interaction with that map yet
        points = []
    return {i for i in map(item_index, points) if i is not None}


def maps() -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Both sets' coordinates from one map fitted on before and after together, so that what moves between the
    two pictures is the model's change, not the map's own randomness; each set alone if one cannot be mapped."""
    try:
        joint = cached_projection(np.vstack([before, after]), method, perplexity)
        return {"before": joint[:n], "after": joint[n:]}, {}
    except MetacoreError:
        coords, errors = {}, {}
        for key, feats in (("before", before), ("after", after)):
            try:
                coords[key] = cached_projection(feats, method, perplexity)
            except MetacoreError as exc:
                errors[key] = str(exc)
        return coords, errors


def predictions_before_and_after() -> pd.DataFrame:
    """Each image's predicted class and confidence at step 0 (the task head as it starts) and after adapting."""

    def predicted(p: np.ndarray) -> int | None:
        return None if p.max() - p.min() < 1e-6 else int(p.argmax())  # None: a zero head, every class the same

    def verdict(p: np.ndarray) -> str:
        k = predicted(p)
        return f"no class ({100 * p.max():.0f}% each)" if k is None else f"{tensors.names[k]} ({100 * p.max():.0f}%)"

    def is_right(p: np.ndarray, label: int) -> bool:
        return predicted(p) == label

    rows = []
    for i, (item, label) in enumerate(zip(items, labels)):
        right = (is_right(first[i], label), is_right(last[i], label))
        change = {(False, True): "now right", (True, False): "now wrong"}.get(right, "")
        row = {"image": item.name, "class": tensors.names[label], "set": sets[i]}
        rows.append(row | {"before": verdict(first[i]), "after": verdict(last[i]), "change": change})
    return pd.DataFrame(rows)


unchanged = np.allclose(before, after, rtol=1e-6, atol=1e-8)
change = float(np.linalg.norm(after - before) / max(float(np.linalg.norm(before)), 1e-12))
if unchanged:
    why = ("The features did not change: this adaptation moved only the task head (a frozen body, ANIL, or "
           "ProtoNet), so both maps are the same by construction.")  # fmt: skip
elif change < 0.1:
    why = (f"The features moved only {100 * change:.2g}% of their length: these steps wrote the task mostly into "
           "the head, so the two maps look alike.")  # fmt: skip
else:
    why = f"The features moved {100 * change:.2g}% of their length."
st.info(f"{why} Each image's predicted class and confidence, before adapting → after, is in the table below "
        "the maps.", icon="ℹ️")  # fmt: skip
if not unchanged:
    st.caption("Both maps come from one projection fitted on the features before and after together: a point that "
               "moves between them moved in feature space.")  # fmt: skip
coordinates, problems = maps()
scores = {"before": separation_scores(before, labels), "after": separation_scores(after, labels)}
left, right = st.columns(2)
for column, feats, title, key in (
    (left, before, "Before adaptation", "before"),
    (right, after, "After adaptation", "after"),
):
    with column:
        if key in problems:
            st.error(f"{title}: {problems[key]}.")
            continue
        event = st.plotly_chart(
            scatter(coordinates[key], title, picked_in("map_after" if key == "before" else "map_before")),
            key=f"map_{key}",
            on_select="rerun",
            selection_mode=("points", "box", "lasso"),
        )
        if same := overlapping(feats):
            st.caption(f"{plural(same, 'image')} share their features with another image and sit on top of it.")
        picked = [i for i in map(item_index, event.selection.points) if i is not None] if event else []
        if picked:  # clicked or lassoed points: their images, larger
            st.image(
                [items[i].thumbnail(96) for i in picked[:24]],
                caption=[f"{items[i].name} ({tensors.names[labels[i]]}, {sets[i]})" for i in picked[:24]],
                width=96,
            )
        else:
            st.caption("Click a point, or drag a box or lasso, to see those images here.")
        a, b = st.columns(2)
        for box, name, field, show, help_text in (
            (a, "Silhouette", "silhouette", lambda v: f"{v:.3f}", "how tightly each class clusters, −1 to 1 "
             "(in feature space, not the 2-D map)"),
            (b, "Nearest-class-mean accuracy", "nearest_mean_accuracy", lambda v: f"{100 * v:.0f}%",
             "each image, left out, assigned to the closest class mean of the others"),
        ):  # fmt: skip
            value, start = scores[key][field], scores["before"][field]
            delta = None
            if key == "after" and value is not None and start is not None:
                delta = f"{value - start:+.3f}" if field == "silhouette" else f"{100 * (value - start):+.0f} points"
                if delta in ("+0.000", "-0.000", "+0 points", "-0 points"):
                    delta = None  # nothing changed (a frozen body): no green arrow for a zero
            box.metric(name, "–" if value is None else show(value), delta=delta, help=help_text)

st.subheader("Predictions before → after")
table = predictions_before_and_after()
now_right, now_wrong = ((table["change"] == verdict).sum() for verdict in ("now right", "now wrong"))
st.dataframe(table, hide_index=True, height=min(400, 36 + 35 * len(table)))
same = len(table) - now_right - now_wrong
st.caption(f"Of {len(table)} images, {now_right} went from wrong (or no class) to right and {now_wrong} from right "
           f"to wrong; the other {same} {'was' if same == 1 else 'were'} right, or wrong, both times.")  # fmt: skip

rows = [
    {
        "image": it.name,
        "class": tensors.names[int(y)],
        "set": s,
        "stage": stage,
        **{f"f{i}": v for i, v in enumerate(f)},
    }
    for stage, feats in (("before", before), ("after", after))
    for it, y, s, f in zip(items, labels, sets, feats)
]
d1, d2 = st.columns(2)
d1.download_button(
    "Download features (CSV)", pd.DataFrame(rows).to_csv(index=False), "features.csv", "text/csv", icon="⬇️"
)
d2.download_button(
    "Download the adapted model (.pt)",
    adapted_checkpoint(learner, adapted, tensors.names, adapted_with=caption),
    "adapted_model.pt",
    icon="⬇️",
    help="a metacore checkpoint of the adapted body and task head: "
    "python -m metacore classify --checkpoint adapted_model.pt photo.jpg (no --support needed)",
)
