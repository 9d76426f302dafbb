"""The standard few-shot protocol: mean query accuracy and its 95% confidence interval over episodes."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Collection
from pathlib import Path

import torch
from tqdm import tqdm

from metacore.algorithms import MAML
from metacore.data import EpisodeSampler, Task
from metacore.device import one_task_per_thread
from metacore.distributed import World, gather_in_order
from metacore.errors import MetacoreError


def mean_ci95(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the normal-approximation 95% confidence interval."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, 1.96 * std / math.sqrt(n)


def evaluate(
    learner: MAML,
    sampler: EpisodeSampler,
    episodes: int = 600,
    steps: int | None = None,
    lr: float | None = None,
    device: torch.device | str = "cpu",
    every_step: bool = False,
    progress: bool = False,
    world: World | None = None,
) -> dict:
    """Adapt on each episode's support set and score its query set. Accuracies are in percent.

    With `every_step`, also report accuracy after each inner step 0..steps. Under torchrun (`world`), every
    process draws every episode and scores every world.size-th; the scores are gathered in episode order, so the
    mean and CI are those of one process."""
    world = world or World()
    steps = learner.inner_steps if steps is None else steps
    scores: list[tuple[int, tuple[float, list[float]]]] = []
    dtype = next(iter(learner.params.values())).dtype
    on_cpu = torch.device(device).type == "cpu"
    pending: list[tuple[int, Task]] = []  # on CPU, one episode per core at a time (one_task_per_thread)

    def score(item: tuple[int, Task]) -> tuple[int, tuple[float, list[float]]]:
        episode, task = item
        task = task.to(device, dtype)
        with torch.no_grad():  # no outer graph: the inner loop's own gradients still flow
            snapshots = list(
                learner.adapt(
                    task.support_x,
                    task.support_y,
                    task.query_x,
                    task.query_y,
                    steps=steps,
                    lr=lr,
                    way=task.way,
                    query_steps=None if every_step else (),
                )
            )
        check_finite(snapshots[-1].query_logits, f"episode {episode + 1}", lr)
        curve = [100.0 * s.query_acc.item() for s in snapshots] if every_step else []
        return episode, (100.0 * snapshots[-1].query_acc.item(), curve)

    for episode in tqdm(range(episodes), desc="evaluating", disable=not progress or not world.main, leave=False):
        task = sampler.sample()  # drawn by every process, so that the episodes are the same as in one process
        if episode % world.size == world.rank:
            pending.append((episode, task))
        if len(pending) >= (torch.get_num_threads() if on_cpu else 1) or episode == episodes - 1:
            scores += one_task_per_thread(score, pending) if on_cpu else [score(item) for item in pending]
            pending = []
    gathered = gather_in_order(world, scores)
    final = [accuracy for accuracy, _ in gathered]
    per_step = [curve for _, curve in gathered]
    accuracy, ci95 = mean_ci95(final)
    result = summary(learner, sampler, accuracy, ci95, episodes, steps if learner.name != "protonet" else 0, lr)
    if every_step:
        result["per_step"] = [
            {"step": i, "accuracy": m, "ci95": c}
            for i, (m, c) in enumerate(mean_ci95([run[i] for run in per_step]) for i in range(len(per_step[0])))
        ]
    return result


def check_finite(values: torch.Tensor, where: str, lr: float | None) -> None:
    """Refuse to score an episode whose adapted logits (or support loss) are not finite numbers: an accuracy read
    off NaN logits is argmax's first class, a silent chance-level figure."""
    if not bool(torch.isfinite(values).all()):
        rate = f"at lr {lr:g}" if lr is not None else "at the model's own rates"
        raise MetacoreError(
            f"{where}: the adapted model's outputs are not finite numbers (NaN or inf): its inner steps diverge "
            f"{rate}, or its weights overflow; no accuracy is reported (try a smaller --inner-lr)"
        )


