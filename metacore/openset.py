"""Telling an image that belongs to no class of the task: "none of these" (open-set recognition, simply).

An image's novelty is how far it is from the nearest class of the task, measured against how far the task's
classes are from each other: the cosine distance from its features to the nearest class mean, divided by the
median cosine distance between two class means (features under the adapted parameters). 0.5 means "half as
far from its nearest class as the classes are from one another". Being a ratio within the task, it carries
over from one task, data set and feature scale to the next, so one threshold per model serves every task.
`calibrate` picks it on tasks from classes held out for that: the novelty that `keep` of the in-task query
images stay under. `rates` reports, on tasks from other classes, the in-task images kept and the images of
classes outside the task flagged.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from metacore.algorithms import MAML
from metacore.data import EpisodeSampler, ImageClasses
from metacore.errors import MetacoreError
from metacore.features import embed
from metacore.models import Params


def novelty(learner: MAML, params: Params, support_x: Tensor, support_y: Tensor, images: Tensor, way: int) -> Tensor:
    """Per image: its cosine distance to the nearest class mean over the median distance between class means."""
    support = embed(learner, support_x, params)
    return feature_novelty(support, support_y.cpu(), embed(learner, images, params))


def feature_novelty(support: Tensor, support_y: Tensor, images: Tensor) -> Tensor:
    """`novelty` on features: the classes are those present in `support_y`."""
    normalize = torch.nn.functional.normalize
    support = normalize(support, dim=1)
    classes = support_y.unique()
    means = normalize(torch.stack([support[support_y == k].mean(0) for k in classes]), dim=1)
    nearest = 1 - (normalize(images, dim=1) @ means.T).max(1).values
    between = 1 - means @ means.T
    spacing = between[~torch.eye(len(classes), dtype=torch.bool)].median().clamp_min(1e-6)  # identical classes
    return nearest / spacing


def task_threshold(
    learner: MAML, params: Params, support_x: Tensor, support_y: Tensor, keep: float = 0.95
) -> dict | None:
    """A "none of these" threshold from the task itself, for a model without one on its card: each support image
    scored against the task without it (in-task), each class's images against the task without that class
    (out-of-task); the threshold keeps `keep` of the in-task scores. None when the task is too small for that
    (it needs a class with 2 support images and 3 classes)."""
    features, labels = embed(learner, support_x, params), support_y.cpu()
    classes = labels.unique()
    inside, outside = [], []
    for i in range(len(labels)):
        rest = torch.arange(len(labels)) != i
        if (labels[rest] == labels[i]).any() and len(labels[rest].unique()) >= 2:
            inside.append(feature_novelty(features[rest], labels[rest], features[i : i + 1]))
    if len(classes) >= 3:
        for k in classes:
            out = labels == k
            outside.append(feature_novelty(features[~out], labels[~out], features[out]))
    if not inside or not outside:
        return None
    inside_scores, outside_scores = torch.cat(inside).numpy(), torch.cat(outside).numpy()
    threshold = calibrate(inside_scores, keep)
    return {
        "threshold": threshold,
        **rates(inside_scores, outside_scores, threshold),
        "task": f"measured on this task: each of its {len(inside_scores)} support images left out in turn, and each "
        f"of its {len(classes)} classes",
    }


def episode_scores(
    learner: MAML, dataset: ImageClasses, episodes: int, way: int, shot: int, query: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(in-task scores, out-of-task scores) over `episodes` tasks: each adapts to `way` classes (the model's
    default steps and lr) and scores its own query images and `query` images of each of up to `way` classes
    outside it."""
    outside_classes = min(way, len(dataset) - way)
    if outside_classes < 1:
        raise MetacoreError(f"{dataset.description} has {len(dataset)} classes: too few for {way}-way tasks and others")
    sampler = EpisodeSampler(dataset, way + outside_classes, shot, query, seed)
    inside, outside = [], []
    for _ in range(episodes):
        task = sampler.sample()  # the first `way` classes are the task, the others are not in it
        in_task = task.support_y < way
        with torch.no_grad():
            *_, last = learner.adapt(task.support_x[in_task], task.support_y[in_task], way=way)
        scores = novelty(learner, last.params, task.support_x[in_task], task.support_y[in_task], task.query_x, way)
        inside.append(scores[task.query_y < way])
        outside.append(scores[task.query_y >= way])
    return torch.cat(inside).numpy(), torch.cat(outside).numpy()


def card_entry(card: dict) -> dict | None:
    """A model card's "none of these" entry (written by `python -m metacore unsure --card`), if it holds one."""
    unsure = card.get("unsure") if isinstance(card, dict) else None
    return unsure if isinstance(unsure, dict) and isinstance(unsure.get("threshold"), float) else None


def calibrate(inside: np.ndarray, keep: float = 0.95) -> float:
    """The novelty that a fraction `keep` of in-task images stay under."""
    return float(np.quantile(inside, keep))


def rates(inside: np.ndarray, outside: np.ndarray, threshold: float) -> dict:
    """In percent: in-task images kept (score <= threshold), out-of-task images flagged (score above it)."""
    return {
        "in_task_kept": round(100 * float((inside <= threshold).mean()), 1),
        "out_of_task_flagged": round(100 * float((outside > threshold).mean()), 1),
    }
