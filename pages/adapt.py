import math

import numpy as np
import streamlit as st

from lab import charts
from lab.examples import example_mismatch
from lab.models import NOT_META_TRAINED_INITS, inits, learner_for, meta_trained, shared_model
from lab.runs import adaptation_records, advance_run, lr_key, new_run, run_steps_key, session_runs
from lab.sidebar import sidebar
from lab.task import require_task, task_tensors
from lab.text import adapts_plainly, plural

MAX_STEPS = 200

sidebar()
st.title("📉 Adapt step by step")

classes, tensors = require_task()
if mismatch := example_mismatch():
    st.warning(mismatch, icon="⚠️")
shipped, _ = shared_model()
controls = st.columns([3, 2, 2])
INITS = inits()  # the picked model's starting points (your own model: its frozen features)
init = controls[0].selectbox("Starting point", list(INITS), format_func=INITS.get, key="init", persist_state="session")
learned_rates = init == "maml" and shipped.learns_rates  # Meta-SGD's rates, or the LSTM's learned update rule
learned_rule = shipped.name == "lstm"
own_rates = learned_rates and controls[0].toggle(
    "Use its learned update rule" if learned_rule else "Use its learned per-parameter rates",
    True,
    key="own_rates",
    persist_state="session",
    help=f"on: {shipped.lr_in_force(None)}; off: one rate for every weight, from the box"
    + (" (the LSTM's gates fixed at forget 1, input lr: plain gradient steps)" if learned_rule else ""),
)
LOWEST_LR = 1e-5
LR_KEY = lr_key()  # one box per model: a newly picked model's box starts at its own default
# The box's value lives in the session (the presets set it), so the widget gets no default of its own: Streamlit's
# "default value + Session State" warning never fires.
st.session_state.setdefault(LR_KEY, float(shipped.inner_lr))
lr = controls[1].number_input(
    "Inner learning rate",
    min_value=LOWEST_LR,
    max_value=10.0,
    step=float(shipped.inner_lr),
    format="%.4g",
    key=LR_KEY,
    persist_state="session",
    disabled=own_rates,
)


def set_lr(value: float) -> None:
    st.session_state[LR_KEY] = min(10.0, max(LOWEST_LR, float(f"{value:.6g}")))


presets = controls[1].columns(3)
for column, (label, factor) in zip(presets, (("÷10", 0.1), ("default", 1.0), ("×10", 10.0))):
    column.button(
        label,
        key=f"lr_{label}",
        disabled=own_rates,
        on_click=set_lr,
        args=(shipped.inner_lr * factor,),
        help=f"lr {shipped.inner_lr * factor:g}"
        + ("" if factor == 1 else f" (the default {shipped.inner_lr:g} {label})"),
    )
trained_steps = max(1, min(50, shipped.inner_steps))  # Run takes the steps the model was meta-trained for
st.session_state.setdefault(run_steps_key(), trained_steps)  # in the session, as the lr box: a saved task sets it
run_steps = controls[2].slider("Steps per Run", 1, 50, key=run_steps_key(), persist_state="session")
if run_steps > shipped.inner_steps and shipped.inner_steps > 0:
    controls[2].caption(
        f"Meta-trained for {plural(shipped.inner_steps, 'step')}: past that, the steps may overshoot and accuracy "
        "can fall."
    )
learner = learner_for(init)
if learner.backbone.input_spec != shipped.backbone.input_spec:  # your whole network takes pixels, not features
    tensors = task_tensors(classes, learner.backbone.input_spec, learner.backbone.device)
if learned_rates:
    way = len(tensors.names)
    scaled = f"; the head's step x {way}/5 in this {way}-way task" if shipped.way_scaled_head and way != 5 else ""
    if learned_rule:
        st.caption(
            "In force: **its learned update rule**: at every step an LSTM reads each weight's gradient and the loss "
            "and sets that weight's step size (input gate) and how much of it to keep (forget gate)"
            if own_rates
            else f"In force: **lr {lr:g}** for every weight: the LSTM's gates fixed at forget 1, input {lr:g}"
        )
    else:
        st.caption(
            "In force: **its learned rates**, one per weight" + scaled
            if own_rates
            else f"In force: **lr {lr:g}** for every weight{scaled} (replacing the learned rates)"
        )
lr = None if own_rates else lr  # None: the model's own rates
has_query = tensors.query_x is not None


