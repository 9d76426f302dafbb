"""Meta-training runs that a browser session starts and watches: a child process each (at a low CPU priority, so
a class's clicks go first), watched by a thread of the server, sharing a cap.

The training itself is `metacore.train.train`, the code the CLI runs (`metacore.background` runs it in the child);
this module records what the Meta-train page draws (every outer step's loss and accuracy, each validation, and the
inner-loop curve, averaged over 20 fixed held-out tasks, from the initialisation as it was at outer steps 0, 10, 25,
50, 100, 200, ...), pauses or stops it between outer steps, and stops it when its session has left.
"""

from __future__ import annotations

import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from streamlit.runtime import Runtime
from streamlit.runtime.scriptrunner import get_script_run_ctx

from metacore.background import TrainingProcess
from metacore.data import EpisodeSampler, Task, open_dataset
from metacore.images import InputSpec
from metacore.train import TrainConfig

MAX_RUNNING = 2  # server-wide: each run keeps a core busy while the sessions leave it idle; more queue
GONE_AFTER_S = 20  # a run whose browser tab has been disconnected this long stops; a reconnect within it keeps it
IDLE_LIMIT_S = 15 * 60  # where there is no server to ask (AppTest): a session not seen for this long is gone
CURVE_STEPS = 10  # inner steps shown in the inner-loop curves (past the K the model trains with)
PROBE_TASKS = 20  # the fixed held-out tasks the curves average over (one task zig-zags with its own luck)
PROBE_QUERIES = 5  # query images a class in each: 20 tasks x 5-way x 5 = 500 images a step, in ~1.5 s on 2 cores

_queue: list[LiveRun] = []  # runs waiting for a slot, first come first served
_running: list[LiveRun] = []
_queue_lock = threading.Lock()


def snapshot_steps() -> list[int]:
    """The outer steps at which the inner-loop curve is drawn: 0, 10, 25, 50, 100, 200, 400, ..."""
    steps, n = [0, 10, 25, 50], 100
    while n <= 10**6:
        steps.append(n)
        n *= 2
    return steps


