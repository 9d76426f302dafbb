"""Meta-SGD (Li et al. 2017): MAML that also meta-learns one inner learning rate per parameter entry."""

from __future__ import annotations

import torch

from metacore.algorithms.maml import MAML
from metacore.data import Task
from metacore.models import Backbone, Params


class MetaSGD(MAML):
    """The meta-parameters gain `lr.<name>` tensors. The head's rates are shared across classes
    (shape (1, dim) and (1,)) so that one set of rates serves any number of ways. With `body_rates_only`
    the head steps at `inner_lr` (scaled by the way with a way-scaled head) and only the body's rates are learned:
    meta-training otherwise grows the head's rates until its steps overshoot (issue 13)."""

    name = "metasgd"

    def __init__(
        self,
        backbone: Backbone,
        inner_lr: float = 0.4,
        inner_steps: int = 5,
        head: str = "zero",
        lrs: Params | None = None,
        body_rates_only: bool = False,
        *,
        way_scaled_head: bool = False,
    ) -> None:
        super().__init__(backbone, inner_lr, inner_steps, head, way_scaled_head=way_scaled_head)
        self.body_rates_only = body_rates_only
        if lrs is None:
            shapes = {k: v.shape for k, v in backbone.params.items()}
            if not body_rates_only:
                shapes |= {"head.weight": torch.Size([1, backbone.feature_dim]), "head.bias": torch.Size([1])}
            like = next(iter(backbone.params.values()))
            lrs = {
                f"lr.{k}": torch.full(s, self.inner_lr, dtype=like.dtype, device=like.device) for k, s in shapes.items()
            }
        self.params |= lrs

    def inner_lrs(self, params: Params) -> Params:
        rates = {k[3:]: v for k, v in params.items() if k.startswith("lr.")}
        return rates | ({"head.weight": self.inner_lr, "head.bias": self.inner_lr} if self.body_rates_only else {})

    def config(self) -> dict:
        return super().config() | ({"body_rates_only": True} if self.body_rates_only else {})

    def outer_step(self, optimizer: torch.optim.Optimizer, tasks: list[Task], mode: str = "loop") -> dict:
        metrics = super().outer_step(optimizer, tasks, mode)
        with torch.no_grad():  # rates must stay non-negative for the inner step to remain a descent step
            for k, v in self.params.items():
                if k.startswith("lr."):
                    v.clamp_(min=0.0)
        return metrics
