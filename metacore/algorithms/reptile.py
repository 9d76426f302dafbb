"""Reptile (Nichol et al. 2018): move the initialisation toward the weights adapted to each task.

The outer "gradient" is init - mean(adapted weights); any optimiser can apply it
(plain SGD with lr epsilon is the paper's interpolation step).
"""

from __future__ import annotations

import torch

from metacore.algorithms.maml import MAML
from metacore.data import Task
from metacore.inner import run_to_end


class Reptile(MAML):
    name = "reptile"
    first_order = True

    def outer_step(self, optimizer: torch.optim.Optimizer, tasks: list[Task], mode: str = "loop") -> dict:
        optimizer.zero_grad(set_to_none=True)
        init = {k: v.detach() for k, v in self.params.items()}
        shift = {k: torch.zeros_like(v) for k, v in init.items()}
        losses, accs = [], []
        for task in tasks:
            # Reptile has no support/query distinction: the inner loop trains on all of the task's images.
            x = torch.cat([task.support_x, task.query_x])
            y = torch.cat([task.support_y, task.query_y])
            with torch.no_grad():
                last = run_to_end(self.adapt(x, y, way=task.way, params=init))
            for k in shift:
                shift[k] += (init[k] - last.params[k]) / len(tasks)
            losses.append(last.support_loss)
            accs.append(last.support_acc)
        for k, p in self.params.items():
            p.grad = shift[k]
        optimizer.step()
        return {"loss": torch.stack(losses).mean().item(), "accuracy": torch.stack(accs).mean().item()}
