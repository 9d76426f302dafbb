"""MAML (Finn et al. 2017) with the exact second-order meta-gradient, and first-order MAML.

The other gradient-based methods subclass this: they change what adapts (ANIL), how fast
(Meta-SGD), or how the outer update is formed (Reptile).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator

import torch
from torch import Tensor

from metacore.data import Task, stack_tasks
from metacore.device import one_task_per_thread
from metacore.errors import check_number
from metacore.inner import LogitsFn, Snapshot, UpdateRule, inner_loop, run_to_end
from metacore.models import Backbone, Params, init_head, linear_head

RULE_PREFIXES = ("lr.", "lstm.")  # meta-parameters of the inner update (Meta-SGD's rates, the LSTM's weights)


class MAML:
    """Meta-learns the backbone initialisation; a fresh any-way head (zero or prototype) per task."""

    name = "maml"
    first_order = False
    adapted_keys: tuple[str, ...] | None = None  # None: every parameter adapts

    def __init__(
        self,
        backbone: Backbone,
        inner_lr: float = 0.4,
        inner_steps: int = 5,
        head: str = "zero",
        *,
        way_scaled_head: bool = False,
    ) -> None:
        self.backbone = backbone
        self.inner_lr = float(inner_lr)
        self.inner_steps = int(inner_steps)
        self.head = head
        self.way_scaled_head = way_scaled_head  # an N-way task's head steps are N/5 times the rate (`scale_head_rates`)
        self.params: Params = dict(backbone.params)  # the meta-parameters (an outer optimiser updates them)

    # -- forward -----------------------------------------------------------------------------
    def logits(self, params: Params, x: Tensor) -> Tensor:
        return linear_head(self.backbone.features(params, x), params)

    def prepare(
        self, params: Params, support_x: Tensor, support_y: Tensor, query_x: Tensor | None, way: int
    ) -> tuple[LogitsFn, Params, Tensor, Tensor | None]:
        """The inner loop's inputs: a logits function, the starting parameters (body plus a new
        head for `way` classes), and the support/query inputs that function takes."""
        if self.head == "zero":
            features = support_x.new_zeros(1, self.backbone.feature_dim)
        else:
            features = self.backbone.features(params, support_x)
        return self.logits, {**params, **init_head(self.head, features, support_y, way)}, support_x, query_x

    def inner_lrs(self, params: Params) -> float | Params:
        return self.inner_lr

    def update_rule(self, params: Params, lr: float | None) -> UpdateRule | None:
        """A learned inner update (the LSTM meta-learner) for one adaptation; None: gradient steps at the rates."""
        return None

    def rates_for(self, lr: float) -> float | Params:
        """The inner rates when one `lr` is asked for (the Adapt page's box): that lr for every parameter."""
        return lr

    @property
    def learns_rates(self) -> bool:
        """Whether its own inner rates are meta-learned per parameter (Meta-SGD) rather than one number."""
        return isinstance(self.inner_lrs(self.params), dict)

    def lr_in_force(self, lr: float | None = None) -> float | str:
        """What adaptation uses for `lr` (None: the model's own): a number, or a description of learned rates
        (a way-scaled head is said by `way_scaled_head`)."""
        if lr is not None:
            return lr
        if not self.learns_rates:
            return self.inner_lr
        learned, fixed = self._learned_and_fixed_rates()
        return (
            f"learned per-parameter rates (Meta-SGD; mean {learned.mean().item():.3g}, "
            f"{learned.min().item():.3g} to {learned.max().item():.3g}"
            + "".join(f"; the head's lr {lr:g}" for lr in fixed)
            + ")"
        )

    def rates_in_words(self) -> str:
        """The model's own inner rates in a few words, for pages and cards: "lr 0.001", or its learned rates (the
        `lr_in_force` description gives their range); and a way-scaled head."""
        scaled = " x N/5 in an N-way task" if self.way_scaled_head else ""
        if not self.learns_rates:
            return f"lr {self.inner_lr:g}" + (f" (the head's{scaled})" if scaled else "")
        learned, fixed = self._learned_and_fixed_rates()
        mean = learned.mean().item()
        if fixed:  # only the body's rates are learned
            return f"meta-learned rates (one per body weight, mean {mean:.2g}; the head at lr {fixed[0]:g}{scaled})"
        return f"meta-learned rates (one per weight, mean {mean:.2g}" + (f"; the head's{scaled})" if scaled else ")")

    def _learned_and_fixed_rates(self) -> tuple[Tensor, list[float]]:
        """A learned-rates model's rates: the learned ones flattened, and the fixed ones (the head's, when only the
        body's rates are learned)."""
        rates = self.inner_lrs(self.params)
        learned = torch.cat([v.flatten() for v in rates.values() if isinstance(v, Tensor)])
        return learned, sorted({v for v in rates.values() if not isinstance(v, Tensor)})

    # -- the inner loop ----------------------------------------------------------------------
    def adapt(
        self,
        support_x: Tensor,
        support_y: Tensor,
        query_x: Tensor | None = None,
        query_y: Tensor | None = None,
        *,
        steps: int | None = None,
        lr: float | None = None,
        way: int | None = None,
        params: Params | None = None,
        first_order: bool | None = None,
        query_steps: Collection[int] | None = None,
        chunk: int | None = None,
    ) -> Iterator[Snapshot]:
        """Yield one snapshot per inner step (0 = before adapting). Never modifies `self.params`."""
        params = self.params if params is None else params
        way = way if way is not None else int(support_y.max()) + 1
        if lr is not None:
            check_number(lr, "the inner learning rate", 0, 1000.0, above=True)
        logits_fn, start, support_in, query_in = self.prepare(
            _network_params(params), support_x, support_y, query_x, way
        )
        rates = self.inner_lrs(params) if lr is None else self.rates_for(lr)
        if self.way_scaled_head:
            rates = scale_head_rates(rates, start, way)
        return inner_loop(
            logits_fn,
            start,
            support_in,
            support_y,
            steps=self.inner_steps if steps is None else steps,
            lr=rates,
            query_x=query_in,
            query_y=query_y,
            adapt_keys=self.adapted_keys,
            first_order=self.first_order if first_order is None else first_order,
            query_steps=query_steps,
            chunk=chunk,
            update=self.update_rule(params, lr),
        )

    # -- the outer loop ----------------------------------------------------------------------
    def task_loss(self, params: Params, task: Task) -> tuple[Tensor, Tensor]:
        """Query loss and accuracy after adaptation, differentiable w.r.t. `params`."""
        last = run_to_end(
            self.adapt(
                task.support_x,
                task.support_y,
                task.query_x,
                task.query_y,
                way=task.way,
                params=params,
                query_steps=(),
            )
        )
        return last.query_loss, last.query_acc

    def meta_loss(self, tasks: list[Task], vectorize: bool = False) -> tuple[Tensor, Tensor]:
        """Mean query loss/accuracy over a meta-batch: one `vmap` call, or a loop over tasks."""
        if vectorize:
            return self.vmap_loss(stack_tasks(tasks))
        results = [self.task_loss(self.params, task) for task in tasks]
        return torch.stack([r[0] for r in results]).mean(), torch.stack([r[1] for r in results]).mean()

    def vmap_loss(self, batch: Task) -> tuple[Tensor, Tensor]:
        """Mean query loss/accuracy of stacked tasks (a leading task axis), as one `vmap` call."""

        def one_task(params: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Tensor, Tensor]:
            return self.task_loss(params, Task(sx, sy, qx, qy, batch.classes))

        losses, accs = torch.func.vmap(one_task, in_dims=(None, 0, 0, 0, 0))(
            self.params, batch.support_x, batch.support_y, batch.query_x, batch.query_y
        )
        return losses.mean(), accs.mean()

    def threaded_meta_gradient(self, tasks: list[Task], workers: int) -> tuple[Tensor, Tensor, Params]:
        """Mean loss, accuracy and meta-gradient, one task per worker thread at a time.

        On a few CPU cores, one single-threaded task per core beats spreading each small
        convolution over all cores. Per-task gradients are summed in task order, so the
        result does not depend on thread timing.
        """
        keys = list(self.params)

        def one_task(task: Task) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
            loss, acc = self.task_loss(self.params, task)
            grads = torch.autograd.grad(loss, [self.params[k] for k in keys], allow_unused=True)
            return loss.detach(), acc.detach(), grads

        results = one_task_per_thread(one_task, tasks, workers)
        grads = {}
        for i, k in enumerate(keys):
            parts = [r[2][i] for r in results if r[2][i] is not None]
            grads[k] = torch.stack(parts).sum(0) / len(tasks) if parts else torch.zeros_like(self.params[k])
        return torch.stack([r[0] for r in results]).mean(), torch.stack([r[1] for r in results]).mean(), grads

    def outer_step(self, optimizer: torch.optim.Optimizer, tasks: list[Task], mode: str = "loop") -> dict:
        """One meta-update. `mode`: "loop" over tasks, one "vmap" call, or "threads" (CPU)."""
        optimizer.zero_grad(set_to_none=True)
        workers = min(len(tasks), torch.get_num_threads())
        if mode == "threads" and workers > 1:  # one task: a loop over it is faster (0.71 vs 0.92 s, 60-way)
            loss, acc, grads = self.threaded_meta_gradient(tasks, workers)
            for k, p in self.params.items():
                p.grad = grads[k]
        else:
            loss, acc = self.meta_loss(tasks, vectorize=mode == "vmap")
            loss.backward()
        optimizer.step()
        return {"loss": loss.item(), "accuracy": acc.item()}

    def config(self) -> dict:
        config = {"algorithm": self.name, "inner_lr": self.inner_lr, "inner_steps": self.inner_steps, "head": self.head}
        return config | ({"way_scaled_head": True} if self.way_scaled_head else {})


def scale_head_rates(rates: float | Params, params: Params, way: int) -> Params:
    """Inner rates for an N-way task with the head's multiplied by N/5. The inner loss is a mean over the classes,
    so each class's head row gets a 1/N share of a step: scaled, that share no longer shrinks with the way (one
    head rate suits 5 and 20 ways), and a 5-way task steps exactly at the rates."""
    factor = way / 5
    rates = rates if isinstance(rates, dict) else {k: rates for k in params}
    return {k: v * factor if k.startswith("head.") else v for k, v in rates.items()}


def _network_params(params: Params) -> Params:
    return {k: v for k, v in params.items() if not k.startswith(RULE_PREFIXES)}


class FOMAML(MAML):
    """First-order MAML: inner gradients are treated as constants in the outer backward pass."""

    name = "fomaml"
    first_order = True
