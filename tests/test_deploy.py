"""Serving a class: the nginx configuration deploy/serve.sh writes is valid, and meta-training steps aside."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from lab import live_training
from metacore.isolation import compute_slot

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed (apt-get install nginx)")
def test_the_proxy_configuration_is_valid_and_sticky_by_cookie(tmp_path: Path) -> None:
    upstream = tmp_path / "upstream.conf"
    upstream.write_text(
        "upstream lab {\n    hash $lab_backend consistent;\n    server 127.0.0.1:8601;\n    server 127.0.0.1:8602;\n}\n"
    )  # fmt: skip  (as serve.sh writes it for 2 processes)
    text = (ROOT / "deploy" / "nginx.conf").read_text().replace("/tmp/lab-nginx", str(tmp_path))
    assert "map $cookie_lab_backend $lab_backend" in text  # the key each browser keeps; the hash is serve.sh's
    (tmp_path / "nginx.conf").write_text(text)
    done = subprocess.run(["nginx", "-t", "-c", str(tmp_path / "nginx.conf")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_meta_training_run_waits_while_sessions_compute_and_not_for_ever() -> None:
    assert not _took_longer_than(0.2)  # nobody computing: no wait
    held = threading.Event()
    release = threading.Event()

    def a_session_stepping() -> None:
        with compute_slot():
            held.set()
            release.wait(10)

    threading.Thread(target=a_session_stepping, daemon=True).start()
    held.wait(5)
    started = time.monotonic()
    threading.Timer(0.5, release.set).start()
    live_training.yield_to_sessions()  # waits for the slot to be free (and quiet), not longer
    assert 0.5 <= time.monotonic() - started < 0.5 + 1.0
    release.clear()
    held.clear()
    threading.Thread(target=a_session_stepping, daemon=True).start()  # held for 10 s: the wait stops at its limit
    held.wait(5)
    started = time.monotonic()
    live_training.yield_to_sessions()
    assert live_training.YIELD_LIMIT_S <= time.monotonic() - started < live_training.YIELD_LIMIT_S + 0.5
    release.set()


def _took_longer_than(seconds: float) -> bool:
    started = time.monotonic()
    live_training.yield_to_sessions()
    return time.monotonic() - started > seconds
