"""Many browser sessions on one lab server: how long a Step click waits while the others work.

    python scripts/load_test.py --sessions 20 --rounds 2

Starts `streamlit run app.py` on a free local port and drives N headless-Chromium sessions at once
(one browser, one context each). Every session, per round: Adapt -> Step x5 -> Features (t-SNE) -> Adapt.
A Step's latency is from the click until Streamlit has finished the rerun (its status widget is gone).
Prints p50/p95/max of the Step latencies, failures, and the server's peak RSS, as one JSON line.
Needs Chromium (apt-get install chromium) and playwright (requirements-dev.txt).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IDLE = "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its waited-for children (the map worker), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def idle(page, timeout_s: float = 240) -> None:
    await page.wait_for_timeout(300)
    await page.wait_for_function(IDLE, timeout=timeout_s * 1000)


async def go(page, title: str) -> None:
    await page.locator('[data-testid="stSidebarNav"] a', has_text=title).first.click()
    await idle(page)


async def session(
    browser, url: str, rounds: int, steps: list[float], failures: list[str], index: int, features: bool
) -> None:
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(300_000)  # under load a page can take minutes to draw: measure it, do not fail it
    page = await context.new_page()
    try:
        await page.goto(url)
        await page.get_by_text("Few-shot learning lab").first.wait_for(timeout=240_000)
        await idle(page)
        for _ in range(rounds):
            await go(page, "Adapt step by step")
            for _ in range(5):
                started = time.perf_counter()
                await page.get_by_role("button", name="Step").first.click()
                await idle(page)
                steps.append(time.perf_counter() - started)
            if features:
                await go(page, "Features")
                await page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length == 2")
        errors = page.locator('[data-testid="stException"], :text("Traceback")')
        if await errors.count():
            text = " ".join((await errors.first.inner_text()).split())
            failures.append(f"session {index}: an exception on the page: {text[:300]}")
    except Exception as exc:  # one session's failure is a result, not the end of the measurement
        failures.append(f"session {index}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    finally:
        await context.close()


async def drive(url: str, sessions: int, rounds: int, chromium: str, server_pid: int, features: bool) -> dict:
    from playwright.async_api import async_playwright

    steps: list[float] = []
    failures: list[str] = []
    peak = [rss_mb(server_pid)]

    async def watch() -> None:
        while True:
            peak[0] = max(peak[0], rss_mb(server_pid))
            await asyncio.sleep(1)

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        watcher = asyncio.create_task(watch())
        started, cpu_before = time.perf_counter(), cpu_seconds(server_pid)
        await asyncio.gather(*(session(browser, url, rounds, steps, failures, i, features) for i in range(sessions)))
        watcher.cancel()
        server_cpu = cpu_seconds(server_pid) - cpu_before
        await browser.close()
    steps.sort()
    return {
        "sessions": sessions,
        "rounds": rounds,
        "features_visits": features,
        "step_clicks": len(steps),
        "step_p50_s": round(statistics.median(steps), 2) if steps else None,
        "step_p95_s": round(steps[int(0.95 * (len(steps) - 1))], 2) if steps else None,
        "step_max_s": round(steps[-1], 2) if steps else None,
        "wall_s": round(time.perf_counter() - started, 1),
        "server_peak_rss_mb": round(peak[0]),
        "server_cpu_s": round(server_cpu, 1),  # the rest of 2 x wall_s went to the browsers (and the OS)
        "failures": failures,
        "cpus": os.cpu_count(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--log", default=None, help="write the server's output to this file")
    parser.add_argument("--no-features", action="store_true", help="Step clicks only, no Features page (t-SNE)")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("error: no Chromium found (apt-get install chromium)", file=sys.stderr)
        return 2
    port = free_port()
    log = open(args.log, "w") if args.log else subprocess.DEVNULL  # noqa: SIM115 (open while the server runs)
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port", str(port),
         "--server.address", "127.0.0.1"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/_stcore/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        result = asyncio.run(drive(url, args.sessions, args.rounds, chromium, server.pid, not args.no_features))
        result["server_alive"] = server.poll() is None
    finally:
        server.terminate()
        server.wait(timeout=20)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
