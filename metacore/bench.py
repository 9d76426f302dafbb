"""Throughput benchmark: second-order MAML meta-training steps, metacore vs `higher` vs a naive loop.

Like for like: all three train the same Conv-4 and start every task from an all-zero 5-way linear head, take the
same inner steps at the same lr on the same synthetic 5-way 1-shot 15-query tasks, with the exact second-order
meta-gradient. With one inner step from a zero head only the head moves in the inner loop (the meta-gradient is
ANIL's), so the comparison takes 2 steps by default; metacore's 1-step figure is kept as its own, labelled row.
`photo_latency` times what the app does with the photo model: body features of 25 phone photos, one inner step.
"""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from metacore.algorithms import MAML
from metacore.bodies import encode
from metacore.capture import CapturedOuterStep
from metacore.data import Task
from metacore.device import resolve_device
from metacore.errors import MetacoreError
from metacore.images import PHOTO_SPEC, load_pixels
from metacore.models import BACKBONES, Backbone, Conv4
from metacore.paths import PHOTO_MODEL

WAY, SHOT, QUERY, INNER_LR = 5, 1, 15, 0.4


def synthetic_tasks(count: int, way: int, shot: int, query: int, device: torch.device, seed: int = 0) -> list[Task]:
    g = torch.Generator().manual_seed(seed)
    tasks = []
    for _ in range(count):
        labels = torch.arange(way)
        tasks.append(
            Task(
                torch.rand(way * shot, 1, 28, 28, generator=g).to(device),
                labels.repeat_interleave(shot).to(device),
                torch.rand(way * query, 1, 28, 28, generator=g).to(device),
                labels.repeat_interleave(query).to(device),
                [str(i) for i in range(way)],
            )
        )
    return tasks


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_per_call(fn: Callable[[], None], repeats: int, device: torch.device) -> float:
    fn()  # warm-up (allocator, kernels, vmap tracing caches)
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / repeats


def baseline_model(device: torch.device) -> nn.Sequential:
    """The baselines' network: metacore's Conv-4 (its defaults) and a 5-way linear head, zeroed at each task."""
    return nn.Sequential(Conv4(**BACKBONES["conv4"].defaults), nn.Linear(64, WAY)).to(device)


def zero_head(model: nn.Sequential) -> None:
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.zero_()


def naive_step(model: nn.Module, optimizer: torch.optim.Optimizer, tasks: list[Task], steps: int) -> None:
    """The textbook loop: per task, autograd.grad(create_graph=True) on a parameter dict, from a zero head."""
    optimizer.zero_grad()
    params = dict(model.named_parameters())
    total = 0.0
    for task in tasks:
        fast = {**params, **{k: torch.zeros_like(v, requires_grad=True) for k, v in params.items() if k[:2] == "1."}}
        for _ in range(steps):
            loss = F.cross_entropy(functional_call(model, fast, (task.support_x,)), task.support_y)
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
            fast = {k: v - INNER_LR * g for (k, v), g in zip(fast.items(), grads)}
        total = total + F.cross_entropy(functional_call(model, fast, (task.query_x,)), task.query_y)
    (total / len(tasks)).backward()
    optimizer.step()


def higher_step(model: nn.Module, optimizer: torch.optim.Optimizer, tasks: list[Task], steps: int) -> None:
    """The same meta-step written with `higher` (the widely used reference implementation), from a zero head."""
    import higher

    inner_opt = torch.optim.SGD(model.parameters(), lr=INNER_LR)
    optimizer.zero_grad()
    for task in tasks:
        zero_head(model)  # its meta-gradient (64 x 5 numbers) is computed and discarded: a negligible extra
        with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False) as (fmodel, diffopt):
            for _ in range(steps):
                diffopt.step(F.cross_entropy(fmodel(task.support_x), task.support_y))
            (F.cross_entropy(fmodel(task.query_x), task.query_y) / len(tasks)).backward()
    optimizer.step()


