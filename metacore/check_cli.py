"""`python -m metacore check`: load the model or features, run the check with baselines, print or write it."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from metacore.check import run_check, summary_lines
from metacore.errors import MetacoreError, check_number
from metacore.images import InputSpec
from metacore.paths import PHOTO_MODEL
from metacore.yours import FeatureModel, load_features, load_model, random_init


def numbers(text: str, name: str, channels: int) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise MetacoreError(f"--{name} must be numbers separated by commas, e.g. 0.5,0.5,0.5") from None
    if len(values) == 1:
        values *= channels
    if len(values) != channels:
        raise MetacoreError(f"--{name} needs one value per channel ({channels}), got {len(values)}")
    return values


def stated_spec(args: argparse.Namespace, spec: InputSpec) -> InputSpec | None:
    """The file's preprocessing with what the command line changes, or None if it changes nothing."""
    if args.size is None and args.channels is None and args.mean is None and args.std is None:
        return None
    if args.size is not None:
        check_number(args.size, "--size", 8, 1024, integer=True)
    channels = args.channels or spec.channels
    default_mean = spec.mean if channels == spec.channels else (0.5,) * channels
    default_std = spec.std if channels == spec.channels else (0.5,) * channels
    mean = numbers(args.mean, "mean", channels) if args.mean else default_mean
    std = numbers(args.std, "std", channels) if args.std else default_std
    if min(std) <= 0:
        raise MetacoreError("--std values must be above 0")
    return replace(spec, size=args.size or spec.size, channels=channels, mean=mean, std=std)


def baselines_for(model: FeatureModel) -> dict[str, FeatureModel]:
    """The same architecture at random initialisation (when known) and the shipped photo model (unless it is it)."""
    found = {}
    if model.architecture:
        found["random_init"] = random_init(model.architecture, model.spec)
    if PHOTO_MODEL.is_file():
        photo = load_model(PHOTO_MODEL)
        if photo.sha256 != model.sha256:
            found["photo_model"] = photo
    return found


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
        spec = stated_spec(args, model.spec)
        if spec is not None:
            model = load_model(args.model, args.arch, spec, max_bytes)
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
    if report.get("meta_training", {}).get("warning"):
        print(f"warning: {report['meta_training']['warning']}", file=sys.stderr)
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
