"""Write the model card (JSON + Markdown) of a checkpoint: its recipe, its accuracy table and step curves, its sha256.

    python scripts/models/model_card.py runs/omniglot_metasgd.pt --out models/omniglot_metasgd.pt --steps 5 \\
        --inner-lr 0.001
    python scripts/models/model_card.py runs/photo_lite2.pt --suite photo --out models/photo_lite2.pt --steps 5 \\
        --inner-lr 0.5 --head zero --contrast

Copies the checkpoint to --out with the given default inner steps / lr (and head), then measures it with exactly
`python -m metacore evaluate ... --episodes 600 --steps-curve 0:N --json` on the suite's benchmarks (Omniglot
evaluation alphabets; or held-out ImageNet classes and unseen CIFAR-10 images for the photo model): the accuracy
after the default steps, and query accuracy and support loss after every step 0..N. `--contrast` adds the same
curves from a random initialisation of the same architecture."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from kept_results import cached, kept_result  # noqa: E402

from metacore.checkpoint import load_checkpoint, meta_trained, read_checkpoint, sha256  # noqa: E402
from metacore.device import describe  # noqa: E402
from metacore.images import InputSpec  # noqa: E402
from metacore.train import TrainConfig, data_record, training_data  # noqa: E402

# Each benchmark: (table row, `evaluate` data arguments, way, shot); tuning: data for the random init's lr.
OMNIGLOT_EVAL = ["--split", "evaluation"]
IMAGENET_EVAL = ["--dataset", "imagenet-mini18", "--split", "train"]  # ImageNet-1k training images: the body's own
IMAGENET_UNSEEN = [
    "--dataset",
    "imagenet-mini18",
    "--split",
    "val",
    "--query",
    "2",
]  # 3 images a class: 1 shot, 2 queries
CIFAR_EVAL = ["--dataset", "cifar10-test", "--images", "500:"]
SUITES = {
    "omniglot": {
        "benchmark": "Omniglot evaluation accuracy",
        "what": "a Conv-4 (GroupNorm) backbone",
        "evaluation": "Omniglot images_evaluation (659 characters, 20 alphabets)",
        "test_data": [{"dataset": "omniglot", "split": "evaluation"}],  # `train` refuses these unless allowed
        "settings": [(f"{w}-way {s}-shot", OMNIGLOT_EVAL, w, s) for w, s in [(5, 1), (5, 5), (20, 1), (20, 5)]],
        "tuning": ["--split", "background"],
        "random_note": "Random init: the same architecture (centred, normalised features), seed 0, not meta-trained.",
        "lr_grid": [0.0001, 0.0003, 0.001, 0.003],  # features of length 100: the head's step is lr * 100^2
        "reproduce_all": "bash scripts/models/reproduce_character_models.sh",
    },
}
SUITES["omniglot_5way"] = SUITES["omniglot"] | {"settings": SUITES["omniglot"]["settings"][:2]}  # 5-way 1/5-shot
SUITES |= {
    "photo": {
        "benchmark": "Accuracy on classes it never meta-trained on",
        "what": "the frozen EfficientNet-Lite2 ImageNet body's own features (per-image normalised, then L2-normalised "
        "times 4: cosine features)",
        "not_meta_trained": "Nothing in this model is meta-trained: its few-shot skill comes from the body's ImageNet "
        "pre-training, and the inner loop learns each task's head from a zero start. Meta-learning on the 28 natural "
        "classes here (10 CIFAR-10 + 18 ImageNet-18) did not beat these features on classes it never saw: the best of "
        "9 candidates, in 6 leave-classes-out folds, was within 0.1 point at 5-way 1-shot and the adapter that was "
        "shipped before lost 10 points ([docs/photo_folds.md](../docs/photo_folds.md)). Meta-learning in the lab is "
        "shown by the character model and the Meta-train page.",
        "data_note": "The frozen body was trained (with labels) on ImageNet-1k's training images: ImageNet-18's 18 "
        "classes are among its 1000 (every imagenet-mini18/train image is one of its training photos, no val image "
        "is); CIFAR-10's classes are not ImageNet classes, though some are close to ones (ships, trucks, dog breeds).",
        "evaluation": "ImageNet-18 validation photos (imagenet-mini18/val, 3-5 a class: 1 shot and 2 queries) and "
        "CIFAR-10 test images 500-999 of each class; marked, imagenet-mini18/train, the body's own training photos. "
        "Whether a setting's classes were in meta-training is read from the checkpoint's records",
        "test_data": [{"dataset": "imagenet-mini18", "split": "val"}, {"dataset": "cifar10-test", "images": "500:"}],
        "settings": [
            ("ImageNet-18 val 5-way 1-shot", IMAGENET_UNSEEN, 5, 1),
            ("CIFAR-10 5-way 1-shot", CIFAR_EVAL, 5, 1),
            ("CIFAR-10 5-way 5-shot", CIFAR_EVAL, 5, 5),
            ("ImageNet-18 train 5-way 1-shot (the body's training photos)", IMAGENET_EVAL, 5, 1),
            ("ImageNet-18 train 5-way 5-shot (the body's training photos)", IMAGENET_EVAL, 5, 5),
        ],
        "ci_note": "The ± of ImageNet-18 val is over its 600 episodes, which are drawn from 62 photos (each photo "
        "is used in ~145 of them): they are not independent, so it understates the uncertainty; another 62 photos "
        "of these classes could move the mean by more.",
        "tuning": ["--dataset", "cifar10-test", "--images", "0:400"],
        "random_note": "A random initialisation of this adapter is not a random network: its residual starts at zero, "
        "so it passes the frozen body's own (normalised) features through, and the random-init rows measure those.",
        "lr_grid": [0.1, 0.5, 2.0, 8.0],
    },
}
TRAINED_CLASSES = " (trained classes, new images)"


def arg_value(data_args: list[str], flag: str) -> str | None:
    return data_args[data_args.index(flag) + 1] if flag in data_args else None


def labelled_settings(settings: list[tuple], payload: dict, data_root: str) -> list[tuple]:
    """The suite's settings, each marked from the checkpoint's records when its classes were in meta-training
    ("trained classes, new images"), classes it never meta-trained on first: a card leads with novel classes."""
    from metacore.data import open_dataset
    from metacore.provenance import overlap

    out = []
    for label, data_args, way, shot in settings:
        dataset = arg_value(data_args, "--dataset") or "omniglot"
        scored = open_dataset(
            data_root, dataset, arg_value(data_args, "--split"), images=arg_value(data_args, "--images")
        )
        seen = overlap(payload, scored, data_root)["trained_classes_scored"] > 0
        out.append((label + (TRAINED_CLASSES if seen else ""), data_args, way, shot))
    return sorted(out, key=lambda setting: setting[0].endswith(TRAINED_CLASSES))


def evaluate(
    checkpoint: Path,
    data_root: str,
    data_args: list[str],
    way: int,
    shot: int,
    episodes: int,
    curve: str,
    inner_lr: float | None = None,
    threads: int = 0,
) -> dict:
    args = [
        sys.executable,
        "-m",
        "metacore",
        "evaluate",
        "--checkpoint",
        str(checkpoint.relative_to(ROOT) if checkpoint.is_relative_to(ROOT) else checkpoint),  # a portable cache key
        "--data-root",
        data_root,
        "--query",
        "15",
        *data_args,  # after --query 15: a setting's own --query replaces it
        "--way",
        str(way),
        "--shot",
        str(shot),
        "--episodes",
        str(episodes),
        "--seed",
        "0",
        "--json",
    ]
    args += ["--steps-curve", curve]
    if inner_lr is not None:
        args += ["--inner-lr", str(inner_lr)]
    args += ["--partial", str(kept_result(args[4:]).with_suffix(".partial.pt"))]  # a cut curve goes on from there
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None  # parallel evaluations share the cores
    return cached(args[4:], lambda: subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True,
                                                   env=env).stdout)  # fmt: skip


def measure(runs: list[tuple[str, Path, float | None]], suite: dict, args: argparse.Namespace) -> list[list[tuple]]:
    """For each (name, model, inner lr) run: (setting, `evaluate` result) for every setting of the suite. One process
    per evaluation, --jobs at a time, the costliest first (the many-way, many-shot ones take hours on CPU)."""
    settings = suite["settings"]
    threads = max(1, (os.cpu_count() or 1) // args.jobs)  # parallel evaluations share the cores
    todo = [(r, s) for r in range(len(runs)) for s in range(len(settings))]
    todo.sort(key=lambda rs: -settings[rs[1]][2] * (settings[rs[1]][3] + 15))  # way x (shot + queries)

    def one(rs: tuple[int, int]) -> dict:
        (_, model, lr), (_, data_args, way, shot) = runs[rs[0]], settings[rs[1]]
        return evaluate(model, args.data_root, data_args, way, shot, args.episodes, curve_spec(args), lr, threads)

    with ThreadPoolExecutor(args.jobs) as pool:
        done = dict(zip(todo, pool.map(one, todo)))
    out = []
    for r, (name, _, _) in enumerate(runs):
        out.append([(settings[s][0], done[r, s]) for s in range(len(settings))])
        for label, result in out[-1]:
            print(f"{name}{label}: {result['accuracy']:.2f} ± {result['ci95']:.2f}", flush=True)
    return out


def curve_spec(args: argparse.Namespace) -> str:
    """`evaluate --steps-curve`: every step to 10, then every 5th (the query is scored only there: a quarter of
    the time for 1-shot tasks, where scoring 15 queries a class is most of a step), or every step with --dense."""
    last = args.curve_steps
    if args.dense or last < 15:
        return f"0:{last}"
    return f"0:10,15:{last}:5" + ("" if last % 5 == 0 else f",{last}:{last}")


def data_stages(payload: dict, data_root: str, card: Path | None = None) -> list[dict]:
    """Every training stage's data record, oldest first: as the checkpoint recorded it or, for a checkpoint from
    before `train` recorded its data, computed now from the config it saved (and marked so); a stage whose
    checkpoint is not at hand stays unrecorded, with the command its model card gives."""
    training = payload["training"]
    if training.get("data_stages") or not meta_trained(payload):
        return training["data_stages"]
    fields = {k: v for k, v in payload["config"].items() if k in TrainConfig.__dataclass_fields__}
    cfg = TrainConfig(**{**fields, "data_root": data_root})
    spec = InputSpec(**payload["backbone"]["input_spec"])
    record = data_record(cfg, *training_data(cfg, spec)) | {"source": "computed from the checkpoint's saved config"}
    init = cfg.init
    if not init:
        return [record]
    if (ROOT / init).is_file():
        return [*data_stages(read_checkpoint(ROOT / init), data_root, (ROOT / init).with_suffix(".json")), record]
    command = json.loads(card.read_text()).get("command", "") if card and card.is_file() else ""
    return [{"recorded": False, "checkpoint": init, "command": command.split(" && ")[0]}, record]


def data_statement(stages: list[dict]) -> str:
    """The card's data line, derived from the stages' records."""
    parts = []
    for i, stage in enumerate(stages, 1):
        name = f"Stage {i}" if len(stages) > 1 else "Training"
        if stage.get("recorded") is False:
            parts.append(f"{name}: not recorded (its checkpoint, {stage['checkpoint']}, predates data records and is "
                         f"not shipped); its command: `{stage.get('command') or 'unknown'}`.")  # fmt: skip
            continue
        split = f" `{stage['split']}` split" if stage["split"] else ""
        images = f", images {stage['images']} of each class" if stage["images"] else ""
        rotations = " with 90/180/270-degree rotations as extra classes" if stage["rotations"] else ""
        parts.append(
            f"{name}: {stage['dataset']}{split}{images}, {stage['training_classes']} classes{rotations} (class list "
            f"sha256 {stage['training_class_list_sha256'][:12]}...); validation on {stage['validation']} "
            f"({stage['validation_classes']} classes)." + (" **Trained on test data (explicitly allowed): "
            f"{stage.get('test_data') or 'the evaluation split'}.**" if stage["evaluation_split"] else "")
        )  # fmt: skip
    if stages:  # from each stage's record (decided by the resolved path when it trained), not from its split's name
        on_test = [i for i, s in enumerate(stages, 1) if s.get("evaluation_split")]
        unknown = [i for i, s in enumerate(stages, 1) if s.get("recorded") is False]
        if on_test:
            parts.append(f"Stage(s) {', '.join(map(str, on_test))} trained on test data.")
        else:
            unrecorded = f" (stage {', '.join(map(str, unknown))} is not recorded: see its command)" if unknown else ""
            parts.append(f"No recorded stage used test data (images_evaluation, or any model card's){unrecorded}.")
    return " ".join(parts)


def rounded(rows: list[dict]) -> list[dict]:
    return [{k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()} for row in rows]


def random_init_payload(payload: dict) -> dict:
    """The checkpoint of a random initialisation (seed 0) of `payload`'s network, with its learner settings and
    nothing else: the same bytes for every model of that architecture and those defaults, so its evaluations (hours
    of CPU for a card's contrast) are kept and reused for the next model."""
    from metacore.checkpoint import build_learner
    from metacore.models import Backbone

    torch.manual_seed(0)
    fresh = Backbone(payload["backbone"]["name"], **payload["backbone"]["kwargs"])
    settings = plain_steps(payload["learner"])
    learner = build_learner(backbone=fresh, **settings)
    kept = {k: payload[k] for k in ("format", "version", "backbone") if k in payload}
    return kept | {"learner": settings, "state_dict": dict(learner.params)}


def plain_steps(learner: dict) -> dict:
    """A learner's settings for plain gradient steps at one lr for every weight: Meta-SGD's learned rates, the LSTM's
    learned rule and a way-scaled head are what meta-training gave a model, not something a random initialisation
    has."""
    plain = {k: v for k, v in learner.items() if k not in ("way_scaled_head", "body_rates_only", "first_order")}
    return plain | ({"algorithm": "maml"} if plain["algorithm"] in ("metasgd", "lstm") else {})


def random_init_model(payload: dict, out: Path, suite: dict, args: argparse.Namespace) -> tuple[Path, float, dict]:
    """A random initialisation of the same architecture (seed 0), saved beside `out`, and the best inner lr of a
    small grid for it, picked by accuracy after the default steps on 100 episodes of the suite's tuning data
    (classes or images used in meta-training, never the evaluation ones): (file, lr, the grid's accuracies)."""
    buffer = io.BytesIO()
    torch.save(random_init_payload(payload), buffer)
    # named by its bytes, not by `out`: every model of this architecture and these defaults finds its evaluations
    random_model = out.with_name(f"random_init_{hashlib.sha256(buffer.getvalue()).hexdigest()[:12]}.pt")
    random_model.parent.mkdir(parents=True, exist_ok=True)
    random_model.write_bytes(buffer.getvalue())
    _, data_args, way, shot = suite["settings"][0]
    grid = {}
    for lr in suite["lr_grid"]:
        result = evaluate(random_model, args.data_root, suite["tuning"], way, shot, 100, f"0:{args.steps}", lr)
        grid[lr] = round(result["accuracy"], 2)
        print(f"random init, lr {lr}: {grid[lr]:.2f} on the tuning data", flush=True)
    return random_model, max(grid, key=grid.get), grid


HEAD_WORDS = {
    "zero": "zero head (any number of classes): step 0 is exact chance, and what it knows after the inner steps "
    "it learned in them",
    "proto": "prototype head (W = 2c, b = -|c|^2 from the class means: any number of classes)",
}
CURVE_COLUMNS = (0, 1, 2, 3, 4, 5, 10, 20, 50)


def runs(steps: set[int]) -> list[list[int]]:
    """Consecutive runs: {0, 1, 2, 5} -> [[0, 1, 2], [5]]."""
    out: list[list[int]] = []
    for step in sorted(steps):
        if out and step == out[-1][-1] + 1:
            out[-1].append(step)
        else:
            out.append([step])
    return out


def curve_check(curve: list[dict], steps: int) -> str:
    """One line on a curve: the rise from step 0 to `steps`, whether it never falls on the way, and how far below
    its peak it goes after `steps` (pressing Run 50 must not collapse it)."""
    accuracy = {row["step"]: row["accuracy"] for row in curve}
    climb = [accuracy[s] for s in sorted(accuracy) if s <= steps]
    dip = max((a - b for i, a in enumerate(climb) for b in climb[i + 1 :]), default=0.0)
    after = [accuracy[s] for s in sorted(accuracy) if s >= steps]
    peak_step = max(accuracy, key=accuracy.get)
    monotone = "never falls" if dip <= 0 else f"falls by at most {dip:.2g} points on the way"
    line = (
        f"step 0 → {steps}: {accuracy[0]:.2f} → {accuracy[steps]:.2f}% ({accuracy[steps] - accuracy[0]:+.1f} points), "
        f"{monotone}; peak {accuracy[peak_step]:.2f}% at step {peak_step}"
    )
    if max(accuracy) > steps:
        line += f"; steps {steps}..{max(accuracy)} stay within {accuracy[peak_step] - min(after):.2f} points of it"
    return line


def curve_tables(card: dict, steps: int) -> str:
    """Markdown: query accuracy (95% CI) and support loss after chosen inner steps, per setting (and from a random
    initialisation, if measured)."""
    measured = {row["step"] for row in next(iter(card["curves"].values()))}
    columns = sorted({c for c in CURVE_COLUMNS if c in measured} | {steps, max(measured)})
    head = "| setting | " + " | ".join(f"step {c}" for c in columns) + " |\n|---|" + "---|" * len(columns)
    sources = [("", card["curves"])]
    if card.get("random_init"):
        sources.append((f" (random init, lr {card['random_init']['inner_lr']:g})", card["random_init"]["curves"]))
    if card.get("compared"):
        sources.append((f" ({card['compared']['algorithm']}: {card['compared']['model']})", card["compared"]["curves"]))
    accuracy, loss = [head], [head]
    note = ""
    if card.get("random_init"):
        grid = ", ".join(f"{float(lr):g}: {acc:.1f}%" for lr, acc in card["random_init"]["lr_grid"].items())
        note = f"\n{card['random_init']['note']} Its inner lr was picked on the tuning data ({grid}).\n"
    for suffix, curves in sources:
        for label, curve in curves.items():
            rows = {row["step"]: row for row in curve}
            accuracy.append(f"| {label}{suffix} | " + " | ".join(
                f"{rows[c]['accuracy']:.1f} ± {rows[c]['ci95']:.1f}" for c in columns) + " |")  # fmt: skip
            loss.append(f"| {label}{suffix} | " + " | ".join(f"{rows[c]['support_loss']:.3f}" for c in columns) + " |")
    rates = (card.get("default_rates") or f"lr {card['default_inner_lr']:g}").split(" (")[0]  # the defaults line
    checks = "\n".join(f"- {label}: {curve_check(curve, steps)}" for label, curve in card["curves"].items())
    scored = ", ".join(f"{run[0]}-{run[-1]}" if len(run) > 2 else ", ".join(map(str, run)) for run in runs(measured))
    return (
        f"### The curve's shape at the default {rates} (query scored after steps {scored})\n\n{checks}\n\n"
        f"### Query accuracy % (95% CI) after each inner step, at the default {rates}\n\n" + "\n".join(accuracy)
        + f"\n\n### Support loss after each inner step, at the default {rates}\n\n" + "\n".join(loss) + "\n"
        + note
    )  # fmt: skip


def body_package_version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def card_command(args: argparse.Namespace) -> str:
    return (
        f"python scripts/models/model_card.py {args.checkpoint} --suite {args.suite} --out {args.out} "
        f"--steps {args.steps} --inner-lr {args.inner_lr} --curve-steps {args.curve_steps}"
        + (f" --episodes {args.episodes}" if args.episodes != 600 else "")
        + (" --dense" if args.dense else "")
        + (f" --head {args.head}" if args.head else "")
        + (" --contrast" if args.contrast else "")
        + (f" --compare {args.compare}" if args.compare else "")
    )


def body_line(card: dict) -> str:
    if "body" not in card:
        return ""
    b = card["body"]
    return f"\n- **Frozen body** (not in the file): {b['source']} {b['package_version']}."


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


HYPERPARAMETERS = ("way", "shot", "query", "meta_batch", "inner_lr", "inner_steps", "meta_lr", "rule_meta_lr",
                   "first_order", "cosine", "head", "rotations", "augment", "seed")  # fmt: skip


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
    parser.add_argument("--out", default="models/omniglot_metasgd.pt")
    parser.add_argument("--steps", type=int, required=True, help="default inner steps written into the model")
    parser.add_argument("--inner-lr", type=float, required=True, help="default inner lr written into the model")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="settings measured at once")
    parser.add_argument("--head", default=None, choices=["zero", "proto"], help="the task head the model starts from")
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--curve-steps", type=int, default=50, help="query accuracy and support loss after steps 0..N")
    parser.add_argument(
        "--dense", action="store_true", help="score every step of the curve (default: 0..10, then every 5th)"
    )
    parser.add_argument(
        "--contrast", action="store_true", help="also the curves from a random initialisation of the same architecture"
    )
    parser.add_argument(
        "--contrast-only",
        action="store_true",
        help="measure and keep (runs/card_results) only the random-init contrast, write no card: it depends on the "
        "architecture and the defaults alone, so it can be measured before the model to card is trained",
    )
    parser.add_argument(
        "--compare",
        default=None,
        help="a shipped model measured on the same episodes and shown beside this one, at its own defaults (e.g. "
        "models/omniglot_conv4.pt: MAML)",
    )
    parser.add_argument("--command", default="", help="the exact training command, for the card")
    parser.add_argument(
        "--rerender",
        action="store_true",
        help="measure nothing: rewrite --out's card from its JSON (and add what it lacks)",
    )
    parser.add_argument("--measured-on", default=None, help="with --rerender: the file the card was measured on")
    args = parser.parse_args()
    if args.curve_steps < args.steps:  # the card's tables show the curve at the default steps
        parser.error(f"--curve-steps {args.curve_steps} is shorter than the default --steps {args.steps}")
    if args.rerender:
        measured_on = Path(args.measured_on) if args.measured_on else None
        rerender(ROOT / args.out, SUITES[args.suite], args.data_root, card_command(args), measured_on)
        return

    payload = read_checkpoint(args.checkpoint)
    stages = (
        [stage_summary(payload)] if meta_trained(payload) else []
    )  # read before the long evaluations: a missing earlier stage fails at once
    init = payload["config"].get("init")
    while init:  # a recipe in stages (e.g. protonet, then ProtoMAML from its backbone): describe each
        card = (ROOT / init).with_suffix(".json")
        if card.is_file():  # a shipped model: its card already describes its stages
            stages[:0] = json.loads(card.read_text())["stages"]
            break
        earlier = read_checkpoint(ROOT / init)
        stages.insert(0, stage_summary(earlier))
        init = earlier["config"].get("init")
    payload["learner"] = {**payload["learner"], "inner_steps": args.steps, "inner_lr": args.inner_lr}
    if args.head:
        payload["learner"]["head"] = args.head
    payload["training"].pop("optimizer", None)  # not needed to use the model; keeps the file small
    out, suite = ROOT / args.out, SUITES[args.suite]
    suite = suite | {"settings": labelled_settings(suite["settings"], payload, args.data_root)}
    if args.contrast_only:
        random_model, best_lr, _ = random_init_model(payload, out, suite, args)
        measure([("random init, ", random_model, best_lr)], suite, args)
        random_model.unlink()
        return
    stages_data = payload["training"]["data_stages"] = data_stages(payload, args.data_root)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, out)

    runs = [("", out, None)]
    if args.contrast:
        random_model, best_lr, grid = random_init_model(payload, out, suite, args)
        runs.append(("random init, ", random_model, best_lr))
    if args.compare:
        runs.append((f"{Path(args.compare).name}, ", ROOT / args.compare, None))
    measured = measure(runs, suite, args)
    table = {label: {"accuracy": round(r["accuracy"], 2), "ci95": round(r["ci95"], 2)} for label, r in measured[0]}
    curves = {label: rounded(result["curve"]) for label, result in measured[0]}
    contrast = None
    if args.contrast:
        random_model.unlink()
        contrast = {
            "inner_lr": best_lr,
            "lr_grid": grid,
            "curves": {label: rounded(result["curve"]) for label, result in measured[1]},
            "note": suite["random_note"]
            + (
                " It takes plain gradient steps at one lr for every weight (no learned rates, no way-scaled head)."
                if plain_steps(payload["learner"]) != payload["learner"]
                else ""
            ),
        }

    compared = None
    if args.compare:
        other, other_meta = load_checkpoint(ROOT / args.compare)
        compared = {
            "model": Path(args.compare).name,
            "sha256": sha256(ROOT / args.compare),
            "algorithm": other.name,
            "rates": f"{other.inner_steps} steps at {other.rates_in_words()}",
            "accuracy": {
                label: {"accuracy": round(r["accuracy"], 2), "ci95": round(r["ci95"], 2)} for label, r in measured[-1]
            },  # fmt: skip
            "curves": {label: rounded(result["curve"]) for label, result in measured[-1]},
        }

    training = payload["training"]
    card = {
        "model": out.name,
        "sha256": sha256(out),
        "size_bytes": out.stat().st_size,
        "benchmark": suite["benchmark"],
        "data": " ".join(filter(None, [data_statement(stages_data), suite.get("data_note")])),
        "evaluation": f"{suite['evaluation']}; {args.episodes} episodes per setting, 15 queries per class (unless "
        "the setting says otherwise), seed 0",
        "test_data": suite["test_data"],
        "algorithm": payload["learner"]["algorithm"],
        "head": payload["learner"]["head"],
        "backbone": payload["backbone"],
        "config": payload["config"],
        "iterations": training["iteration"],
        "train_seconds": round(sum(stage["seconds"] for stage in stages), 1),
        "stages": stages,
        "meta_trained": meta_trained(payload),
        "hardware": stages[-1]["hardware"] if stages else training.get("hardware"),
        "torch": training.get("torch"),
        "default_inner_lr": args.inner_lr,
        "default_rates": load_checkpoint(out)[0].rates_in_words(),
        "default_inner_steps": args.steps,
        "accuracy": table,
        "curves": curves,
        "random_init": contrast,
        "compared": compared,
        "command": args.command,
        "card_command": card_command(args),
    }
    body = payload["backbone"]["input_spec"].get("body")
    if body:
        from metacore.bodies import BODIES

        spec = BODIES[body]
        card["body"] = {"name": body, "source": spec.source, "package_version": body_package_version(spec.package)}
    card["movement"] = layer_movement(out, args.data_root, suite["settings"][0], args.steps)
    write_card(with_other_measurements(card, out.with_suffix(".json")), out, suite)


