"""Your whole network adapting, step by step: every layer moves, with a zero head on its features.

The head starts at zero on the network's features, centred on the task's support mean (taken before the first
step) and L2-normalised, as in `FrozenFeatures`; every parameter of the network takes the inner steps too, the
body at `body_ratio` times the head's rate (its features are already trained: a head-sized step would wreck them).
"""

from __future__ import annotations

import torch
from torch import Tensor

from metacore.algorithms.maml import MAML
from metacore.inner import LogitsFn
from metacore.models import HEAD_KEYS, Params


class WholeNetwork(MAML):
    name = "whole"

    def __init__(self, backbone, inner_lr: float = 0.1, inner_steps: int = 5, body_ratio: float = 0.01) -> None:
        super().__init__(backbone, inner_lr, inner_steps, "zero")
        self.body_ratio = body_ratio

    def prepare(
        self, params: Params, support_x: Tensor, support_y: Tensor, query_x: Tensor | None, way: int
    ) -> tuple[LogitsFn, Params, Tensor, Tensor | None]:
        with torch.no_grad():
            centre = self.backbone.raw_features(params, support_x).mean(0)
        return super().prepare({**params, "center": centre}, support_x, support_y, query_x, way)

    def inner_lrs(self, params: Params) -> Params:
        return self.rates_for(self.inner_lr)

    def rates_for(self, lr: float) -> Params:
        """The head at `lr`, every network weight at `body_ratio` times it; the centre and scale stay."""
        body = {k: lr * self.body_ratio for k in self.backbone.params if k not in ("center", "scale")}
        return {**body, "center": 0.0, "scale": 0.0, **dict.fromkeys(HEAD_KEYS, lr)}

    @property
    def learns_rates(self) -> bool:
        return False

    def rates_in_words(self) -> str:
        return f"lr {self.inner_lr:g} for the head, {self.inner_lr * self.body_ratio:g} for every network weight"
