"""'None of these': the novelty score, and the shipped cards' thresholds measured again on real data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import OMNIGLOT, needs_omniglot
from metacore import openset
from metacore.checkpoint import load_checkpoint
from metacore.data import open_dataset
from metacore.paths import SHIPPED_MODEL


def test_novelty_is_zero_for_a_support_image_and_grows_for_others() -> None:
    learner, _ = load_checkpoint(SHIPPED_MODEL)
    g = torch.Generator().manual_seed(0)
    support = torch.rand(3, 1, 28, 28, generator=g)
    others = torch.rand(3, 1, 28, 28, generator=g)
    labels = torch.arange(3)
    *_, last = learner.adapt(support, labels, way=3)
    scores = openset.novelty(learner, last.params, support, labels, torch.cat([support, others]), 3)
    assert torch.allclose(scores[:3], torch.zeros(3), atol=1e-4)  # one shot: the class mean is that image
    assert (scores[3:] > 1e-3).all()


def test_calibrate_and_rates_count_what_they_say() -> None:
    inside, outside = np.arange(100.0), np.array([10.0, 94.1, 200.0, 300.0])
    threshold = openset.calibrate(inside, 0.95)
    assert threshold == pytest.approx(94.05)  # 95 of the 100 in-task scores are at or under it
    assert openset.rates(inside, outside, threshold) == {"in_task_kept": 95.0, "out_of_task_flagged": 75.0}


@needs_omniglot
def test_the_character_cards_threshold_holds_on_its_held_out_classes() -> None:
    """The card says: chosen on the first half of Omniglot's evaluation classes, measured on the second half.
    Measured again here on fewer tasks (so with looser bounds than the card's 300-task figures)."""
    card = json.loads(SHIPPED_MODEL.with_suffix(".json").read_text())["unsure"]
    learner, _ = load_checkpoint(SHIPPED_MODEL)
    dataset = open_dataset(OMNIGLOT.parent, "omniglot", "evaluation", learner.backbone.input_spec)
    _, held_out = dataset.split_held_out(0.5)
    inside, outside = openset.episode_scores(learner, held_out, 40, 5, 1, 5, seed=1)
    rates = openset.rates(inside, outside, card["threshold"])
    assert rates["in_task_kept"] >= 90 and rates["out_of_task_flagged"] >= 65, rates