def evaluate_with_curve(
    learner: MAML,
    sampler: EpisodeSampler,
    episodes: int,
    steps: int | None,
    lr: float | None,
    curve: Collection[int],
    device: torch.device | str = "cpu",
    progress: bool = False,
    partial: Path | None = None,
) -> dict:
    """`evaluate`'s result plus the step curve at the inner steps `curve`, both from one adaptation of each episode
    to the curve's last step: the accuracy at `steps` is the curve's row for that step. `partial`: see `step_curve`."""
    steps = learner.inner_steps if steps is None else steps
    rows = step_curve(learner, sampler, episodes, {*curve, steps}, lr, device, progress=progress, partial=partial)
    at_steps = next(row for row in rows if row["step"] == steps)
    result = summary(learner, sampler, at_steps["accuracy"], at_steps["ci95"], episodes, steps, lr)
    return result | {"curve": [row for row in rows if row["step"] in curve]}


def summary(
    learner: MAML, sampler: EpisodeSampler, accuracy: float, ci95: float, episodes: int, steps: int, lr: float | None
) -> dict:
    """The result of an evaluation: its accuracy and what it was measured on."""
    return {
        "accuracy": accuracy,
        "ci95": ci95,
        "episodes": episodes,
        "way": sampler.way[0] if sampler.way[0] == sampler.way[1] else list(sampler.way),
        "shot": sampler.shot[0] if sampler.shot[0] == sampler.shot[1] else list(sampler.shot),
        "query": sampler.query,
        "steps": steps,
        "inner_lr": learner.lr_in_force(lr),  # a Meta-SGD model's own rates are described, not a scalar
    } | ({"way_scaled_head": True} if learner.way_scaled_head else {})


