"""The Adapt page's charts, written as plain plotly specs and validated once.

plotly.express takes ~60 ms of server time per figure (a pandas round trip and its templating), and each
`update_layout` call parses its keys again; one `go.Figure(data, layout)` takes ~2 ms, which matters when
twenty sessions press Step at once on two cores.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative

SET_COLOURS = {"support": "#636efa", "query": "#ef553b"}
SET_DASHES = {"support": "solid", "query": "dash"}
AXES2 = {"xaxis": "x2", "yaxis": "y2"}  # the accuracy half of the curves chart
PALETTE = qualitative.Dark24  # distinct colours for up to 24 classes or layers
DASHES = ("solid", "dash", "dot", "dashdot")


def step_axis(last_step: int, **extra) -> dict:
    """A step axis with whole steps only (0, 1, 2 ... or every 5th, 10th ...), never 0.5."""
    every = next(d for d in (1, 2, 5, 10, 20, 50, 100) if last_step / d <= 10)
    return {"tick0": 0, "dtick": every, "tickformat": "d", "rangemode": "tozero", "title": {"text": "step"}, **extra}


def line(x: list, y, name: str, colour: str, dash: str = "solid", **extra) -> dict:
    style = {"color": colour, "dash": dash}
    return {"type": "scatter", "mode": "lines+markers", "x": x, "y": y, "name": name, "line": style, **extra}


def curves(records: list[dict], last_step: int = 1) -> go.Figure:
    """Loss (left) and accuracy in % (right) of the support and query sets against the step; with no records yet,
    the empty axes up to `last_step` (drawn when the page opens, so the first Step only adds points)."""
    steps = [r["step"] for r in records] or [last_step]
    traces = []
    for name in ("support", "query") if records else ():
        if records[0][f"{name}_loss"] is None:
            continue
        colour, dash = SET_COLOURS[name], SET_DASHES[name]  # both at 100%: the dashes keep the lower one visible
        traces.append(line(steps, [r[f"{name}_loss"] for r in records], name, colour, dash, legendgroup=name))
        accuracies = [100 * r[f"{name}_acc"] for r in records]
        traces.append(line(steps, accuracies, name, colour, dash, legendgroup=name, showlegend=False, **AXES2))
    if not records:  # empty traces, so that both sets of axes are drawn
        traces = [{"type": "scatter", "x": [], "y": [], "showlegend": False, **axes} for axes in ({}, AXES2)]
    losses = [v for r in records for k in ("support_loss", "query_loss") if (v := r[k]) is not None and v > 0]
    log = bool(losses) and max(losses) > 100 * min(losses)  # diverging or vanishing: a linear axis hides the rest
    layout = {
        "height": 320,
        "margin": {"t": 30, "b": 10},
        "xaxis": step_axis(steps[-1], domain=[0, 0.47], **({} if records else {"range": [0, last_step]})),
        "xaxis2": step_axis(steps[-1], domain=[0.53, 1], anchor="y2", **({} if records else {"range": [0, last_step]})),
        "yaxis": {
            "title": {"text": "loss (log scale)" if log else "loss"},
            "type": "log" if log else "linear",
            **({} if records else {"range": [0, 2]}),
        },
        "yaxis2": {"title": {"text": "accuracy %"}, "range": [-3, 103], "anchor": "x2"},
        "legend": {"title": {"text": ""}},
    }
    return go.Figure(traces, layout)


def probabilities(probs: np.ndarray, classes: list[str], rows: list[str]) -> go.Figure:
    """Each query image's predicted probability for each class (rows top to bottom in task order)."""
    heat = {"type": "heatmap", "z": probs, "x": classes, "y": rows, "zmin": 0, "zmax": 1, "colorscale": "Blues"}
    layout = {
        "height": max(250, 18 * len(rows)),
        "margin": {"t": 10, "b": 10},
        "xaxis": {"type": "category"},
        "yaxis": {"type": "category", "autorange": "reversed"},
    }
    return go.Figure([{**heat, "colorbar": {"title": {"text": "p"}}}], layout)


