"""Meta-training: sample meta-batches of episodes, take outer steps, validate on held-out classes."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from metacore import distributed
from metacore.algorithms import MAML
from metacore.algorithms.maml import RULE_PREFIXES
from metacore.capture import CapturedOuterStep, check_capturable
from metacore.checkpoint import (
    MAX_INNER_LR,
    MAX_INNER_STEPS,
    build_learner,
    check_number,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from metacore.data import (
    EpisodeSampler,
    ImageClasses,
    augment_task,
    dataset_folder,
    open_dataset,
    parse_range,
    parse_slice,
)
from metacore.device import describe, resolve_device
from metacore.errors import MetacoreError
from metacore.evaluate import evaluate
from metacore.images import InputSpec
from metacore.models import BACKBONES, Backbone
from metacore.paths import PROJECT_ROOT


@dataclass
class TrainConfig:
    algorithm: str = "maml"
    data_root: str = "../shared/data"
    dataset: str = "omniglot"
    split: str | None = None
    rotations: bool = False
    augment: bool = False  # small random affine distortions of every training image (metacore.data.augment)
    images: str | None = None  # a slice of each class's sorted images, e.g. "0:500"
    val_images: str | None = None  # validate on this slice of every class's images, not on held-out classes
    backbone: str = "conv4"
    feature_scale: float | None = None  # conv4: centred, L2-normalised features times a learned scale from here
    head: str = "zero"
    way_scaled_head: bool = False  # an N-way task's head steps at N/5 times the rate (one rate for any way)
    body_rates_only: bool = False  # Meta-SGD: learn the body's rates only; the head steps at inner_lr
    first_order: bool = False  # lstm: the paper's simplification (the LSTM's inputs taken as constants)
    way: str = "5"
    shot: str = "1"
    query: int = 15
    meta_batch: int = 16
    inner_lr: float = 0.4
    inner_steps: int = 2  # from a zero head, step 1 moves only the head: the body's first inner gradient is at step 2
    eval_steps: int | None = None  # inner steps at test time (default: inner_steps)
    meta_lr: float = 1e-3
    rule_meta_lr: float | None = None  # the inner update's own weights (LSTM, Meta-SGD's rates); None: meta_lr
    cosine: bool = False
    iterations: int = 1000
    val_every: int = 100
    val_episodes: int = 100
    val_fraction: float = 0.1
    device: str = "auto"
    batching: str = "auto"  # how a meta-batch is computed: loop, vmap, threads; auto: vmap on GPU, threads on CPU
    seed: int = 0
    out: str = "runs/model.pt"
    resume: bool = False
    init: str | None = None  # a checkpoint whose backbone parameters are the starting point
    preload: bool = True  # decode every image before the first step (False: as episodes first need them)
    dtype: str = "float32"  # float64: for exactness checks (e.g. one process against several under torchrun)
    allow_evaluation_split: bool = False  # Omniglot's evaluation alphabets are for testing: training on them is opt-in


def quick_recipe(data_root: str, dataset: str, split: str | None, **overrides) -> TrainConfig:
    """The lab's Meta-train default, chosen to be watched: second-order MAML, 5-way 1-shot with 5 queries a class,
    two inner steps at lr 0.2 (from a zero head, the first moves only the head), 4 tasks per outer step, outer lr
    1e-3, 1,000 outer steps, validation every 25 on 50 tasks; images decoded as episodes first need them, so the
    first point comes in seconds."""
    recipe = dict(algorithm="maml", data_root=data_root, dataset=dataset, split=split, way="5", shot="1", query=5,
                  meta_batch=4, inner_lr=0.2, inner_steps=2, meta_lr=1e-3, iterations=1000, val_every=25,
                  val_episodes=50, preload=False)  # fmt: skip
    return TrainConfig(**(recipe | overrides))


def time_to_accuracy(cfg: TrainConfig, targets: tuple[float, ...] = (85.0, 90.0)) -> dict:
    """Seconds of meta-training (from the call, data loading included) until the validation accuracy first
    reaches each target, running `cfg` until the last target is reached or its outer steps are done."""
    started, reached = time.perf_counter(), {}

    def watch(report: dict) -> None:
        val = report["validation"]
        for target in targets:
            if val and target not in reached and val["val_accuracy"] >= target:
                reached[target] = {"seconds": round(time.perf_counter() - started, 1), "outer_step": val["iteration"]}
        if len(reached) == len(targets):
            raise StopTraining

    summary = train(cfg, progress=False, on_step=watch)
    return {f"time_to_{t:g}": reached.get(t) for t in targets} | {"last_validation": summary["val_accuracy"]}


# What --resume takes from the command line rather than from the checkpoint: where and how this machine runs it.
MACHINE_SETTINGS = ("iterations", "resume", "device", "out", "data_root", "batching", "preload")


def mean_feature(backbone: Backbone, dataset: ImageClasses, limit: int = 2000) -> torch.Tensor:
    """The mean feature vector of up to `limit` images, the first few of each class (of as many classes as fit)."""
    per_class = max(1, limit // len(dataset))
    classes = range(min(len(dataset), limit // per_class))
    images = torch.cat([dataset.images(i, list(range(min(per_class, len(dataset.classes[i].files))))) for i in classes])
    with torch.no_grad():
        return backbone.features(backbone.params, images.to(next(iter(backbone.params.values())))).mean(0)


def training_data(cfg: TrainConfig, spec: InputSpec) -> tuple[ImageClasses, ImageClasses]:
    """(training classes, validation classes) as configured: held-out classes, or other images of every class."""
    dataset = open_dataset(cfg.data_root, cfg.dataset, cfg.split, spec, cfg.rotations, cfg.images)
    if not cfg.val_images:
        return dataset.split_held_out(cfg.val_fraction)
    # every class trains; validation episodes come from other images of the same classes
    val_set = open_dataset(cfg.data_root, cfg.dataset, cfg.split, spec, cfg.rotations, cfg.val_images)
    shared = {f for c in dataset.classes for f in c.files} & {f for c in val_set.classes for f in c.files}
    if shared:
        raise MetacoreError(
            f"--val-images {cfg.val_images} shares {len(shared)} images with the training images (--images "
            f"{cfg.images or 'all'}): give disjoint slices, e.g. --images 0:400 --val-images 400:500"
        )
    return dataset, val_set


def data_record(cfg: TrainConfig, train_set: ImageClasses, val_set: ImageClasses) -> dict:
    """What one training run learned from, for its checkpoint and model card: where, which classes, which images."""
    test_data = test_data_in(cfg)
    return {
        "data_root": Path(cfg.data_root).name,
        "dataset": cfg.dataset,
        "split": cfg.split or ("background" if cfg.dataset == "omniglot" else None),
        "images": cfg.images,
        "rotations": cfg.rotations,
        "training_classes": len(train_set),
        "training_class_list_sha256": train_set.class_list_sha256(),
        "validation": f"images {cfg.val_images} of the same classes" if cfg.val_images else "held-out classes",
        "validation_classes": len(val_set),
        "validation_class_list_sha256": val_set.class_list_sha256(),
        "evaluation_split": test_data is not None,
        "test_data": test_data,
    }


def test_data_in(cfg: TrainConfig) -> str | None:
    """Which test data the training data holds, decided by the resolved path: Omniglot's evaluation alphabets (any
    folder of an `images_evaluation` tree, e.g. `--dataset omniglot-py/images_evaluation/Tengwar`), or a folder a
    shipped model card measures its accuracy on (its `test_data`; an image slice that misses the card's counts as
    apart). None when it holds none."""
    folder = dataset_folder(cfg.data_root, cfg.dataset, cfg.split).resolve()
    if "images_evaluation" in folder.parts:
        return "Omniglot's evaluation alphabets (images_evaluation)"
    for card, entry in cards_test_data():
        test = dataset_folder(cfg.data_root, entry["dataset"], entry.get("split")).resolve()
        nested = folder == test or test in folder.parents or folder in test.parents
        if nested and slices_overlap(cfg.images, entry.get("images")):
            images = f" images {entry['images']}" if entry.get("images") else ""
            return f"{test.relative_to(Path(cfg.data_root).expanduser().resolve())}{images}, the test data of {card}"
    return None


def cards_test_data() -> list[tuple[str, dict]]:
    """(card file, {dataset, split, images}) for each data set a model card in models/ names as its test data."""
    found = []
    for card in sorted((PROJECT_ROOT / "models").glob("*.json")):
        try:
            entries = json.loads(card.read_text()).get("test_data", [])
        except (OSError, ValueError, AttributeError):
            continue  # not a model card
        found += [(card.name, entry) for entry in entries if isinstance(entry, dict) and "dataset" in entry]
    return found


def slices_overlap(a: str | None, b: str | None) -> bool:
    """Whether two `--images` slices of the same classes may share images (no slice: every image)."""
    if a is None or b is None:
        return True
    first, second = parse_slice(a), parse_slice(b)
    bounds = [first.start, first.stop, second.start, second.stop]
    if any(v is not None and v < 0 for v in bounds):
        return True  # counted from each class's end: classes differ in size, so assume they may
    start = max(first.start or 0, second.start or 0)
    stop = min(v for v in (first.stop, second.stop, math.inf) if v is not None)
    return start < stop


def earlier_stages(init: str | None) -> list[dict]:
    """The data records of the runs an `--init` checkpoint came from, oldest first; a run from before checkpoints
    recorded their data appears as {"recorded": False, "checkpoint": ...}."""
    if not init:
        return []
    training = read_checkpoint(init).get("training", {})
    return training.get("data_stages") or [{"recorded": False, "checkpoint": str(init)}]


def inner_loop_problem(cfg: TrainConfig) -> tuple[str, str] | None:
    """("error" or "warning", why) when the inner loop cannot do what the algorithm is meant to; None when it can.

    A zero head gives the body no inner gradient at step 1 (every logit is 0 whatever the features), so with one
    step the adapted body is the starting body: MAML's meta-gradient is then ANIL's, and Reptile's direction for
    the body is exactly zero. With no step at all a zero head stays at chance and nothing can be learned."""
    if cfg.algorithm == "lstm" and not 0 < cfg.inner_lr < 1:
        return "error", (
            f"the LSTM meta-learner's input gate (a sigmoid) starts at the inner lr, so it must be between 0 and 1; "
            f"got {cfg.inner_lr:g}"
        )
    if cfg.head != "zero" or cfg.algorithm == "protonet":
        return None
    if cfg.inner_steps == 0:
        return "error", "with a zero head and 0 inner steps every task stays at chance: there is nothing to meta-learn"
    if cfg.inner_steps == 1 and cfg.algorithm == "reptile":
        return "error", (
            "reptile with a zero head and 1 inner step cannot train the body: a zero head gives the body no inner "
            "gradient, so the adapted body is the starting one and Reptile's direction is 0. Use 2 or more inner steps"
        )
    if cfg.inner_steps == 1 and cfg.algorithm != "anil":
        return "warning", (
            f"{cfg.algorithm} with a zero head and 1 inner step adapts only the head (a zero head gives the body no "
            f"inner gradient), so it meta-learns what ANIL does; use 2 or more inner steps for {cfg.algorithm} proper"
        )
    return None


def learner_settings(cfg: TrainConfig) -> dict:
    """The learner fields of a training config (what `build_learner` takes besides the backbone)."""
    fields = ("algorithm", "inner_lr", "inner_steps", "head", "way_scaled_head", "body_rates_only", "first_order")
    return {k: getattr(cfg, k) for k in fields}


def check_writable(path: Path) -> None:
    """Fail now, with the reason, if a file cannot be written at `path` (its folder is made if missing)."""
    existing = next(p for p in path.absolute().parents if p.exists())
    if not existing.is_dir():
        raise MetacoreError(f"cannot write {path}: {existing} is a file, not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            raise MetacoreError(f"{path} is a folder; give a file name for the checkpoint")
        probe = path.with_name(f".{path.name}.write-test")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise MetacoreError(f"cannot write {path} ({exc.strerror or exc})") from None


def outer_groups(learner: MAML, cfg: TrainConfig) -> list[dict]:
    """The outer optimiser's parameter groups: the network's, and (with `rule_meta_lr`) the inner update's own."""
    rule = [v for k, v in learner.params.items() if k.startswith(RULE_PREFIXES)]
    if cfg.rule_meta_lr is None or not rule:
        return [{"params": list(learner.params.values())}]
    network = [v for k, v in learner.params.items() if not k.startswith(RULE_PREFIXES)]
    return [{"params": network}, {"params": rule, "lr": cfg.rule_meta_lr}]


