"""CUDA graphs for meta-training: record one outer step, then replay it for every meta-batch of that shape.

A second-order MAML step on small tasks launches thousands of small kernels, and on a GPU the
launch overhead, not the arithmetic, sets the pace. Replaying a recorded graph skips it. The
replay runs the very kernels of the eager `vmap` step on the same memory, so it computes the
same meta-gradient (scripts/bench/device_check.py compares the two on a GPU).
"""

from __future__ import annotations

import torch

from metacore.algorithms.maml import MAML
from metacore.data import EpisodeSampler, Task, stack_tasks
from metacore.errors import MetacoreError


def check_capturable(learner: MAML, device: torch.device, sampler: EpisodeSampler, cosine: bool) -> None:
    """Clear errors for training setups a recorded graph cannot serve."""
    if device.type != "cuda":
        raise MetacoreError("--batching graph needs a CUDA GPU (use --device cuda)")
    if type(learner).outer_step is not MAML.outer_step:  # Reptile and Meta-SGD step differently
        raise MetacoreError(f"--batching graph serves MAML-style algorithms, not '{learner.name}'")
    if sampler.way[0] != sampler.way[1] or sampler.shot[0] != sampler.shot[1]:
        raise MetacoreError("--batching graph needs one task shape: a fixed --way and --shot, not ranges")
    if cosine:
        raise MetacoreError("--batching graph keeps the meta learning rate fixed: drop --cosine")


class CapturedOuterStep:
    """`step(tasks)` does what `learner.outer_step(optimizer, tasks, "vmap")` does, from a CUDA graph.

    The optimizer must be made with `capturable=True`. Recording needs a few warm-up steps; the
    parameters and optimizer state are put back afterwards, so training is not changed by them.
    """

    def __init__(self, learner: MAML, optimizer: torch.optim.Optimizer, tasks: list[Task], warmup: int = 3) -> None:
        if not all(group.get("capturable") for group in optimizer.param_groups):
            raise MetacoreError("a recorded outer step needs an optimizer made with capturable=True")
        self.learner, self.optimizer = learner, optimizer
        self.batch = stack_tasks(tasks)  # static inputs: each step copies its tasks into these tensors
        params = list(learner.params.values())
        saved_params = [p.detach().clone() for p in params]
        saved_state = {p: {k: v.clone() for k, v in optimizer.state[p].items()} for p in params}

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up (lazy initialisation, cuDNN choices) off the capture stream
            for _ in range(warmup):
                self._eager_step()
        torch.cuda.current_stream().wait_stream(side)
        with torch.no_grad():  # undo the warm-up steps, in place: the graph will read these very tensors
            for p, value in zip(params, saved_params):
                p.copy_(value)
            for p in params:
                for key, value in optimizer.state[p].items():
                    value.copy_(saved_state[p][key]) if key in saved_state[p] else value.zero_()

        self.graph = torch.cuda.CUDAGraph()
        optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self.loss, self.accuracy = self._eager_step(zero_grad=False)

    def _eager_step(self, zero_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        if zero_grad:
            self.optimizer.zero_grad(set_to_none=True)
        loss, accuracy = self.learner.vmap_loss(self.batch)
        loss.backward()
        self.optimizer.step()
        return loss.detach(), accuracy.detach()

    def __call__(self, tasks: list[Task]) -> dict:
        fresh = stack_tasks(tasks)  # one stack per field, then one copy each: fewer kernels than a copy per task
        for static, new in zip(
            (self.batch.support_x, self.batch.support_y, self.batch.query_x, self.batch.query_y),
            (fresh.support_x, fresh.support_y, fresh.query_x, fresh.query_y),
        ):
            if static.shape != new.shape:
                raise MetacoreError(f"a recorded outer step takes tasks of one shape, got {tuple(new.shape)}")
            static.copy_(new)
        self.graph.replay()
        return {"loss": self.loss.item(), "accuracy": self.accuracy.item()}