def explain_init(init: str) -> None:
    if init == "protonet":
        st.info("ProtoNet does not take gradient steps: it classifies by distance to each class's mean feature.")
    elif init == "whole":
        st.caption(
            f"Every layer of your network adapts: {learner.rates_in_words()}, from a zero head on its features "
            "(centred on the support mean, L2-normalised). Each step is a forward and backward pass through the "
            "whole network on the support images, so it takes longer than the frozen view's. The Features and "
            "Classify pages use the frozen view's adaptation."
        )
    elif init == "maml" and shipped.name == "frozen":
        st.caption(
            "Your model's features stay frozen; a linear head starts at zero (step 0 is chance) and adapts at lr "
            f"{shipped.inner_lr:g} on them, centred on the support images' mean and L2-normalised: the first step "
            "writes each class's mean feature into the head, the next ones sharpen it. Only the head moves."
        )
    elif init == "maml" and shipped.head == "proto":
        body = shipped.backbone.input_spec.body
        features = "a frozen ImageNet network's features" if body else "its meta-learned features"
        st.caption(
            f"This model's head starts at the class prototypes of {features}, which is already close to the best "
            f"head for a few shots: step 0 is the prediction, and its steps (lr {shipped.inner_lr}) change little "
            "(with one image per class, almost nothing: each prototype *is* that image, so the support loss starts "
            "near 0). Meta-learning shaped the feature space instead (see Learn). Compare with the random init "
            "below, or raise the lr to watch the steps overshoot."
        )
    elif init == "maml" and not meta_trained():
        st.caption(
            f"Nothing in this model is meta-trained: a network pre-trained on ImageNet (kept frozen) turns each photo "
            f"into features, and a head starting at zero (step 0 is chance) adapts on them at lr {shipped.inner_lr:g}: "
            "the first step writes each class's mean feature into the head, the next ones sharpen it. Its few-shot "
            "skill comes from the ImageNet pre-training (see Learn: why meta-learning on 28 photo classes did not "
            "help). For meta-learning itself, pick **Characters** in the sidebar or watch the Meta-train page."
        )
    elif init == "maml" and shipped.head == "zero":
        body = " (only the head adapts)" if shipped.adapted_keys is not None else " and move the body a little"
        body = " and tune the body at its learned rates" if learned_rates else body
        body = " and move the body by the steps its learned optimiser sets" if learned_rule and own_rates else body
        st.caption(
            f"This model was meta-trained to adapt {adapts_plainly(shipped)}. Its head "
            "starts at zero, so step 0 is chance; the first step writes each class's mean feature into the head "
            f"(see Learn), the next ones sharpen it{body}."
        )
    elif init == "maml":
        st.caption(f"This model was meta-trained to adapt {adapts_plainly(shipped)}.")


@st.fragment  # Step, Run and the step slider redraw this part only, not the page
def stepping_area(init: str, lr: float | None, run_steps: int) -> None:
    runs = session_runs()
    run = runs.get(init)
    if run is None or run["lr"] != lr:
        run = runs[init] = new_run(learner, tensors, MAX_STEPS, lr)
    records: list[dict] = run["records"]

    def advance(count: int) -> None:
        for _ in range(count):
            if not advance_run(run):
                break

    buttons = st.columns([1, 1, 1, 4])
    step_clicked = buttons[0].button("Step", icon="👣", help="one inner gradient step", type="primary")
    run_clicked = buttons[1].button(f"Run {run_steps}", icon="▶️")
    reset = buttons[2].button(
        "Reset",
        icon="↩️",
        help="back to step 0 and the model's default learning rate",
        on_click=set_lr,
        args=(shipped.inner_lr,),  # before the rerun: popping the widget's key would not reset it
    )
    if reset:
        runs.pop(init, None)
        st.rerun()  # the whole page: the lr box outside this part shows the default again

    chart = st.empty()
    if step_clicked:
        advance(2 if not records else 1)  # the first click also records step 0 (before adapting)
    if run_clicked:
        progress = st.progress(0.0, text="adapting ...")
        target = len(records) + run_steps + (0 if records else 1)
        while len(records) < target:
            before = len(records)
            advance(1)
            if len(records) == before:
                break
            chart.plotly_chart(charts.curves(records), key=f"live_{len(records)}")
            progress.progress(min(1.0, len(records) / target), text=f"step {records[-1]['step']}")
        progress.empty()

    explain_init(init)
    if not records:
        chart.plotly_chart(charts.curves([], run_steps), key="curves")  # the axes, waiting for the first Step
        st.info("Press **Step** to take the first inner gradient step, or **Run** for several.")
        return

    chart.plotly_chart(charts.curves(records), key="curves")
    if run.get("diverged"):
        st.error(run["diverged"], icon="💥")
    shown = st.slider("Look at step", 0, len(records) - 1, len(records) - 1, key="scrub") if len(records) > 1 else 0
    st.session_state.chosen_step = {"init": init, "step": shown}
    at = records[shown]  # the summary, the heat map and the other pages follow the step looked at
    summary = (
        f"Step {at['step']}: support loss {at['support_loss']:.3f}, support accuracy {100 * at['support_acc']:.0f}%"
    )
    if has_query:
        summary += f", query accuracy **{100 * at['query_acc']:.1f}%**"
    if shown != len(records) - 1:
        summary += f" (the run is at step {records[-1]['step']})"
    st.markdown(summary)
    left, right = st.columns(2)
    with left:
        st.subheader("Query predictions")
        if has_query:
            labels = tensors.query_y.cpu().numpy()
            rows = [f"{tensors.names[y]} · {item.name[-8:]}" for y, item in zip(labels, tensors.query_items)]
            st.plotly_chart(charts.probabilities(records[shown]["query_probs"], tensors.names, rows), key="heat")
            st.plotly_chart(charts.true_class_probability(records, labels, tensors.names), key="truep")
        else:
            st.caption("Add query images on the Build page to see predictions on held-out images.")
    with right:
        st.subheader("How far each layer moved")
        st.plotly_chart(charts.layer_movement(records), key="shift")
        st.caption(
            "L2 distance of each layer's weights from where adaptation started: which layers the steps change, and "
            "by how much (a zero head must move before the body gets any gradient; a prototype head may barely "
            "move)."
        )
    if learned_rule and init == "maml":
        learned_optimiser(records[: shown + 1])


