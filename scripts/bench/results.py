"""The shipped models against their baselines, under one protocol, written to docs/results.md.

    python scripts/bench/results.py [--data-root ../shared/data] [--episodes 600] [--out docs/results.md]
    python scripts/bench/results.py --cards-only    # after a new card: its rows and curves, the baselines kept

Every accuracy is `python -m metacore evaluate ... --episodes N --json` on a checkpoint (15 queries per
class, seed 0), on the same backbone and the same test data as the shipped model:
- Omniglot: the shipped model's row is its model card (measured by scripts/models/model_card.py with that same
  command); the baselines are the 300-iteration runs of scripts/bench/quick_check.py (trained here with the CLI
  when runs/quick_<algo>.pt is missing); "random init" is the untrained Conv-4 with a zero head, fine-tuned
  on each support set with the inner lr picked on the training alphabets.
- Photos: the shipped photo model's card, ProtoNet on the same frozen features (no meta-learning), and
  fine-tuning from scratch (zero head, untrained adapter, lr picked on the CIFAR-10 training images).
- Each evaluation is kept under runs/card_results/ (keyed by the checkpoint's sha256 and the command), so an
  interrupted run resumes, and a rerun measures only what changed.
- Each shipped model's inner-loop curves (query accuracy and support loss after steps 0..50, and the same from a
  random initialisation), copied from its card: they are hours of CPU, measured once by scripts/models/model_card.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "scripts" / "models"))  # model_card: the cards this page reads

from model_card import SUITES, curve_tables  # noqa: E402
from quick_check import RECIPES, cli, write_page  # noqa: E402

from metacore.checkpoint import build_learner, save_checkpoint  # noqa: E402
from metacore.models import Backbone  # noqa: E402
from metacore.paths import PHOTO_MODEL, SHIPPED_MODEL  # noqa: E402


def untrained(path: Path, backbone: str, algorithm: str, head: str) -> Path:
    """An un-meta-trained checkpoint (seed 0), so baselines go through the same `evaluate` command."""
    torch.manual_seed(0)
    save_checkpoint(path, build_learner(algorithm, Backbone(backbone), 0.1, 1, head))
    return path


class Table:
    def __init__(self, data_root: str, episodes: int, twenty_way: bool, earlier: dict | None = None) -> None:
        self.data_root, self.episodes, self.twenty_way = data_root, episodes, twenty_way
        self.earlier = earlier  # --cards-only: the page's sections as they stand, whose baseline rows are kept

    def score(self, checkpoint: Path, data_args: list[str], way: int, shot: int, *extra: str) -> dict:
        started = time.perf_counter()
        result = cli(
            "evaluate", "--checkpoint", str(checkpoint), "--data-root", self.data_root, *data_args,
            "--way", str(way), "--shot", str(shot), "--episodes", str(self.episodes), "--device", "cpu", *extra,
        )  # fmt: skip
        print(f"  {checkpoint.name} {way}w{shot}s {' '.join(extra)}: {result['accuracy']:.2f} ± {result['ci95']:.2f}"
              f" ({time.perf_counter() - started:.0f} s)", flush=True)  # fmt: skip
        return result

    def pick_lr(self, checkpoint: Path, data: list[str], way: int, shot: int, steps: int, lrs: list[float]) -> float:
        """The inner lr with the best accuracy on 100 episodes of *training* data (never the test data)."""
        best = max(
            lrs,
            key=lambda lr: cli(
                "evaluate", "--checkpoint", str(checkpoint), "--data-root", self.data_root, *data,
                "--way", str(way), "--shot", str(shot), "--episodes", "100", "--steps", str(steps),
                "--inner-lr", str(lr), "--device", "cpu",
            )["accuracy"],
        )  # fmt: skip
        print(f"  {checkpoint.name}: picked inner lr {best} on training data", flush=True)
        return best


def cell(result: dict) -> str:
    return f"{result['accuracy']:.1f} ± {result['ci95']:.1f}"


def card_curves(model: Path, card: dict) -> list[str]:
    """The shipped model's inner-loop curves, as its card gives them (a level below the section's title)."""
    tables = curve_tables(card, card["default_inner_steps"]).replace("\n### ", "\n#### ").replace("### ", "#### ", 1)
    return [f"### The shipped model's inner loop (from [its card](../models/{model.with_suffix('.md').name}))", "",
            *tables.rstrip().splitlines(), ""]  # fmt: skip


Row = tuple[str, list[str], str]  # model, one cell per setting, inner steps


def read_card(model: Path) -> dict:
    return json.loads(model.with_suffix(".json").read_text())


def shipped_row(model: Path, settings: list, suite_card: dict) -> Row:
    """The shipped model's row, from its model card (measured by scripts/models/model_card.py with the same command)."""
    cells = [cell(suite_card["accuracy"][label]) for label, *_ in settings]
    return f"**shipped** (`models/{model.name}`, card)", cells, str(suite_card["default_inner_steps"])


