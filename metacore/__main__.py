"""Command line: python -m metacore {train,init,evaluate,classify,embed,unsure,check,export,bench} --help"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from metacore import distributed
from metacore.device import keep_freed_memory
from metacore.errors import MetacoreError
from metacore.paths import PROJECT_ROOT, SHIPPED_MODEL, default_data_root

DEFAULT_CHECKPOINT = SHIPPED_MODEL
STEPS_HELP = (
    "inner steps, 0 to 100 (default: the checkpoint's own; train: 2). Each step passes the whole support set "
    "forward and back: a 5-way 5-shot task takes ~0.05 s a step, 2 x 5,000 images ~8 s a step on 2 CPU cores"
)


def add_common(p: argparse.ArgumentParser, *, checkpoint: bool = True, data: bool = True, episode: bool = True) -> None:
    if checkpoint:
        p.add_argument(
            "--checkpoint", default=None, help=f"model file (default: {DEFAULT_CHECKPOINT.relative_to(PROJECT_ROOT)})"
        )
    if data:
        p.add_argument(
            "--data-root", default=str(default_data_root()), help="folder holding the data sets (default: %(default)s)"
        )
        p.add_argument(
            "--dataset", default="omniglot", help="folder name under the data root; 'omniglot' reads omniglot-py/"
        )
        p.add_argument("--split", default=None, help="omniglot: background / evaluation; folder data sets: a subfolder")
        p.add_argument(
            "--images", default=None, help="a slice of each class's sorted images, e.g. 0:500 or 500: (default: all)"
        )
    if episode:
        p.add_argument("--way", default="5", help="classes per task (N), or a range like 5-20 for training")
        p.add_argument("--shot", default="1", help="support images per class (K), or a range like 1-5")
        p.add_argument("--query", type=int, default=15, help="query images per class (default: %(default)s)")
    p.add_argument("--steps", type=int, default=None, help=STEPS_HELP)
    p.add_argument("--inner-lr", type=float, default=None, help="inner learning rate (default: the checkpoint's own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, mps")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m metacore", description="Few-shot meta-learning: train, evaluate, classify, embed, benchmark."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="meta-train a backbone on episodes", description="Meta-train a backbone.")
    add_common(p, checkpoint=False)
    p.add_argument("--algo", default="maml", help="maml, fomaml, reptile, anil, metasgd, lstm, protonet")
    p.add_argument("--head", default="zero", choices=["zero", "proto"], help="task head initialisation")
    p.add_argument(
        "--way-scaled-head",
        action="store_true",
        help="an N-way task's head steps at N/5 times the inner rate: each class's head row then steps as far at "
        "20-way as at 5-way (the inner loss is a mean over classes); recorded in the model",
    )
    p.add_argument(
        "--body-rates-only",
        action="store_true",
        help="metasgd: learn one rate per body weight only; the head steps at --inner-lr (recorded in the model)",
    )
    p.add_argument(
        "--first-order",
        action="store_true",
        help="lstm: the paper's simplification, the gradient and loss the LSTM reads taken as constants in the "
        "meta-gradient (default: exact through every unrolled step; first-order MAML is --algo fomaml)",
    )
    p.add_argument(
        "--rule-meta-lr",
        type=float,
        default=None,
        help="Adam learning rate of the inner update's own weights (the LSTM meta-learner's, Meta-SGD's rates; "
        "default: --meta-lr)",
    )
    p.add_argument("--backbone", default="conv4", help="conv4 (28x28 characters) or feature_adapter (photos)")
    p.add_argument(
        "--feature-scale",
        type=float,
        default=None,
        help="conv4: centre the features on their mean over the training images, L2-normalise them and multiply "
        "by a learned scale starting here (the shipped character model: 100), so that one step from a zero head "
        "is a cosine-prototype classifier",
    )
    p.add_argument("--rotations", action="store_true", help="add 90/180/270-degree rotations as extra classes")
    p.add_argument(
        "--allow-evaluation-split",
        action="store_true",
        help="allow training on Omniglot's evaluation alphabets (the test set; the checkpoint and card record it)",
    )
    p.add_argument("--augment", action="store_true", help="distort each training image (random shift, rotation, scale)")
    p.add_argument("--meta-batch", type=int, default=16, help="tasks per outer step")
    p.add_argument("--meta-lr", type=float, default=1e-3, help="Adam learning rate of the outer loop")
    p.add_argument("--cosine", action="store_true", help="cosine-anneal the meta learning rate to 0")
    p.add_argument("--iterations", type=int, default=1000, help="outer steps")
    p.add_argument("--eval-steps", type=int, default=None, help="inner steps at validation/test (default: --steps)")
    p.add_argument("--val-every", type=int, default=100)
    p.add_argument("--val-episodes", type=int, default=100)
    p.add_argument(
        "--val-images",
        default=None,
        help="validate on this slice of every class's images (e.g. 400:500) instead of holding out classes",
    )
    p.add_argument(
        "--batching",
        default="auto",
        choices=["auto", "loop", "vmap", "threads", "graph"],
        help="how a meta-batch is computed (auto: one vmap call on GPU, a task per CPU thread on CPU; "
        "graph: the vmap step recorded once as a CUDA graph and replayed, for fixed --way/--shot)",
    )
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="float64: for exactness checks")
    p.add_argument("--out", default=None, help="checkpoint path (default: runs/<algo>.pt)")
    p.add_argument("--resume", action="store_true", help="continue training the checkpoint at --out")
    p.add_argument(
        "--init",
        default=None,
        help="start from this checkpoint's backbone (e.g. a protonet run); algorithm, head, inner loop from the flags",
    )

    p = sub.add_parser(
        "init",
        help="write a model that is not meta-trained (e.g. a frozen body's own features and a zero head)",
        description="Write a backbone at its (seeded) initialisation with a learner's settings, recorded as not "
        "meta-trained: the shipped photo model is the frozen EfficientNet-Lite2 body's normalised features "
        "(--backbone feature_adapter --adapter-rank 0 --no-adapter-affine) with a zero head.",
    )
    p.add_argument("--backbone", default="feature_adapter", help="conv4 or feature_adapter (default: %(default)s)")
    p.add_argument("--adapter-rank", type=int, default=None, help="feature_adapter: its residual's rank (0: none)")
    p.add_argument("--no-adapter-affine", action="store_true", help="feature_adapter: no per-channel scale and shift")
    p.add_argument("--algo", default="anil", help="the learner: what adapts in the inner loop (default: %(default)s)")
    p.add_argument("--head", default="zero", choices=["zero", "proto"], help="task head initialisation")
    p.add_argument("--steps", type=int, default=5, help="default inner steps (default: %(default)s)")
    p.add_argument("--inner-lr", type=float, default=0.5, help="default inner learning rate (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="checkpoint path")

    p = sub.add_parser(
        "evaluate",
        help="mean accuracy and 95%% CI over test episodes",
        description="Standard protocol: accuracy (percent) with a 95%% confidence interval.",
    )
    add_common(p)
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--every-step", action="store_true", help="also report accuracy after each inner step")
    p.add_argument(
        "--steps-curve",
        default=None,
        metavar="A:B[:S]",
        help="query accuracy and support loss after each inner step A..B (e.g. 0:50), or every S-th, or several "
        "ranges joined by commas (0:10,15:50:5: a quarter of the time for 1-shot); same episodes, mean and CI",
    )
    p.add_argument(
        "--partial",
        default=None,
        metavar="FILE",
        help="keep the step curve's scored episodes in FILE as it goes, and go on from them if FILE is there (a long "
        "curve cut short resumes; the result is the same); FILE is removed when the curve is done",
    )

    p = sub.add_parser(
        "classify",
        help="adapt to a support folder, then classify query images",
        description="Adapt to a folder of class subfolders and classify query files or folders.",
    )
    add_common(p, data=False, episode=False)
    p.add_argument(
        "--support",
        default=None,
        help="folder with one subfolder of images per class (not needed with an adapted model saved by the lab)",
    )
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave out unreadable support images (a warning each) instead of stopping",
    )
    p.add_argument("queries", nargs="+", help="query image files or folders (an unreadable one is reported, exit 1)")

    p = sub.add_parser(
        "embed",
        help="feature vectors of images, before and after adaptation",
        description="Write feature vectors (CSV or NPY) before and, given --support, after adaptation.",
    )
    add_common(p, data=False, episode=False)
    p.add_argument("--support", default=None, help="class-folder support set to adapt to first")
    p.add_argument(
        "--skip-bad", action="store_true", help="leave out unreadable images (a warning each) instead of stopping"
    )
    p.add_argument("--out", required=True, help="output file: .csv or .npy")
    p.add_argument("images", nargs="+", help="image files or folders")

    p = sub.add_parser(
        "unsure",
        help='choose and measure the "none of these" threshold of a model',
        description="Split the data set's classes in two. On tasks from the first half, choose the novelty "
        "(distance to the nearest class over the distance between classes) that --keep of in-task images stay "
        "under; on tasks from the second half, measure the in-task images kept and the images of classes outside "
        "the task flagged. --card writes both into a model card.",
    )
    add_common(p)
    p.add_argument("--episodes", type=int, default=300, help="tasks per half (default: %(default)s)")
    p.add_argument(
        "--keep", type=float, default=0.97, help="in-task fraction kept on the first half (default: %(default)s)"
    )
    p.add_argument("--card", default=None, help="model card (JSON) to write the threshold and rates into")

    p = sub.add_parser(
        "check",
        help="few-shot sanity check of any image network's features",
        description="Check a network's features on a folder of class folders: 5-way 1-shot and 5-shot accuracy "
        "(nearest class mean and a zero head's inner loop), a linear probe, silhouette, k-NN precision, per-class "
        "recall and the most confused pairs, each next to baselines on the same images and episodes (raw pixels, "
        "the same architecture at random initialisation when known, the shipped photo model). MODEL: a "
        "torch.export .pt2, an .onnx, a TorchScript file, a state dict (.pt, .safetensors) with --arch, or a "
        "metacore checkpoint; or --features instead of a model.",
    )
    p.add_argument("model", nargs="?", help="the model file (not with --features)")
    p.add_argument("--data", help="folder of class folders (images of classes the model should tell apart)")
    p.add_argument("--arch", help="torchvision architecture of a state dict, e.g. resnet18")
    p.add_argument("--features", help="precomputed features instead of a model: .csv (a 'label' column), .npz, .npy")
    p.add_argument("--labels", help="labels of a .npy features file (.npy or .txt, one per line)")
    p.add_argument("--size", type=int, help="input size in pixels (default: read from the file, else 224)")
    p.add_argument("--channels", type=int, choices=(1, 3), help="1 (grey) or 3 (RGB); default: from the file, else 3")
    p.add_argument("--mean", help="per-channel mean, e.g. 0.485,0.456,0.406 (default: ImageNet's)")
    p.add_argument("--std", help="per-channel std, e.g. 0.229,0.224,0.225 (default: ImageNet's)")
    p.add_argument("--episodes", type=int, default=600, help="test episodes per setting (default: %(default)s)")
    p.add_argument("--images", help="a slice of each class's sorted images, e.g. 500:600 (default: all)")
    p.add_argument("--per-class", type=int, help="use the first N images of each class (of --images; default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-baselines", action="store_true", help="skip the random-init and photo-model baselines")
    p.add_argument("--max-mb", type=float, default=500, help="refuse model files larger than this (default: 500)")
    p.add_argument("--report", help="write a self-contained HTML report here")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")

    p = sub.add_parser(
        "export",
        help="a task's adapted model to run anywhere (ONNX + predict.py), or a model's feature extractor",
        description="With --support (or a model adapted and downloaded in the lab): adapt to the class folders and "
        "write OUT/model.onnx (an image's pixels -> class probabilities; class names and preprocessing in its "
        "metadata), OUT/predict.py (needs only onnxruntime, numpy and pillow: python OUT/predict.py FILE... prints "
        "file<TAB>class<TAB>probability) and OUT/model.pt2 (torch.export). Without: the feature extractor (its "
        "frozen body, if any, and its backbone) as one network taking preprocessed pixels, --out x.pt2 or x.onnx.",
    )
    p.add_argument("model", nargs="?", help="a metacore checkpoint (or --checkpoint); default: the shipped model")
    add_common(p, data=False, episode=False)
    p.add_argument("--support", help="a folder of class subfolders to adapt to")
    p.add_argument("--skip-bad", action="store_true", help="leave unreadable support images out, with a warning each")
    p.add_argument("--out", required=True, help="a folder (a task), or a .pt2 / .onnx file (a feature extractor)")

    p = sub.add_parser(
        "bench",
        help="meta-training throughput vs higher and a naive loop",
        description="Tasks/s of second-order MAML (5w1s15q, meta-batch 32) and inner-step latency.",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--meta-batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=2, help="inner steps per task, the same on every side (default: 2; "
                   "1 step from a zero head moves only the head, so it is timed apart)")  # fmt: skip
    p.add_argument("--repeats", type=int, default=5, help="timed outer steps per method")
    p.add_argument(
        "--time-to-accuracy",
        action="store_true",
        help="instead: CPU seconds of the Meta-train page's default recipe until its 5-way 1-shot validation reaches "
        "85%% and 90%% (json keys time_to_85, time_to_90), on the bundled characters",
    )
    p.add_argument("--data-root", default=None, help="with --time-to-accuracy: Omniglot's background alphabets under "
                   "this data root instead of the bundled characters")  # fmt: skip
    p.add_argument("--json", action="store_true")
    return parser


def load_model(args: argparse.Namespace, device: torch.device | None = None):
    from metacore.checkpoint import load_checkpoint
    from metacore.device import resolve_device

    path = Path(args.checkpoint) if args.checkpoint else DEFAULT_CHECKPOINT
    if not args.checkpoint and not path.is_file():
        raise MetacoreError(f"no --checkpoint given and the shipped model {path} is missing")
    device = device or resolve_device(args.device)
    learner, meta = load_checkpoint(path, device)
    return learner, meta, device


def check_steps(args: argparse.Namespace) -> None:
    """The numbers every command shares, checked before any work (NaN and inf are refused, not propagated)."""
    from metacore.checkpoint import MAX_INNER_LR, MAX_INNER_STEPS, check_number
    from metacore.device import resolve_device

    if args.steps is not None:
        check_number(args.steps, "--steps", 0, MAX_INNER_STEPS, integer=True)
    if args.inner_lr is not None:
        check_number(args.inner_lr, "--inner-lr", 0, MAX_INNER_LR, above=True)
    check_number(args.seed, "--seed", 0, 2**32 - 1, integer=True)
    for name in ("query", "episodes", "meta_batch", "iterations", "val_every", "val_episodes"):
        if getattr(args, name, None) is not None:
            check_number(getattr(args, name), f"--{name.replace('_', '-')}", 1, 10**9, integer=True)
    if getattr(args, "meta_lr", None) is not None:
        check_number(args.meta_lr, "--meta-lr", 0, 1.0, above=True)
    if getattr(args, "rule_meta_lr", None) is not None:
        check_number(args.rule_meta_lr, "--rule-meta-lr", 0, 1.0, above=True)
    resolve_device(args.device)


def cmd_train(args: argparse.Namespace) -> int:
    from metacore.train import TrainConfig, inner_loop_problem, train

    check_steps(args)
    cfg = TrainConfig(
        algorithm=args.algo,
        data_root=args.data_root,
        dataset=args.dataset,
        split=args.split,
        rotations=args.rotations,
        augment=args.augment,
        images=args.images,
        val_images=args.val_images,
        backbone=args.backbone,
        feature_scale=args.feature_scale,
        head=args.head,
        way_scaled_head=args.way_scaled_head,
        body_rates_only=args.body_rates_only,
        first_order=args.first_order,
        way=args.way,
        shot=args.shot,
        query=args.query,
        meta_batch=args.meta_batch,
        inner_lr=0.4 if args.inner_lr is None else args.inner_lr,
        inner_steps=TrainConfig.inner_steps if args.steps is None else args.steps,
        eval_steps=args.eval_steps,
        meta_lr=args.meta_lr,
        rule_meta_lr=args.rule_meta_lr,
        cosine=args.cosine,
        iterations=args.iterations,
        val_every=args.val_every,
        val_episodes=args.val_episodes,
        device=args.device,
        batching=args.batching,
        seed=args.seed,
        out=args.out or f"runs/{args.algo}.pt",
        resume=args.resume,
        init=args.init,
        dtype=args.dtype,
        allow_evaluation_split=args.allow_evaluation_split,
    )
    from metacore.algorithms import ALGORITHMS

    if cfg.algorithm not in ALGORITHMS:
        raise MetacoreError(f"unknown --algo '{cfg.algorithm}' (choose: {', '.join(ALGORITHMS)})")
    problem = inner_loop_problem(cfg)  # an error is raised by train() itself, before any work
    if problem and problem[0] == "warning":
        print(f"warning: {problem[1]}", file=sys.stderr)
    summary = train(cfg, progress=not args.json or sys.stderr.isatty())
    if not distributed.current().main:
        return 0  # under torchrun, rank 0 reports
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"done: {summary['algorithm']}, {summary['iterations']} iterations in {summary['seconds']:.0f} s on "
            f"{summary['device']}; validation {summary['val_accuracy']:.1f}% ± {summary['val_ci95']:.1f}; "
            f"saved {summary['checkpoint']}"
        )
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from metacore.checkpoint import build_learner, save_checkpoint
    from metacore.device import describe
    from metacore.errors import check_number
    from metacore.models import BACKBONES, Backbone
    from metacore.train import MAX_INNER_LR, MAX_INNER_STEPS

    if args.backbone not in BACKBONES:
        raise MetacoreError(f"unknown --backbone '{args.backbone}' (known: {', '.join(BACKBONES)})")
    check_number(args.inner_lr, "inner-lr", 0, MAX_INNER_LR, above=True)
    check_number(args.steps, "steps", 1, MAX_INNER_STEPS, integer=True)
    kwargs = {}
    if args.backbone == "feature_adapter":
        if args.adapter_rank is not None:
            kwargs["rank"] = check_number(args.adapter_rank, "adapter-rank", 0, 4096, integer=True)
        if args.no_adapter_affine:
            kwargs["affine"] = False
    elif args.adapter_rank is not None or args.no_adapter_affine:
        raise MetacoreError("--adapter-rank and --no-adapter-affine are feature_adapter settings")
    torch.manual_seed(args.seed)
    learner = build_learner(args.algo, Backbone(args.backbone, **kwargs), args.inner_lr, args.steps, args.head)
    config = {"command": "init", "algorithm": args.algo, "backbone": args.backbone, "backbone_kwargs": kwargs,
              "head": args.head, "inner_lr": args.inner_lr, "inner_steps": args.steps, "seed": args.seed}  # fmt: skip
    hardware = describe(torch.device("cpu"))
    training = {"iteration": 0, "seconds": 0.0, "history": [], "data_stages": [], "hardware": hardware,
                "torch": str(torch.__version__), "meta_trained": False}  # fmt: skip
    save_checkpoint(args.out, learner, config=config, training=training)
    learned = sum(v.numel() for v in learner.params.values())
    print(f"wrote {args.out}: {args.backbone} {kwargs or ''} at its initialisation ({learned} numbers), not "
          f"meta-trained; {args.algo}, {args.head} head, {args.steps} steps at lr {args.inner_lr:g}")  # fmt: skip
    return 0


def parse_curve(text: str) -> list[int]:
    """'A:B' -> the steps A..B; 'A:B:S' -> every S-th of them; several, comma-separated, are joined ('0:10,15:50:5')."""
    steps: set[int] = set()
    for part in text.split(","):
        fields = part.split(":")
        try:
            if len(fields) not in (2, 3):
                raise ValueError
            start, stop, stride = int(fields[0] or 0), int(fields[1]), int(fields[2]) if len(fields) == 3 else 1
        except ValueError:
            raise MetacoreError(
                f"--steps-curve takes A:B (steps A to B, e.g. 0:50), A:B:S (every S-th) or several joined by commas "
                f"(e.g. 0:10,15:50:5), not '{text}'"
            ) from None
        if not 0 <= start <= stop <= 1000 or stride < 1:
            raise MetacoreError(f"--steps-curve {part}: need 0 <= A <= B <= 1000 and S >= 1")
        steps.update(range(start, stop + 1, stride))
    return sorted(steps)


def way_scaling(result: dict) -> str:
    """For a way-scaled head, what its step is multiplied by in the evaluated N-way tasks (said in the text; the JSON
    carries `way_scaled_head`)."""
    return f" (the head's step x {result['way']}/5)" if result.get("way_scaled_head") else ""


def cmd_evaluate(args: argparse.Namespace) -> int:
    from metacore.data import EpisodeSampler, open_dataset
    from metacore.evaluate import evaluate, evaluate_with_curve, step_curve

    check_steps(args)
    if args.episodes < 1:
        raise MetacoreError("--episodes must be at least 1")
    curve = parse_curve(args.steps_curve) if args.steps_curve else None
    partial = Path(args.partial) if args.partial else None
    if partial and not curve:
        raise MetacoreError("--partial keeps a step curve's episodes: give --steps-curve too")
    from metacore.device import resolve_device

    world, device = distributed.setup(resolve_device(args.device))  # under torchrun: the episodes are shared out
    if partial and world.size > 1:
        raise MetacoreError("--partial works in one process, not under torchrun (its processes would share FILE)")
    learner, meta, device = load_model(args, device)  # built on this process's device (cuda:LOCAL_RANK)
    split = args.split or ("evaluation" if args.dataset == "omniglot" else None)
    dataset = open_dataset(args.data_root, args.dataset, split, learner.backbone.input_spec, images=args.images)
    from metacore.provenance import overlap

    seen = overlap(meta, dataset, args.data_root)  # novel classes, or new images of trained ones? (said at the end)
    sampler = EpisodeSampler(dataset, args.way, args.shot, args.query, args.seed)
    dataset.preload(progress=not args.json)
    if curve and world.size == 1 and not args.every_step and learner.name != "protonet":
        # one adaptation per episode serves both (the curve passes the default steps): half the time of two
        result = evaluate_with_curve(
            learner, sampler, args.episodes, args.steps, args.inner_lr, curve, device, not args.json, partial
        )
    else:
        result = evaluate(
            learner, sampler, args.episodes, args.steps, args.inner_lr, device, args.every_step, not args.json, world
        )
        if curve:
            sampler = EpisodeSampler(dataset, args.way, args.shot, args.query, args.seed)  # the same episodes again
            result["curve"] = step_curve(
                learner, sampler, args.episodes, curve, args.inner_lr, device, progress=not args.json, partial=partial
            )
    result |= {
        "dataset": args.dataset, "split": split, "images": args.images, "algorithm": learner.name, "seed": args.seed,
        "trained_classes_scored": seen["trained_classes_scored"], "classes_scored": seen["classes_scored"],
    }  # fmt: skip
    if not world.main:
        return 0
    if seen["warning"]:
        print(f"warning: {seen['warning']}", file=sys.stderr)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['way']}-way {result['shot']}-shot, {result['episodes']} episodes, {result['steps']} steps, "
            f"inner lr {result['inner_lr']}{way_scaling(result)}: {result['accuracy']:.2f}% ± {result['ci95']:.2f} "
            "(95% CI)"
        )
        for row in result.get("per_step", []):
            print(f"  step {row['step']:2d}: {row['accuracy']:.2f}% ± {row['ci95']:.2f}")
        for row in result.get("curve", []):
            print(
                f"  step {row['step']:2d}: {row['accuracy']:6.2f}% ± {row['ci95']:.2f}   "
                f"support loss {row['support_loss']:.4f} ± {row['support_loss_ci95']:.4f}"
            )
    return 0


def unsure_threshold(args: argparse.Namespace) -> float | None:
    """The "none of these" threshold in the model card beside the checkpoint (`unsure --card`), if any."""
    from metacore.openset import card_entry

    card = (Path(args.checkpoint) if args.checkpoint else DEFAULT_CHECKPOINT).with_suffix(".json")
    try:
        entry = card_entry(json.loads(card.read_text()))
    except (OSError, ValueError):
        return None
    return entry["threshold"] if entry else None


def adapted_to_task(args: argparse.Namespace, learner, meta: dict):
    """(adapted parameters, class names, the support images or None): adapted to `--support`, or the head a model
    adapted (and downloaded) in the lab carries."""
    from metacore.features import adapted_params, load_support_folder

    if args.support:
        support = load_support_folder(args.support, learner.backbone.input_spec, args.skip_bad)
        return adapted_params(learner, support, args.steps, args.inner_lr), support.classes, support
    if "adapted_head" in meta:
        head = {k: v.to(learner.backbone.device) for k, v in meta["adapted_head"].items()}
        return {**learner.params, **head}, meta["classes"], None
    raise MetacoreError("--support is needed: this checkpoint is meta-trained, not adapted to classes")


def cmd_classify(args: argparse.Namespace) -> int:
    from metacore.features import predict_proba, query_files, read_inputs, warn
    from metacore.openset import novelty, task_threshold

    check_steps(args)
    learner, meta, _ = load_model(args)
    params, classes, support = adapted_to_task(args, learner, meta)
    files = query_files(args.queries)
    unreadable: list[str] = []  # one bad query does not stop the others: each is reported, the exit code is 1
    images, readable = read_inputs(files, learner.backbone.input_spec, skip_bad=True, on_skip=unreadable.append)
    probs = predict_proba(learner, params, images)
    if len(probs) and bool(((probs < 1e-6) | (probs > 1 - 1e-6)).all()):
        own = "its learned rates" if learner.learns_rates else f"lr {learner.inner_lr:g}"
        warn(f"every probability is 0 or 1 (saturated): the inner steps overshoot, so the confidences mean nothing "
             f"even where the class is right; the model adapts at {own} by default")  # fmt: skip
    rows = [
        {
            "file": str(f),
            "predicted": classes[int(p.argmax())],
            "probabilities": {c: round(float(v), 6) for c, v in zip(classes, p)},
        }
        for f, p in zip(readable, probs)
    ]
    threshold = unsure_threshold(args)
    if threshold is None and args.support:  # no card threshold: from the task (each support image left out)
        measured = task_threshold(learner, params, support.images, support.labels)
        threshold = measured and measured["threshold"]
        print(
            f"none of these?: threshold {threshold:.3g} measured on the support set; on it, it keeps "
            f"{measured['in_task_kept']:.0f}% of the task's own images and flags {measured['out_of_task_flagged']:.0f}%"
            " of images of a class left out"
            if measured
            else "none of these?: off (the model's card has no threshold, and the support set is too small to measure "
            "one: it needs 3 classes and a class with 2 images)",
            file=sys.stderr,
        )
    if threshold is not None and args.support:  # the class means come from the support set
        scores = novelty(learner, params, support.images, support.labels, images, len(classes))
        for row, score in zip(rows, scores.tolist()):
            row |= {"novelty": round(score, 4), "unsure": score > threshold}
    bad = [f for f in files if f not in set(readable)]
    errors = [{"file": str(f), "error": message.removeprefix("skipped ")} for f, message in zip(bad, unreadable)]
    if args.json:
        print(json.dumps(rows + errors))
    else:
        width = max(len(r["file"]) for r in rows)
        for r in rows:
            unsure = "  unsure: none of these?" if r.get("unsure") else ""
            print(f"{r['file']:<{width}}  {r['predicted']}  ({100 * r['probabilities'][r['predicted']]:.1f}%){unsure}")
        for e in errors:
            print(f"error: {e['error']}", file=sys.stderr)
    return 1 if errors else 0


def cmd_embed(args: argparse.Namespace) -> int:
    from metacore.features import adapted_params, embed, load_support_folder, query_files, read_inputs

    check_steps(args)
    out = Path(args.out)
    if out.suffix.lower() not in (".csv", ".npy"):
        raise MetacoreError("--out must end in .csv or .npy")
    from metacore.train import check_writable

    check_writable(out)  # before reading any image
    learner, _, _ = load_model(args)
    images, files = read_inputs(query_files(args.images), learner.backbone.input_spec, args.skip_bad)
    stages = {"before": embed(learner, images)}
    if args.support:
        support = load_support_folder(args.support, learner.backbone.input_spec, args.skip_bad)
        stages["after"] = embed(learner, images, adapted_params(learner, support, args.steps, args.inner_lr))
    written = []
    if out.suffix.lower() == ".npy":
        for stage, feats in stages.items():
            path = out if stage == "before" else out.with_name(f"{out.stem}_adapted.npy")
            np.save(path, feats.numpy())
            written.append(str(path))
    else:
        dim = stages["before"].shape[1]
        with open(out, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file", "stage", *[f"f{i}" for i in range(dim)]])
            for stage, feats in stages.items():
                for file, row in zip(files, feats.tolist()):
                    writer.writerow([str(file), stage, *[f"{v:.6g}" for v in row]])
        written.append(str(out))
    summary = {"images": len(files), "dim": stages["before"].shape[1], "stages": list(stages), "written": written}
    print(
        json.dumps(summary)
        if args.json
        else f"wrote {', '.join(written)} ({len(files)} images, {summary['dim']} features, {' + '.join(stages)})"
    )
    return 0


def cmd_unsure(args: argparse.Namespace) -> int:
    from metacore import openset
    from metacore.data import open_dataset
    from metacore.errors import check_number

    check_steps(args)
    check_number(args.keep, "--keep", 0.5, 1.0)
    if args.steps is not None or args.inner_lr is not None:
        raise MetacoreError("the threshold is chosen for the model's own steps and lr: leave out --steps/--inner-lr")
    if not (args.way.isdigit() and args.shot.isdigit()):
        raise MetacoreError(f"--way and --shot must be single numbers here, got {args.way} and {args.shot}")
    try:  # read before the work, so that a bad --card path costs nothing
        card = json.loads(Path(args.card).read_text()) if args.card else None
    except (OSError, ValueError) as exc:
        raise MetacoreError(f"--card {args.card}: cannot read it as a JSON model card ({exc})") from None
    learner, _, _ = load_model(args)
    split = args.split or ("evaluation" if args.dataset == "omniglot" else None)
    dataset = open_dataset(args.data_root, args.dataset, split, learner.backbone.input_spec, images=args.images)
    choose, measure = dataset.split_held_out(0.5)
    first, second = f"{dataset.description}, classes 1-{len(choose)}", f"the other {len(measure)} classes"
    checkpoint = args.checkpoint or DEFAULT_CHECKPOINT.relative_to(PROJECT_ROOT)
    way, shot = int(args.way), int(args.shot)
    inside, _ = openset.episode_scores(learner, choose, args.episodes, way, shot, args.query, args.seed)
    threshold = openset.calibrate(inside, args.keep)
    inside, outside = openset.episode_scores(learner, measure, args.episodes, way, shot, args.query, args.seed)
    result = {
        "score": "novelty: cosine distance to the nearest class mean / median distance between class means",
        "threshold": round(threshold, 6),
        "chosen_on": f"{first}: {args.episodes} tasks, keep {args.keep:g}",
        "measured_on": f"{second}: {args.episodes} tasks",
        "task": f"{way}-way {shot}-shot, {args.query} query images per class, as many of up to {way} other classes",
        **openset.rates(inside, outside, threshold),
        "command": f"python -m metacore unsure --checkpoint {checkpoint} "
        f"--dataset {args.dataset} --split {split} --way {way} --shot {shot} --query {args.query} "
        f"--episodes {args.episodes} --keep {args.keep:g} --seed {args.seed} --card {args.card}",
    }
    if card is not None:
        card["unsure"] = result
        Path(args.card).write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from metacore.bench import run_bench
    from metacore.checkpoint import MAX_INNER_STEPS, check_number
    from metacore.device import resolve_device

    check_number(args.meta_batch, "--meta-batch", 1, 4096, integer=True)
    check_number(args.repeats, "--repeats", 1, 10_000, integer=True)
    check_number(args.steps, "--steps", 1, MAX_INNER_STEPS, integer=True)
    resolve_device(args.device)
    if args.time_to_accuracy:
        from metacore.examples import meta_training_data
        from metacore.train import quick_recipe, time_to_accuracy

        data_root, dataset, split, description = meta_training_data(args.data_root or "")
        cfg = quick_recipe(data_root, dataset, split, device=args.device)
        cfg.out = str(Path(tempfile.mkdtemp(prefix="metacore-bench-")) / "model.pt")
        result = {"data": description, "cpus": os.cpu_count(), **time_to_accuracy(cfg)}
        print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))
        return 0
    result = run_bench(args.device, args.meta_batch, args.steps, args.repeats, progress=not args.json)
    if args.json:
        print(json.dumps(result))
    else:
        for name, row in result["meta_training"].items():
            text = "not installed" if not row else row.get("error") or f"{row['tasks_per_s']:8.1f} tasks/s"
            print(f"{name:>22}: {text}")
        print(f"{'compared':>22}: {result['compared']}")
        for k, v in result["ratios"].items():
            print(f"{k:>22}: {v:.2f}x")
        print(f"{'inner step 5w5s':>22}: {result['inner_step_ms']:.2f} ms")
        photo = result["photo"]
        if "skipped" in photo:
            print(f"{'photo timings':>22}: skipped ({photo['skipped']})")
        else:
            print(f"{'photo inner step 5w5s':>22}: {photo['inner_step_ms']:.2f} ms")
            print(f"{'25 photos -> features':>22}: {photo['extract_25_photos_s']:.2f} s ({photo['photo_size']})")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from metacore.check_cli import run

    return run(args)


def cmd_export(args: argparse.Namespace) -> int:
    from metacore.export import export, export_task

    if args.model and args.checkpoint and args.model != args.checkpoint:
        raise MetacoreError(f"two checkpoints given ('{args.model}' and --checkpoint '{args.checkpoint}'): give one")
    args.checkpoint = args.checkpoint or args.model
    out = Path(args.out)
    if out.suffix in (".pt2", ".onnx") and not args.support:
        written = export(args.checkpoint or DEFAULT_CHECKPOINT, out)
        print(f"wrote {written} ({written.stat().st_size / 2**20:.1f} MB)")
        return 0
    if out.suffix in (".pt2", ".onnx"):
        raise MetacoreError(f"--out is a folder for a task (model.onnx, predict.py, model.pt2 go in it), not '{out}'")
    check_steps(args)
    learner, meta, _ = load_model(args)
    params, classes, _ = adapted_to_task(args, learner, meta)
    export_task(learner, params, classes, out)
    sizes = ", ".join(f"{f.name} {f.stat().st_size / 2**10:,.0f} KB" for f in sorted(out.iterdir()))
    print(f"wrote {out}/: {sizes}\nrun it: python {out / 'predict.py'} IMAGE...")
    return 0


COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "classify": cmd_classify,
    "embed": cmd_embed,
    "unsure": cmd_unsure,
    "check": cmd_check,
    "init": cmd_init,
    "export": cmd_export,
    "bench": cmd_bench,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    try:
        return distributed.finish(COMMANDS[args.command](args))
    except MetacoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except torch.cuda.OutOfMemoryError:
        smaller = "--meta-batch" if args.command == "train" else "way, shot or --query"
        print(f"error: out of GPU memory; try a smaller {smaller}, or --device cpu", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug, not bad input: still one line, with a way to see more
        if os.environ.get("METACORE_DEBUG"):
            raise
        print(f"error: unexpected {type(exc).__name__}: {exc} (set METACORE_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1
    finally:
        distributed.leave()


if __name__ == "__main__":
    sys.exit(main())