def layer_movement(model: Path, data_root: str, setting: tuple, steps: int, episodes: int = 20) -> dict:
    """How far each layer moves (L2) in `steps` inner steps at the default lr: the mean over `episodes` tasks of
    the suite's first setting (seed 0), so the card shows that both the body and the head adapt."""
    from metacore.data import EpisodeSampler, open_dataset
    from metacore.inner import layer_gates, layer_shift

    label, data_args, way, shot = setting
    parser = argparse.ArgumentParser()
    for flag in ("--dataset", "--split", "--images", "--query"):
        parser.add_argument(flag)
    data = parser.parse_args(data_args)
    learner, _ = load_checkpoint(model)
    dataset = open_dataset(data_root, data.dataset or "omniglot", data.split, learner.backbone.input_spec,
                           images=data.images)  # fmt: skip
    sampler = EpisodeSampler(dataset, way, shot, int(data.query or 15), seed=0)
    totals: dict[str, float] = {}
    gates: dict[int, dict[str, dict[str, float]]] = {}  # a learned update's: step -> layer -> gate -> mean
    for _ in range(episodes):
        task = sampler.sample()
        with torch.no_grad():
            snapshots = list(learner.adapt(task.support_x, task.support_y, steps=steps, way=task.way))
        for layer, moved in layer_shift(snapshots[0].params, snapshots[-1].params).items():
            totals[layer] = totals.get(layer, 0.0) + moved / episodes
        for snapshot in snapshots[1:]:
            for layer, values in layer_gates(snapshot.gates or {}).items():
                for gate, value in values.items():
                    at = gates.setdefault(snapshot.step, {}).setdefault(layer, {})
                    at[gate] = at.get(gate, 0.0) + value / episodes
    return {
        "setting": label,
        "episodes": episodes,
        "steps": steps,
        "l2": {k: float(f"{v:.3g}") for k, v in totals.items()},
    } | ({"gates": {step: {layer: {g: float(f"{v:.4g}") for g, v in values.items()} for layer, values in at.items()}
                    for step, at in gates.items()}} if gates else {})  # fmt: skip