def vmap_in_pieces(one_task: Callable, batch: list[torch.Tensor], fits: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """`vmap(one_task)` over the stacked episodes `batch`, at most `fits` episodes per call. When a call runs out of
    GPU memory, `fits` is halved and that call is redone in halves: the same episodes and results, in more calls.
    Returns both outputs and the `fits` that worked, for the next batch."""
    pieces: list[tuple[torch.Tensor, torch.Tensor]] = []
    start, total = 0, batch[0].shape[0]
    while start < total:
        size = min(fits, total - start)
        try:
            pieces.append(torch.func.vmap(one_task)(*(tensor[start : start + size] for tensor in batch)))
        except torch.cuda.OutOfMemoryError:
            if size == 1:
                raise
            torch.cuda.empty_cache()
            fits = size // 2
            continue
        start += size
    return torch.cat([p[0] for p in pieces]), torch.cat([p[1] for p in pieces]), fits


def step_curve(
    learner: MAML,
    sampler: EpisodeSampler,
    episodes: int = 600,
    steps: int | Collection[int] = 50,
    lr: float | None = None,
    device: torch.device | str = "cpu",
    chunk: int | None = None,
    progress: bool = False,
    partial: Path | None = None,
    save_every: int = 20,
) -> list[dict]:
    """Query accuracy (percent) and support loss after the inner steps `steps` (a number N: every step 0..N), mean
    and 95% CI, one row per step.

    Scoring the query set is most of an inner step's cost when the support set is small (20-way 1-shot: 300 query
    images, 20 support images), so a sparse curve such as steps 0..10 and every 5th to 50 costs a fraction of a
    dense one. The episodes are the ones `evaluate` draws from a sampler with the same seed (one `sample()` each, in
    order); `chunk` of them at a time (default 100) are adapted in one `torch.func.vmap` call. On CPU, unless a `chunk`
    is given, they are adapted one per core at a time, in threads, not in vmap: batching the convolutions' weights
    across tasks made a 20-way 5-shot curve 2.9x slower there.

    With `partial`, the scores of the episodes done so far are kept in that file (every `save_every` episodes), and
    a curve cut short (an hour of CPU for a card's 20-way 5-shot curve) goes on from them: the episodes already
    scored are drawn again, not adapted, so the rest are the same episodes. The file is removed when the curve is done.
    """
    wanted = list(range(steps + 1)) if isinstance(steps, int) else sorted(set(steps))
    threaded = chunk is None and torch.device(device).type == "cpu"
    chunk = chunk or (torch.get_num_threads() if threaded else 100)
    fits = chunk  # episodes per vmap call; lowered when the GPU runs out of memory (a small or shared one)
    dtype = next(iter(learner.params.values())).dtype
    fingerprint = curve_fingerprint(learner, sampler, wanted, episodes, lr) if partial is not None else ""
    accuracies, losses = kept_scores(partial, fingerprint)
    done = sum(len(a) for a in accuracies)
    for _ in range(done):
        sampler.sample()  # the episodes already scored: drawn again so that the next ones are the same
    bar = tqdm(total=episodes, initial=done, desc="step curve", disable=not progress, leave=False)
    last_saved = done
    for start in range(done, episodes, chunk):
        size = min(chunk, episodes - start)
        tasks = [sampler.sample().to(device, dtype) for _ in range(size)]

        def one_task(sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor, way: int = tasks[0].way):
            snaps = list(learner.adapt(sx, sy, qx, qy, steps=wanted[-1], lr=lr, way=way, query_steps=wanted))
            at = [snaps[min(step, len(snaps) - 1)] for step in wanted]  # ProtoNet: one snapshot, the same at every step
            return torch.stack([s.query_acc for s in at]), torch.stack([s.support_loss for s in at])

        def without_graph(task: Task) -> tuple[torch.Tensor, torch.Tensor]:
            with torch.no_grad():  # grad mode is per thread: set in the thread that runs it
                return one_task(task.support_x, task.support_y, task.query_x, task.query_y, task.way)

        if threaded or size == 1:
            scored = one_task_per_thread(without_graph, tasks)
            acc, loss = (torch.stack(values) for values in zip(*scored))
        else:
            names = ("support_x", "support_y", "query_x", "query_y")
            batch = [torch.stack([getattr(t, name) for t in tasks]) for name in names]
            with torch.no_grad():  # no outer graph: the inner loop's own gradients still flow
                acc, loss, fits = vmap_in_pieces(one_task, batch, fits)
        check_finite(loss, f"episodes {start + 1}-{start + size}", lr)
        accuracies.append(100.0 * acc.double().cpu())
        losses.append(loss.double().cpu())
        bar.update(size)
        if partial is not None and start + size - last_saved >= save_every:
            keep_scores(partial, fingerprint, accuracies, losses)
            last_saved = start + size
    bar.close()
    if partial is not None:
        partial.unlink(missing_ok=True)
    acc, loss = torch.cat(accuracies), torch.cat(losses)
    rows = []
    for i, step in enumerate(wanted):
        mean, ci95 = mean_ci95(acc[:, i].tolist())
        loss_mean, loss_ci95 = mean_ci95(loss[:, i].tolist())
        rows.append(
            {"step": step, "accuracy": mean, "ci95": ci95, "support_loss": loss_mean, "support_loss_ci95": loss_ci95}
        )
    return rows


def curve_fingerprint(
    learner: MAML, sampler: EpisodeSampler, wanted: list[int], episodes: int, lr: float | None
) -> str:
    """What a kept partial curve must match to be gone on with: the model's weights and inner loop, the episodes
    (the sampler's classes, wherever the data root lies, and its random state before the first draw) and the steps
    scored."""
    digest = hashlib.sha256()
    for name, tensor in sorted(learner.params.items()):
        digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    setting = [learner.name, learner.head, learner.inner_lr, learner.inner_steps, learner.way_scaled_head, lr,
               sampler.dataset.class_list_sha256(), sampler.way, sampler.shot, sampler.query,
               sampler.rng.bit_generator.state, wanted, episodes]  # fmt: skip
    digest.update(json.dumps(setting, default=str).encode())
    return digest.hexdigest()


def kept_scores(partial: Path | None, fingerprint: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The per-episode scores a cut `step_curve` kept in `partial`, if it is there and is of the same curve."""
    if partial is None or not partial.is_file():
        return [], []
    kept = torch.load(partial, weights_only=True)
    if kept.get("fingerprint") != fingerprint:
        return [], []  # another model's or curve's file: start over (it is replaced at the first save)
    return [kept["accuracy"]], [kept["support_loss"]]


def keep_scores(partial: Path, fingerprint: str, accuracies: list[torch.Tensor], losses: list[torch.Tensor]) -> None:
    """Write the scores so far to `partial` atomically: a process killed while writing leaves the last file whole."""
    partial.parent.mkdir(parents=True, exist_ok=True)
    scores = {"accuracy": torch.cat(accuracies), "support_loss": torch.cat(losses)}
    writing = partial.with_name(partial.name + ".writing")
    torch.save({"fingerprint": fingerprint, **scores}, writing)
    writing.replace(partial)
