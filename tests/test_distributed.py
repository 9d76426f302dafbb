"""Meta-training and evaluation under torchrun (CPU, gloo, 2 processes): the same result as one process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_data import make_class_folders

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
TASK = ["--dataset", "toy", "--way", "3", "--shot", "1", "--query", "2", "--meta-batch", "4", "--batching", "loop"]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dist")
    make_class_folders(root / "toy", {f"c{i:02d}": 6 for i in range(10)})
    return root


def metacore(args: list[str], launcher: list[str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = (launcher or [sys.executable]) + ["-m", "metacore", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def parameters(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.mark.parametrize("algo", ["maml", "fomaml", "reptile", "protonet"])
def test_two_processes_take_the_steps_one_process_takes(root: Path, algo: str) -> None:
    runs = {}
    for name, launcher in (("one", None), ("two", TORCHRUN)):
        out = root / f"{algo}_{name}.pt"
        done = metacore(["train", "--algo", algo, "--data-root", str(root), *TASK, "--iterations", "3",
                         "--val-every", "3", "--val-episodes", "4", "--dtype", "float64", "--out", str(out)],
                        launcher)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        runs[name] = parameters(out)
    one, two = runs["one"], runs["two"]
    assert one.keys() == two.keys() and all(v.dtype == torch.float64 for v in one.values())
    everything = torch.cat([one[k].flatten() - two[k].flatten() for k in one]).norm()
    assert everything <= 1e-10 * torch.cat([v.flatten() for v in one.values()]).norm()
    for k in one:  # each value to 1e-10 relative; values that are zero in exact arithmetic (ProtoNet's last
        # GroupNorm bias has a meta-gradient of rounding noise, which Adam turns into moves of ~1e-12) to 1e-11
        assert torch.allclose(two[k], one[k], rtol=1e-10, atol=1e-11), k


def test_evaluate_under_torchrun_gives_the_same_mean_and_ci(root: Path) -> None:
    checkpoint = root / "maml_one.pt"
    if not checkpoint.is_file():
        metacore(["train", "--data-root", str(root), *TASK, "--iterations", "3", "--val-every", "3",
                  "--val-episodes", "4", "--out", str(checkpoint)])  # fmt: skip
    args = ["evaluate", "--checkpoint", str(checkpoint), "--data-root", str(root), "--dataset", "toy", "--way", "3",
            "--query", "2", "--episodes", "25", "--json"]  # fmt: skip
    one, two = metacore(args), metacore(args, TORCHRUN)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-2000:]
    a, b = json.loads(one.stdout), json.loads(two.stdout.strip().splitlines()[-1])
    assert (a["accuracy"], a["ci95"], a["episodes"]) == (b["accuracy"], b["ci95"], b["episodes"])


def test_more_processes_than_tasks_ends_with_one_line_not_a_hang(root: Path) -> None:
    done = metacore(["train", "--data-root", str(root), *TASK[:-4], "--meta-batch", "1", "--iterations", "2",
                     "--out", str(root / "x.pt")], TORCHRUN, timeout=120)  # fmt: skip
    assert done.returncode != 0
    assert "2 processes but a meta-batch of 1 tasks: every process needs at least one task" in done.stderr


def worker_pids(launcher: int) -> list[int]:
    """The processes torchrun started (its children that run metacore)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == launcher:
            pids.append(int(stat.parent.name))
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds torchrun's workers through /proc")
def test_a_killed_rank_restarts_from_the_last_checkpoint_and_ends_where_a_resumed_run_ends(root: Path) -> None:
    out, saved = root / "fault.pt", root / "fault_at_kill.pt"
    args = ["train", "--data-root", str(root), *TASK, "--iterations", "60", "--val-every", "10", "--val-episodes",
            "2", "--dtype", "float64", "--out", str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "METACORE_DIST_TIMEOUT_S": "10"}  # the survivor waits 10 s
    launcher = [*TORCHRUN[:3], "--max-restarts", "1", *TORCHRUN[3:]]
    job = subprocess.Popen([*launcher, "-m", "metacore", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env=env, cwd=ROOT)  # fmt: skip
    deadline = time.monotonic() + 120
    while not out.is_file():  # the first checkpoint (iteration 10)
        assert time.monotonic() < deadline and job.poll() is None, "no checkpoint was written"
        time.sleep(0.02)
    time.sleep(0.2)  # let the save finish
    shutil.copy(out, saved)
    os.kill(worker_pids(job.pid)[-1], signal.SIGKILL)
    _, stderr = job.communicate(timeout=240)
    assert job.returncode == 0, stderr[-2000:]
    resumed_from = torch.load(saved, weights_only=True)["training"]["iteration"]
    assert f"from iteration {resumed_from}" in stderr  # it went on from the checkpoint that was there

    reference = root / "resumed.pt"
    shutil.copy(saved, reference)  # an uninterrupted run resumed from that same checkpoint
    done = metacore([*args[:-1], str(reference), "--resume"], TORCHRUN)
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = parameters(out), parameters(reference)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ranks_started_with_other_settings_end_with_one_line(root: Path) -> None:
    script = (f"exec {sys.executable} -m metacore train --data-root {root} {' '.join(TASK)} --iterations 2 "
              f"--out {root / 'mismatch.pt'} --seed $RANK")  # fmt: skip
    done = subprocess.run([*TORCHRUN, "--no-python", "bash", "-c", script], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert done.returncode != 0
    assert "rank 1 was started with other settings than rank 0 (seed)" in done.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_nccl_without_gpus_ends_with_one_line(root: Path) -> None:
    done = metacore(["train", "--data-root", str(root), *TASK, "--iterations", "2", "--device", "cuda",
                     "--out", str(root / "cuda.pt")], TORCHRUN, timeout=120)  # fmt: skip
    assert done.returncode != 0
    assert "error: --device cuda was asked for, but no CUDA GPU is available" in done.stderr
