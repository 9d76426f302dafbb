"""Write the model card (JSON + Markdown) of a checkpoint: its recipe, its accuracy table, its sha256.

    python scripts/model_card.py runs/shipped.pt --out models/omniglot_conv4.pt --steps 1 --inner-lr 0.4
    python scripts/model_card.py runs/photo_lite2.pt --suite photo --out models/photo_lite2.pt --steps 5 --inner-lr 2

Copies the checkpoint to --out with the given default inner steps / lr, then measures it with exactly
`python -m metacore evaluate ... --episodes 600 --json` on the suite's benchmarks (Omniglot evaluation
alphabets; or held-out ImageNet classes and unseen CIFAR-10 images for the photo model).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from metacore.checkpoint import read_checkpoint, sha256  # noqa: E402
from metacore.device import describe  # noqa: E402

# Each benchmark: (table row, `evaluate` data arguments, way, shot). The curve: accuracy vs steps on the first.
OMNIGLOT_EVAL = ["--split", "evaluation"]
IMAGENET_EVAL = ["--dataset", "imagenet-mini18", "--split", "train"]
CIFAR_EVAL = ["--dataset", "cifar10-test", "--images", "500:"]
SUITES = {
    "omniglot": {
        "benchmark": "Omniglot evaluation accuracy",
        "what": "a Conv-4 (GroupNorm) backbone",
        "evaluation": "Omniglot images_evaluation (659 characters, 20 alphabets)",
        "settings": [(f"{w}-way {s}-shot", OMNIGLOT_EVAL, w, s) for w, s in [(5, 1), (5, 5), (20, 1), (20, 5)]],
    },
    "photo": {
        "benchmark": "Accuracy on images unseen in meta-training",
        "what": "a feature adapter (LayerNorm, low-rank residual, cosine features with a learned scale) on the frozen "
        "EfficientNet-Lite2 ImageNet body",
        "data": "CIFAR-10 test images 0-399 of each of the 10 classes (cifar10-test, --images 0:400); images 400-499 "
        "of each class for validation (--val-images 400:500). No ImageNet-18 image was used in meta-training.",
        "evaluation": "ImageNet classes held out from meta-training (imagenet-mini18/train: 18 classes, 580 photos; "
        "the frozen body was pretrained on ImageNet-1k, these classes included) and CIFAR-10 test images 500-999 "
        "of each class (unseen in meta-training, but of the 10 classes it trained on)",
        "settings": [
            ("ImageNet-18 5-way 1-shot", IMAGENET_EVAL, 5, 1),
            ("ImageNet-18 5-way 5-shot", IMAGENET_EVAL, 5, 5),
            ("CIFAR-10 5-way 5-shot", CIFAR_EVAL, 5, 5),
        ],
    },
}


def evaluate(
    checkpoint: Path, data_root: str, data_args: list[str], way: int, shot: int, episodes: int, every_step: bool
) -> dict:
    args = [
        sys.executable,
        "-m",
        "metacore",
        "evaluate",
        "--checkpoint",
        str(checkpoint),
        "--data-root",
        data_root,
        *data_args,
        "--way",
        str(way),
        "--shot",
        str(shot),
        "--query",
        "15",
        "--episodes",
        str(episodes),
        "--seed",
        "0",
        "--json",
    ]
    if every_step:
        args.append("--every-step")
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def body_package_version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def card_command(args: argparse.Namespace) -> str:
    return (
        f"python scripts/model_card.py {args.checkpoint} --suite {args.suite} --out {args.out} "
        f"--steps {args.steps} --inner-lr {args.inner_lr}"
    )


def body_line(card: dict) -> str:
    if "body" not in card:
        return ""
    b = card["body"]
    return f"\n- **Frozen body** (not in the file): {b['source']} {b['package_version']}."


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


HYPERPARAMETERS = ("way", "shot", "query", "meta_batch", "inner_lr", "inner_steps", "meta_lr", "cosine", "head",
                   "rotations", "augment", "seed")  # fmt: skip


def older_run_hardware(device: str) -> str:
    """Checkpoints from before `training.hardware` was recorded were trained on this machine's CPU."""
    return describe(torch.device("cpu")) if device == "cpu" else device


