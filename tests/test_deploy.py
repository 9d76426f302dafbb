"""Serving a class: the nginx configuration deploy/serve.sh writes is valid."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

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
