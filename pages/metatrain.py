import json
from dataclasses import replace
from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

from lab import charts, live_training
from lab.examples import data_root
from lab.sidebar import sidebar
from lab.text import plural
from metacore.background import warm_up
from metacore.errors import MetacoreError
from metacore.examples import meta_training_data
from metacore.images import InputSpec
from metacore.train import inner_loop_problem, quick_recipe

sidebar()
st.title("🏋️ Meta-train")
st.write(
    "Watch an initialisation **learn to learn**. Each outer step adapts a copy of the network to a few small tasks "
    "(the inner loop) and moves the starting point so that those few inner steps work better next time. The first "
    "chart is the point: on 20 fixed tasks of classes the model never trains on, the same inner steps, taken from the "
    "starting point as it was after 0, 10, 50, 100 ... outer steps."
)

ALGORITHMS = {
    "maml": "MAML (second order)",
    "fomaml": "First-order MAML",
    "reptile": "Reptile",
    "anil": "ANIL (head only in the inner loop)",
    "metasgd": "Meta-SGD (learned per-weight rates)",
    "lstm": "LSTM meta-learner (a learned update rule)",
    "protonet": "ProtoNet (no inner loop)",
}

train_root, dataset, split, data_note = meta_training_data(data_root())
default = quick_recipe(train_root, dataset, split)

run: live_training.LiveRun | None = st.session_state.get("live_run")
busy = run is not None and run.active
warm_up()  # the process that forks the runs imports torch while the settings are read, not after Start
queued_when_drawn = run is not None and run.state == "queued"

with st.expander("Settings: algorithm, classes and images per task, steps and rates", expanded=not busy):
    settings = {"disabled": busy, "persist_state": "session"}  # kept while the user looks at other pages
    left, middle, right = st.columns(3)  # collapsed while a run goes on: its live charts come up, above the fold
    algorithm = left.selectbox("Algorithm", list(ALGORITHMS), format_func=ALGORITHMS.get, key="mt_algo", **settings)
    way = left.slider("Classes per task (N)", 2, 20, int(default.way), key="mt_way", **settings)
    shot = left.slider("Support images per class (K)", 1, 5, int(default.shot), key="mt_shot", **settings)
    steps = middle.slider("Inner steps", 1, 5, default.inner_steps, key="mt_steps", **settings)
    inner_lr = middle.number_input("Inner lr", 0.001, 2.0, default.inner_lr, 0.05, format="%.3f", key="mt_lr",
                                   **settings)  # fmt: skip
    meta_batch = middle.slider("Tasks per outer step", 1, 16, default.meta_batch, key="mt_batch", **settings)
    body_rates_only = algorithm == "metasgd" and middle.checkbox(
        "Learn the body's rates only", key="mt_body_rates", **settings,
        help="As the shipped character model: a rate is learned for every body weight, and the head steps at the "
        "inner lr (learned head rates tend to grow until the head overshoots).",
    )  # fmt: skip
    meta_lr = right.select_slider("Outer lr", [1e-4, 3e-4, 1e-3, 3e-3], default.meta_lr, key="mt_meta_lr",
                                  **settings)  # fmt: skip
    rule_meta_lr = None
    if algorithm in ("metasgd", "lstm"):
        rule_meta_lr = right.select_slider(
            "Outer lr of the update rule", [None, 1e-3, 3e-3, 1e-2], None, key="mt_rule_lr", **settings,
            format_func=lambda lr: "as the network's" if lr is None else f"{lr:g}",
            help="The learned rates (Meta-SGD) or the LSTM's weights take their own Adam step size: the shipped "
            "LSTM model trained them at 5e-3, 100x its network's outer lr (at the network's rate they barely moved).",
        )  # fmt: skip
    outer_steps = right.number_input("Outer steps", 10, 5000, default.iterations, 100, key="mt_iters", **settings)
    right.caption(
        f"Data: {data_note}, 10% of its classes held out. Validation: {default.val_episodes} tasks of those classes "
        f"every {default.val_every} outer steps. On the bundled characters the defaults reached about 75% after 175 "
        "outer steps, 80-85% from about 250 on, and first 85% at outer step 800, after 245 s on 2 CPU cores (90% not "
        "within 1000; `python -m metacore bench --time-to-accuracy`, 2026-12-05; each validation is within about ±5 "
        "points)."
    )
    problem = inner_loop_problem(replace(default, algorithm=algorithm, inner_steps=steps))
    if problem:  # e.g. one inner step from a zero head: the body never moves in the inner loop
        (st.error if problem[0] == "error" else st.warning)(problem[1][0].upper() + problem[1][1:] + ".")

