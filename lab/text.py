"""Words the pages share."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from metacore.algorithms import MAML


def plural(n: int, word: str) -> str:
    """'1 step', '5 steps', '1,200 images'."""
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def adapts_plainly(learner: MAML) -> str:
    """How a model adapts, in words a teacher can read aloud: 'in 5 steps, each weight at a learning rate
    meta-learning chose for it' (the numbers: `learner.rates_in_words()`, behind an expander or a tooltip)."""
    steps = plural(learner.inner_steps, "step")
    if learner.name == "lstm":
        return f"in {steps}, each step's size for each weight set anew by a learned optimiser (an LSTM)"
    if getattr(learner, "learns_rates", False):
        return f"in {steps}, each weight at a learning rate meta-learning chose for it"
    return f"in {steps}, at learning rate {learner.inner_lr:g}"
