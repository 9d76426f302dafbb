"""Adaptation runs: a session's inner loops, one step per click, their divergence, and the step the pages use."""

from __future__ import annotations

import math
import threading

import streamlit as st
import torch

from lab.memo import remembered
from lab.models import inits, learner_for, model_label, shared_model
from lab.task import TaskTensors, task_signature
from lab.text import plural
from metacore.algorithms import MAML
from metacore.inner import diverged, layer_gates, layer_shift
from metacore.isolation import compute_slot


def reset_runs() -> None:
    """Forget the session's adaptations and the Adapt page's comparisons: made with another model or task."""
    st.session_state.runs = {}
    st.session_state.pop("comparison", None)
    st.session_state.pop("lr_comparison", None)


def session_runs() -> dict[str, dict]:
    """This session's runs, one per starting point (a key of lab.models.inits())."""
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
                "gates": layer_gates(snap.gates) if snap.gates else None,  # a learned update's, per layer
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
    if not diverged(first, loss):
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


def chosen_adaptation(tensors: TaskTensors) -> tuple[MAML, dict[str, torch.Tensor], str]:
    """(learner, adapted parameters, a caption): the step picked on the Adapt page, else the shipped
    model adapted with its default lr and steps."""
    runs = session_runs()
    chosen = st.session_state.get("chosen_step", {})
    init = chosen.get("init")
    if init in runs and runs[init]["records"] and init != "whole":  # the whole network's run: the Adapt page only
        records = runs[init]["records"]
        record = records[min(chosen.get("step", len(records) - 1), len(records) - 1)]
        caption = f"{inits()[init]}, adapted for {record['step']} steps (chosen on the Adapt page)"
        return learner_for(init), record["params"], caption
    shipped, _ = shared_model()
    params = remembered(
        "default_adaptation",
        task_signature(tensors),
        lambda: list(adaptation_records(shipped, tensors, shipped.inner_steps, None))[-1]["params"],  # own lr(s)
        keep=(tensors.support_items, tensors.query_items),
    )
    steps = plural(shipped.inner_steps, "step")
    caption = f"{inits()['maml']}, adapted for its default {steps} (pick another on the Adapt page)"
    return shipped, params, caption


def run_steps_key() -> str:
    """The Adapt page's "Steps per Run", one per model (a newly picked model starts at its own inner steps)."""
    return f"run_steps:{model_label()}"


def lr_key() -> str:
    """The Adapt page's lr box, one per model (a widget's value comes back from the browser with every rerun, so
    dropping it from session state would not bring back the new model's default)."""
    return f"lr:{model_label()}"