def scratch_row(table: Table, checkpoint: Path, label: str, settings: list, pick: tuple, lrs: list[float]) -> Row:
    """An untrained model fine-tuned for 10 steps, its inner lr picked on training data (`pick`: data, way, shot)."""
    steps = 10
    lr = table.pick_lr(checkpoint, *pick, steps, lrs)
    results = [
        table.score(checkpoint, data, way, shot, "--steps", str(steps), "--inner-lr", str(lr))
        for _, data, way, shot in settings
    ]
    return f"{label} (lr {lr})", [cell(r) for r in results], str(steps)


def table_lines(settings: list, rows: list[Row]) -> list[str]:
    lines = [
        "| model | " + " | ".join(s[0] for s in settings) + " | inner steps |",
        "|---|" + "---|" * (len(settings) + 1),
    ]
    return lines + [f"| {name} | " + " | ".join(cells) + f" | {steps} |" for name, cells, steps in rows]


def shipped_budget(card: dict) -> str:
    return " then ".join(f"{st['iterations']} iterations of {st['algorithm']}" for st in card.get("stages", [])) or (
        f"{card['iterations']} iterations"
    )


def kept_baselines(table: Table, section: str, settings: list) -> list[Row] | None:
    """With --cards-only: the baseline rows of the section as the page has them (they do not depend on the shipped
    model); None: measure them."""
    if table.earlier is None:
        return None
    rows = []
    for line in table.earlier.get(section, []):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and not line.startswith(("| model |", "| **shipped**")) and cells[0] != "setting":
            if len(cells) != len(settings) + 2:
                break  # a curve table below the first one
            rows.append((cells[0], cells[1:-1], cells[-1]))
        elif rows:
            break
    if not rows:
        sys.exit(f"--cards-only: {section} has no baseline rows with {len(settings)} settings on the page to keep; "
                 "measure them (without --cards-only)")  # fmt: skip
    return rows


def omniglot_section(table: Table, runs: Path) -> list[str]:
    settings = [s for s in SUITES["omniglot"]["settings"] if table.twenty_way or s[2] == 5]
    card = read_card(SHIPPED_MODEL)
    rows = [shipped_row(SHIPPED_MODEL, settings, card)]
    kept = kept_baselines(table, "omniglot", settings)
    for algo in () if kept else ("maml", "fomaml", "reptile", "anil", "protonet"):
        checkpoint = runs / f"quick_{algo}.pt"
        if not checkpoint.is_file():
            cli("train", "--algo", algo, "--data-root", table.data_root, "--iterations", "300", "--meta-batch", "8",
                "--val-every", "300", "--out", str(checkpoint), "--device", "cpu", *RECIPES[algo])  # fmt: skip
        results = [table.score(checkpoint, data, way, shot) for _, data, way, shot in settings]
        rows.append((f"{algo}, 300 iterations", [cell(r) for r in results], str(results[0]["steps"])))
    if kept:
        rows += kept
    else:
        scratch = untrained(runs / "random_conv4.pt", "conv4", "maml", "zero")
        pick = (["--split", "background"], 5, 1)
        label = "plain Conv-4 from a random init, fine-tuned"  # not the card's contrast: that is the shipped network
        rows.append(scratch_row(table, scratch, label, settings, pick, [0.01, 0.03, 0.1, 0.4]))
    lines = [
        "## Omniglot characters (Conv-4, 28x28)",
        "",
        "Test data: the 659 characters of `images_evaluation` (20 alphabets never seen in training). The baselines "
        "use the same Conv-4 (GroupNorm), the same training alphabets and the same evaluation command; they were "
        "meta-trained for 300 iterations (5-way 1-shot, meta-batch 8; `scripts/bench/quick_check.py`), the shipped "
        "model "
        f"for {shipped_budget(card)} (see its card), so the comparison of methods is at a short, equal budget."
        + ("" if table.twenty_way else " 20-way baselines: `--twenty-way` (about an hour more on 2 CPU cores)."),
        "",
        *table_lines(settings, rows),
    ]
    return [*lines, "", *card_curves(SHIPPED_MODEL, card)]


