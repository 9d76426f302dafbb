"""`evaluate` says when the classes it scores were in the model's meta-training (trained classes, not novel ones)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from metacore.__main__ import main
from metacore.checkpoint import load_checkpoint, read_checkpoint
from metacore.provenance import trained_classes
from test_data import make_class_folders


def test_evaluate_flags_trained_classes_and_not_novel_ones(tmp_path: Path, capsys) -> None:
    make_class_folders(tmp_path / "seen", {f"c{i}": 6 for i in range(6)})
    make_class_folders(tmp_path / "novel", {f"n{i}": 6 for i in range(6)})
    make_class_folders(tmp_path / "mixed", {**{f"c{i}": 6 for i in range(2)}, **{f"n{i}": 6 for i in range(4)}})
    out = tmp_path / "model.pt"
    args = ["train", "--algo", "maml", "--data-root", str(tmp_path), "--dataset", "seen", "--way", "3", "--query", "2",
            "--iterations", "1", "--meta-batch", "2", "--val-every", "1", "--val-episodes", "2", "--steps", "2",
            "--images", "0:3", "--val-images", "3:6", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    capsys.readouterr()

    def evaluate(dataset: str, images: str | None = None) -> tuple[dict, str]:
        extra = ["--images", images] if images else []
        argv = ["evaluate", "--checkpoint", str(out), "--data-root", str(tmp_path), "--dataset", dataset,
                "--way", "3", "--query", "2", "--episodes", "2", "--json", *extra]  # fmt: skip
        assert main(argv) == 0
        captured = capsys.readouterr()
        return json.loads(captured.out), captured.err

    result, err = evaluate("seen", "3:6")  # other images of the very classes it trained on
    assert result["trained_classes_scored"] == 6 and "6 of the 6 classes scored here" in err
    assert "trained classes, not classes it never saw" in err
    result, err = evaluate("novel")
    assert result["trained_classes_scored"] == 0 and "warning" not in err
    result, err = evaluate("mixed")
    assert result["trained_classes_scored"] == 2 and "2 of the 6 classes" in err


def test_a_card_marks_settings_on_trained_classes_from_the_records(tmp_path: Path, capsys) -> None:
    """The model card decides "trained classes, new images" from the checkpoint's records, not by hand, and lists
    the settings on classes it never meta-trained on first (issue 41)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts" / "models"))
    from model_card import TRAINED_CLASSES, labelled_settings

    make_class_folders(tmp_path / "seen", {f"c{i}": 6 for i in range(4)})
    make_class_folders(tmp_path / "novel", {f"n{i}": 6 for i in range(4)})
    out = tmp_path / "model.pt"
    args = ["train", "--algo", "maml", "--data-root", str(tmp_path), "--dataset", "seen", "--way", "3", "--query", "2",
            "--iterations", "1", "--meta-batch", "2", "--val-every", "1", "--val-episodes", "2", "--steps", "2",
            "--images", "0:3", "--val-images", "3:6", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    settings = [("on seen", ["--dataset", "seen", "--images", "3:"], 3, 1), ("on novel", ["--dataset", "novel"], 3, 1)]
    labelled = labelled_settings(settings, read_checkpoint(out), str(tmp_path))
    assert [s[0] for s in labelled] == ["on novel", "on seen" + TRAINED_CLASSES]


def test_init_writes_a_model_that_is_not_meta_trained(tmp_path: Path) -> None:
    """`metacore init` (the photo model's recipe): the frozen body's normalised features and a zero head, recorded
    as not meta-trained, so no class counts as trained."""
    out = tmp_path / "frozen.pt"
    assert main(["init", "--adapter-rank", "0", "--no-adapter-affine", "--out", str(out)]) == 0
    learner, meta = load_checkpoint(out)
    assert list(learner.params) == ["scale"] and meta["training"]["meta_trained"] is False
    x = torch.randn(3, 1280)
    expected = 4.0 * torch.nn.functional.normalize(torch.nn.functional.layer_norm(x, (1280,)), dim=-1)
    torch.testing.assert_close(learner.backbone.features(learner.params, x), expected)
    assert trained_classes(meta["training"], tmp_path) == (set(), [])
    assert main(["init", "--backbone", "conv4", "--adapter-rank", "0", "--out", str(out)]) == 2
