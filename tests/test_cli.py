"""The CLI end to end on small data the tests make, and a one-line error for every kind of bad input."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from metacore.__main__ import main
from metacore.algorithms import MAML
from metacore.checkpoint import load_checkpoint, read_checkpoint
from metacore.data import EpisodeSampler, open_dataset
from metacore.errors import MetacoreError
from metacore.inner import layer_shift, run_to_end
from metacore.models import Backbone
from test_data import make_class_folders

TOY_TASK = ["--dataset", "toy", "--way", "3", "--shot", "1", "--query", "2"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    make_class_folders(root / "toy", {f"class{i:02d}": 6 for i in range(10)})
    return root


@pytest.fixture(scope="module")
def checkpoint(toy: Path) -> Path:
    out = toy / "model.pt"
    code = main(
        [
            "train",
            "--data-root",
            str(toy),
            *TOY_TASK,
            "--iterations",
            "3",
            "--meta-batch",
            "2",
            "--val-every",
            "3",
            "--val-episodes",
            "2",
            "--out",
            str(out),
            "--json",
        ]
    )
    assert code == 0
    return out


def run(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_train_writes_a_loadable_checkpoint(checkpoint: Path) -> None:
    learner, meta = load_checkpoint(checkpoint)
    assert learner.name == "maml" and meta["training"]["iteration"] == 3
    assert meta["config"]["way"] == "3"


def test_resume_continues_from_the_saved_iteration(toy: Path, checkpoint: Path, capsys) -> None:
    out = toy / "resumed.pt"
    out.write_bytes(checkpoint.read_bytes())
    code, stdout, _ = run(
        [
            "train",
            "--data-root",
            str(toy),
            "--dataset",
            "toy",
            "--iterations",
            "5",
            "--out",
            str(out),
            "--resume",
            "--json",
        ],
        capsys,
    )
    assert code == 0
    assert json.loads(stdout)["iterations"] == 5
    assert read_checkpoint(out)["training"]["iteration"] == 5


def test_resume_reads_the_data_root_of_this_machine(tmp_path: Path, capsys) -> None:
    """A run started elsewhere (another data path, e.g. a GPU machine) resumes with this command line's --data-root."""
    make_class_folders(tmp_path / "there" / "toy", {f"class{i:02d}": 6 for i in range(10)})
    out = tmp_path / "run.pt"
    args = ["train", *TOY_TASK, "--meta-batch", "2", "--val-every", "2", "--val-episodes", "2", "--out", str(out)]
    assert run([*args, "--data-root", str(tmp_path / "there"), "--iterations", "2"], capsys)[0] == 0
    (tmp_path / "there").rename(tmp_path / "here")
    code, _, err = run([*args, "--data-root", str(tmp_path / "here"), "--iterations", "4", "--resume"], capsys)
    assert code == 0, err
    assert read_checkpoint(out)["training"]["iteration"] == 4


def test_init_starts_a_new_algorithm_from_a_checkpoints_backbone(toy: Path, checkpoint: Path, capsys) -> None:
    out = toy / "protomaml.pt"
    args = ["train", "--data-root", str(toy), *TOY_TASK, "--algo", "fomaml", "--head", "proto", "--iterations", "1"]
    code, _, _ = run(
        [
            *args,
            "--meta-lr",
            "1e-30",
            "--val-every",
            "1",
            "--val-episodes",
            "1",
            "--init",
            str(checkpoint),
            "--out",
            str(out),
            "--json",
        ],
        capsys,
    )
    assert code == 0
    start, _ = load_checkpoint(checkpoint)
    learner, meta = load_checkpoint(out)
    assert learner.name == "fomaml" and learner.head == "proto" and meta["config"]["init"] == str(checkpoint)
    for k, v in start.backbone.params.items():  # meta-lr 1e-30: the backbone is the one it started from
        assert torch.allclose(learner.backbone.params[k], v, rtol=0, atol=1e-20), k


