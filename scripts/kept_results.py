"""`evaluate` results kept under runs/card_results/, shared by the model cards (models/) and the benchmarks (bench/)."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cached(evaluate_args: list[str], run: Callable[[], str], folder: Path = ROOT / "runs" / "card_results") -> dict:
    """An `evaluate`'s JSON result, kept under runs/card_results/ keyed by the checkpoint file's sha256 and the
    arguments, so that a page or card whose evaluations take longer than one sitting (on CPU: hours) resumes where
    it stopped, and a result is never reused for a changed model."""
    saved = kept_result(evaluate_args, folder)
    if saved.is_file():
        return json.loads(saved.read_text())
    stdout = run()
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(stdout)
    return json.loads(stdout)


def kept_result(evaluate_args: list[str], folder: Path = ROOT / "runs" / "card_results") -> Path:
    """Where `cached` keeps an `evaluate`'s result. Where the data root lies is not part of the key (a GPU
    machine's `data` holds the same data sets as `../shared/data` here), so results measured there are reused here;
    nor is `--partial` (where a cut curve keeps its episodes: beside the result, named from its key)."""
    from metacore.checkpoint import sha256

    checkpoint = evaluate_args[evaluate_args.index("--checkpoint") + 1]
    keyed = list(evaluate_args)
    for option in ("--data-root", "--partial"):
        if option in keyed:
            where = keyed.index(option)
            del keyed[where : where + 2]
    key = hashlib.sha256(json.dumps([sha256(ROOT / checkpoint), keyed]).encode()).hexdigest()[:24]
    return folder / f"{key}.json"