def photo_section(table: Table, runs: Path) -> list[str]:
    card = read_card(PHOTO_MODEL)
    settings = [s for s in SUITES["photo"]["settings"] if s[0] in card["accuracy"]]
    rows = [shipped_row(PHOTO_MODEL, settings, card)]
    kept = kept_baselines(table, "photo", settings)
    if kept:
        rows += kept
    else:
        proto = untrained(runs / "protonet_lite2.pt", "feature_adapter", "protonet", "proto")
        rows.append(("ProtoNet on the frozen features (no meta-learning)",
                     [cell(table.score(proto, data, way, shot)) for _, data, way, shot in settings], "0"))  # fmt: skip
        scratch = untrained(runs / "random_lite2.pt", "feature_adapter", "maml", "zero")
        pick = (["--dataset", "cifar10-test", "--images", "0:400"], 5, 5)  # CIFAR-10 training images
        label = "fine-tuning from scratch: zero head + adapter"
        rows.append(scratch_row(table, scratch, label, settings, pick, [0.25, 1.0, 4.0, 16.0]))
    lines = [
        "## Photos (EfficientNet-Lite2 body, frozen)",
        "",
        "Test data: ImageNet-18's `val` photos, which no part of the model was trained on (3-5 a class: 1 shot, 2 "
        "queries), and, marked, its `train` photos, ImageNet-1k training images the frozen body was trained on with "
        "labels; and CIFAR-10 test images 500-999 of each class. The shipped photo model is not meta-trained (the "
        "frozen body's own features and a zero head; why: docs/photo_folds.md), so no class here was in its "
        "meta-training.",
        "",
        *table_lines(settings, rows),
        "",
        SUITES["photo"]["ci_note"],
    ]
    return [*lines, "", *card_curves(PHOTO_MODEL, card)]


SECTIONS = {"photo": photo_section, "omniglot": omniglot_section}
TITLES = {"photo": "## Photos", "omniglot": "## Omniglot"}


def earlier_sections(page: Path) -> dict[str, list[str]]:
    """The sections of the page as it stands, so that measuring one section keeps the others."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in page.read_text().splitlines() if page.is_file() else []:
        if line.startswith("## "):
            current = next((key for key, title in TITLES.items() if line.startswith(title)), None)
            if current:
                sections[current] = []
        if current:
            sections[current].append(line)
    return sections


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument(
        "--sections", default="photo,omniglot", help="which sections to measure (the page keeps the others)"
    )
    parser.add_argument(
        "--twenty-way", action="store_true", help="also 20-way Omniglot baselines (about 1 h more on 2 CPU cores)"
    )
    parser.add_argument(
        "--cards-only",
        action="store_true",
        help="re-read the shipped models' cards (their rows and curves) and keep the baselines' rows as the page has "
        "them: minutes instead of the baselines' hour or more of training and evaluation",
    )
    parser.add_argument("--out", default="docs/results.md")
    args = parser.parse_args()
    chosen = args.sections.split(",")
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)} (choose from: {', '.join(SECTIONS)})")
    kept = earlier_sections(ROOT / args.out)
    table = Table(args.data_root, args.episodes, args.twenty_way, kept if args.cards_only else None)
    runs = ROOT / "runs"
    lines = [
        "# Results: the shipped models against their baselines",
        "",
        f"Produced by `python scripts/bench/results.py --episodes {args.episodes}"
        + (" --twenty-way" if args.twenty_way else "")
        + f"` on {torch.get_num_threads()} CPU "
        f"threads, torch {torch.__version__}. Accuracy % with 95% confidence intervals over {args.episodes} test "
        "episodes, 15 queries per class, seed 0 (the same episodes for every model of a column).",
        "",
    ]
    for section in SECTIONS:
        if section in chosen:
            started = time.perf_counter()
            lines += SECTIONS[section](table, runs)
            minutes = (time.perf_counter() - started) / 60
            kept_all = (
                "The baselines' rows as measured before (kept by `--cards-only`); the shipped model's row and curves "
                "from its card."
                if args.cards_only
                else "Every evaluation was kept from an earlier run (`runs/card_results/`, keyed by file, command)."
            )
            lines += [f"Time to measure this section: {minutes:.0f} min." if minutes >= 0.5 else kept_all, ""]
        else:
            lines += kept.get(section, [f"## {section}: not measured yet (`--sections {section}`)", ""])
    write_page(args.out, lines)


if __name__ == "__main__":
    main()