def learned_optimiser(records: list[dict]) -> None:
    """The LSTM meta-learner's gates, layer by layer, up to the step looked at: the lesson "a learned optimiser"."""
    st.subheader("The learned optimiser at work")
    if not records[-1].get("gates"):
        st.caption("Take a step to see the gates the LSTM sets for it.")
        return
    hidden = ("scale",) if own_rates else ()  # at a saturated ~1 it would squash the other layers' rates
    st.plotly_chart(charts.gates(records, shipped.inner_lr, hidden), key="gates")
    if not own_rates:
        st.caption(
            "The gates are fixed here (forget 1, input at the lr in the box): the same cell update is then plain "
            "gradient descent. Switch **Use its learned update rule** on to see the learned gates."
        )
        return
    last = records[-1]["gates"]
    weights = {layer: gates for layer, gates in last.items() if layer != "scale"}  # the scale: one number, below
    rates = [gates["input"] for gates in weights.values()]
    kept = min(gates["forget"] for gates in weights.values())
    scale = (
        " The feature scale (hidden; click it in the legend to show it), one number near 100, saturates its input gate "
        "(the LSTM also reads each weight's value), but its gradient is so small that it barely moves."
        if "scale" in last
        else ""
    )
    st.caption(
        f"MAML takes every step at one fixed lr ({shipped.inner_lr:g}, dotted). This model's LSTM sets each weight's "
        "step size (left: input gate, mean per layer) and how much of the weight it keeps (right: forget gate) anew "
        f"at every step, from that weight's gradient and the loss. At step {records[-1]['step']} the layers step at "
        f"{min(rates):.2g} to {max(rates):.2g} (up to {max(rates) / shipped.inner_lr:.0f}x MAML's lr) and keep at "
        f"least {kept:.4f} of each weight.{scale}"
    )


def rates_in_words(losses: dict[str, list[float]], accuracies: dict[str, list[float]]) -> str:
    """What the three rates' curves show, read off them: whether accuracy differs, how fast the loss falls, which
    rate overshoots."""
    labels = list(losses)
    finite = {label: [v for v in values if math.isfinite(v)] for label, values in losses.items()}
    overshoot = [
        label
        for label in labels
        if len(finite[label]) < len(losses[label]) or max(finite[label]) > 1.5 * finite[label][0]
    ]
    parts = []
    step1 = {label: values[1] for label, values in accuracies.items() if len(values) > 1}
    if step1 and max(step1.values()) - min(step1.values()) < 2:
        parts.append(
            f"Accuracy is set by step 1 here ({min(step1.values()):.0f}% at every rate): a zero head's first step "
            "writes each class's mean feature into the head, at any rate (see Learn); the rate sets how fast the "
            "support loss falls"
        )
    ends = ", ".join(f"{finite[label][-1]:.3g} at {label.split(' (')[0]}" for label in labels if finite[label])
    parts.append(f"support loss after the last step: {ends}")
    if overshoot:
        parts.append(f"{' and '.join(overshoot)} overshoots: its loss rises instead of falling")
    return "; ".join(parts) + "."


stepping_area(init, lr, run_steps)

