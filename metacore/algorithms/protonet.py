"""Prototypical Networks (Snell et al. 2017): classify by distance to class means; no inner loop."""

from __future__ import annotations

from collections.abc import Iterator

import torch.nn.functional as F
from torch import Tensor

from metacore.algorithms.maml import MAML
from metacore.inner import Snapshot, accuracy
from metacore.models import Backbone, Params, class_means, proto_head


def squared_distances(features: Tensor, means: Tensor) -> Tensor:
    return ((features.unsqueeze(-2) - means.unsqueeze(-3)) ** 2).sum(-1)


class ProtoNet(MAML):
    """Logits are -|f(x) - c_k|^2. `adapt` yields a single snapshot (step 0) whatever `steps` says;
    its parameters carry the equivalent linear head (W = 2c_k, b = -|c_k|^2), which gives the same
    probabilities, so every method's adapted parameters are used the same way downstream."""

    name = "protonet"

    def __init__(self, backbone: Backbone, inner_lr: float = 0.0, inner_steps: int = 0, head: str = "proto") -> None:
        super().__init__(backbone, inner_lr, 0, "proto")

    def adapt(
        self,
        support_x: Tensor,
        support_y: Tensor,
        query_x: Tensor | None = None,
        query_y: Tensor | None = None,
        *,
        way: int | None = None,
        params: Params | None = None,
        **_ignored,
    ) -> Iterator[Snapshot]:
        params = self.params if params is None else params
        way = way if way is not None else int(support_y.max()) + 1
        support_features = self.backbone.features(params, support_x)
        means = class_means(support_features, support_y, way)
        support_logits = -squared_distances(support_features, means)
        snapshot = Snapshot(
            0,
            {**params, **proto_head(support_features, support_y, way)},
            F.cross_entropy(support_logits, support_y),
            accuracy(support_logits, support_y),
            support_logits,
        )
        if query_x is not None:
            snapshot.query_logits = -squared_distances(self.backbone.features(params, query_x), means)
            if query_y is not None:
                snapshot.query_loss = F.cross_entropy(snapshot.query_logits, query_y)
                snapshot.query_acc = accuracy(snapshot.query_logits, query_y)
        yield snapshot