@dataclass
class LiveRun:
    """One session's meta-training run: its settings, what it has recorded so far, and its state."""

    cfg: TrainConfig
    probes: list[Task]  # the fixed held-out tasks of the inner-loop curves (the first is the single-task view)
    state: str = "queued"  # queued, running, paused, stopping, finished, stopped, failed
    steps: list[dict] = field(default_factory=list)  # per outer step: iteration, loss, accuracy
    validations: list[dict] = field(default_factory=list)
    curves: dict[int, list[dict]] = field(default_factory=dict)  # outer step -> per inner step: mean accuracy, ...
    message: str = ""
    started_at: float | None = None
    summary: dict | None = None
    last_seen: float = field(default_factory=time.monotonic)
    session_id: str | None = None  # the Streamlit session that started it, asked for whether its tab is still open
    _disconnected_at: float | None = None
    _process: TrainingProcess | None = field(default=None, repr=False)
    _stop: bool = False

    @property
    def checkpoint(self) -> Path:
        return Path(self.cfg.out)

    @property
    def active(self) -> bool:
        return self.state in ("queued", "running", "paused", "stopping")

    def queue_position(self) -> int | None:
        with _queue_lock:
            return _queue.index(self) + 1 if self in _queue else None

    def start(self) -> None:
        with _queue_lock:
            _queue.append(self)
        threading.Thread(target=self._main, name="meta-training", daemon=True).start()

    def pause(self) -> None:
        if self.state == "running" and self._process:
            self._process.pause()
            self.state = "paused"

    def resume(self) -> None:
        if self.state == "paused" and self._process:
            self.state = "running"
            self._process.resume()

    def stop(self) -> None:
        if self.active:
            self._stop = True
            if self.state != "queued":
                self.state = "stopping"
            if self._process:
                self._process.stop()

    def seen(self) -> None:
        """The session is still there (called whenever one of its pages runs)."""
        self.last_seen = time.monotonic()

    # -- in the run's own thread, which watches its process ----------------------------------------
    def _main(self) -> None:
        if not self._wait_for_a_slot():
            self.state, self.message = "stopped", "Stopped before it started."
            return
        self._process = TrainingProcess(self.cfg, self.probes, CURVE_STEPS, snapshot_steps())
        if self._stop:
            self._process.stop()  # stopped while it was being set up: it ends at its first outer step
        self.state, self.started_at = "running", time.monotonic()
        report: dict = {"failed": "the meta-training process could not be started"}
        try:
            self._process.start()
            while (report := self._process.poll(timeout=0.5)) is None or "step" in report:
                if report is not None:
                    self._record(report["step"])
                if not self._stop and self._session_gone():
                    last = self.steps[-1]["iteration"] if self.steps else 0
                    self.message = f"Stopped at outer step {last}: its browser session was gone."
                    self.stop()
        except OSError as exc:  # no process could be started (e.g. out of memory): a sentence, the slot freed
            report = {"failed": f"the meta-training process could not be started ({exc})"}
        finally:
            with _queue_lock:
                if self in _running:
                    _running.remove(self)
        if "failed" in report:
            self.state, self.message = "failed", report["failed"]
            return
        self.summary = report["summary"]
        if self._stop:
            self.state = "stopped"
            self.message = self.message or f"Stopped at outer step {self.summary['iterations']}."
        else:
            self.state, self.message = "finished", f"Finished {self.summary['iterations']} outer steps."

    def _record(self, step: dict) -> None:
        if step["loss"] is not None:
            self.steps.append({"iteration": step["iteration"], "loss": step["loss"],
                               "accuracy": 100 * step["accuracy"], "seconds": step["seconds"]})  # fmt: skip
        if step["validation"] is not None:
            self.validations.append(step["validation"])
        if "curve" in step:
            self.curves[step["iteration"]] = step["curve"]

    def _wait_for_a_slot(self) -> bool:
        """Wait, first come first served, until fewer than MAX_RUNNING runs are running; False if stopped first."""
        while True:
            with _queue_lock:
                if self._stop or self._session_gone():
                    _queue.remove(self)
                    return False
                if _queue[0] is self and len(_running) < MAX_RUNNING:
                    _queue.pop(0)
                    _running.append(self)
                    return True
            time.sleep(0.2)

    def _session_gone(self) -> bool:
        """Whether the session that started the run has left: its tab disconnected for GONE_AFTER_S (asked of
        Streamlit's session registry), or, with no server to ask, none of its pages ran for IDLE_LIMIT_S."""
        connected = session_connected(self.session_id)
        if connected is None:
            return time.monotonic() - self.last_seen > IDLE_LIMIT_S
        if connected:
            self._disconnected_at = None
            return False
        self._disconnected_at = self._disconnected_at or time.monotonic()
        return time.monotonic() - self._disconnected_at > GONE_AFTER_S


def session_connected(session_id: str | None) -> bool | None:
    """Whether a browser tab is connected to this Streamlit session; None where there is no server to ask."""
    if session_id is None or not Runtime.exists():
        return None
    return Runtime.instance().is_active_session(session_id)


def paused_slots() -> int:
    """How many of the running runs are paused by their (still open) sessions: they keep their slots."""
    with _queue_lock:
        return sum(run.state == "paused" for run in _running)


def new_run(cfg: TrainConfig, spec: InputSpec) -> LiveRun:
    """A run for `cfg` (its checkpoint in a fresh temporary folder), with the fixed tasks of its curves drawn from
    the same held-out classes its validation uses."""
    cfg.out = str(Path(tempfile.mkdtemp(prefix="metatrain-")) / "meta_trained.pt")
    held_out = open_dataset(cfg.data_root, cfg.dataset, cfg.split, spec).split_held_out(cfg.val_fraction)[1]
    way, shot = int(cfg.way), int(cfg.shot)
    sampler = EpisodeSampler(held_out, min(way, len(held_out)), shot, PROBE_QUERIES, seed=cfg.seed + 7)
    ctx = get_script_run_ctx(suppress_warning=True)
    return LiveRun(cfg, [sampler.sample() for _ in range(PROBE_TASKS)], session_id=ctx.session_id if ctx else None)