class StopTraining(Exception):
    """Raised by an `on_step` callback to end training early: what was learned so far is saved and returned."""


def _log(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


def train(cfg: TrainConfig, progress: bool = True, on_step: Callable[[dict], None] | None = None) -> dict:
    """Run meta-training as configured; returns a summary dict. Checkpoints go to `cfg.out`.

    `on_step`, if given, is called once before the first outer step (loss None) and after every outer step, with
    the iteration, its loss and accuracy, the validation just made (or None) and the learner (read it, do not
    change it). It may block (a pause) or raise StopTraining (the run ends there, its checkpoint saved)."""
    parse_range(cfg.way, "way")  # fail early, before loading any data
    parse_range(cfg.shot, "shot")
    if cfg.iterations < 1 or cfg.meta_batch < 1:
        raise MetacoreError("--iterations and --meta-batch must be at least 1")
    for name in ("iterations", "meta_batch", "val_every", "val_episodes", "query"):
        check_number(getattr(cfg, name), name.replace("_", "-"), 1, 10**9, integer=True)
    check_number(cfg.meta_lr, "meta-lr", 0, 1.0, above=True)
    check_number(cfg.inner_lr, "inner-lr", 0, MAX_INNER_LR, above=True)
    check_number(cfg.inner_steps, "inner steps", 0, MAX_INNER_STEPS, integer=True)
    problem = inner_loop_problem(cfg)
    if problem and problem[0] == "error":
        raise MetacoreError(problem[1])
    test_data = test_data_in(cfg)
    if test_data and not cfg.allow_evaluation_split:
        raise MetacoreError(
            f"the training data holds {test_data}: reported accuracies are measured on it, so training on it makes "
            "those numbers meaningless. If that is what you want, add --allow-evaluation-split (the checkpoint and "
            "its model card will say so)"
        )
    if cfg.dtype not in ("float32", "float64"):
        raise MetacoreError(f"--dtype must be float32 or float64, got {cfg.dtype}")
    world, device = distributed.setup(resolve_device(cfg.device))
    if world.size > cfg.meta_batch:
        raise MetacoreError(
            f"{world.size} processes but a meta-batch of {cfg.meta_batch} tasks: every process needs at least one "
            "task per outer step (raise --meta-batch or start fewer processes)"
        )
    progress = progress and world.main
    out = Path(cfg.out)
    if world.main:
        check_writable(out)  # before any work: a finished training must not be lost to a bad path
    if world.size > 1 and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0" and out.is_file():
        cfg = replace(cfg, resume=True)  # torchrun restarted the job after a failure: go on from the checkpoint
    distributed.check_same_everywhere(world, asdict(cfg))
    if cfg.resume and not out.is_file():
        raise MetacoreError(f"--resume: no checkpoint at {out} to continue (leave out --resume to start afresh)")
    start_iteration, optimizer_state, elapsed_before = 0, None, 0.0
    history: list[dict] = []
    if cfg.resume:
        learner, meta = load_checkpoint(out, device)
        training = meta.get("training", {})
        start_iteration = int(training.get("iteration", 0))
        optimizer_state = training.get("optimizer")
        elapsed_before = float(training.get("seconds", 0.0))
        history = list(training.get("history", []))
        prior_stages = list(training.get("data_stages", [])[:-1])
        saved = meta.get("config", {})
        if not isinstance(saved, dict):
            raise MetacoreError(
                f"--resume: {out} holds no training settings to go on with (its 'config' is not a dict)"
            )
        unknown = sorted(set(saved) - {f.name for f in fields(TrainConfig)})
        if unknown:
            raise MetacoreError(f"--resume: {out} was written with settings this metacore does not know "
                                f"({', '.join(map(str, unknown[:3]))}); start afresh without --resume")  # fmt: skip
        keep = {k: v for k, v in saved.items() if k not in MACHINE_SETTINGS}
        cfg = TrainConfig(**{**asdict(cfg), **keep})
        if world.main:
            _log(f"resuming {out} from iteration {start_iteration}")
    else:
        prior_stages = earlier_stages(cfg.init)
        torch.manual_seed(cfg.seed)
        if cfg.init:
            backbone = load_checkpoint(cfg.init, device)[0].backbone
            if backbone.name != cfg.backbone:
                raise MetacoreError(f"--init {cfg.init} holds a '{backbone.name}' backbone, not '{cfg.backbone}'")
        elif cfg.backbone not in BACKBONES:
            raise MetacoreError(f"unknown backbone '{cfg.backbone}' (known: {', '.join(BACKBONES)})")
        else:
            backbone = Backbone(cfg.backbone).to(device, getattr(torch, cfg.dtype))
        learner = build_learner(backbone=backbone, **learner_settings(cfg))

    if cfg.augment and learner.backbone.input_spec.body:
        raise MetacoreError("--augment distorts images; this model's inputs are body features, not pixels")
    train_set, val_set = training_data(cfg, learner.backbone.input_spec)
    data_stages = [*prior_stages, data_record(cfg, train_set, val_set)]  # every stage's data, oldest first
    if cfg.feature_scale and not cfg.resume:  # centred on the mean feature of (up to 2,000) training images
        backbone = learner.backbone.with_feature_scale(cfg.feature_scale, mean_feature(learner.backbone, train_set))
        learner = build_learner(backbone=backbone, **learner_settings(cfg))
    sampler = EpisodeSampler(train_set, cfg.way, cfg.shot, cfg.query, seed=cfg.seed + start_iteration)
    val_way, val_shot = sampler.way[0], sampler.shot[0]
    val_sampler = EpisodeSampler(val_set, min(val_way, len(val_set)), val_shot, cfg.query, seed=cfg.seed + 1)
    batching = cfg.batching if cfg.batching != "auto" else ("threads" if device.type == "cpu" else "vmap")
    if batching not in ("loop", "vmap", "threads", "graph"):
        raise MetacoreError(f"unknown --batching '{cfg.batching}' (choose: auto, loop, vmap, threads, graph)")
    if batching == "graph":
        if world.size > 1:
            raise MetacoreError("--batching graph records one process's whole step; under torchrun use vmap or loop")
        check_capturable(learner, device, sampler, cfg.cosine)
    if cfg.preload:
        train_set.preload(progress)
        val_set.preload(progress)

    learner.params = {k: v.detach().clone().requires_grad_(True) for k, v in learner.params.items()}
    optimizer = torch.optim.Adam(outer_groups(learner, cfg), lr=cfg.meta_lr, capturable=batching == "graph")
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    if optimizer_state:
        optimizer.load_state_dict(optimizer_state)
    share = world.share(cfg.meta_batch)  # this process's tasks of every meta-batch
    if world.size > 1:
        optimizer = distributed.SummedGradients(optimizer, world, len(share) / cfg.meta_batch)
    dtype = next(iter(learner.params.values())).dtype
    hardware = describe(device)  # for the checkpoint's metadata (reads /proc/cpuinfo: once, not per save)

    def save(iteration: int, seconds: float) -> None:
        if not world.main:
            return
        save_checkpoint(
            out,
            learner,
            config=asdict(cfg),
            training={
                "iteration": iteration,
                "seconds": seconds,
                "optimizer": optimizer.state_dict(),
                "history": history,
                "data_stages": data_stages,
                "device": str(device),
                "hardware": hardware,
                "torch": str(torch.__version__),
            },
        )

    def stop_diverged(iteration: int, loss: float) -> None:
        kept = (
            f"the last good checkpoint, {out} at iteration {history[-1]['iteration']}, is kept"
            if history
            else f"nothing was saved to {out}"
        )
        raise MetacoreError(
            f"training diverged at iteration {iteration} (loss {loss:.3g}): {kept}; "
            "try a smaller --meta-lr or --inner-lr"
        )

    def validate() -> dict:
        val_sampler.rng = np.random.default_rng(cfg.seed + 1)  # the same episodes at every validation
        return evaluate(learner, val_sampler, cfg.val_episodes, cfg.eval_steps, None, device, world=world)

    started = time.perf_counter()
    bar = tqdm(
        range(start_iteration, cfg.iterations),
        desc=f"meta-training {cfg.algorithm}",
        disable=not progress,
        initial=start_iteration,
        total=cfg.iterations,
    )
    running: dict[str, float] = {}
    distortions = torch.Generator().manual_seed(cfg.seed + start_iteration)
    captured = None  # --batching graph: the recorded outer step, replayed for every meta-batch
    done = start_iteration
    try:
        if on_step is not None:  # the starting point, before any outer step
            on_step({"iteration": done, "loss": None, "accuracy": None, "validation": None, "learner": learner})
    except StopTraining:  # stopped before it began: nothing to save
        bar.close()
        bar = []
    for iteration in bar:
        if cfg.cosine:
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base * 0.5 * (1 + math.cos(math.pi * iteration / cfg.iterations))
        batch = sampler.sample_batch(cfg.meta_batch)  # every process draws the whole meta-batch ...
        if cfg.augment:
            batch = [augment_task(t, distortions) for t in batch]
        tasks = [batch[i].to(device, dtype) for i in share]  # ... and computes its share of it
        if batching == "graph":
            captured = captured or CapturedOuterStep(learner, optimizer, tasks)
            metrics = captured(tasks)
        else:
            metrics = learner.outer_step(optimizer, tasks, batching)
        if world.size > 1:  # the whole meta-batch's mean, as one process reports it
            total = distributed.sum_across(world, [metrics["loss"] * len(share), metrics["accuracy"] * len(share)])
            metrics = {"loss": total[0] / cfg.meta_batch, "accuracy": total[1] / cfg.meta_batch}
        if not math.isfinite(metrics["loss"]):  # .item() already synced: free to test on every step
            stop_diverged(iteration + 1, metrics["loss"])
        running = {k: 0.9 * running.get(k, v) + 0.1 * v for k, v in metrics.items()}
        bar.set_postfix(loss=f"{running['loss']:.3f}", acc=f"{100 * running['accuracy']:.1f}%")
        done = iteration + 1
        if done % cfg.val_every == 0 or done == cfg.iterations:
            if not all(bool(torch.isfinite(p).all()) for p in learner.params.values()):  # checked before saving only
                stop_diverged(done, metrics["loss"])
            val = validate()
            seconds = elapsed_before + time.perf_counter() - started
            history.append(
                {
                    "iteration": done,
                    "train_loss": running["loss"],
                    "train_accuracy": 100 * running["accuracy"],
                    "val_accuracy": val["accuracy"],
                    "val_ci95": val["ci95"],
                    "seconds": seconds,
                }
            )
            if progress:  # the lab's Meta-train page draws these instead
                _log(
                    f"iter {done}/{cfg.iterations}  loss {running['loss']:.3f}  acc {100 * running['accuracy']:.1f}%  "
                    f"val {val['way']}w{val['shot']}s {val['accuracy']:.1f}% ± {val['ci95']:.1f}  ({seconds:.0f} s)"
                )
            save(done, seconds)
        if on_step is not None:
            validated = bool(history) and history[-1]["iteration"] == done
            report = {"iteration": done, "loss": metrics["loss"], "accuracy": metrics["accuracy"], "learner": learner}
            try:
                on_step(report | {"validation": history[-1] if validated else None})
            except StopTraining:
                if not validated:
                    save(done, elapsed_before + time.perf_counter() - started)
                break
    seconds = elapsed_before + time.perf_counter() - started
    last = history[-1] if history else {}
    return {
        "checkpoint": str(out),
        "algorithm": cfg.algorithm,
        "iterations": done,  # fewer than asked when on_step stopped the run
        "seconds": round(seconds, 1),
        "device": str(device),
        "batching": batching,
        "val_accuracy": last.get("val_accuracy"),
        "val_ci95": last.get("val_ci95"),
        "history": history,
    }
