"""GPU checks that CPU tests cannot make: on a CUDA device, in float64, the vectorised meta-gradient
equals the per-task loop's and both match central finite differences; a CUDA-graph outer step
trains exactly like the eager vmap step. Prints one JSON line.

    python scripts/bench/device_check.py [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from metacore.algorithms import MAML  # noqa: E402
from metacore.bench import synthetic_tasks  # noqa: E402
from metacore.capture import CapturedOuterStep  # noqa: E402
from metacore.models import Backbone  # noqa: E402


def meta_gradient(learner: MAML, tasks, vectorize: bool) -> dict:
    learner.params = {k: v.detach().clone().requires_grad_(True) for k, v in learner.params.items()}
    loss, _ = learner.meta_loss(tasks, vectorize)
    return dict(zip(learner.params, torch.autograd.grad(loss, list(learner.params.values()))))


def largest_relative_difference(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-30)) for k in a)


def exactness(device: torch.device, steps: int) -> dict:
    """float64 Conv-4 on 3-way 1-shot tasks: vmap vs loop, and the gradient against finite differences."""
    torch.manual_seed(0)
    learner = MAML(Backbone("conv4").to(device, torch.float64), 0.3, steps, "proto")
    tasks = [t.to(device, torch.float64) for t in synthetic_tasks(4, 3, 1, 2, device, seed=3)]
    loop, vmap = meta_gradient(learner, tasks, False), meta_gradient(learner, tasks, True)
    g = torch.Generator().manual_seed(1)
    direction = {k: torch.randn(v.shape, generator=g, dtype=torch.float64).to(device) for k, v in loop.items()}
    norm = sum((v**2).sum() for v in direction.values()) ** 0.5
    direction = {k: v / norm for k, v in direction.items()}
    base, eps = {k: v.detach() for k, v in learner.params.items()}, 1e-6

    def loss_at(sign: float) -> float:
        learner.params = {k: base[k] + sign * eps * direction[k] for k in base}
        with torch.no_grad():
            return learner.meta_loss(tasks)[0].item()

    numeric = (loss_at(1) - loss_at(-1)) / (2 * eps)
    analytic = sum(float((loop[k] * direction[k]).sum()) for k in loop)
    return {
        "inner_steps": steps,
        "vmap_vs_loop_max_relative": largest_relative_difference(vmap, loop),
        "finite_difference_relative_error": abs(analytic - numeric) / max(abs(numeric), 1e-3),
    }


def graph_vs_eager(device: torch.device, outer_steps: int = 5) -> dict:
    """Five outer steps (5w1s15q, 32 tasks, float32) recorded-and-replayed vs eager vmap, same start."""
    tasks = [synthetic_tasks(32, 5, 1, 15, device, seed=s) for s in range(outer_steps)]
    runs = {}
    for mode in ("vmap", "graph"):
        torch.manual_seed(0)
        learner = MAML(Backbone("conv4").to(device), 0.4, 1, "zero")
        learner.params = {k: v.clone().requires_grad_(True) for k, v in learner.params.items()}
        optimizer = torch.optim.Adam(learner.params.values(), 1e-3, capturable=True)
        step = CapturedOuterStep(learner, optimizer, tasks[0]) if mode == "graph" else None
        losses = [step(batch) if step else learner.outer_step(optimizer, batch, "vmap") for batch in tasks]
        runs[mode] = ([m["loss"] for m in losses], {k: v.detach() for k, v in learner.params.items()})
    return {
        "losses_vmap": runs["vmap"][0],
        "losses_graph": runs["graph"][0],
        "params_max_abs_difference": max(
            float((runs["graph"][1][k] - runs["vmap"][1][k]).abs().max()) for k in runs["vmap"][1]
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    device = torch.device(parser.parse_args().device)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "torch": torch.__version__,
        "exactness": [exactness(device, steps) for steps in (1, 3)],
    }
    if device.type == "cuda":
        try:
            result["graph_vs_eager"] = graph_vs_eager(device)
        except RuntimeError as error:
            result["graph_vs_eager"] = {"error": str(error)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
