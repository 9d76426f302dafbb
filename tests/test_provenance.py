"""`evaluate` says when the classes it scores were in the model's meta-training (trained classes, not novel ones)."""

from __future__ import annotations

import json
from pathlib import Path

from metacore.__main__ import main
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
