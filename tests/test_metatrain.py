"""The Meta-train page driven with streamlit.testing: real (short) meta-training runs in background threads."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from lab import live_training
from metacore.background import NICENESS

APP = str(Path(__file__).resolve().parents[1] / "app.py")


@pytest.fixture(autouse=True)
def no_data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a fresh clone: no data root, so the page meta-trains on the bundled background characters."""
    monkeypatch.setenv("METACORE_DATA_ROOT", str(tmp_path / "no-data"))


def meta_train_page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page("pages/metatrain.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def click(at: AppTest, label: str) -> AppTest:
    [button] = [b for b in at.button if b.label == label]
    button.click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def wait(condition, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_a_short_run_draws_its_charts_and_is_then_used_by_the_other_pages() -> None:
    at = meta_train_page()
    assert "bundled" in " ".join(c.value for c in at.caption)
    at.number_input(key="mt_iters").set_value(10).run()
    click(at, "Start")
    run = at.session_state["live_run"]
    wait(lambda: not run.active)
    assert run.state == "finished", run.message
    assert [s["iteration"] for s in run.steps] == list(range(1, 11))
    assert sorted(run.curves) == [0, 10] and len(run.curves[0]) == live_training.CURVE_STEPS + 1
    assert run.validations and run.validations[-1]["iteration"] == 10
    at.run()
    assert len(at.get("plotly_chart")) == 3  # the inner-loop curves, each outer step, validation
    click(at, "Use it in the lab")
    trained = [o for o in at.sidebar.radio[0].options if o.startswith("Meta-trained in this session")]
    assert len(trained) == 1
    at.sidebar.radio[0].set_value(trained[0]).run()
    at.switch_page("pages/adapt.py").run()
    [step] = [b for b in at.button if b.label == "Step"]
    step.click().run()
    assert not at.exception and at.session_state["runs"]["maml"]["records"]
    at.switch_page("pages/features.py").run()
    assert not at.exception and len(at.get("plotly_chart")) == 2


def test_pause_holds_the_run_and_stop_ends_it_with_a_checkpoint() -> None:
    at = meta_train_page()
    at.number_input(key="mt_iters").set_value(5000).run()
    click(at, "Start")
    run = at.session_state["live_run"]
    wait(lambda: len(run.steps) >= 2)
    # a child process at a low priority: a class's clicks take the cores first, and no GIL is shared with them
    assert run._process.pid != os.getpid() and os.getpriority(os.PRIO_PROCESS, run._process.pid) == NICENESS
    at.switch_page("pages/learn.py").run()  # leave the page: the run goes on ...
    seen = len(run.steps)
    wait(lambda: len(run.steps) > seen)
    at.switch_page("pages/metatrain.py").run()  # ... and is there on coming back
    assert at.session_state["live_run"] is run and any(b.label == "Pause" for b in at.button)
    click(at, "Pause")
    assert run.state == "paused"
    time.sleep(1.0)  # at most the step under way finishes
    held = len(run.steps)
    time.sleep(1.5)
    assert len(run.steps) == held
    click(at, "Resume")
    wait(lambda: len(run.steps) > held)
    click(at, "Stop")
    wait(lambda: not run.active, 30)
    assert run.state == "stopped" and run.checkpoint.is_file()
    at.run()
    assert any(b.label == "Use it in the lab" for b in at.button)


def test_sessions_keep_their_own_runs_and_a_third_waits_for_a_slot() -> None:
    sessions = [meta_train_page() for _ in range(3)]
    for at in sessions:
        at.number_input(key="mt_iters").set_value(5000).run()
        click(at, "Start")
    runs = [at.session_state["live_run"] for at in sessions]
    try:
        wait(lambda: all(len(r.steps) >= 2 for r in runs[:2]))
        assert runs[2].state == "queued" and runs[2].queue_position() == 1
        sessions[2].run()
        assert any("at most 2 meta-trainings at once; you are number 1" in w.value for w in sessions[2].warning)
        assert runs[0].checkpoint != runs[1].checkpoint and runs[0].steps is not runs[1].steps
        runs[1].pause()  # a paused run of an open tab keeps its slot, and the queue is told so
        time.sleep(1.0)
        assert runs[2].state == "queued"
        sessions[2].run()
        assert any("One running run is paused by its session" in w.value for w in sessions[2].warning)
        runs[1].resume()
        runs[0].stop()
        wait(lambda: runs[2].state == "running")  # the freed slot goes to the one waiting
    finally:
        for run in runs:
            run.stop()
        wait(lambda: not any(r.active for r in runs), 60)


def test_a_run_whose_session_is_gone_stops_by_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    at = meta_train_page()
    at.number_input(key="mt_iters").set_value(5000).run()
    click(at, "Start")
    run = at.session_state["live_run"]
    wait(lambda: len(run.steps) >= 1)
    click(at, "Pause")  # paused, then the tab is closed: the run must not hold its slot for ever
    monkeypatch.setattr(live_training, "IDLE_LIMIT_S", 0.5)  # nothing of the session runs from now on
    wait(lambda: not run.active, 30)
    assert run.state == "stopped" and "session was gone" in run.message and run.checkpoint.is_file()


def test_one_inner_step_from_a_zero_head_is_flagged_before_start() -> None:
    """From a zero head the first inner step moves only the head: MAML with one step is ANIL (warned), Reptile with
    one step cannot move the body (Start is disabled). The defaults take 2 steps and are not flagged."""
    at = meta_train_page()
    assert at.slider(key="mt_steps").value == 2 and not at.warning and not at.error
    at.slider(key="mt_steps").set_value(1).run()
    assert "adapts only the head" in at.warning[0].value and not at.error
    at.selectbox(key="mt_algo").set_value("reptile").run()
    assert "Reptile's direction is 0" in at.error[0].value and not at.info  # no "Press Start" under a disabled Start
    assert [b for b in at.button if b.label == "Start"][0].disabled
    at.slider(key="mt_steps").set_value(2).run()
    assert not at.warning and not at.error and not [b for b in at.button if b.label == "Start"][0].disabled


def test_the_settings_stay_as_set_when_the_user_looks_at_another_page() -> None:
    at = meta_train_page()
    at.selectbox(key="mt_algo").set_value("lstm").run()
    at.select_slider(key="mt_rule_lr").set_value(3e-3).run()
    at.switch_page("pages/learn.py").run()
    at.switch_page("pages/metatrain.py").run()
    assert at.selectbox(key="mt_algo").value == "lstm" and at.select_slider(key="mt_rule_lr").value == 3e-3


def test_meta_sgd_can_learn_the_body_rates_only() -> None:
    """The checkbox (shown for Meta-SGD only) trains the shipped character model's variant: rates for the body."""
    at = meta_train_page()
    assert not at.checkbox  # not for MAML
    at.selectbox(key="mt_algo").set_value("metasgd").run()
    at.checkbox(key="mt_body_rates").check().run()
    at.select_slider(key="mt_rule_lr").set_value(1e-2).run()  # the rates' own outer lr (also the LSTM's)
    at.number_input(key="mt_iters").set_value(10).run()
    click(at, "Start")
    run = at.session_state["live_run"]
    wait(lambda: not run.active)
    assert run.state == "finished", run.message
    saved = torch.load(run.checkpoint, map_location="cpu", weights_only=True)
    assert saved["learner"]["body_rates_only"] is True and saved["config"]["rule_meta_lr"] == 1e-2
    rates = [k for k in saved["state_dict"] if k.startswith("lr.")]
    assert rates and not [k for k in rates if k.startswith("lr.head")]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads a process's children from Linux's /proc")
def test_opening_the_page_starts_the_fork_server_with_what_a_run_imports(tmp_path: Path) -> None:
    """A Start click does not wait for torch to import: opening the page starts the fork server that forks the runs,
    and they have torch._dynamo (which Adam's constructor imports, ~1.7 s on 2 cores) already. In a fresh process:
    this one's fork server was started by the tests before."""
    script = textwrap.dedent(f"""
        from pathlib import Path
        from streamlit.testing.v1 import AppTest
        from metacore.background import _context

        def fork_servers():
            children = " ".join(p.read_text() for p in Path("/proc/self/task").glob("*/children")).split()
            return [c for c in children if "forkserver" in Path(f"/proc/{{c}}/cmdline").read_text()]

        at = AppTest.from_file({APP!r}, default_timeout=120).run()
        assert not fork_servers(), "started before the Meta-train page was opened"
        at.switch_page("pages/metatrain.py").run()
        assert not at.exception and len(fork_servers()) == 1, fork_servers()
        probe = "import sys; sys.exit(0 if 'torch._dynamo' in sys.modules else 3)"
        child = _context().Process(target=exec, args=(probe,))
        child.start()
        child.join()
        assert child.exitcode == 0, f"a run's process imports torch._dynamo itself (exit code {{child.exitcode}})"
    """)
    env = {**os.environ, "METACORE_DATA_ROOT": str(tmp_path / "no-data")}
    done = subprocess.run([sys.executable, "-c", script], cwd=Path(APP).parent, env=env, capture_output=True, text=True,
                          timeout=180)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