def write_card(card: dict, out: Path, suite: dict) -> None:
    """The JSON card and its Markdown page, from the card's own fields (so a card can be re-rendered)."""
    out.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    stages, steps = card["stages"], card["default_inner_steps"]
    rates = card.get("default_rates") or f"lr {card['default_inner_lr']:g}"
    rows = "\n".join(f"| {k} | {v['accuracy']:.2f} ± {v['ci95']:.2f} |" for k, v in card["accuracy"].items())
    beside = ""
    if card.get("compared"):
        c = card["compared"]
        rows += "".join(f"\n| {k} ({c['algorithm']}: {c['model']}) | {v['accuracy']:.2f} ± {v['ci95']:.2f} |"
                        for k, v in c["accuracy"].items())  # fmt: skip
        beside = (f"\nBeside it, on the same episodes of each setting (seed 0): {c['model']} ({c['algorithm']}, "
                  f"{c['rates']}), sha256 `{c['sha256'][:12]}...`.\n")  # fmt: skip
    training_lines = "\n".join(
        f"- **Training{f' stage {i + 1}' if len(stages) > 1 else ''}**: {stage['algorithm']}, {stage['iterations']} "
        f"iterations, {duration(stage['seconds'])} on {stage['hardware']}, torch {stage['torch']}. "
        f"Hyperparameters: {stage['hyperparameters']}."
        for i, stage in enumerate(stages)
    )
    movement = ""
    if card.get("movement"):
        m = card["movement"]
        moved = ", ".join(f"{layer} {value:g}" for layer, value in m["l2"].items())
        movement = (f"\n### How far each layer moves in {m['steps']} steps\n\nL2 distance from the start, mean of "
                    f"{m['episodes']} {m['setting']} tasks (seed 0) at the default {rates}: {moved}."
                    + (" ANIL: only the head adapts in the inner loop; the rest stays as "
                       + ("meta-trained." if card.get("meta_trained", True) else "it is.")
                       if card["algorithm"] == "anil" else "") + "\n")  # fmt: skip
        if m.get("gates"):
            movement += gate_table(m["gates"], card["default_inner_lr"])
    every_stage = ""
    if suite.get("reproduce_all") and len(stages) > 1 and card.get("command") != suite["reproduce_all"]:
        every_stage = f" Every stage from nothing, each recording its data: `{suite['reproduce_all']}`."
    if card.get("meta_trained", True):
        what = f"{suite['what']}, meta-trained with `metacore` ({card['algorithm']})"
    else:
        what = f"{suite['what']}; not meta-trained (`metacore init`)"
        training_lines = f"- **Meta-training**: none. {suite['not_meta_trained']}"
    out.with_suffix(".md").write_text(f"""# Model card: {out.name}

- **What**: {what}. Every task starts from a
  {HEAD_WORDS[card["head"]]}.{body_line(card)}
- **Data**: {card["data"] or "no meta-training data."}
{training_lines}
- **Reproduce**: `{card["command"] or "see config in the JSON card"}` then
  `{card["card_command"]}`.{every_stage}
- **Defaults used by the app and CLI**: {steps} inner step{"" if steps == 1 else "s"} at {rates}.
- **sha256**: `{card["sha256"]}` ({size_in_words(card["size_bytes"])})

## Accuracy ({card["evaluation"]})

| setting | accuracy % (95% CI) |
|---|---|
{rows}
{beside}{chr(10) + suite["ci_note"] + chr(10) if suite.get("ci_note") else ""}
{curve_tables(card, steps)}{movement}{unsure_section(card)}""")
    print(f"wrote {out.with_suffix('.json')}, {out.with_suffix('.md')}")


