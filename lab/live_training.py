"""Meta-training runs that a browser session starts and watches: a background thread each, sharing a cap.

The training itself is `metacore.train.train`, the code the CLI runs; this module only runs it off the page's
thread, records what the Meta-train page draws (every outer step's loss and accuracy, each validation, and the
inner-loop curve, averaged over 20 fixed held-out tasks, from the initialisation as it was at outer steps 0, 10, 25,
50, 100, 200, ...), and pauses or stops it between outer steps.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from streamlit.runtime import Runtime
from streamlit.runtime.scriptrunner import get_script_run_ctx

from metacore.data import EpisodeSampler, Task, open_dataset
from metacore.device import one_task_per_thread
from metacore.errors import MetacoreError
from metacore.images import InputSpec
from metacore.isolation import sessions_busy
from metacore.train import StopTraining, TrainConfig, train

MAX_RUNNING = 2  # server-wide: each run keeps a core busy; more queue
YIELD_LIMIT_S = 2.0  # under a class's load a run still takes an outer step at least every ~2 s
TRAINING_NICENESS = 10  # a run's threads yield the CPU to the sessions' clicks (CFS: ~10x less weight than nice 0)
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
    _resume: threading.Event = field(default_factory=threading.Event, repr=False)
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
        self._resume.set()
        with _queue_lock:
            _queue.append(self)
        threading.Thread(target=self._main, name="meta-training", daemon=True).start()

    def pause(self) -> None:
        if self.state == "running":
            self._resume.clear()
            self.state = "paused"

    def resume(self) -> None:
        if self.state == "paused":
            self.state = "running"
            self._resume.set()

    def stop(self) -> None:
        if self.active:
            self._stop = True
            if self.state != "queued":
                self.state = "stopping"
            self._resume.set()

    def seen(self) -> None:
        """The session is still there (called whenever one of its pages runs)."""
        self.last_seen = time.monotonic()

    # -- in the run's own thread ---------------------------------------------------------------
    def _main(self) -> None:
        lower_priority()  # before any worker thread starts: they inherit it
        if not self._wait_for_a_slot():
            self.state, self.message = "stopped", "Stopped before it started."
            return
        self.state, self.started_at = "running", time.monotonic()
        try:
            self.summary = train(self.cfg, progress=False, on_step=self._on_step)
        except MetacoreError as exc:
            self.state, self.message = "failed", str(exc)
            return
        except Exception as exc:  # noqa: BLE001 (a bug reaches the page as a sentence; the thread must not die silently)
            self.state, self.message = "failed", f"meta-training failed: {type(exc).__name__}: {exc}"
            return
        finally:
            with _queue_lock:
                if self in _running:
                    _running.remove(self)
        if self._stop:
            self.state = "stopped"
            self.message = self.message or f"Stopped at outer step {self.summary['iterations']}."
        else:
            self.state, self.message = "finished", f"Finished {self.summary['iterations']} outer steps."

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

    def _gone(self, iteration: int) -> bool:
        """Whether the session has left (its tab closed): the run then stops and frees its slot."""
        if not self._session_gone():
            return False
        self._stop = True
        self.message = f"Stopped at outer step {iteration}: its browser session was gone."
        return True

    def _on_step(self, report: dict) -> None:
        iteration = report["iteration"]
        if report["loss"] is not None:
            self.steps.append(
                {"iteration": iteration, "loss": report["loss"], "accuracy": 100 * report["accuracy"],
                 "seconds": time.monotonic() - self.started_at}
            )  # fmt: skip
        if report["validation"] is not None:
            self.validations.append(report["validation"])
        if iteration in snapshot_steps():
            self.curves[iteration] = inner_curve(report["learner"], self.probes)
        yield_to_sessions()
        while not self._resume.wait(0.5) and not self._gone(iteration):
            pass  # a pause holds the run here, between two outer steps (not past its session's end)
        if self._gone(iteration) or self._stop:
            raise StopTraining


def yield_to_sessions() -> None:
    """Between two outer steps: wait, up to YIELD_LIMIT_S, while sessions are computing (their Steps go first; a
    run in this process competes for the GIL too, which thread priorities cannot arbitrate)."""
    deadline = time.monotonic() + YIELD_LIMIT_S
    while sessions_busy() and time.monotonic() < deadline:
        time.sleep(0.05)


def lower_priority() -> None:
    """The calling thread, and the threads it starts from now on, at nice TRAINING_NICENESS (Linux: a thread's own
    priority): the sessions' clicks go first, a run takes the cores they leave idle."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), TRAINING_NICENESS)


def session_connected(session_id: str | None) -> bool | None:
    """Whether a browser tab is connected to this Streamlit session; None where there is no server to ask."""
    if session_id is None or not Runtime.exists():
        return None
    return Runtime.instance().is_active_session(session_id)


def paused_slots() -> int:
    """How many of the running runs are paused by their (still open) sessions: they keep their slots."""
    with _queue_lock:
        return sum(run.state == "paused" for run in _running)


def inner_curve(learner, tasks: list[Task]) -> list[dict]:
    """Per inner step 0..CURVE_STEPS, from the learner's current initialisation (its training parameters are read,
    not changed): the query accuracy (%) averaged over `tasks` with its 95% CI, the mean query loss, and the first
    task's own accuracy (the single-task view)."""
    from metacore.evaluate import mean_ci95

    device = next(iter(learner.params.values())).device
    dtype = next(iter(learner.params.values())).dtype
    params = {k: v.detach() for k, v in learner.params.items()}

    def one(task: Task) -> list[tuple[float, float]]:
        yield_to_sessions()  # 20 tasks x 10 steps: as much work as ~20 outer steps
        task = task.to(device, dtype)
        with torch.no_grad():
            snapshots = learner.adapt(
                task.support_x, task.support_y, task.query_x, task.query_y, steps=CURVE_STEPS, way=task.way,
                params=params,
            )  # fmt: skip
            return [(100 * float(s.query_acc), float(s.query_loss)) for s in snapshots]

    per_task = one_task_per_thread(one, tasks) if device.type == "cpu" else [one(task) for task in tasks]
    accuracies = [[a for a, _ in rows] for rows in per_task]
    losses = [[loss for _, loss in rows] for rows in per_task]
    curve = []
    for step in range(CURVE_STEPS + 1):
        mean, ci = mean_ci95([task[step] for task in accuracies])
        loss = sum(task[step] for task in losses) / len(losses)
        curve.append({"step": step, "accuracy": mean, "ci95": 0.0 if ci != ci else ci, "loss": loss,
                      "single_accuracy": accuracies[0][step]})  # fmt: skip
    return curve


def new_run(cfg: TrainConfig, spec: InputSpec) -> LiveRun:
    """A run for `cfg` (its checkpoint in a fresh temporary folder), with the fixed tasks of its curves drawn from
    the same held-out classes its validation uses."""
    cfg.out = str(Path(tempfile.mkdtemp(prefix="metatrain-")) / "meta_trained.pt")
    held_out = open_dataset(cfg.data_root, cfg.dataset, cfg.split, spec).split_held_out(cfg.val_fraction)[1]
    way, shot = int(cfg.way), int(cfg.shot)
    sampler = EpisodeSampler(held_out, min(way, len(held_out)), shot, PROBE_QUERIES, seed=cfg.seed + 7)
    ctx = get_script_run_ctx(suppress_warning=True)
    return LiveRun(cfg, [sampler.sample() for _ in range(PROBE_TASKS)], session_id=ctx.session_id if ctx else None)