buttons = st.columns([1, 1, 1, 4])
if buttons[0].button("Start", icon="▶️", type="primary", disabled=busy or (problem or ("",))[0] == "error"):
    cfg = quick_recipe(
        train_root, dataset, split, algorithm=algorithm, way=str(way), shot=str(shot), meta_batch=meta_batch,
        inner_lr=inner_lr, inner_steps=steps, meta_lr=meta_lr, iterations=int(outer_steps),
        body_rates_only=body_rates_only, rule_meta_lr=rule_meta_lr,
    )  # fmt: skip
    try:
        run = live_training.new_run(cfg, InputSpec())
    except MetacoreError as exc:
        st.error(str(exc))
    else:
        run.start()
        st.session_state.live_run = run
        st.rerun()
if run is not None and run.state in ("running", "paused"):
    if run.state == "running" and buttons[1].button("Pause", icon="⏸️"):
        run.pause()
        st.rerun()
    if run.state == "paused" and buttons[1].button("Resume", icon="⏯️"):
        run.resume()
        st.rerun()
if busy and buttons[2].button("Stop", icon="⏹️"):
    run.stop()
    st.rerun()


def training_chart(run: live_training.LiveRun) -> go.Figure:
    steps = [s["iteration"] for s in run.steps]
    traces = [
        charts.line(steps, [s["loss"] for s in run.steps], "query loss (training tasks)", "#ef553b", mode="lines"),
        charts.line(steps, [s["accuracy"] for s in run.steps], "query accuracy % (training tasks)", "#636efa",
                    mode="lines", yaxis="y2"),
    ]  # fmt: skip
    layout = {
        "height": 300, "margin": {"t": 30, "b": 10}, "title": {"text": "Each outer step"},
        "xaxis": {"title": {"text": "outer step"}, "rangemode": "tozero"},
        "yaxis": {"title": {"text": "loss"}, "rangemode": "tozero"},
        "yaxis2": {"title": {"text": "accuracy %"}, "range": [0, 100], "overlaying": "y", "side": "right",
                   "tickmode": "linear", "tick0": 0, "dtick": 20, "showgrid": False},
        "legend": {"orientation": "h", "y": -0.25},
    }  # fmt: skip
    return go.Figure(traces, layout)


def validation_chart(run: live_training.LiveRun) -> go.Figure:
    rows = run.validations
    x = [r["iteration"] for r in rows]
    y = [r["val_accuracy"] for r in rows]
    ci = {"type": "data", "array": [r["val_ci95"] for r in rows]}
    trace = charts.line(x, y, "held-out classes", "#00a08b", error_y=ci)
    title = f"Validation: {run.cfg.way}-way {run.cfg.shot}-shot tasks of held-out classes"
    layout = {
        "height": 300, "margin": {"t": 30, "b": 10}, "title": {"text": title},
        "xaxis": {"title": {"text": "outer step"}, "rangemode": "tozero"},
        "yaxis": {"title": {"text": "query accuracy % (95% CI)"}, "range": [0, 100]},
    }  # fmt: skip
    return go.Figure([trace], layout)


def curves_chart(run: live_training.LiveRun, single: bool = False) -> go.Figure:
    """The inner loop from the starting point as it was after 0, 10, 25 ... outer steps: the mean over the fixed
    held-out tasks with its 95% CI band, or (`single`) the first task alone."""
    snapshots, trained = sorted(run.curves), run.cfg.inner_steps
    traces = []
    for index, outer in enumerate(snapshots):
        shade = 0.25 + 0.75 * (index + 1) / len(snapshots)  # later snapshots darker
        colour = f"rgba(31, 119, 180, {shade:.2f})"
        rows = run.curves[outer]
        x = [r["step"] for r in rows]
        if single:
            traces.append(charts.line(x, [r["single_accuracy"] for r in rows], f"after {outer} outer steps", colour))
            continue
        mean = [r["accuracy"] for r in rows]
        upper = [r["accuracy"] + r["ci95"] for r in rows]
        lower = [r["accuracy"] - r["ci95"] for r in rows]
        band = {"type": "scatter", "x": x + x[::-1], "y": upper + lower[::-1], "fill": "toself", "mode": "lines",
                "line": {"width": 0}, "fillcolor": f"rgba(31, 119, 180, {0.12 * shade:.2f})", "hoverinfo": "skip",
                "showlegend": False, "legendgroup": str(outer)}  # fmt: skip
        traces += [band, charts.line(x, mean, f"after {outer} outer steps", colour, legendgroup=str(outer))]
    what = "one fixed held-out task" if single else f"{live_training.PROBE_TASKS} fixed held-out tasks (mean, 95% CI)"
    layout = {
        "height": 380, "margin": {"t": 30, "b": 10},
        "title": {"text": f"The inner loop on {what}, from the starting point as it was"},
        "xaxis": charts.step_axis(live_training.CURVE_STEPS, title={"text": "inner step"}),
        "yaxis": {"title": {"text": "query accuracy %"}, "range": [-3, 103]},
        "shapes": [{"type": "line", "x0": trained, "x1": trained, "y0": 0, "y1": 100, "line": {"dash": "dot"}}],
    }  # fmt: skip
    return go.Figure(traces, layout)


