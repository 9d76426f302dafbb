"""The inner loop shared by every gradient-based algorithm: a generator of per-step snapshots.

Gradients are taken with `torch.func.grad`, which composes with both `torch.func.vmap`
(one call over a meta-batch of tasks) and ordinary autograd (the outer, meta-level
backward pass). With `first_order=False` the outer gradient flows through the inner
gradients themselves: the exact second-order MAML meta-gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from metacore.models import Params

LogitsFn = Callable[[Params, Tensor], Tensor]
# A learned update in place of the gradient step (the LSTM meta-learner): (parameters, their gradients, the support
# loss) -> (the next parameters, the gates it used: {"input": {name: tensor}, "forget": {name: tensor}}).
UpdateRule = Callable[[Params, Params, Tensor], tuple[Params, dict[str, Params]]]


@dataclass
class Snapshot:
    """The state after `step` inner updates (step 0 = before adaptation). Values are tensors."""

    step: int
    params: Params
    support_loss: Tensor
    support_acc: Tensor
    support_logits: Tensor
    query_logits: Tensor | None = None
    query_loss: Tensor | None = None
    query_acc: Tensor | None = None
    gates: dict[str, Params] | None = None  # a learned update's gates on the step that led here (None: SGD)


def accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    return (logits.argmax(-1) == labels).to(logits.dtype).mean()


def sgd_update(params: Params, grads: Params, lr: float | Params) -> Params:
    """One gradient step; `lr` is a scalar or (Meta-SGD) a tensor per parameter. Builds new tensors."""
    if isinstance(lr, dict):
        return {k: p - lr[k] * grads[k] for k, p in params.items()}
    return {k: p - lr * grads[k] for k, p in params.items()}


def inner_loop(
    logits_fn: LogitsFn,
    params: Params,
    support_x: Tensor,
    support_y: Tensor,
    *,
    steps: int,
    lr: float | Params,
    query_x: Tensor | None = None,
    query_y: Tensor | None = None,
    adapt_keys: Collection[str] | None = None,
    first_order: bool = False,
    query_steps: Collection[int] | None = None,
    chunk: int | None = None,
    update: UpdateRule | None = None,
) -> Iterator[Snapshot]:
    """Adapt `params` to the support set by `steps` gradient steps, yielding steps+1 snapshots.

    `update` replaces the gradient step by a learned one (then `lr` is not used); with `first_order` it is given
    the gradients and the loss as constants.

    `adapt_keys` limits which parameters move (e.g. ANIL: the head only); the others pass
    through unchanged. The input dict and its tensors are never modified. With `chunk`, a large
    support set is processed `chunk` images at a time (the same step, gradients summed), so memory
    does not grow with its size; for inference only (it is not meant for the outer, meta-level graph).
    """
    keys = set(params) if adapt_keys is None else set(adapt_keys)
    fast = {k: v for k, v in params.items() if k in keys}
    frozen = {k: v for k, v in params.items() if k not in keys}
    n = len(support_y)
    parts = (
        list(zip(support_x.split(chunk), support_y.split(chunk))) if chunk and n > chunk else [(support_x, support_y)]
    )

    def part_objective(fast: Params, x: Tensor, y: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        logits = logits_fn({**frozen, **fast}, x)
        loss = F.cross_entropy(logits, y, reduction="sum") / n if len(parts) > 1 else F.cross_entropy(logits, y)
        return loss, (loss, logits)

    def support_objective(fast: Params, with_grad: bool) -> tuple[Params | None, Tensor, Tensor]:
        grads, losses, logits = None, [], []
        for x, y in parts:
            if with_grad:
                g, (loss, part_logits) = torch.func.grad(part_objective, has_aux=True)(fast, x, y)
                grads = g if grads is None else {k: grads[k] + g[k] for k in g}
            else:
                loss, part_logits = part_objective(fast, x, y)[1]
            losses.append(loss)
            logits.append(part_logits)
        if len(parts) == 1:
            return grads, losses[0], logits[0]
        return grads, torch.stack(losses).sum(), torch.cat(logits)

    gates = None
    for step in range(steps + 1):
        current = {**frozen, **fast}
        grads, loss, logits = support_objective(fast, with_grad=step < steps)
        snapshot = Snapshot(step, current, loss, accuracy(logits, support_y), logits, gates=gates)
        if query_x is not None and (query_steps is None or step in query_steps or step == steps):
            snapshot.query_logits = logits_fn(current, query_x)
            if query_y is not None:
                snapshot.query_loss = F.cross_entropy(snapshot.query_logits, query_y)
                snapshot.query_acc = accuracy(snapshot.query_logits, query_y)
        yield snapshot
        if step < steps:
            if first_order:
                grads = {k: g.detach() for k, g in grads.items()}
            if update is not None:
                fast, gates = update(fast, grads, loss.detach() if first_order else loss)
            else:
                fast = sgd_update(fast, grads, lr if not isinstance(lr, dict) else {k: lr[k] for k in fast})


def diverged(first_loss: float, loss: float) -> bool:
    """The Adapt page's rule, shared with the CLI: a support loss that is no longer a number, or 10x its step-0
    value, means the steps overshoot."""
    return not math.isfinite(loss) or (first_loss > 0 and loss > 10 * first_loss)


def run_to_end(snapshots: Iterator[Snapshot]) -> Snapshot:
    """Consume an inner loop and return its last snapshot."""
    *_, last = snapshots
    return last


def layer_shift(start: Params, now: Params) -> dict[str, float]:
    """L2 distance moved by each layer's parameters (grouped by name prefix, e.g. `blocks.0`, `head`)."""
    moved: dict[str, float] = {}
    for k, v in now.items():
        if k in start:
            moved[layer_of(k)] = moved.get(layer_of(k), 0.0) + float(((v.detach() - start[k].detach()) ** 2).sum())
    return {layer: total**0.5 for layer, total in moved.items()}


def layer_of(name: str) -> str:
    """The layer a parameter belongs to: `blocks.0.conv.weight` -> `blocks.0`, `head.bias` -> `head`."""
    return name.rsplit(".", 2)[0] if name.startswith("blocks.") else name.split(".")[0]


def layer_gates(gates: dict[str, Params]) -> dict[str, dict[str, float]]:
    """A learned update's gates as one mean per layer: {layer: {"input": mean, "forget": mean}}."""
    means: dict[str, dict[str, list[Tensor]]] = {}
    for gate, values in gates.items():
        for name, value in values.items():
            means.setdefault(layer_of(name), {}).setdefault(gate, []).append(value.detach().flatten())
    return {layer: {gate: float(torch.cat(v).mean()) for gate, v in parts.items()} for layer, parts in means.items()}
