"""`python -m metacore check`: load the model or features, run the check with baselines, print or write it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from metacore.check import baselines_for, overlap_warnings, run_check, summary_lines
from metacore.errors import MetacoreError, check_number
from metacore.yours import load_features, load_model, restated, validate


def progress_bar():
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def update(what: str, done: int, total: int) -> None:
        bar = bars.get(what)
        if bar is None:
            bar = bars[what] = tqdm(total=total, desc=what, unit="img", leave=False)
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return update


def run(args: argparse.Namespace) -> int:
    check_number(args.episodes, "--episodes", 1, 100_000, integer=True)
    check_number(args.seed, "--seed", 0, 2**32 - 1, integer=True)
    check_number(args.max_mb, "--max-mb", 1, 100_000)
    if args.per_class is not None:
        check_number(args.per_class, "--per-class", 2, 10**7, integer=True)
    max_bytes = int(args.max_mb * 2**20)
    if args.features:
        if args.model:
            raise MetacoreError("give a model file or --features, not both")
        table = load_features(args.features, args.labels, max_bytes)
        report = run_check(
            None, features=(table.features, table.labels, table.classes), episodes=args.episodes, seed=args.seed
        )
        report["model"] = {"name": table.name, "kind": "features"}
    else:
        if not args.model:
            raise MetacoreError("give a model file (or --features FILE)")
        if not args.data:
            raise MetacoreError("--data is required: a folder of class folders")
        model = load_model(args.model, args.arch, max_bytes=max_bytes)
        if any(v is not None for v in (args.size, args.channels, args.mean, args.std)):
            model = validate(model.with_spec(restated(model.spec, args.size, args.channels, args.mean, args.std)))
        baselines = {} if args.no_baselines else baselines_for(model)
        report = run_check(
            model,
            args.data,
            baselines=baselines,
            episodes=args.episodes,
            seed=args.seed,
            per_class=args.per_class,
            images=args.images,
            progress=None if args.json else progress_bar(),
        )
    for warning in overlap_warnings(report):
        print(f"warning: {warning}", file=sys.stderr)
    if args.report:
        from metacore.report import write_report

        write_report(report, Path(args.report))
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if k not in ("map", "files", "labels")}, indent=1))
    else:
        print("\n".join(summary_lines(report)))
        if args.report:
            print(f"report: {args.report}")
    return 0
