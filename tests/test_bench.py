"""The benchmark runs end to end and reports every method it compares."""

from __future__ import annotations

import pytest

from metacore.bench import run_bench


def test_bench_reports_throughput_and_ratios() -> None:
    pytest.importorskip("higher", reason="higher is a dev/benchmark dependency (requirements-dev.txt)")
    result = run_bench("cpu", meta_batch=2, steps=1, repeats=1, progress=False)
    for name in ("metacore_loop", "metacore_vmap", "metacore_threads", "naive_loop", "higher"):
        assert result["meta_training"][name]["tasks_per_s"] > 0, name
    assert set(result["ratios"]) == {"vs_naive_loop", "vs_higher"}
    assert result["inner_step_ms"] > 0 and result["second_order"] is True
    assert result["photo"]["inner_step_ms"] > 0 and result["photo"]["extract_25_photos_s"] > 0