def test_augmented_training_runs_and_is_seeded(toy: Path, tmp_path: Path, capsys) -> None:
    args = ["train", "--data-root", str(toy), *TOY_TASK, "--augment", "--iterations", "2", "--meta-batch", "2",
            "--val-every", "2", "--val-episodes", "2", "--json"]  # fmt: skip
    for name in ("a.pt", "b.pt"):
        assert run([*args, "--out", str(tmp_path / name)], capsys)[0] == 0
    a, b = (load_checkpoint(tmp_path / name)[0].params for name in ("a.pt", "b.pt"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert read_checkpoint(tmp_path / "a.pt")["config"]["augment"] is True


def test_val_images_lets_every_class_train(toy: Path, tmp_path: Path, capsys) -> None:
    """10-way training on the toy set's 10 classes needs them all: only possible when validation uses other images
    of the same classes (--val-images) instead of holding classes out."""
    args = ["train", "--data-root", str(toy), "--dataset", "toy", "--way", "10", "--shot", "1", "--query", "1",
            "--images", "0:4", "--iterations", "2", "--meta-batch", "1", "--val-every", "2", "--val-episodes", "2",
            "--out", str(tmp_path / "all.pt"), "--json"]  # fmt: skip
    code, _, err = run(args, capsys)
    assert code != 0 and "larger than the number of classes" in err  # 2 of the 10 classes held out
    code, stdout, _ = run([*args, "--val-images", "4:6"], capsys)
    assert code == 0
    assert json.loads(stdout)["history"][-1]["val_accuracy"] is not None
    assert read_checkpoint(tmp_path / "all.pt")["config"]["val_images"] == "4:6"


def evaluate_args(checkpoint: Path, toy: Path, *extra: str) -> list[str]:
    return ["evaluate", "--checkpoint", str(checkpoint), "--data-root", str(toy), *TOY_TASK, *extra]


def test_evaluate_json(toy: Path, checkpoint: Path, capsys) -> None:
    code, stdout, _ = run(evaluate_args(checkpoint, toy, "--episodes", "5", "--json", "--every-step"), capsys)
    assert code == 0
    result = json.loads(stdout)
    assert 0 <= result["accuracy"] <= 100 and result["ci95"] >= 0 and result["episodes"] == 5
    assert [row["step"] for row in result["per_step"]] == [0, 1, 2]  # the checkpoint's own steps: train's default 2


def test_steps_curve_matches_the_per_step_accuracies_of_the_same_episodes(toy: Path, checkpoint: Path, capsys) -> None:
    common = evaluate_args(checkpoint, toy, "--episodes", "7", "--inner-lr", "0.05")
    code, stdout, _ = run([*common, "--steps", "4", "--every-step", "--json"], capsys)
    alone = json.loads(stdout)
    per_step = alone["per_step"]
    code, stdout, _ = run([*common, "--steps", "4", "--steps-curve", "0:6", "--json"], capsys)
    with_curve = json.loads(stdout)
    curve = with_curve["curve"]
    assert (with_curve["accuracy"], with_curve["ci95"]) == pytest.approx((alone["accuracy"], alone["ci95"]), abs=1e-6)
    assert with_curve["steps"] == 4
    assert code == 0 and [row["step"] for row in curve] == list(range(7))
    for mine, theirs in zip(curve, per_step):  # one adaptation to step 6 against evaluate's own loop
        assert mine["accuracy"] == pytest.approx(theirs["accuracy"], abs=1e-6)
    assert curve[0]["support_loss"] == pytest.approx(1.0986, abs=1e-3)  # zero head: ln 3 at step 0
    assert curve[6]["support_loss"] < curve[0]["support_loss"]
    code, _, stderr = run([*common, "--steps-curve", "0:x"], capsys)
    assert code == 2 and "--steps-curve takes A:B" in stderr

    # A sparse curve (the query scored only at its steps) has the dense curve's numbers at those steps, and the
    # accuracy at --steps (3, not on the curve) is still measured.
    code, stdout, _ = run([*common, "--steps", "3", "--steps-curve", "0:1,2:6:2", "--json"], capsys)
    sparse = json.loads(stdout)
    assert code == 0 and [row["step"] for row in sparse["curve"]] == [0, 1, 2, 4, 6]
    for row in sparse["curve"]:
        assert row == pytest.approx(curve[row["step"]], abs=1e-6)
    assert sparse["accuracy"] == pytest.approx(per_step[3]["accuracy"], abs=1e-6)
    code, _, stderr = run([*common, "--steps-curve", "0:6:0"], capsys)
    assert code == 2 and "S >= 1" in stderr


def test_classify_json(toy: Path, checkpoint: Path, capsys) -> None:
    code, stdout, _ = run(
        [
            "classify",
            "--checkpoint",
            str(checkpoint),
            "--support",
            str(toy / "toy"),
            str(toy / "toy" / "class01" / "0.png"),
            "--json",
        ],
        capsys,
    )
    assert code == 0
    [row] = json.loads(stdout)
    assert row["predicted"] in row["probabilities"] and len(row["probabilities"]) == 10
    assert abs(sum(row["probabilities"].values()) - 1) < 1e-4


@pytest.mark.parametrize("suffix", [".csv", ".npy"])
def test_embed_before_and_after(toy: Path, checkpoint: Path, tmp_path: Path, suffix: str, capsys) -> None:
    out = tmp_path / f"features{suffix}"
    code, stdout, _ = run(
        [
            "embed",
            "--checkpoint",
            str(checkpoint),
            "--support",
            str(toy / "toy"),
            str(toy / "toy" / "class02"),
            "--out",
            str(out),
            "--json",
        ],
        capsys,
    )
    assert code == 0
    summary = json.loads(stdout)
    assert summary["images"] == 6 and summary["stages"] == ["before", "after"]
    if suffix == ".csv":
        lines = out.read_text().splitlines()
        assert len(lines) == 1 + 12 and lines[0].startswith("file,stage,f0")
    else:
        import numpy as np

        assert np.load(out).shape == np.load(tmp_path / "features_adapted.npy").shape == (6, 64)


def bad_inputs(toy: Path, checkpoint: Path, tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    make_class_folders(tmp_path / "empty_class" / "a", {"x": 3})
    (tmp_path / "empty_class" / "b").mkdir()
    make_class_folders(tmp_path / "few", {"a": 2, "b": 2, "c": 2})
    for split in ("train", "val"):
        make_class_folders(tmp_path / "split_set" / split, {"a": 2, "b": 2})
    corrupt = tmp_path / "corrupt"
    make_class_folders(corrupt, {"a": 3, "b": 3})
    (corrupt / "b" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    ck, data = ["--checkpoint", str(checkpoint)], ["--data-root", str(toy), "--dataset", "toy"]
    return {
        "missing data root": (["evaluate", *ck, "--data-root", str(tmp_path / "nowhere")], "data root not found"),
        "missing dataset": (
            ["evaluate", *ck, "--data-root", str(toy), "--dataset", "nope"],
            "dataset folder not found",
        ),
        "empty class": (["classify", *ck, "--support", str(tmp_path / "empty_class"), str(toy)], "has no images"),
        "too few images": (
            [
                "evaluate",
                *ck,
                "--data-root",
                str(tmp_path),
                "--dataset",
                "few",
                "--way",
                "2",
                "--shot",
                "1",
                "--query",
                "5",
            ],
            "at least shot\\+query",
        ),
        "way too large": (["evaluate", *ck, *data, "--way", "50"], "larger than the number of classes"),
        "corrupt image": (
            ["evaluate", *ck, "--data-root", str(tmp_path), "--dataset", "corrupt", "--way", "2", "--query", "1"],
            "corrupt or truncated|not an image",
        ),
        "wrong checkpoint": (["evaluate", "--checkpoint", str(foreign), *data], "not a metacore checkpoint"),
        "garbage checkpoint": (["evaluate", "--checkpoint", str(garbage), *data], "not a readable metacore checkpoint"),
        "missing checkpoint": (["evaluate", "--checkpoint", str(tmp_path / "none.pt"), *data], "checkpoint not found"),
        "bad range": (["train", *data, "--way", "many"], "--way must be"),
        "unknown algorithm": (["train", *data, "--algo", "magic"], "unknown --algo"),
        "missing init": (["train", *data, "--init", str(tmp_path / "none.pt")], "checkpoint not found"),
        "init of another backbone": (
            ["train", *data, "--init", str(checkpoint), "--backbone", "feature_adapter"],
            "holds a 'conv4' backbone, not 'feature_adapter'",
        ),
        "bad embed output": (["embed", *ck, str(toy), "--out", str(tmp_path / "f.txt")], "must end in .csv or .npy"),
        "missing query": (
            ["classify", *ck, "--support", str(toy / "toy"), str(tmp_path / "nope.png")],
            "query path not found",
        ),
        "the one query unreadable": (
            ["classify", *ck, "--support", str(toy / "toy"), str(corrupt / "b" / "1.png")],
            "none of the files could be read \\(.*1.png: ",  # which file, and why
        ),
        "negative steps": (["evaluate", *ck, *data, "--steps", "-1"], "--steps must be"),
        "splits, not classes": (
            ["evaluate", *ck, "--data-root", str(tmp_path), "--dataset", "split_set"],
            "holds splits \\(train, val\\), not classes: choose one with --split",
        ),
        "bad image slice": (["evaluate", *ck, *data, "--images", "first-half"], "images must look like start:stop"),
        "empty image slice": (["evaluate", *ck, *data, "--images", "100:"], "leaves no images"),
        "overlapping validation images": (
            ["train", *data, "--images", "0:4", "--val-images", "3:6"],
            "--val-images 3:6 shares 10 images with the training images",
        ),
        "rotating photos": (
            ["train", *data, "--backbone", "feature_adapter", "--rotations"],
            "rotations apply to character images",
        ),
        "augmenting photos": (
            ["train", *data, "--backbone", "feature_adapter", "--augment"],
            "--augment distorts images",
        ),
        "lstm gate above 1": (["train", *data, "--algo", "lstm", "--inner-lr", "1.5"], "must be between 0 and 1"),
        "first order for maml": (["train", *data, "--first-order"], "first_order is the LSTM meta-learner's setting"),
        "lstm with a way-scaled head": (
            ["train", *data, "--algo", "lstm", "--inner-lr", "0.1", "--way-scaled-head"],
            "the LSTM meta-learner learns its own steps",
        ),
        "graph without a GPU": (
            ["train", *data, "--query", "2", "--batching", "graph", "--device", "cpu"],
            "needs a CUDA GPU",
        ),
        "no cuda": (["evaluate", *ck, *data, "--device", "cuda"], "CUDA")
        if not torch.cuda.is_available()
        else (["evaluate", *ck, *data, "--device", "tpu"], "unknown device"),
    }


def test_every_bad_input_gives_one_clear_line_and_nonzero_exit(
    toy: Path, checkpoint: Path, tmp_path: Path, capsys
) -> None:
    for case, (args, message) in bad_inputs(toy, checkpoint, tmp_path).items():
        code, _, err = run(args, capsys)
        assert code != 0, case
        lines = err.split("\r")[-1].strip().splitlines()  # what a terminal shows once progress bars are cleared
        assert len(lines) == 1 and lines[0].startswith("error: "), (case, err)
        assert re.search(message, lines[0]), (case, lines[0])
        assert "Traceback" not in err


def test_real_process_prints_no_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "metacore", "evaluate", "--checkpoint", str(tmp_path / "x.pt")],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[1],
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: checkpoint not found: {tmp_path / 'x.pt'}"


def test_help_for_every_command() -> None:
    for command in ("train", "evaluate", "classify", "embed", "bench"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0


def test_checkpoint_without_header_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "plain.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(MetacoreError, match="not a metacore checkpoint"):
        read_checkpoint(path)


@pytest.mark.parametrize(
    "args, message",
    [
        (["evaluate", "--inner-lr", "nan"], "--inner-lr must be a finite number above 0"),
        (["evaluate", "--inner-lr", "inf"], "--inner-lr must be a finite number above 0"),
        (["evaluate", "--query", "0"], "--query must be a whole number from 1"),
        (["evaluate", "--seed", "-1"], "--seed must be a whole number from 0"),
        (["evaluate", "--device", "meta"], "unknown device 'meta'"),
        (["evaluate", "--steps", "1000000000"], "--steps must be a whole number from 0 up to 100"),
        (["evaluate", "--partial", "{tmp}/curve.pt"], "--partial keeps a step curve's episodes: give --steps-curve"),
        (["bench", "--meta-batch", "0"], "--meta-batch must be a whole number from 1"),
        (["bench", "--repeats", "0"], "--repeats must be a whole number from 1"),
        (["train", "--meta-lr", "1e6"], "--meta-lr must be a finite number above 0 up to 1"),
        (["train", "--meta-lr", "nan"], "--meta-lr must be a finite number above 0 up to 1"),
        (["train", "--rule-meta-lr", "0"], "--rule-meta-lr must be a finite number above 0 up to 1"),
        (["train", "--val-every", "0"], "--val-every must be a whole number from 1"),
        (["train", "--val-episodes", "0"], "--val-episodes must be a whole number from 1"),
        (["train", "--resume", "--out", "{tmp}/missing.pt"], "--resume: no checkpoint at"),
        (["train", "--out", "{tmp}/file.txt/x.pt"], "file.txt is a file, not a folder"),
        (["embed", "--out", "{tmp}/file.txt/x.csv", "{tmp}"], "file.txt is a file, not a folder"),
        (["classify", "--inner-lr", "-1", "--support", "{tmp}", "x.png"], "--inner-lr must be a finite number"),
        (["classify", "{tmp}/file.txt"], "--support is needed"),
    ],
)
def test_bad_numbers_and_paths_end_in_one_line_before_any_work(args, message, tmp_path, capsys) -> None:
    (tmp_path / "file.txt").write_text("a file")
    code, out, err = run([a.format(tmp=tmp_path) for a in args], capsys)
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert message in err


def altered(checkpoint: Path, tmp_path: Path, change) -> Path:
    payload = torch.load(checkpoint, weights_only=True)
    change(payload)
    path = tmp_path / "altered.pt"
    torch.save(payload, path)
    return path


def set_in(*keys_and_value):
    *keys, value = keys_and_value

    def change(payload: dict) -> None:
        target = payload
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return change


def nan_weights(payload: dict) -> None:
    payload["state_dict"] = {k: torch.full_like(v, float("nan")) for k, v in payload["state_dict"].items()}


def wider_tensors(payload: dict) -> None:
    payload["backbone"]["kwargs"]["hidden"] = 32  # declares 32 channels; the tensors hold the file's own


@pytest.mark.parametrize(
    "change, message",
    [
        (set_in("learner", "inner_steps", 1_000_000_000), "inner_steps must be a whole number from 0 up to 100"),
        (set_in("learner", "inner_lr", "0.4"), "inner_lr must be a finite number"),
        (set_in("learner", "inner_lr", float("nan")), "inner_lr must be a finite number"),
        (set_in("learner", "algorithm", None), "unknown algorithm None"),
        (set_in("learner", "surprise", 1), "unknown learner field 'surprise'"),
        (set_in("backbone", "input_spec", "size", 20000), "input size field 'size' must be a whole number"),
        (set_in("backbone", "input_spec", "colour", "red"), "unknown input-spec field 'colour'"),
        (set_in("backbone", "name", "feature_adapter"), "unknown feature_adapter setting 'in_channels'"),
        (wider_tensors, "the architecture needs"),
        (nan_weights, "weight tensors hold NaN or infinite values"),
    ],
)
def test_checkpoint_metadata_is_checked_on_load(checkpoint: Path, tmp_path: Path, change, message, capsys) -> None:
    bad = altered(checkpoint, tmp_path, change)
    with pytest.raises(MetacoreError, match=re.escape(message)):
        load_checkpoint(bad)
    code, _, err = run(["classify", "--checkpoint", str(bad), "--support", str(tmp_path), "x.png"], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_a_diverging_training_stops_and_keeps_the_last_good_checkpoint(toy: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "diverged.pt"
    args = ["train", "--data-root", str(toy), *TOY_TASK, "--meta-batch", "2", "--val-episodes", "2", "--out", str(out)]
    code, _, _ = run([*args, "--iterations", "2", "--val-every", "2"], capsys)
    assert code == 0
    payload = torch.load(out, weights_only=True)
    for part in ("learner", "config"):  # an inner loop so steep that the loss overflows to inf or NaN
        payload[part] |= {"inner_lr": 1000.0, "inner_steps": 5}
    torch.save(payload, out)
    code, _, err = run([*args, "--iterations", "6", "--resume"], capsys)
    assert code == 2 and "training diverged at iteration" in err and "is kept" in err
    _, meta = load_checkpoint(out)  # loads: every weight finite
    assert f"at iteration {meta['training']['iteration']}, is kept" in err
    assert int(err.split("diverged at iteration ")[1].split()[0]) > meta["training"]["iteration"]


def test_the_labs_adapted_model_loads_in_the_cli_and_classifies_without_support(toy, checkpoint, tmp_path, capsys):
    from metacore.checkpoint import adapted_checkpoint
    from metacore.features import adapted_params, load_support_folder

    learner, _ = load_checkpoint(checkpoint)
    support = load_support_folder(toy / "toy", learner.backbone.input_spec)
    params = adapted_params(learner, support, steps=3, lr=0.05)  # what the Features page's download holds
    path = tmp_path / "adapted_model.pt"
    path.write_bytes(adapted_checkpoint(learner, params, support.classes, adapted_with="test"))
    query = toy / "toy" / "class03" / "1.png"
    code, out, err = run(["classify", "--checkpoint", str(path), str(query), "--json"], capsys)
    assert code == 0, err
    row = json.loads(out)[0]
    assert list(row["probabilities"]) == support.classes
    code, out, _ = run(["classify", "--checkpoint", str(checkpoint), "--support", str(toy / "toy"), "--inner-lr",
                        "0.05", "--steps", "3", str(query), "--json"], capsys)  # fmt: skip
    assert json.loads(out)[0]["probabilities"] == pytest.approx(row["probabilities"], abs=1e-5)
    code, _, err = run(["evaluate", "--checkpoint", str(path), "--data-root", str(toy), *TOY_TASK, "--episodes", "2"],
                       capsys)  # fmt: skip
    assert code == 0, err  # its adapted body is a starting point like any other


def test_unsure_writes_a_threshold_that_classify_then_applies(
    toy: Path, checkpoint: Path, tmp_path: Path, capsys
) -> None:
    card = checkpoint.with_suffix(".json")
    card.write_text(json.dumps({"model": checkpoint.name}))
    args = ["unsure", "--checkpoint", str(checkpoint), "--data-root", str(toy), "--dataset", "toy", "--way", "2"]
    code, stdout, _ = run([*args, "--query", "2", "--episodes", "5", "--card", str(card)], capsys)
    assert code == 0, stdout
    unsure = json.loads(card.read_text())["unsure"]
    assert unsure["threshold"] > 0 and 0 <= unsure["in_task_kept"] <= 100 and "classes 1-5" in unsure["chosen_on"]
    for name in ("class01", "class02", "class03"):  # one shot per class
        (tmp_path / "support" / name).mkdir(parents=True)
        shutil.copy(toy / "toy" / name / "0.png", tmp_path / "support" / name / "0.png")
    queries = [str(tmp_path / "support" / "class01" / "0.png"), str(toy / "toy" / "class07" / "1.png")]
    code, stdout, _ = run(["classify", "--checkpoint", str(checkpoint), "--support", str(tmp_path / "support"),
                           *queries, "--json"], capsys)  # fmt: skip
    own, other = json.loads(stdout)
    assert own["novelty"] == pytest.approx(0, abs=1e-4) and own["unsure"] is False  # a support image is its class
    assert other["novelty"] > 0 and other["unsure"] == (other["novelty"] > unsure["threshold"])
    card.unlink()


def test_unsure_refuses_a_range_and_an_unreadable_card_before_any_work(toy: Path, checkpoint: Path, capsys) -> None:
    args = ["unsure", "--checkpoint", str(checkpoint), "--data-root", str(toy), "--dataset", "toy"]
    assert run([*args, "--way", "2-5"], capsys)[0] == 2
    code, _, err = run([*args, "--way", "2", "--card", str(toy / "missing.json")], capsys)
    assert code == 2 and "cannot read it as a JSON model card" in err


def test_evaluate_reports_a_meta_sgd_models_learned_rates_not_a_scalar(toy: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "metasgd.pt"
    train = ["train", "--algo", "metasgd", "--data-root", str(toy), *TOY_TASK, "--iterations", "2", "--meta-batch",
             "2", "--val-every", "2", "--val-episodes", "2", "--steps", "1", "--out", str(out)]  # fmt: skip
    assert main(train) == 0
    capsys.readouterr()
    evaluate = ["evaluate", "--checkpoint", str(out), "--data-root", str(toy), *TOY_TASK, "--episodes", "3", "--json"]
    code, stdout, _ = run(evaluate, capsys)
    assert code == 0 and json.loads(stdout)["inner_lr"].startswith("learned per-parameter rates (Meta-SGD; mean")
    code, stdout, _ = run([*evaluate, "--inner-lr", "0.02"], capsys)
    assert json.loads(stdout)["inner_lr"] == 0.02  # an explicit lr replaces them, and is reported


def test_train_feature_scale_centres_on_the_mean_training_feature(toy: Path, checkpoint: Path, capsys) -> None:
    out = toy / "scaled.pt"
    common = ["train", "--data-root", str(toy), *TOY_TASK, "--meta-batch", "2", "--val-every", "1",
              "--val-episodes", "2", "--init", str(checkpoint), "--out", str(out)]  # fmt: skip
    code, _, stderr = run([*common, "--iterations", "1", "--meta-lr", "1e-12", "--feature-scale", "20"], capsys)
    assert code == 0, stderr
    learner, _ = load_checkpoint(out)
    base, _ = load_checkpoint(checkpoint)
    assert learner.backbone.kwargs["scale"] == 20.0 and learner.params["scale"].item() == 20.0
    dataset = open_dataset(toy, "toy", spec=base.backbone.input_spec)
    training_classes, _ = dataset.split_held_out(0.1)
    images = torch.cat([training_classes.images(i) for i in range(len(training_classes))])
    mean = base.backbone.features(base.params, images).mean(0)  # every image: the toy set is under 2,000
    torch.testing.assert_close(learner.params["center"], mean.detach())
    features = learner.backbone.features(learner.params, images[:4])
    torch.testing.assert_close(features.norm(dim=1), torch.full((4,), 20.0))
    code, _, stderr = run([*common[:-1], str(toy / "twice.pt"), "--init", str(out), "--feature-scale", "5",
                           "--iterations", "1"], capsys)  # fmt: skip
    assert code == 2 and "already normalises its features" in stderr


@pytest.mark.parametrize("algo", ["maml", "fomaml", "reptile", "anil", "metasgd", "protonet"])
def test_every_algorithms_default_training_moves_the_body(algo: str, toy: Path, tmp_path: Path, capsys) -> None:
    """With the CLI's defaults (zero head, 2 inner steps) the body is meta-trained, and every algorithm that adapts
    the body does so in its inner loop (from a zero head, one step would move only the head)."""
    out = tmp_path / f"{algo}.pt"
    code, _, stderr = run(["train", "--algo", algo, "--data-root", str(toy), *TOY_TASK, "--iterations", "2",
                           "--val-every", "2", "--val-episodes", "2", "--out", str(out)], capsys)  # fmt: skip
    assert code == 0 and "warning" not in stderr, stderr
    learner, _ = load_checkpoint(out)
    torch.manual_seed(0)  # the seed `train` builds its backbone with
    start = Backbone("conv4").params
    assert all(not torch.equal(learner.params[k], start[k]) for k in start), "some body parameter did not train"
    task = EpisodeSampler(open_dataset(toy, "toy", spec=learner.backbone.input_spec), 3, 1, 2, seed=0).sample()
    last = run_to_end(learner.adapt(task.support_x, task.support_y))
    moved = layer_shift(learner.params, last.params)
    body = [v for layer, v in moved.items() if layer.startswith("blocks.")]
    assert (max(body, default=0.0) > 0) == (algo not in ("anil", "protonet")), moved


def test_a_zero_head_with_one_step_is_refused_for_reptile_and_flagged_for_maml(toy: Path, tmp_path: Path, capsys):
    common = ["train", "--data-root", str(toy), *TOY_TASK, "--iterations", "1", "--val-every", "1",
              "--val-episodes", "1", "--steps", "1", "--out", str(tmp_path / "m.pt")]  # fmt: skip
    code, _, stderr = run([*common, "--algo", "reptile"], capsys)
    assert code == 2 and "Reptile's direction is 0" in stderr and "Traceback" not in stderr
    code, _, stderr = run([*common, "--algo", "maml"], capsys)
    assert code == 0 and "warning: maml with a zero head and 1 inner step adapts only the head" in stderr
    code, _, stderr = run([*common, "--algo", "maml", "--steps", "0"], capsys)  # the last --steps counts
    assert code == 2 and "every task stays at chance" in stderr
    code, _, stderr = run([*common, "--algo", "maml", "--head", "proto"], capsys)  # a prototype head: no problem
    assert code == 0 and "warning" not in stderr


def test_checkpoints_record_every_stages_data_and_evaluation_alphabets_need_a_flag(tmp_path: Path, capsys) -> None:
    for split, alphabets in (("images_background", ("Alpha", "Beta")), ("images_evaluation", ("Gamma",))):
        for alphabet in alphabets:
            make_class_folders(tmp_path / "omniglot-py" / split / alphabet, {f"character{i:02d}": 4 for i in range(4)})
    common = ["train", "--data-root", str(tmp_path), "--way", "3", "--shot", "1", "--query", "2", "--iterations", "1",
              "--meta-batch", "1", "--val-every", "1", "--val-episodes", "1"]  # fmt: skip
    first, second = tmp_path / "first.pt", tmp_path / "second.pt"
    assert run([*common, "--out", str(first)], capsys)[0] == 0
    code, _, stderr = run([*common, "--init", str(first), "--rotations", "--out", str(second)], capsys)
    assert code == 0, stderr
    stages = read_checkpoint(second)["training"]["data_stages"]
    assert [s["rotations"] for s in stages] == [False, True]  # the first stage's record travels with the second
    training, _ = open_dataset(tmp_path, "omniglot", "background", rotations=True).split_held_out(0.1)
    hashes = ("training_class_list_sha256", "validation_class_list_sha256")
    assert {k: v for k, v in stages[1].items() if k not in hashes} == {
        "data_root": tmp_path.name, "dataset": "omniglot", "split": "background", "images": None, "rotations": True,
        "training_classes": len(training), "validation": "held-out classes", "validation_classes": 32 - len(training),
        "evaluation_split": False, "test_data": None,
    }  # fmt: skip
    assert stages[1][hashes[0]] == training.class_list_sha256() != stages[0][hashes[0]]

    on_test = [*common, "--split", "evaluation", "--way", "2", "--out", str(tmp_path / "cheat.pt")]
    code, _, stderr = run(on_test, capsys)
    assert code == 2 and "--allow-evaluation-split" in stderr and not (tmp_path / "cheat.pt").exists()
    code, _, stderr = run([*on_test, "--allow-evaluation-split"], capsys)
    assert code == 0, stderr
    assert read_checkpoint(tmp_path / "cheat.pt")["training"]["data_stages"][-1]["evaluation_split"] is True

    by_path = [
        *common,
        "--dataset",
        "omniglot-py/images_evaluation/Gamma",
        "--way",
        "2",
        "--out",
        str(tmp_path / "sly.pt"),
    ]  # fmt: skip  (the same alphabets, named by their folder)
    code, _, stderr = run(by_path, capsys)
    assert code == 2 and "--allow-evaluation-split" in stderr and not (tmp_path / "sly.pt").exists()
    code, _, stderr = run([*by_path, "--allow-evaluation-split"], capsys)
    assert code == 0, stderr
    assert read_checkpoint(tmp_path / "sly.pt")["training"]["data_stages"][-1]["evaluation_split"] is True


def test_a_model_cards_test_data_cannot_be_trained_on_by_another_name(tmp_path: Path, capsys) -> None:
    """The shipped photo card measures on imagenet-mini18/val and cifar10-test images 500:. Training on them, by
    any path to them, is refused unless allowed, and recorded; a slice of the images the card does not use is not
    test data. The card's data line is derived from the record."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts" / "models"))
    from model_card import data_statement

    make_class_folders(tmp_path / "imagenet-mini18" / "val", {f"n{i:02d}": 4 for i in range(4)})
    make_class_folders(tmp_path / "cifar10-test", {f"c{i}": 6 for i in range(4)})
    (tmp_path / "alias").symlink_to(tmp_path / "imagenet-mini18")
    common = ["train", "--data-root", str(tmp_path), "--way", "2", "--shot", "1", "--query", "1", "--iterations", "1",
              "--meta-batch", "1", "--val-every", "1", "--val-episodes", "1"]  # fmt: skip
    for data in (["--dataset", "imagenet-mini18/val"], ["--dataset", "alias", "--split", "val"],
                 ["--dataset", "cifar10-test"], ["--dataset", "cifar10-test", "--images", "2:"]):  # fmt: skip
        code, _, stderr = run([*common, *data, "--out", str(tmp_path / "cheat.pt")], capsys)
        assert code == 2 and "the test data of photo_lite2.json" in stderr, (data, stderr)
        assert "--allow-evaluation-split" in stderr and not (tmp_path / "cheat.pt").exists()
    code, _, stderr = run([*common, "--dataset", "cifar10-test", "--images", "0:2", "--out", str(tmp_path / "a.pt")],
                          capsys)  # fmt: skip
    assert code == 0, stderr
    [stage] = read_checkpoint(tmp_path / "a.pt")["training"]["data_stages"]
    assert stage["evaluation_split"] is False and "No recorded stage used test data" in data_statement([stage])
    code, _, stderr = run([*common, "--dataset", "alias/val", "--allow-evaluation-split", "--out",
                           str(tmp_path / "b.pt")], capsys)  # fmt: skip
    assert code == 0, stderr
    [stage] = read_checkpoint(tmp_path / "b.pt")["training"]["data_stages"]
    assert stage["evaluation_split"] is True and stage["test_data"].startswith("imagenet-mini18/val, the test data")
    assert "Stage(s) 1 trained on test data" in data_statement([stage])


def test_a_step_curve_batched_with_vmap_equals_one_task_at_a_time(toy: Path, checkpoint: Path) -> None:
    """CPU adapts one task at a time (faster there), GPU `chunk` tasks per vmap call: the same numbers."""
    from metacore.evaluate import step_curve

    learner, _ = load_checkpoint(checkpoint)
    dataset = open_dataset(toy, "toy", None, learner.backbone.input_spec)
    curves = [
        step_curve(learner, EpisodeSampler(dataset, 3, 1, 2, seed=4), 5, [0, 1, 3], 0.05, chunk=chunk)
        for chunk in (1, 3)  # 3: a chunk of 3 and one of 2
    ]
    assert [row["step"] for row in curves[0]] == [0, 1, 3]
    for batched, looped in zip(*curves):
        assert batched == pytest.approx(looped, abs=1e-6)
    assert curves[0][2]["support_loss"] < curves[0][0]["support_loss"]


def test_a_step_curve_that_runs_out_of_gpu_memory_goes_on_in_smaller_vmap_calls(
    toy: Path, checkpoint: Path, monkeypatch
) -> None:
    """A 20-way 5-shot curve adapts 100 episodes per vmap call on a GPU (~30 GB); on a smaller or shared GPU the
    call is redone in halves (here: any call over 2 episodes fails as a GPU would), with the same numbers."""
    from metacore.evaluate import step_curve

    learner, _ = load_checkpoint(checkpoint)
    dataset = open_dataset(toy, "toy", None, learner.backbone.input_spec)
    expected = step_curve(learner, EpisodeSampler(dataset, 3, 1, 2, seed=4), 7, [0, 1, 3], 0.05, chunk=1)
    real_vmap, sizes = torch.func.vmap, []

    def small_gpu_vmap(function):
        def call(*tensors):
            sizes.append(tensors[0].shape[0])
            if sizes[-1] > 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return real_vmap(function)(*tensors)

        return call

    monkeypatch.setattr(torch.func, "vmap", small_gpu_vmap)
    curve = step_curve(learner, EpisodeSampler(dataset, 3, 1, 2, seed=4), 7, [0, 1, 3], 0.05, chunk=5)
    assert sizes == [5, 2, 2, 1, 2]  # 5 fails, then 2+2+1; the last 2 episodes go straight to calls of 2
    for after, before in zip(curve, expected):
        assert after == pytest.approx(before, abs=1e-6)


def test_a_step_curve_cut_short_goes_on_from_its_kept_episodes(toy: Path, checkpoint: Path, tmp_path: Path) -> None:
    """A card's curve takes an hour of CPU per setting: one cut short (a session's end) keeps the episodes it scored
    and goes on from them with the same episodes, and so the same result; a kept file of another model is not used."""
    from metacore.evaluate import step_curve

    learner, _ = load_checkpoint(checkpoint)
    dataset = open_dataset(toy, "toy", None, learner.backbone.input_spec)
    partial = tmp_path / "curve.partial.pt"

    def curve(model: MAML, cut_after: int | None = None, **kwargs) -> list[dict]:
        sampler = EpisodeSampler(dataset, 3, 1, 2, seed=4)
        if cut_after is not None:  # the process is killed while drawing episode cut_after + 1
            draws, sample = iter(range(cut_after + 1)), sampler.sample
            sampler.sample = lambda: sample() if next(draws) < cut_after else sys.exit("killed")
        return step_curve(model, sampler, 7, [0, 1, 3], 0.05, **kwargs)

    expected = curve(learner)
    with pytest.raises(SystemExit):
        curve(learner, cut_after=5, partial=partial, save_every=2)
    assert torch.load(partial, weights_only=True)["accuracy"].shape == (4, 3)  # saved after episodes 2 and 4
    adapted, adapt = [], learner.adapt
    learner.adapt = lambda *args, **kwargs: adapted.append(1) or adapt(*args, **kwargs)
    resumed = curve(learner, partial=partial)
    assert len(adapted) == 3 and not partial.exists()  # episodes 5-7 only; the file goes when the curve is done
    for after, before in zip(resumed, expected):
        assert after == pytest.approx(before, abs=1e-9)

    with pytest.raises(SystemExit):
        curve(learner, cut_after=6, partial=partial, save_every=1)
    other, _ = load_checkpoint(checkpoint)
    other.params = {name: value + 0.05 for name, value in other.params.items()}
    assert curve(other, partial=partial) == curve(other) != expected  # the first model's 6 episodes: not reused


def test_a_protonet_step_curve_is_flat(toy: Path, tmp_path: Path, capsys) -> None:
    """ProtoNet takes no inner steps: its curve repeats step 0 at every step asked for (no traceback)."""
    out = tmp_path / "protonet.pt"
    assert main(["train", "--algo", "protonet", "--data-root", str(toy), *TOY_TASK, "--iterations", "1",
                 "--meta-batch", "1", "--val-every", "1", "--val-episodes", "1", "--out", str(out)]) == 0  # fmt: skip
    capsys.readouterr()
    code, stdout, _ = run([*evaluate_args(out, toy, "--episodes", "3", "--steps-curve", "0:2", "--json")], capsys)
    curve = json.loads(stdout)["curve"]
    assert code == 0 and [row["step"] for row in curve] == [0, 1, 2]
    assert curve[0] | {"step": 2} == curve[2]


def test_train_metasgd_with_body_rates_only_records_it_and_other_algorithms_refuse_it(
    toy: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "body_rates.pt"
    base = ["train", "--data-root", str(toy), *TOY_TASK, "--iterations", "2", "--meta-batch", "2", "--steps", "2",
            "--val-every", "2", "--val-episodes", "1", "--body-rates-only", "--out", str(out)]  # fmt: skip
    assert main([*base, "--algo", "metasgd"]) == 0
    learner, meta = load_checkpoint(out)
    assert meta["learner"]["body_rates_only"] is True and learner.learns_rates
    assert not any(k.startswith("lr.head.") for k in read_checkpoint(out)["state_dict"])
    capsys.readouterr()
    code, _, stderr = run([*base, "--algo", "maml", "--out", str(tmp_path / "maml.pt")], capsys)
    assert code == 2 and "body_rates_only is a Meta-SGD setting" in stderr and "Traceback" not in stderr


def test_train_with_a_way_scaled_head_records_it_and_the_model_keeps_it(
    toy: Path, checkpoint: Path, tmp_path: Path, capsys
) -> None:
    """`--way-scaled-head` is part of the model: a loaded model steps its head as it was meta-trained to, and a
    file that says something else than true or false is refused with one line."""
    out = tmp_path / "scaled.pt"
    assert main(["train", "--data-root", str(toy), *TOY_TASK, "--iterations", "2", "--meta-batch", "2", "--steps", "2",
                 "--val-every", "2", "--val-episodes", "1", "--way-scaled-head", "--out", str(out)]) == 0  # fmt: skip
    learner, meta = load_checkpoint(out)
    assert learner.way_scaled_head and meta["learner"]["way_scaled_head"] is True
    assert learner.rates_in_words() == "lr 0.4 (the head's x N/5 in an N-way task)"  # what pages and cards say
    capsys.readouterr()
    code, stdout, _ = run([*evaluate_args(out, toy, "--episodes", "1"), "--json"], capsys)
    result = json.loads(stdout)
    assert code == 0 and result["way_scaled_head"] is True
    code, stdout, _ = run(evaluate_args(out, toy, "--episodes", "1"), capsys)
    assert code == 0 and f"inner lr 0.4 (the head's step x {result['way']}/5):" in stdout  # the text says it too
    code, stdout, _ = run(evaluate_args(checkpoint, toy, "--episodes", "1"), capsys)
    assert code == 0 and "the head's step" not in stdout
    assert "way_scaled_head" not in load_checkpoint(checkpoint)[1]["learner"]  # other files read unchanged
    payload = read_checkpoint(out)
    payload["learner"]["way_scaled_head"] = "yes"
    torch.save(payload, tmp_path / "bad.pt")
    capsys.readouterr()
    code, _, stderr = run([*evaluate_args(tmp_path / "bad.pt", toy, "--episodes", "1")], capsys)
    assert code == 2 and "way_scaled_head must be true or false" in stderr and "Traceback" not in stderr
    code, _, stderr = run(["train", "--data-root", str(toy), *TOY_TASK, "--algo", "protonet", "--way-scaled-head",
                           "--iterations", "1", "--out", str(tmp_path / "proto.pt")], capsys)  # fmt: skip
    assert code == 2 and "ProtoNet takes none" in stderr and "Traceback" not in stderr


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_weights_saved_in_half_precision_are_read_in_float32(
    toy: Path, checkpoint: Path, tmp_path: Path, capsys, dtype: str
) -> None:
    payload = torch.load(checkpoint, weights_only=True)
    payload["state_dict"] = {k: v.to(getattr(torch, dtype)) for k, v in payload["state_dict"].items()}
    half = tmp_path / f"{dtype}.pt"
    torch.save(payload, half)
    queries = sorted((toy / "toy" / "class00").iterdir())[:2]
    results = []
    for model in (checkpoint, half):
        code, out, err = run(["classify", "--checkpoint", str(model), "--support", str(toy / "toy"),
                              *map(str, queries), "--json"], capsys)  # fmt: skip
        assert code == 0, err
        results.append([row["predicted"] for row in json.loads(out)])
    assert results[0] == results[1]  # the same answers, within half precision's rounding


def test_resume_of_a_checkpoint_with_unknown_settings_is_one_line(
    toy: Path, checkpoint: Path, tmp_path, capsys
) -> None:
    payload = torch.load(checkpoint, weights_only=True)
    payload["config"] = {**payload["config"], "warp_drive": 9}
    out = tmp_path / "future.pt"
    torch.save(payload, out)
    args = ["train", "--data-root", str(toy), *TOY_TASK, "--iterations", "5", "--resume", "--out", str(out)]
    code, _, err = run(args, capsys)
    assert code == 2 and err.strip().splitlines() == [
        f"error: --resume: {out} was written with settings this metacore does not know (warp_drive); start afresh "
        "without --resume"
    ]


def test_a_checkpoint_whose_finite_weights_overflow_is_refused_in_one_line(
    toy: Path, checkpoint: Path, tmp_path: Path, capsys
) -> None:
    payload = torch.load(checkpoint, weights_only=True)
    conv = next(k for k in payload["state_dict"] if k.endswith("weight") and payload["state_dict"][k].dim() == 4)
    payload["state_dict"][conv] = payload["state_dict"][conv] * 1e30  # finite, but the activations overflow
    huge = tmp_path / "huge.pt"
    torch.save(payload, huge)
    query = str(sorted((toy / "toy" / "class00").iterdir())[0])
    classify = ["classify", "--checkpoint", str(huge), "--support", str(toy / "toy"), query]
    evaluate = ["evaluate", "--checkpoint", str(huge), "--data-root", str(toy), *TOY_TASK, "--episodes", "2"]
    for args in (classify, evaluate):
        code, out, err = run(args, capsys)
        assert code == 2 and "NaN" not in out, (args[0], out)
        assert err.strip().splitlines()[-1].startswith(f"error: {huge}: its features overflow to NaN or infinity")


def test_adaptation_at_the_largest_lr_is_reported_not_silent(toy: Path, checkpoint: Path, capsys) -> None:
    from metacore.checkpoint import MAX_INNER_LR

    queries = [str(p) for p in sorted((toy / "toy" / "class00").iterdir())[:3]]
    args = ["classify", "--checkpoint", str(checkpoint), "--support", str(toy / "toy"), *queries]
    code, _, err = run([*args, "--inner-lr", str(MAX_INNER_LR)], capsys)
    assert "warning: every probability is 0 or 1 (saturated)" in err or "warning: the adaptation diverged" in err, err
    code, _, err = run(args, capsys)  # the model's own lr: neither
    assert code == 0 and "saturated" not in err and "diverged" not in err


def test_a_large_support_set_shows_its_progress_and_the_steps_are_capped(
    toy: Path, checkpoint: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading and adapting show a bar with an ETA on stderr from PROGRESS_FROM images on (here lowered to the toy
    set's size: 2 x 5,000 images is a benchmark, scripts/bench/large_support.py); --steps stops at 100."""
    from metacore import features

    monkeypatch.setattr(features, "PROGRESS_FROM", 10)
    query = str(toy / "toy" / "class00" / "0.png")
    args = ["classify", "--checkpoint", str(checkpoint), "--support", str(toy / "toy"), query, "--json"]
    code, out, err = run([*args, "--steps", "3"], capsys)
    assert code == 0, err
    assert "reading images:" in err and "/60 [" in err and "adapting:" in err and "/4 [" in err  # steps 0..3
    assert json.loads(out)[0]["predicted"]
    code, _, err = run([*args, "--steps", "101"], capsys)
    assert code == 2 and "--steps must be a whole number from 0 up to 100" in err


def test_evaluate_refuses_non_finite_outputs_at_run_time(toy: Path, checkpoint: Path) -> None:
    """Weights that overflow on real images (here: past the load-time probe, one conv weight made infinite) give
    NaN logits; evaluate, with or without a step curve, names the episodes and the cause instead of reporting
    argmax's chance-level accuracy (in the CLI: one line, exit 2, as every MetacoreError)."""
    from metacore.evaluate import evaluate, step_curve

    learner, _ = load_checkpoint(checkpoint)
    spec = learner.backbone.input_spec
    sampler = lambda: EpisodeSampler(open_dataset(toy, "toy", spec=spec), 3, 1, 2, seed=0)  # noqa: E731
    assert evaluate(learner, sampler(), episodes=2)["accuracy"] > 0  # as loaded: an accuracy
    name = next(k for k in learner.params if k.startswith("blocks.0") and k.endswith("weight"))
    learner.params = {**learner.params, name: learner.params[name] * float("inf")}
    with pytest.raises(MetacoreError, match=r"episode 1: the adapted model's outputs are not finite numbers"):
        evaluate(learner, sampler(), episodes=2)
    with pytest.raises(MetacoreError, match=r"episodes 1-2: the adapted model's outputs are not finite numbers"):
        step_curve(learner, sampler(), episodes=2, steps=[0, 1])
