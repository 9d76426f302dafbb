"""Many sessions on one lab server: how long a Step click waits while the others step and draw maps.

    python scripts/bench/load_test.py --sessions 30 --browsers 1 --rounds 2 [--metatrain 2] [--processes 2]

Starts `streamlit run app.py` on a free local port (with `--processes N`: `deploy/serve.sh N`, N lab processes
behind nginx with sticky sessions) and drives N sessions at once. Every session opens its own bundled example by
link (3-, 4- or 5-way, in turn) and, per round: Build -> Adapt -> Step x5 -> Features (t-SNE maps) -> Classify
-> Home, looking `--think` seconds (0.5-1.5x, random) at each page and each Step before the next click, as a
student does; `--think 0` clicks as soon as the last click is answered (a stress test, not a class).
`--browsers B` of them are headless Chromium (one context each); the other N - B speak Streamlit's websocket
protocol directly, as a browser does (the same rerun messages, the same widget triggers, every reply read): in a
class each student's browser draws on its own laptop, so only the server's work belongs on this machine's cores.
`--metatrain M` more protocol sessions press Start on the Meta-train page first and keep their runs going until
the others are done. Cross-talk: after each round every session checks that its Home page shows its own task,
not another's.

A browser's Step latency is from the click (in the page) until the curve chart shows the new step; a
protocol session's, from sending the click until the server's last message of that rerun.
Prints p50/p95/max per kind, failures, the server's CPU seconds and peak RSS, as one JSON line.
Needs Chromium (apt-get install chromium) and playwright (requirements-dev.txt) for the browsers, nginx for
`--processes`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IDLE = "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def lab_server(log_path: str | None = None, processes: int = 1) -> Iterator[tuple[str, subprocess.Popen]]:
    """`streamlit run app.py` on a free local port, as the README starts it, or (`processes` > 1) `deploy/serve.sh`:
    that many lab processes behind nginx. Yields (its URL, its process)."""
    port = free_port()
    log = open(log_path, "w") if log_path else subprocess.DEVNULL  # noqa: SIM115 (open while the server runs)
    if processes > 1:
        command = ["bash", "deploy/serve.sh", str(processes), str(port)]
        backends = [f"http://127.0.0.1:{port + i}" for i in range(1, processes + 1)]
    else:
        command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port",
                   str(port), "--server.address", "127.0.0.1"]  # fmt: skip
        backends = []
    server = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for health in [url, *backends]:
            for _ in range(120):
                try:
                    urllib.request.urlopen(f"{health}/_stcore/health", timeout=1)
                    break
                except OSError:
                    time.sleep(0.5)
        yield url, server
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # serve.sh's lab processes and nginx too
        server.wait(timeout=20)


def family(pid: int) -> list[int]:
    """A process and all its descendants (the lab processes and nginx under serve.sh, the map workers)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    found, todo = [pid], [pid]
    while todo:
        current = todo.pop()
        children = [child for child, parent in parents.items() if parent == current]
        found += children
        todo += children
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, its descendants and their waited-for children, in seconds."""
    total = 0.0
    for member in family(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return total


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants, in MB."""
    total = 0.0
    for member in family(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
    return total


def example_link(index: int) -> tuple[int, str]:
    """Each session's own task, by link: 3-, 4- or 5-way bundled characters in turn (so cross-talk shows)."""
    way = 3 + index % 3
    return way, f"example=characters&way={way}&shot=1&query=5"


def own_task_shown(elements: list, way: int) -> bool:
    """Whether a page's elements name this session's task and no other session's."""
    text = " ".join(str(element) for element in elements)
    others = [w for w in (3, 4, 5) if w != way and f"{w}-way 1-shot (from a link)" in text]
    return f"{way}-way 1-shot (from a link)" in text and not others


CHART = "document.querySelector('[data-testid=\"stPlotlyChart\"] .js-plotly-plot')"  # the curves: first chart
POINTS = f"(() => {{ const c = {CHART}; return c && c._fullData?.length ? c._fullData[0].x.length : 0 }})()"
CLICK_STEP = f"""async () => {{
  const before = {POINTS};
  const button = [...document.querySelectorAll('button')].find(b => b.innerText.trim().endsWith('Step'));
  const started = performance.now();
  button.click();
  while ({POINTS} < before + (before === 0 ? 2 : 1)) await new Promise(r => requestAnimationFrame(r));
  return (performance.now() - started) / 1000;
}}"""  # timed in the page: the click to the frame that shows the new step, without the driver's own delays


async def idle(page, timeout_s: float = 600) -> None:
    await page.wait_for_timeout(300)
    await page.wait_for_function(IDLE, timeout=timeout_s * 1000)


async def go(page, title: str) -> None:
    await page.locator('[data-testid="stSidebarNav"] a', has_text=title).first.click()
    await idle(page)


async def browser_session(
    browser, url: str, rounds: int, times: dict, failures: list[str], index: int, features: bool, pause: float
):
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(600_000)  # under load a page can take minutes to draw: measure it, do not fail it
    page = await context.new_page()
    way, link = example_link(index)
    try:
        await page.goto(f"{url}/?{link}")
        await page.get_by_text("Few-shot learning lab").first.wait_for()
        await idle(page)
        for _ in range(rounds):
            await go(page, "Build a task")
            await go(page, "Adapt step by step")
            for _ in range(5):
                await page.get_by_role("button", name="Step").first.wait_for()
                await think(pause)
                times["step"].append(await page.evaluate(CLICK_STEP))
            await idle(page)
            if features:
                started = time.perf_counter()
                await go(page, "Features")
                await page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length == 2")
                times["features"].append(time.perf_counter() - started)
            await go(page, "Classify")
            await go(page, "Home")
            try:
                await page.get_by_text(f"{way}-way 1-shot (from a link)").first.wait_for(timeout=120_000)
            except Exception:
                failures.append(f"browser {index}: its Home page does not show its own {way}-way task")
        errors = page.locator('[data-testid="stException"], :text("Traceback")')
        if await errors.count():
            text = " ".join((await errors.first.inner_text()).split())
            failures.append(f"browser {index}: an exception on the page: {text[:300]}")
    except Exception as exc:  # one session's failure is a result, not the end of the measurement
        failures.append(f"browser {index}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
        with contextlib.suppress(Exception):
            await page.screenshot(path=f"/tmp/load_test_browser_{index}.png", full_page=True)
    finally:
        await context.close()


class ProtocolSession:
    """One session driven over Streamlit's websocket, as its frontend drives it (no rendering)."""

    def __init__(self, websocket) -> None:
        self.websocket = websocket
        self.pages: dict[str, str] = {}  # url path -> page script hash
        self.buttons: dict[str, tuple[str, str]] = {}  # label -> (widget id, fragment id)

    async def rerun(self, page: str = "", click: str | None = None, query: str = "") -> list:
        """Send one rerun (a page visit, or a button click) and read every reply until the script has finished."""
        from streamlit.proto.BackMsg_pb2 import BackMsg
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        message = BackMsg()
        message.rerun_script.page_script_hash = self.pages.get(page, "")
        message.rerun_script.query_string = query
        if click is not None:
            widget_id, fragment_id = self.buttons[click]
            message.rerun_script.fragment_id = fragment_id
            state = message.rerun_script.widget_states.widgets.add()
            state.id, state.trigger_value = widget_id, True
        await self.websocket.send(message.SerializeToString())
        elements = []
        while True:
            reply = ForwardMsg()
            reply.ParseFromString(await self.websocket.recv())
            kind = reply.WhichOneof("type")
            if kind == "navigation":
                self.pages = {p.url_pathname: p.page_script_hash for p in reply.navigation.app_pages}
            elif kind == "delta" and reply.delta.WhichOneof("type") == "new_element":
                element = reply.delta.new_element
                elements.append(element)
                if element.WhichOneof("type") == "button":
                    self.buttons[element.button.label] = (element.button.id, reply.delta.fragment_id)
                if element.WhichOneof("type") == "exception":
                    raise RuntimeError(f"an exception on the page: {element.exception.message[:300]}")
            elif kind == "script_finished" and reply.script_finished != ForwardMsg.FINISHED_EARLY_FOR_RERUN:
                return elements  # (a run that ends in st.rerun() goes on as the next run: read that one too)


def connect(url: str):
    """A websocket to the lab as a browser opens it, with its own `lab_backend` cookie (deploy/nginx.conf routes
    each browser by it; a single server ignores it)."""
    import websockets

    stream = url.replace("http://", "ws://") + "/_stcore/stream"
    cookie = {"Cookie": f"lab_backend={uuid.uuid4().hex}"}
    return websockets.connect(stream, subprotocols=["streamlit"], max_size=None, open_timeout=600,
                              additional_headers=cookie)  # fmt: skip


async def think(seconds: float) -> None:
    """A student looking at what the click drew before the next one: uniform in [0.5, 1.5] x `seconds`."""
    if seconds:
        await asyncio.sleep(seconds * random.uniform(0.5, 1.5))


async def protocol_session(
    url: str, rounds: int, times: dict, failures: list[str], index: int, features: bool, pause: float
):
    way, link = example_link(index)
    try:
        async with connect(url) as socket:
            session = ProtocolSession(socket)
            await session.rerun(query=link)
            for _ in range(rounds):
                await session.rerun("build")
                await think(pause)
                await session.rerun("adapt")
                for _ in range(5):
                    await think(pause)
                    started = time.perf_counter()
                    await session.rerun("adapt", click="Step")
                    times["step"].append(time.perf_counter() - started)
                await think(pause)
                if features:
                    started = time.perf_counter()
                    drawn = await session.rerun("features")
                    maps = sum(e.WhichOneof("type") == "plotly_chart" for e in drawn)
                    if maps != 2:
                        failures.append(f"session {index}: the Features page drew {maps} maps, not 2")
                    times["features"].append(time.perf_counter() - started)
                await think(pause)
                await session.rerun("classify")
                if not own_task_shown(await session.rerun("home"), way):
                    failures.append(f"session {index}: its Home page does not show its own {way}-way task")
    except Exception as exc:
        failures.append(f"session {index}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")


async def outer_step(session: ProtocolSession) -> int | None:
    """The outer step the session's meta-training run shows on its page, None when none is training."""
    text = " ".join(str(e) for e in await session.rerun("metatrain"))
    going = re.search(r"Training\*\*: outer step (\d+) of", text)
    return int(going.group(1)) if going else None


async def metatrain_session(
    url: str, training: asyncio.Event, done: asyncio.Event, reached: list, failures: list[str], index: int
):
    """Press Start on the Meta-train page; once its run trains (data loaded), say so; keep the tab open while the
    others work, then read how far it got: (outer step when the class started, at its end)."""
    try:
        async with connect(url) as socket:
            session = ProtocolSession(socket)
            await session.rerun()
            await session.rerun("metatrain")
            await session.rerun("metatrain", click="Start")
            while (first := await outer_step(session)) is None:
                await asyncio.sleep(2)
            training.set()
            await done.wait()
            last = await outer_step(session)
            if last is None:
                failures.append(f"meta-training {index}: no run going at the end")
                return
            reached.append([first, last])
    except Exception as exc:
        failures.append(f"meta-training {index}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")


def percentiles(values: list[float]) -> dict:
    values = sorted(values)
    if not values:
        return {"count": 0}
    return {
        "count": len(values),
        "p50_s": round(statistics.median(values), 2),
        "p95_s": round(values[int(0.95 * (len(values) - 1))], 2),
        "max_s": round(values[-1], 2),
    }


async def drive(url: str, args: argparse.Namespace, chromium: str | None, server_pid: int) -> dict:
    features = not args.no_features
    browser_times: dict = {"step": [], "features": []}
    protocol_times: dict = {"step": [], "features": []}
    failures: list[str] = []
    peak = [rss_mb(server_pid)]

    async def watch() -> None:
        while True:
            peak[0] = max(peak[0], rss_mb(server_pid))
            await asyncio.sleep(1)

    watcher = asyncio.create_task(watch())
    done, reached, ready = asyncio.Event(), [], [asyncio.Event() for _ in range(args.metatrain)]
    trainers = [
        asyncio.create_task(metatrain_session(url, ready[i], done, reached, failures, i)) for i in range(args.metatrain)
    ]
    for event in ready:  # their runs training (data loaded) before the class starts
        await asyncio.wait_for(event.wait(), 600)
    started, cpu_before = time.perf_counter(), cpu_seconds(server_pid)
    protocol = [
        protocol_session(url, args.rounds, protocol_times, failures, i, features, args.think)
        for i in range(args.sessions - args.browsers)
    ]
    if args.browsers:
        from playwright.async_api import async_playwright

        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
            browsers = [
                browser_session(browser, url, args.rounds, browser_times, failures, i, features, args.think)
                for i in range(args.browsers)
            ]
            await asyncio.gather(*browsers, *protocol)
            await browser.close()
    else:
        await asyncio.gather(*protocol)
    done.set()
    await asyncio.gather(*trainers)
    watcher.cancel()
    return {
        "sessions": args.sessions,
        "think_s": args.think,
        "processes": args.processes,
        "metatrain_runs": args.metatrain,
        "metatrain_outer_steps_from_to": reached,
        "browsers": args.browsers,
        "rounds": args.rounds,
        "browser_step": percentiles(browser_times["step"]),
        "protocol_step": percentiles(protocol_times["step"]),
        "all_steps": percentiles(browser_times["step"] + protocol_times["step"]),
        "features_page": percentiles(browser_times["features"] + protocol_times["features"]),
        "wall_s": round(time.perf_counter() - started, 1),
        "server_peak_rss_mb": round(peak[0]),
        "server_cpu_s": round(cpu_seconds(server_pid) - cpu_before, 1),
        "failures": failures,
        "cpus": os.cpu_count(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--browsers", type=int, default=1, help="how many of the sessions are real Chromium ones")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--log", default=None, help="write the server's output to this file")
    parser.add_argument("--no-features", action="store_true", help="Step clicks only, no Features page (t-SNE)")
    parser.add_argument(
        "--think",
        type=float,
        default=1.0,
        help="seconds a session looks before its next click "
        "(uniform in 0.5-1.5x this; 0: click as soon as the last one is answered, a stress test)",
    )
    parser.add_argument("--metatrain", type=int, default=0, help="meta-training runs going meanwhile (sessions more)")
    parser.add_argument("--processes", type=int, default=1, help="lab processes behind nginx (deploy/serve.sh)")
    args = parser.parse_args()
    random.seed(0)
    if not 0 <= args.browsers <= args.sessions:
        parser.error("--browsers must be between 0 and --sessions")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None and args.browsers:
        print("error: no Chromium found (apt-get install chromium)", file=sys.stderr)
        return 2
    if args.processes > 1 and not shutil.which("nginx"):
        print("error: --processes needs nginx (apt-get install nginx)", file=sys.stderr)
        return 2
    with lab_server(args.log, args.processes) as (url, server):
        result = asyncio.run(drive(url, args, chromium, server.pid))
        result["server_alive"] = server.poll() is None
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