def stage_summary(payload: dict) -> dict:
    """One training run of a (possibly multi-stage) recipe: algorithm, iterations, time, hyperparameters."""
    cfg, training = payload["config"], payload["training"]
    unused = ("inner_lr", "inner_steps", "head") if payload["learner"]["algorithm"] == "protonet" else ()
    return {
        "algorithm": payload["learner"]["algorithm"],
        "iterations": training["iteration"],
        "seconds": round(training["seconds"], 1),
        "torch": training.get("torch"),
        "hardware": training.get("hardware") or older_run_hardware(training.get("device", "cpu")),
        "hyperparameters": ", ".join(f"{k}={cfg[k]}" for k in HYPERPARAMETERS if k in cfg and k not in unused),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--suite", default="omniglot", choices=list(SUITES), help="which benchmarks to measure")
    parser.add_argument("--out", default="models/omniglot_conv4.pt")
    parser.add_argument("--steps", type=int, required=True, help="default inner steps written into the model")
    parser.add_argument("--inner-lr", type=float, required=True, help="default inner lr written into the model")
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--curve-steps", type=int, default=10, help="accuracy vs inner steps 0..N (5w1s)")
    parser.add_argument("--command", default="", help="the exact training command, for the card")
    args = parser.parse_args()

    payload = read_checkpoint(args.checkpoint)
    stages = [stage_summary(payload)]  # read before the long evaluations: a missing earlier stage fails at once
    init = payload["config"].get("init")
    while init:  # a recipe in stages (e.g. protonet, then ProtoMAML from its backbone): describe each
        earlier = read_checkpoint(ROOT / init)
        stages.insert(0, stage_summary(earlier))
        init = earlier["config"].get("init")
    payload["learner"] = {**payload["learner"], "inner_steps": args.steps, "inner_lr": args.inner_lr}
    payload["training"].pop("optimizer", None)  # not needed to use the model; keeps the file small
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, out)

    suite = SUITES[args.suite]
    table = {}
    for label, data_args, way, shot in suite["settings"]:
        result = evaluate(out, args.data_root, data_args, way, shot, args.episodes, False)
        table[label] = {"accuracy": round(result["accuracy"], 2), "ci95": round(result["ci95"], 2)}
        print(f"{label}: {result['accuracy']:.2f} ± {result['ci95']:.2f}", flush=True)
    curve_model = out.with_name(out.stem + "_curve.pt")
    shutil.copy(out, curve_model)
    curve_payload = read_checkpoint(curve_model)
    curve_payload["learner"]["inner_steps"] = args.curve_steps
    torch.save(curve_payload, curve_model)
    first = suite["settings"][0]
    curve = evaluate(curve_model, args.data_root, first[1], first[2], first[3], args.episodes, True)["per_step"]
    curve_model.unlink()

    training = payload["training"]
    card = {
        "model": out.name,
        "sha256": sha256(out),
        "size_bytes": out.stat().st_size,
        "benchmark": suite["benchmark"],
        "data": suite.get("data")
        or "Omniglot images_background (964 characters, 30 alphabets) with 90/180/270-degree rotations as extra "
        "classes; the last 10% of classes held out for validation. images_evaluation never used in training.",
        "evaluation": f"{suite['evaluation']}; {args.episodes} episodes per setting, 15 queries per class, seed 0",
        "algorithm": payload["learner"]["algorithm"],
        "head": payload["learner"]["head"],
        "backbone": payload["backbone"],
        "config": payload["config"],
        "iterations": training["iteration"],
        "train_seconds": round(sum(stage["seconds"] for stage in stages), 1),
        "stages": stages,
        "hardware": stages[-1]["hardware"],
        "torch": training.get("torch"),
        "default_inner_lr": args.inner_lr,
        "default_inner_steps": args.steps,
        "accuracy": table,
        "accuracy_vs_steps_5w1s": [
            {"step": r["step"], "accuracy": round(r["accuracy"], 2), "ci95": round(r["ci95"], 2)} for r in curve
        ],
        "command": args.command,
    }
    body = payload["backbone"]["input_spec"].get("body")
    if body:
        from metacore.bodies import BODIES

        spec = BODIES[body]
        card["body"] = {"name": body, "source": spec.source, "package_version": body_package_version(spec.package)}
    out.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")

    rows = "\n".join(f"| {k} | {v['accuracy']:.2f} ± {v['ci95']:.2f} |" for k, v in table.items())
    curve_rows = " | ".join(f"{r['accuracy']:.1f}" for r in curve)  # from the unrounded values, as results.py
    training_lines = "\n".join(
        f"- **Training{f' stage {i + 1}' if len(stages) > 1 else ''}**: {stage['algorithm']}, {stage['iterations']} "
        f"iterations, {duration(stage['seconds'])} on {stage['hardware']}, torch {stage['torch']}. "
        f"Hyperparameters: {stage['hyperparameters']}."
        for i, stage in enumerate(stages)
    )
    out.with_suffix(".md").write_text(f"""# Model card: {out.name}

- **What**: {suite["what"]}, meta-trained with `metacore` ({card["algorithm"]}, {card["head"]} head:
  any number of classes).{body_line(card)}
- **Data**: {card["data"]}
{training_lines}
- **Reproduce**: `{card["command"] or "see config in the JSON card"}` then
  `{card_command(args)}`.
- **Defaults used by the app and CLI**: inner lr {args.inner_lr}, {args.steps} step{"" if args.steps == 1 else "s"}.
- **sha256**: `{card["sha256"]}` ({card["size_bytes"] / 1e6:.1f} MB)

## Accuracy ({card["evaluation"]})

| setting | accuracy % (95% CI) |
|---|---|
{rows}

Accuracy ({suite["settings"][0][0]}) after 0..{args.curve_steps} inner steps: {curve_rows}
""")
    print(f"wrote {out}, {out.with_suffix('.json')}, {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
