"""ANIL (Raghu et al. 2020): only the head adapts in the inner loop; the body is meta-learned.

Features are computed once per task, so each inner step is a tiny linear-layer update.
"""

from __future__ import annotations

from torch import Tensor

from metacore.algorithms.maml import MAML
from metacore.inner import LogitsFn
from metacore.models import HEAD_KEYS, Params, init_head, linear_head


def head_logits(params: Params, features: Tensor) -> Tensor:
    return linear_head(features, params)


class ANIL(MAML):
    name = "anil"
    adapted_keys = HEAD_KEYS

    def prepare(
        self, params: Params, support_x: Tensor, support_y: Tensor, query_x: Tensor | None, way: int
    ) -> tuple[LogitsFn, Params, Tensor, Tensor | None]:
        support_features = self.backbone.features(params, support_x)
        query_features = None if query_x is None else self.backbone.features(params, query_x)
        head = init_head(self.head, support_features, support_y, way)
        return head_logits, {**params, **head}, support_features, query_features
