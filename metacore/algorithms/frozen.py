"""A zero head adapting on a frozen network's features: your own model in the lab, step by step.

ANIL's inner loop (only the head moves) on features centred on the task's support mean and L2-normalised; the
same computation as `metacore check`'s zero head, so the lab's Adapt page and the check agree.
"""

from __future__ import annotations

from torch import Tensor

from metacore.algorithms.anil import ANIL
from metacore.inner import LogitsFn
from metacore.models import Params


class FrozenFeatures(ANIL):
    name = "frozen"

    def prepare(
        self, params: Params, support_x: Tensor, support_y: Tensor, query_x: Tensor | None, way: int
    ) -> tuple[LogitsFn, Params, Tensor, Tensor | None]:
        params = {**params, "center": support_x.mean(0)}  # the task's own centre, kept with its head
        return super().prepare(params, support_x, support_y, query_x, way)