st.divider()
st.subheader(
    "Side by side: meta-learned init vs random init vs ProtoNet"
    if "random" in INITS
    else "Side by side: "
    + " vs ".join(title.split(",")[0].split(" (")[0].replace("The ", "the ", 1) for title in INITS.values())
)
if st.button(f"Compare ({run_steps} steps each)", icon="⚖️"):
    comparison = {}
    with st.status("Adapting from each starting point ...") as status:
        for key, title in INITS.items():
            status.update(label=f"{title} ...")
            other = learner_for(key)  # each with its own inputs (your whole network: pixels)
            own = task_tensors(classes, other.backbone.input_spec, other.backbone.device)
            comparison[key] = list(adaptation_records(other, own, run_steps, lr))
        status.update(label="Done", state="complete")
    st.session_state.comparison = comparison
comparison = st.session_state.get("comparison")
if comparison and set(comparison) == set(INITS):  # else made with another model's starting points
    metric = "query_acc" if has_query else "support_loss"
    steps = max(len(recs) for key, recs in comparison.items() if key != "protonet")  # ProtoNet takes none
    curves = {}
    for key, recs in comparison.items():
        values = [r[metric] for r in recs] if key != "protonet" else [recs[0][metric]] * steps
        curves[INITS[key]] = [100 * v for v in values] if metric == "query_acc" else values
    st.plotly_chart(charts.comparison(curves, "query accuracy %" if has_query else "support loss"), key="compare")
    names, overlaps = list(curves), []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            same = np.isclose(curves[a], curves[b], rtol=0, atol=1e-6) if len(curves[a]) == len(curves[b]) else []
            if np.all(same):
                overlaps.append(f"**{a}** and **{b}** give the same values at every step")
            elif np.sum(same) >= 2:
                overlaps.append(f"**{a}** and **{b}** at steps {', '.join(map(str, np.flatnonzero(same)))}")
    if overlaps:
        st.caption("Lines on top of each other, told apart by dash style: " + "; ".join(overlaps) + ".")
    if has_query and "random" in INITS:  # your own model has no meta-learned init to compare
        meta, scratch = curves[INITS["maml"]][-1], curves[INITS["random"]][-1]
        if meta - scratch >= 10:
            st.caption(
                f"Meta-learning's point: from the meta-learned initialisation these steps reach {meta:.0f}%, "
                f"from a random one only {scratch:.0f}%. That gap is what meta-training bought."
            )
        else:
            frozen = shipped.backbone.input_spec.body is not None
            why = (
                "the frozen ImageNet body already gives features that separate these classes, and only the small "
                "adapter and head on top of it start at random"
                if frozen
                else "these classes are easy to tell apart even for an untrained network"
            )
            verdict = "does better than the meta-learned one" if scratch - meta >= 2 else "does about as well"
            st.caption(
                f"On this task a random initialisation {verdict} ({scratch:.0f}% against {meta:.0f}% after "
                f"the same steps): {why}."
            )
    elif has_query and INITS == NOT_META_TRAINED_INITS:
        head, proto = curves[INITS["maml"]][-1], curves[INITS["protonet"]][-1]
        st.caption(
            f"After {plural(steps - 1, 'step')} the zero head reaches {head:.0f}%, ProtoNet on the same features "
            f"{proto:.0f}% without a step. Nothing in this model is meta-trained, so there is no meta-learned start to "
            "set against a random one: its features come from ImageNet pre-training (Learn says why meta-learning on "
            "the lab's 28 photo classes did not help). Pick **Characters** in the sidebar to see what a meta-learned "
            "start buys."
        )

st.divider()
st.subheader("The learning rate: ÷10, the default, ×10")
st.caption(f"From {INITS[init][0].lower() + INITS[init][1:]}, the starting point picked at the top.")
base_lr = float(shipped.inner_lr)
RATES = {
    f"lr {base_lr * factor:g} ({name})": base_lr * factor
    for name, factor in (("÷10", 0.1), ("default", 1.0), ("×10", 10.0))
}
if st.button(f"Compare the rates ({run_steps} steps each)", icon="🎚️"):
    with st.status("Adapting at each rate ...") as status:
        st.session_state.lr_comparison = {
            label: list(adaptation_records(learner, tensors, run_steps, rate)) for label, rate in RATES.items()
        }
        status.update(label="Done", state="complete")
rate_runs = st.session_state.get("lr_comparison")
if rate_runs and set(rate_runs) == set(RATES):
    metric = "query_acc" if has_query else "support_acc"
    left, right = st.columns(2)
    losses = {label: [r["support_loss"] for r in recs] for label, recs in rate_runs.items()}
    accuracies = {label: [100 * r[metric] for r in recs] for label, recs in rate_runs.items()}
    left.plotly_chart(charts.comparison(losses, "support loss"), key="rates_loss")
    right.plotly_chart(charts.comparison(accuracies, f"{metric.split('_')[0]} accuracy %"), key="rates_acc")
    st.caption(rates_in_words(losses, accuracies))