def true_class_probability(records: list[dict], labels: np.ndarray, classes: list[str]) -> go.Figure:
    """Per class, the mean probability its query images give their true class, against the step."""
    steps = [r["step"] for r in records]
    true_p = np.array([r["query_probs"][np.arange(len(labels)), labels] for r in records])  # steps x queries
    traces = [
        line(steps, true_p[:, labels == index].mean(1), name, PALETTE[index % len(PALETTE)])
        for index, name in enumerate(classes)
        if (labels == index).any()
    ]
    layout = {
        "height": 260,
        "margin": {"t": 10, "b": 10},
        "xaxis": step_axis(steps[-1]),
        "yaxis": {"title": {"text": "p(true class)"}, "range": [-0.02, 1.02]},
    }
    return go.Figure(traces, layout)


def layer_name(layer: str) -> str:
    """A parameter group as a page says it: 'blocks.0' -> 'conv block 1', 'center' -> 'feature centre'."""
    if layer.startswith("blocks."):
        return f"conv block {int(layer.split('.')[1]) + 1}"
    return {"center": "feature centre", "scale": "feature scale"}.get(layer, layer)


def layer_movement(records: list[dict]) -> go.Figure:
    """Each layer's L2 distance from where adaptation started, against the step."""
    steps = [r["step"] for r in records]
    traces = [
        line(steps, [r["shift"][layer] for r in records], layer_name(layer), PALETTE[index % len(PALETTE)])
        for index, layer in enumerate(records[0]["shift"])
    ]
    layout = {
        "height": 300,
        "margin": {"t": 10, "b": 10},
        "xaxis": step_axis(steps[-1]),
        "yaxis": {"title": {"text": "distance moved"}},
    }
    return go.Figure(traces, layout)


def comparison(curves: dict[str, list[float]], metric: str) -> go.Figure:
    """One line per starting point; lines that coincide stay told apart by their dash style."""
    traces = [
        line(list(range(len(values))), values, name, PALETTE[index], DASHES[index % len(DASHES)])
        for index, (name, values) in enumerate(curves.items())
    ]
    layout = {
        "height": 340,
        "xaxis": step_axis(max(len(values) for values in curves.values()) - 1),
        "yaxis": {"title": {"text": metric}, **({"range": [-3, 103]} if metric.endswith("%") else {})},
        "legend": {"title": {"text": ""}},
    }
    return go.Figure(traces, layout)


def gates(records: list[dict], fixed_lr: float, hidden: tuple[str, ...] = ()) -> go.Figure:
    """A learned update's gates per layer against the step: the input gate (the step size each weight takes, log
    scale) beside MAML's fixed lr, and the forget gate (the share of each weight kept) beside 1. Layers in `hidden`
    start as legend entries only (a click shows them), so an outlier does not squash the axes."""
    stepped = [r for r in records if r.get("gates")]  # step 0 has none: no update led there
    steps = [r["step"] for r in stepped]
    traces = []
    for index, layer in enumerate(stepped[0]["gates"] if stepped else ()):
        colour, name = PALETTE[index % len(PALETTE)], layer_name(layer)
        shown = {"legendgroup": layer, "visible": "legendonly" if layer in hidden else True}
        traces.append(line(steps, [r["gates"][layer]["input"] for r in stepped], name, colour, **shown))
        forget = [r["gates"][layer]["forget"] for r in stepped]
        traces.append(line(steps, forget, name, colour, showlegend=False, **shown, **AXES2))
    last = max(steps, default=1)
    traces.append(line([0, last], [fixed_lr] * 2, f"MAML's fixed lr {fixed_lr:g}", "#444", "dot", mode="lines"))
    traces.append(line([0, last], [1.0, 1.0], "", "#444", "dot", mode="lines", showlegend=False, **AXES2))  # keep all
    layout = {
        "height": 320,
        "margin": {"t": 30, "b": 10},
        "xaxis": step_axis(last, domain=[0, 0.44], range=[0, last + 0.2]),
        "xaxis2": step_axis(last, domain=[0.58, 1], anchor="y2", range=[0, last + 0.2]),
        "yaxis": {"title": {"text": "input gate: step size (log)"}, "type": "log"},
        "yaxis2": {"title": {"text": "forget gate: weight kept"}, "anchor": "x2"},
        "legend": {"title": {"text": ""}},
    }
    return go.Figure(traces, layout)