def gate_table(gates: dict, inner_lr: float) -> str:
    """Markdown: a learned update's mean input gate (step size) and forget gate per layer at each step."""
    steps = sorted(gates, key=int)
    layers = list(gates[steps[0]])
    head = "| layer | " + " | ".join(f"step {s}" for s in steps) + " |\n|---|" + "---|" * len(steps)
    rows = [f"| {layer} | " + " | ".join(f"{gates[s][layer]['input']:.3g} / {gates[s][layer]['forget']:.3f}"
                                        for s in steps) + " |" for layer in layers]  # fmt: skip
    return (
        f"\n### The learned update: input gate (step size) / forget gate, mean per layer\n\nSame tasks. MAML "
        f"steps every weight at lr {inner_lr:g} and keeps it whole (forget 1); the LSTM started there "
        f"(input {inner_lr:g}, forget 0.993) and learned these.\n\n" + head + "\n" + "\n".join(rows) + "\n"
    )


def size_in_words(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.1f} KB"


def with_other_measurements(card: dict, earlier: Path) -> dict:
    """The card plus what other commands measured on this same file (same sha256) and wrote into its earlier card,
    e.g. `unsure --card`'s "none of these" threshold, which classify reads from the card."""
    if not earlier.is_file():
        return card
    earlier_card = json.loads(earlier.read_text())
    if earlier_card.get("sha256") != card["sha256"]:
        return card  # another model: its measurements do not apply
    return card | {k: v for k, v in earlier_card.items() if k not in card}


