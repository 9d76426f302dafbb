"""The benchmark runs end to end and reports every method it compares."""

from __future__ import annotations

import pytest

from metacore.bench import run_bench


def test_bench_reports_throughput_and_ratios() -> None:
    pytest.importorskip("higher", reason="higher is a dev/benchmark dependency (requirements-dev.txt)")
    result = run_bench("cpu", meta_batch=2, steps=2, repeats=1, progress=False)
    for name in ("metacore_loop", "metacore_vmap", "metacore_threads", "naive_loop", "higher",
                 "metacore_1_step_zero_head"):  # fmt: skip
        assert result["meta_training"][name]["tasks_per_s"] > 0, name
    assert "ANIL" in result["meta_training"]["metacore_1_step_zero_head"]["note"]
    assert "a zero 5-way head at each task's start, 2 inner steps" in result["compared"]
    assert set(result["ratios"]) == {"vs_naive_loop", "vs_higher"}
    assert result["inner_step_ms"] > 0 and result["second_order"] is True
    assert result["photo"]["inner_step_ms"] > 0 and result["photo"]["extract_25_photos_s"] > 0


@pytest.mark.parametrize("steps", [1, 2])
def test_the_three_sides_compute_the_same_meta_gradient(steps: int) -> None:
    """Like for like: from the same Conv-4 weights and a zero head at each task, metacore, the naive loop and
    `higher` give the same body meta-gradient (so the benchmark times one computation three ways)."""
    pytest.importorskip("higher", reason="higher is a dev/benchmark dependency (requirements-dev.txt)")
    import torch

    from metacore.algorithms import MAML
    from metacore.bench import INNER_LR, baseline_model, higher_step, naive_step, synthetic_tasks
    from metacore.models import Backbone

    torch.manual_seed(0)
    cpu = torch.device("cpu")
    tasks = synthetic_tasks(3, 5, 1, 15, cpu)
    learner = MAML(Backbone("conv4"), INNER_LR, steps, "zero")
    learner.params = {k: v.clone().requires_grad_(True) for k, v in learner.params.items()}
    learner.outer_step(torch.optim.SGD(learner.params.values(), lr=0.0), tasks, "loop")
    ours = {k: v.grad for k, v in learner.params.items()}
    for step in (naive_step, higher_step):
        model = baseline_model(cpu)
        with torch.no_grad():
            for k, v in model[0].named_parameters():
                v.copy_(learner.params[k])
            model[1].weight.normal_()  # whatever the head holds, each task starts from zero
        step(model, torch.optim.SGD(model.parameters(), lr=0.0), tasks, steps)
        for k, v in model[0].named_parameters():
            torch.testing.assert_close(v.grad, ours[k], rtol=1e-4, atol=1e-6, msg=f"{step.__name__} {k}")
