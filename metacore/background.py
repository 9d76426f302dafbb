"""Meta-training in a child process at a low CPU priority, reporting every outer step through a queue.

A server that serves a class and trains at the same time gives its sessions' clicks the cores first: the run's
process is niced (the kernel gives it the cycles the sessions leave), and it shares no GIL with them, which a
thread's priority could not arrange. The parent pauses, resumes and stops it between outer steps with two events.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import os
import queue
import time
from dataclasses import dataclass, field

import torch

from metacore.data import Task
from metacore.device import one_task_per_thread
from metacore.errors import MetacoreError
from metacore.evaluate import mean_ci95
from metacore.train import StopTraining, TrainConfig, train

NICENESS = 15  # CFS weight 36 against a session's 1024: the run takes what the sessions leave idle


def probe_curve(learner, tasks: list[Task], steps: int) -> list[dict]:
    """Per inner step 0..`steps`, from the learner's current initialisation (its training parameters are read, not
    changed): the query accuracy (%) averaged over `tasks` with its 95% CI, the mean query loss, and the first
    task's own accuracy (the single-task view)."""
    params = {k: v.detach() for k, v in learner.params.items()}
    like = next(iter(params.values()))

    def one(task: Task) -> list[tuple[float, float]]:
        task = task.to(like.device, like.dtype)
        with torch.no_grad():
            snapshots = learner.adapt(task.support_x, task.support_y, task.query_x, task.query_y, steps=steps,
                                      way=task.way, params=params)  # fmt: skip
            return [(100 * float(s.query_acc), float(s.query_loss)) for s in snapshots]

    per_task = one_task_per_thread(one, tasks) if like.device.type == "cpu" else [one(task) for task in tasks]
    accuracies = [[a for a, _ in rows] for rows in per_task]
    losses = [[loss for _, loss in rows] for rows in per_task]
    curve = []
    for step in range(steps + 1):
        mean, ci = mean_ci95([task[step] for task in accuracies])
        curve.append({"step": step, "accuracy": mean, "ci95": 0.0 if ci != ci else ci,
                      "loss": sum(task[step] for task in losses) / len(losses),
                      "single_accuracy": accuracies[0][step]})  # fmt: skip
    return curve


@dataclass
class TrainingProcess:
    """`train(cfg)` in a spawned child at NICENESS. `poll()` gives its reports: {"step": ...} per outer step
    (iteration, loss, accuracy, seconds, validation, and `curve` at the outer steps in `curve_at`), then one
    {"summary": ...} or {"failed": sentence}."""

    cfg: TrainConfig
    probes: list[Task]
    curve_steps: int
    curve_at: list[int]
    _process: multiprocessing.Process | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        context = _context()
        self._reports = context.Queue()
        self._resume, self._stop = context.Event(), context.Event()
        self._resume.set()

    def start(self) -> None:
        args = (self.cfg, self.probes, self.curve_steps, self.curve_at, self._reports, self._resume, self._stop)
        self._process = _context().Process(target=_run, args=args, daemon=True)
        self._process.start()

    def pause(self) -> None:
        self._resume.clear()

    def resume(self) -> None:
        self._resume.set()

    def stop(self) -> None:
        self._stop.set()
        self._resume.set()

    def poll(self, timeout: float) -> dict | None:
        """The next report, or None if none came within `timeout`; {"failed": ...} if the child died silently."""
        try:
            return self._reports.get(timeout=timeout)
        except queue.Empty:
            if self._process is not None and not self._process.is_alive():
                self._process.join()
                code = self._process.exitcode
                return {"failed": f"the meta-training process ended without a word (exit code {code})"}
            return None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None


def warm_up() -> None:
    """Start the fork server now, so that a run started later does not wait for its imports (~3 s on 2 cores):
    it returns at once, and the server imports in its own process."""
    _context()
    multiprocessing.forkserver.ensure_running()


def _context():
    """Children forked from a fork server that has imported this module once: no copy of the server's threads and
    locks (as with spawn), and no run waits for torch to import again. torch._dynamo too: Adam's constructor
    imports it (~1.7 s on 2 cores), and each child would otherwise import it again."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["metacore.background", "torch._dynamo"])
    return context


def _run(cfg, probes, curve_steps, curve_at, reports, resume, stop) -> None:
    """In the child: train, report each outer step, hold between steps while paused, end when stopped."""
    os.nice(NICENESS)
    started = time.monotonic()

    def on_step(report: dict) -> None:
        message = {"iteration": report["iteration"], "loss": report["loss"], "accuracy": report["accuracy"],
                   "validation": report["validation"], "seconds": time.monotonic() - started}  # fmt: skip
        if report["iteration"] in curve_at:
            message["curve"] = probe_curve(report["learner"], probes, curve_steps)
        reports.put({"step": message})
        while not resume.wait(0.5) and not stop.is_set():
            pass  # paused between two outer steps
        if stop.is_set():
            raise StopTraining

    try:
        reports.put({"summary": train(cfg, progress=False, on_step=on_step)})
    except MetacoreError as exc:
        reports.put({"failed": str(exc)})
    except Exception as exc:  # noqa: BLE001 (a bug reaches the page as a sentence; the child must not die silently)
        reports.put({"failed": f"meta-training failed: {type(exc).__name__}: {exc}"})