def unsure_section(card: dict) -> str:
    """Markdown for the "none of these" threshold that `unsure --card` measured on this file (classify reads it)."""
    if not card.get("unsure"):
        return ""
    u = card["unsure"]
    return (f"\n### \"None of these\": the novelty threshold classify uses\n\n{u['score']}; threshold "
            f"{u['threshold']:g}, chosen on {u['chosen_on']}. Measured on {u['measured_on']} ({u['task']}): "
            f"{u['in_task_kept']:.1f}% of images of the task's classes kept, {u['out_of_task_flagged']:.1f}% of "
            f"images of other classes flagged. `{u['command']}`\n")  # fmt: skip


def same_model(a: dict, b: dict) -> bool:
    """Whether two checkpoints hold the same model (weights, architecture, learner), whatever their metadata."""
    return (
        a["backbone"] == b["backbone"]
        and a["learner"] == b["learner"]
        and a["state_dict"].keys() == b["state_dict"].keys()
        and all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    )


def rerender(out: Path, suite: dict, data_root: str, card_command: str, measured_on: Path | None = None) -> None:
    """Rewrite a card's Markdown (and JSON) from its JSON, adding what a card from an older script lacks.

    With `measured_on` (the file the card's numbers were measured on), `out` may differ from it in metadata only
    (e.g. data records added): the weights are checked to be the same, and the card takes the new file's sha256."""
    card = json.loads(out.with_suffix(".json").read_text())
    if measured_on is not None:
        if card["sha256"] != sha256(measured_on):
            raise SystemExit(f"the card was not measured on {measured_on} (sha256)")
        if not same_model(read_checkpoint(measured_on), read_checkpoint(out)):
            raise SystemExit(f"{out} holds another model than {measured_on}: measure it again")
        card |= {"sha256": sha256(out), "size_bytes": out.stat().st_size}
    if card["sha256"] != sha256(out):
        raise SystemExit(f"{out} no longer matches its card (sha256): measure it again")
    payload = read_checkpoint(out)
    if payload["training"].get("data_stages"):
        card["data"] = " ".join(
            filter(None, [data_statement(payload["training"]["data_stages"]), suite.get("data_note")])
        )
    card.setdefault("card_command", card_command)
    card["test_data"] = suite["test_data"]
    card.setdefault("default_rates", load_checkpoint(out)[0].rates_in_words())
    if "movement" not in card:
        card["movement"] = layer_movement(out, data_root, suite["settings"][0], card["default_inner_steps"])
    write_card(card, out, suite)


if __name__ == "__main__":
    main()