@st.fragment(run_every=1.0 if busy else None)  # redraws itself while the run goes on; the page stays responsive
def live_view() -> None:
    run: live_training.LiveRun | None = st.session_state.get("live_run")
    if run is None:
        if not problem or problem[0] != "error":  # with Start disabled, the error above says what to change
            st.info("Press **Start**: the first points appear within seconds.")
        return
    run.seen()
    if busy and not run.active:
        st.rerun()  # it has just ended: the whole page, for the Save and Download buttons
    if queued_when_drawn and run.state != "queued":
        st.rerun()  # it has just left the queue: the whole page, for the Pause button
    if run.state == "queued":
        position = run.queue_position()
        paused = live_training.paused_slots()
        st.warning(
            f"Waiting for a free slot: this server runs at most {live_training.MAX_RUNNING} meta-trainings at once"
            + (f"; you are number {position} in the queue." if position else ".")
            + (" One running run is paused by its session: it keeps its slot until resumed or stopped."
               if paused == 1 else
               f" {paused} running runs are paused by their sessions: they keep their slots until resumed or stopped."
               if paused else "")
        )  # fmt: skip
    elif run.state == "failed":
        st.error(run.message)
    else:
        last = run.steps[-1] if run.steps else None
        status = {"running": "Training", "paused": "Paused", "stopping": "Stopping", "finished": "Done",
                  "stopped": "Stopped"}[run.state]  # fmt: skip
        if last:
            line = f"**{status}**: outer step {last['iteration']} of {run.cfg.iterations}, {last['seconds']:.0f} s"
        elif run.state == "running":
            line = ("**Starting**: the first outer step" if run.curves else "**Starting**: reading the classes and "
                    f"measuring the starting point on {live_training.PROBE_TASKS} held-out tasks")  # fmt: skip
        else:
            line = f"**{status}**"
        if run.validations:
            best = run.validations[-1]
            line += f"; validation {best['val_accuracy']:.1f}% ± {best['val_ci95']:.1f}"
        st.markdown(line + (f". {run.message}" if run.message else ""))
    if run.curves:
        single = st.toggle("One task only", key="mt_single", help="the inner loop on the first held-out task alone")
        st.plotly_chart(curves_chart(run, single), key="mt_curves")
        k = run.cfg.inner_steps
        st.caption(
            f"Darker lines: later starting points. The dotted line marks the {plural(k, 'inner step')} the model "
            f"is meta-trained to take: at first {'it barely helps' if k == 1 else 'they barely help'}; as "
            "meta-training goes on, the same step reaches high accuracy on classes it never trained on. Past the "
            "line the steps are the same, just more of them: MAML optimises the starting point for exactly that "
            "many steps at that lr, so more of them can overshoot (the Adapt page shows the same)."
        )
    a, b = st.columns(2)
    if run.steps:
        a.plotly_chart(training_chart(run), key="mt_train")
    if run.validations:
        b.plotly_chart(validation_chart(run), key="mt_val")


live_view()

run = st.session_state.get("live_run")
if run is not None and run.state in ("finished", "stopped") and run.checkpoint.is_file():
    st.divider()
    label = f"Meta-trained in this session ({ALGORITHMS[run.cfg.algorithm]}, {run.cfg.way}-way {run.cfg.shot}-shot)"
    saved = label in st.session_state.get("trained_models", {})
    left, right = st.columns(2)
    if left.button("Use it in the lab", icon="💾", disabled=saved, help="adds it to the sidebar's model picker"):
        card = {"model": run.checkpoint.name, "benchmark": "Validation on held-out classes (this session)"}
        if run.validations:
            last = run.validations[-1]
            card["accuracy"] = {f"{run.cfg.way}-way {run.cfg.shot}-shot": {"accuracy": last["val_accuracy"],
                                                                            "ci95": last["val_ci95"]}}  # fmt: skip
        Path(run.checkpoint).with_suffix(".json").write_text(json.dumps(card, indent=2))
        st.session_state.setdefault("trained_models", {})[label] = run.checkpoint
        st.rerun()
    if saved:
        left.success("In the sidebar's model picker: pick it there, then Build, Adapt and Features use it.")
    right.download_button("Download the checkpoint (.pt)", run.checkpoint.read_bytes(), "meta_trained.pt", icon="⬇️")