def run_bench(
    device_name: str = "auto",
    meta_batch: int = 32,
    steps: int = 2,
    repeats: int = 5,
    progress: bool = True,
    photo: bool = True,
) -> dict:
    device = resolve_device(device_name)
    torch.manual_seed(0)
    tasks = synthetic_tasks(meta_batch, WAY, SHOT, QUERY, device)

    def say(msg: str) -> None:
        if progress:
            print(msg, file=sys.stderr, flush=True)

    learner = MAML(Backbone("conv4").to(device), INNER_LR, steps, "zero")
    learner.params = {k: v.clone().requires_grad_(True) for k, v in learner.params.items()}
    opt = torch.optim.Adam(learner.params.values(), 1e-3)
    results: dict[str, dict] = {}
    modes = ("loop", "vmap", "threads") if device.type == "cpu" else ("loop", "vmap", "graph")
    for mode in modes:
        say(f"timing metacore ({mode}) ...")
        if mode == "graph":  # the vmap step recorded once as a CUDA graph (metacore.capture)
            graph_opt = torch.optim.Adam(learner.params.values(), 1e-3, capturable=True)
            try:
                recorded = CapturedOuterStep(learner, graph_opt, tasks)
            except RuntimeError as error:  # a torch build that cannot record this step: report, go on
                results["metacore_graph"] = {"error": str(error).splitlines()[0]}
                continue
            seconds = time_per_call(lambda r=recorded: r(tasks), repeats, device)
        else:
            seconds = time_per_call(lambda m=mode: learner.outer_step(opt, tasks, m), repeats, device)
        results[f"metacore_{mode}"] = {"seconds_per_step": seconds, "tasks_per_s": meta_batch / seconds}
    timed = [m for m in modes if "tasks_per_s" in results[f"metacore_{m}"]]
    best = max(timed, key=lambda m: results[f"metacore_{m}"]["tasks_per_s"])
    results["metacore"] = dict(results[f"metacore_{best}"], mode=best)

    if steps != 1:  # labelled apart: one step from a zero head computes ANIL's meta-gradient, a cheaper thing
        say("timing metacore, 1 inner step ...")
        one_step_learner = MAML(learner.backbone, INNER_LR, 1, "zero")
        one_step_learner.params = learner.params
        mode = "vmap" if best == "graph" else best
        seconds = time_per_call(lambda: one_step_learner.outer_step(opt, tasks, mode), repeats, device)
        results["metacore_1_step_zero_head"] = {
            "seconds_per_step": seconds, "tasks_per_s": meta_batch / seconds, "mode": mode,
            "note": "1 inner step from a zero head moves only the head: ANIL's meta-gradient; not in the ratios",
        }  # fmt: skip

    model = baseline_model(device)
    opt_model = torch.optim.Adam(model.parameters(), 1e-3)
    say("timing naive per-task loop ...")
    seconds = time_per_call(lambda: naive_step(model, opt_model, tasks, steps), repeats, device)
    results["naive_loop"] = {"seconds_per_step": seconds, "tasks_per_s": meta_batch / seconds}
    try:
        import higher  # noqa: F401

        say("timing higher ...")
        seconds = time_per_call(lambda: higher_step(model, opt_model, tasks, steps), repeats, device)
        results["higher"] = {"seconds_per_step": seconds, "tasks_per_s": meta_batch / seconds}
    except ImportError:
        results["higher"] = None

    # Latency of one inner step on a 5-way 5-shot task (what the app does per click).
    task = synthetic_tasks(1, 5, 5, 0, device, seed=1)[0]
    inference = MAML(Backbone("conv4").to(device), INNER_LR, 1, "zero")

    def one_step() -> None:
        with torch.no_grad():
            for _ in inference.adapt(task.support_x, task.support_y, steps=1, way=5):
                pass

    step_s = time_per_call(one_step, max(repeats * 4, 20), device)

    ours = results["metacore"]["tasks_per_s"]
    ratios = {"vs_naive_loop": ours / results["naive_loop"]["tasks_per_s"]}
    if results["higher"]:
        ratios["vs_higher"] = ours / results["higher"]["tasks_per_s"]
    return {
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "task": f"{WAY}-way {SHOT}-shot {QUERY}-query",
        "meta_batch": meta_batch,
        "inner_steps": steps,
        "second_order": True,
        "compared": f"every side: the same Conv-4, a zero 5-way head at each task's start, {steps} inner "
        f"step{'s' if steps != 1 else ''} at lr {INNER_LR}, the exact second-order meta-gradient",
        "meta_training": results,
        "ratios": ratios,
        "inner_step_ms": 1000 * step_s,
        "photo": photo_or_reason() if photo else None,
    }


def photo_or_reason() -> dict:
    try:
        return photo_latency()
    except (ImportError, MetacoreError) as error:  # e.g. a GPU machine without the photo body's package
        return {"skipped": str(error)}


def phone_photo(width: int = 4032, height: int = 3024, seed: int = 0) -> bytes:
    """A 12-megapixel JPEG like a phone's: smooth gradients, a few shapes and sensor-like noise."""
    from PIL import Image, ImageDraw

    g = torch.Generator().manual_seed(seed)
    small = (torch.rand(3, height // 16, width // 16, generator=g) * 255).byte()
    image = Image.fromarray(small.permute(1, 2, 0).numpy()).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for i in range(6):
        x, y = (
            int(torch.randint(0, width - 800, (1,), generator=g)),
            int(torch.randint(0, height - 800, (1,), generator=g)),
        )
        draw.ellipse((x, y, x + 800, y + 600), fill=(40 * i, 200 - 30 * i, 120))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def photo_latency(repeats: int = 3) -> dict:
    """Seconds to turn 25 phone photos into body features, and ms per inner step on a 5-way 5-shot photo task."""
    from metacore.checkpoint import load_checkpoint

    photos = [phone_photo(seed=i % 5) for i in range(25)]
    encode(torch.zeros(1, 3, PHOTO_SPEC.size, PHOTO_SPEC.size), PHOTO_SPEC.body)  # load the body once

    def extract() -> None:
        encode(load_pixels(photos, PHOTO_SPEC), PHOTO_SPEC.body)

    extract_s = min(time_per_call(extract, 1, torch.device("cpu")) for _ in range(repeats))
    if PHOTO_MODEL.is_file():
        learner, _ = load_checkpoint(PHOTO_MODEL)
    else:
        learner = MAML(Backbone("feature_adapter"), 2.0, 1, "proto")
    features = torch.randn(25, learner.backbone.feature_dim).relu()  # the body's features: the adapter's input
    labels = torch.arange(5).repeat_interleave(5)

    def step() -> None:
        with torch.no_grad():
            for _ in learner.adapt(features, labels, steps=1, way=5):
                pass

    step_s = time_per_call(step, 50, torch.device("cpu"))
    return {"extract_25_photos_s": extract_s, "photo_size": "4032x3024 JPEG", "inner_step_ms": 1000 * step_s}
