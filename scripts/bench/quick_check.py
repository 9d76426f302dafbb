"""Short CPU meta-training of every algorithm on Omniglot background, scored on the evaluation alphabets.

    python scripts/bench/quick_check.py [--data-root ../shared/data] [--iterations 300] [--out docs/quick_check.md]

Each run is exactly the documented CLI: `python -m metacore train ...` then `python -m metacore evaluate ...`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from kept_results import cached  # noqa: E402

# Per-algorithm settings: a sensible short-run recipe for each method.
RECIPES = {
    "maml": ["--steps", "2", "--inner-lr", "0.4"],  # from a zero head, 1 step would be ANIL (see docs/design.md)
    "fomaml": ["--steps", "2", "--inner-lr", "0.4"],
    "reptile": ["--steps", "3", "--inner-lr", "0.4", "--meta-batch", "4", "--meta-lr", "0.003"],
    "anil": ["--steps", "5", "--inner-lr", "0.4"],
    "metasgd": ["--steps", "2", "--inner-lr", "0.4"],
    "protonet": [],
}


def cli(*args: str) -> dict:
    """`python -m metacore ARGS --json`, parsed; an `evaluate` is kept under runs/card_results (see `cached`)."""

    def run() -> str:
        result = subprocess.run(
            [sys.executable, "-m", "metacore", *args, "--json"], cwd=ROOT, capture_output=True, text=True
        )
        if result.returncode != 0:
            raise SystemExit(f"failed: python -m metacore {' '.join(args)}\n{result.stderr.strip()}")
        return result.stdout

    return cached([*args[1:], "--json"], run) if args[0] == "evaluate" else json.loads(run())


def write_page(path: str, lines: list[str]) -> None:
    """Write a Markdown page under the project root."""
    out = ROOT / path
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--meta-batch", type=int, default=8)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--algorithms", default=",".join(RECIPES))
    parser.add_argument("--out", default="docs/quick_check.md")
    args = parser.parse_args()

    rows = []
    for algo in args.algorithms.split(","):
        checkpoint = f"runs/quick_{algo}.pt"
        started = time.perf_counter()
        trained = cli(
            "train",
            "--algo",
            algo,
            "--data-root",
            args.data_root,
            "--iterations",
            str(args.iterations),
            "--meta-batch",
            str(args.meta_batch),
            "--val-every",
            str(args.iterations),
            "--out",
            checkpoint,
            "--device",
            "cpu",
            *RECIPES[algo],
        )
        train_s = time.perf_counter() - started
        started = time.perf_counter()
        scored = cli(
            "evaluate",
            "--checkpoint",
            checkpoint,
            "--data-root",
            args.data_root,
            "--split",
            "evaluation",
            "--way",
            "5",
            "--shot",
            "1",
            "--episodes",
            str(args.episodes),
            "--device",
            "cpu",
        )
        eval_s = time.perf_counter() - started
        row = {
            "algorithm": algo,
            "recipe": " ".join(RECIPES[algo]),
            "train_s": train_s,
            "eval_s": eval_s,
            "accuracy": scored["accuracy"],
            "ci95": scored["ci95"],
            "steps": scored["steps"],
            "batching": trained["batching"],
        }
        print(json.dumps(row), flush=True)
        rows.append(row)

    lines = [
        f"# Quick check: {args.iterations} meta-training iterations per algorithm on CPU",
        "",
        f"Produced by `python scripts/bench/quick_check.py --iterations {args.iterations}` "
        f"(meta-batch {args.meta_batch}, "
        "5-way 1-shot 15-query training tasks from Omniglot `images_background`; scored on 5-way 1-shot tasks "
        f"from `images_evaluation`, {args.episodes} episodes, seed 0). Chance is 20%.",
        "",
        "| algorithm | recipe flags | train wall time | 5w1s accuracy (95% CI) | test inner steps |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['algorithm']} | `{r['recipe'] or '(defaults)'}` | {r['train_s'] / 60:.1f} min | "
            f"{r['accuracy']:.1f} ± {r['ci95']:.1f} | {r['steps']} |"
        )
    write_page(args.out, lines)


if __name__ == "__main__":
    main()
