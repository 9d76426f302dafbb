"""The check as one self-contained HTML file (plotly inlined: it opens offline, and can be mailed)."""

from __future__ import annotations

import html
from pathlib import Path

import plotly.graph_objects as go

from metacore.check import FEATURE_SCALE, HEAD_LR, HEAD_STEPS, SETTINGS, overlap_warnings

NAMES = {
    "raw_pixels": "raw pixels (32x32)",
    "random_init": "same architecture, random init",
    "photo_model": "shipped photo model",
}
COLOURS = ["#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a"]


def rows(report: dict) -> list[tuple[str, dict]]:
    """(label, measures) for the model, then each baseline."""
    return [(report["model"].get("name", "your model"), report)] + [
        (NAMES.get(k, k), v) for k, v in report["baselines"].items()
    ]


def accuracy_figure(report: dict) -> go.Figure:
    """Few-shot accuracy with its 95% CI, per setting and method, for the model and each baseline."""
    traces = []
    for index, (label, result) in enumerate(rows(report)):
        x, y, err = [], [], []
        for setting in SETTINGS:
            cell = result["fewshot"][setting]
            if "skipped" in cell:
                continue
            for method, value in (("mean", cell), ("zero head", cell["zero_head"])):
                x.append(f"{setting} · {method}")
                y.append(value["accuracy"])
                err.append(value["ci95"])
        traces.append(
            go.Bar(
                name=label, x=x, y=y, error_y={"type": "data", "array": err}, marker_color=COLOURS[index % len(COLOURS)]
            )
        )
    figure = go.Figure(traces)
    figure.update_layout(
        barmode="group",
        height=380,
        yaxis={"title": "query accuracy %", "range": [0, 100]},
        margin={"t": 30},
        title="Few-shot accuracy (5-way), mean ± 95% CI",
    )
    return figure


def curve_figure(report: dict) -> go.Figure:
    """The zero head's inner loop: query accuracy after each step, per setting, for the model and each baseline."""
    figure = go.Figure()
    for index, (label, result) in enumerate(rows(report)):
        for setting, dash in zip(SETTINGS, ("solid", "dash")):
            cell = result["fewshot"][setting]
            if "skipped" in cell:
                continue
            figure.add_scatter(
                x=list(range(HEAD_STEPS + 1)),
                y=cell["zero_head_curve"],
                name=f"{label} {setting}",
                line={"color": COLOURS[index % len(COLOURS)], "dash": dash},
            )
    figure.update_layout(
        height=340,
        xaxis={"title": "inner step", "dtick": 1},
        margin={"t": 30},
        yaxis={"title": "query accuracy %", "range": [0, 100]},
        title="A zero head adapting on the frozen features, step by step (step 0: chance)",
    )
    return figure


def map_figure(report: dict) -> go.Figure | None:
    """The t-SNE map of the model's features, one colour per class."""
    points = report.get("map")
    if not points:
        return None
    names = report["data"]["class_names"]
    labels = report.get("labels") or []
    files = report.get("files") or []
    figure = go.Figure()
    by_class: dict[int, list[int]] = {}
    for position, index in enumerate(points["index"]):
        by_class.setdefault(labels[index] if labels else 0, []).append(position)
    for label, positions in sorted(by_class.items()):
        figure.add_scattergl(
            x=[points["x"][p] for p in positions],
            y=[points["y"][p] for p in positions],
            mode="markers",
            name=names[label] if labels else "images",
            marker={"size": 6},
            text=[Path(files[points["index"][p]]).name if files else "" for p in positions],
        )
    figure.update_layout(
        height=520,
        title="t-SNE of the features (each point an image)",
        margin={"t": 40},
        xaxis={"visible": False},
        yaxis={"visible": False},
    )
    return figure


def table(header: list[str], body: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in body)
    return f"<table><tr>{head}</tr>{cells}</table>"


def summary_table(report: dict) -> str:
    body = []
    for label, result in rows(report):
        row = [label]
        for setting in SETTINGS:
            cell = result["fewshot"][setting]
            row.append("skipped" if "skipped" in cell else f"{cell['accuracy']:.2f} ± {cell['ci95']:.2f}")
            head = cell.get("zero_head", {})
            row.append("" if "skipped" in cell else f"{head['accuracy']:.2f} ± {head['ci95']:.2f}")
        probe = result["linear_probe"]
        row += [probe.get("accuracy", "-"), result["knn"]["p@1"], result["knn"]["p@5"], result["silhouette"]]
        body.append(row)
    header = [
        "features",
        "5w1s mean %",
        "5w1s zero head %",
        "5w5s mean %",
        "5w5s zero head %",
        "linear probe %",
        "k-NN p@1 %",
        "k-NN p@5 %",
        "silhouette",
    ]
    return table(header, body)


def render(report: dict) -> str:
    model, data = report["model"], report["data"]
    parts = [
        "<h1>Few-shot check</h1>",
        f"<p><b>{html.escape(model.get('name', 'features'))}</b> ({html.escape(model.get('kind', ''))}) on "
        f"{data['images']:,} images of {data['classes']} classes"
        + (f" from <code>{html.escape(str(data['folder']))}</code>" if data.get("folder") else "")
        + f"; {report['episodes']} episodes per setting, seed {report['seed']}, the same episodes for every row.</p>",
    ]
    if model.get("preprocessing"):
        spec = model["preprocessing"]
        parts.append(
            f"<p>Preprocessing: {spec['size']} px, {'RGB' if spec['channels'] == 3 else 'grey'}, mean "
            f"{', '.join(f'{v:.3g}' for v in spec['mean'])}, std {', '.join(f'{v:.3g}' for v in spec['std'])}, "
            f"centre crop {spec['crop'] or 'none'} ({html.escape(model.get('preprocessing_source', ''))}). "
            f"sha256 {model.get('sha256', '')[:16]}…</p>"
        )
    parts += [f"<p><b>Note:</b> {html.escape(warning)}.</p>" for warning in overlap_warnings(report)]
    parts.append(summary_table(report))
    parts.append(
        "<p>Features are centred on each episode's support mean and L2-normalised (CL2N). Mean: nearest class "
        f"mean. Zero head: a linear head from zero, {HEAD_STEPS} full-batch gradient steps on the support set "
        f"(features × {FEATURE_SCALE:g}, lr {HEAD_LR:g}). Linear "
        "probe: logistic regression on half of each class's images (the same number from every class), scored on "
        "the rest. k-NN: leave-one-out, cosine.</p>"
    )
    figures = [accuracy_figure(report), curve_figure(report), map_figure(report)]
    for index, figure in enumerate(f for f in figures if f is not None):
        parts.append(figure.to_html(full_html=False, include_plotlyjs=index == 0))  # plotly.js once, inline
    probe = report["linear_probe"]
    if "per_class_recall" in probe:
        parts.append("<h2>Per-class recall (linear probe)</h2>")
        parts.append(table(["class", "recall %"], sorted(probe["per_class_recall"].items(), key=lambda kv: kv[1])))
        if probe["most_confused"]:
            parts.append("<h2>Most confused pairs</h2>")
            parts.append(
                table(
                    ["classes", "test images confused"],
                    [[" / ".join(p["classes"]), p["confused"]] for p in probe["most_confused"]],
                )
            )
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}"
    )
    head = f"<head><meta charset='utf-8'><title>Few-shot check</title><style>{style}</style></head>"
    return f"<!doctype html><html>{head}<body>{''.join(parts)}</body></html>"


def write_report(report: dict, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(report), encoding="utf-8")
    return out
