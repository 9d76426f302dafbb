"""Nothing one session computes may take down the process that serves every session.

scikit-learn's t-SNE segfaulted on identical points (exit 139: the whole Streamlit server). The
degenerate inputs are now handled before native code, and the map runs in a worker process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from metacore.errors import MetacoreError
from metacore.isolation import WorkerCrashed, run_isolated
from metacore.projection import project

ROOT = Path(__file__).resolve().parents[1]
rng = np.random.default_rng(0)
x = rng.random(64)

DEGENERATE = {
    "4 identical points": np.tile(x, (4, 1)),
    "40 identical points": np.tile(x, (40, 1)),
    "all zeros": np.zeros((10, 64)),
    "two distinct points, repeated": np.vstack([np.tile(x, (3, 1)), np.tile(x + 1, (2, 1))]),
    "identical up to 1e-12": np.tile(x, (10, 1)) + 1e-12 * rng.random((10, 64)),
    "features near 1e150": 1e150 * rng.random((10, 64)),
    "features near 1e-300": 1e-300 * rng.random((10, 64)),
    "one feature dimension": rng.random((10, 1)),
    "three points": rng.random((3, 64)),
    "two points": rng.random((2, 8)),
}


def segfault() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


@pytest.mark.parametrize("method", ["tsne", "pca"])
@pytest.mark.parametrize("case", list(DEGENERATE))
def test_degenerate_features_map_to_finite_points(case: str, method: str) -> None:
    features = DEGENERATE[case]
    coords = run_isolated(project, features, method, 30.0)  # a regression crashes a worker, not the test run
    assert coords.shape == (len(features), 2) and np.isfinite(coords).all()
    _, first, inverse = np.unique(np.round(features, 6), axis=0, return_index=True, return_inverse=True)
    if 1e-3 < np.abs(features).max() < 1e3 and len(first) < len(features):  # identical rows share one point
        assert np.array_equal(coords, coords[first][inverse.reshape(-1)])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features_are_refused_with_a_sentence(bad: float) -> None:
    features = rng.random((6, 8))
    features[2, 3] = bad
    with pytest.raises(MetacoreError, match="1 of 6 feature vectors hold NaN or infinite values"):
        run_isolated(project, features, "tsne", 5.0)


def test_a_crashing_worker_costs_one_request_and_the_next_one_works() -> None:
    with pytest.raises(WorkerCrashed, match="crashed its worker process"):
        run_isolated(segfault, what="The map")
    coords = run_isolated(project, rng.random((12, 4)), "tsne", 3.0)
    assert coords.shape == (12, 2)


def features_page_in_a_child_process(script: str) -> str:
    """Run an AppTest `script` (which leaves `at` on some page), open Features, and return what it shows.

    In a child process, as the server would be: a segfault there shows as its exit code, not ours.
    """
    script += """
at.switch_page("pages/features.py").run()
assert not at.exception, [e.value for e in at.exception]
print("charts", len(at.get("plotly_chart")))
print("texts", " | ".join(e.value for e in [*at.error, *at.caption]))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


SCENARIOS = {
    # the reported crashes: the same PNG twice in class 1 and once in class 2; three empty drawings
    "duplicates": "[('a.png', same), ('b.png', same)], [('c.png', same)]",
    "empty drawings": "[('drawing 1', blank), ('drawing 2', blank)], [('drawing 3', blank)]",
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_features_page_of_identical_images_serves_a_map(scenario: str) -> None:
    script = f"""
import io
from PIL import Image
from streamlit.testing.v1 import AppTest
buffer = io.BytesIO(); Image.new("L", (40, 40), 255).save(buffer, "PNG"); blank = buffer.getvalue()
buffer = io.BytesIO(); im = Image.new("L", (40, 40), 255); im.paste(0, (10, 18, 30, 22)); im.save(buffer, "PNG")
same = buffer.getvalue()
first, second = {SCENARIOS[scenario]}
at = AppTest.from_file("app.py", default_timeout=120).run()
at.switch_page("pages/build.py").run()
next(b for b in at.button if b.label.startswith("Clear all")).click().run()
at.file_uploader[0].set_value([(n, d, "image/png") for n, d in first]); at.run()
at.file_uploader[2].set_value([(n, d, "image/png") for n, d in second]); at.run()
"""
    shown = features_page_in_a_child_process(script)
    assert "charts 2" in shown
    assert "share their features with another image" in shown


def test_features_after_a_diverged_run_get_a_message_not_a_crash() -> None:
    """Random init, lr 10, 50 steps, then Features: the reported third way to kill the server."""
    script = """
from streamlit.testing.v1 import AppTest
at = AppTest.from_file("app.py", default_timeout=120).run()
at.switch_page("pages/adapt.py").run()
at.selectbox(key="init").set_value("random").run()
next(n for n in at.number_input if n.label == "Inner learning rate").set_value(10.0).run()
next(s for s in at.slider if s.label == "Steps per Run").set_value(50).run()
next(b for b in at.button if b.label.startswith("Run")).click().run()
"""
    shown = features_page_in_a_child_process(script)
    charts = int(shown.split("charts ")[1].split()[0])
    assert charts == 2 or "NaN or infinite" in shown, shown
