"""The shipped checkpoint: intact (sha256 = its card), safe to load, and good on unseen alphabets."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from conftest import OMNIGLOT, needs_omniglot
from metacore.checkpoint import load_checkpoint, sha256
from metacore.data import EpisodeSampler, open_dataset
from metacore.evaluate import evaluate

MODEL = Path(__file__).resolve().parents[1] / "models" / "omniglot_conv4.pt"
CARD = MODEL.with_suffix(".json")


def test_card_sha256_matches_the_file() -> None:
    card = json.loads(CARD.read_text())
    assert card["sha256"] == sha256(MODEL)
    assert card["size_bytes"] == MODEL.stat().st_size < 5_000_000


def test_loads_with_weights_only_and_card_defaults() -> None:
    torch.load(MODEL, weights_only=True)  # raises if anything but tensors and plain values is inside
    learner, _ = load_checkpoint(MODEL)
    card = json.loads(CARD.read_text())
    assert learner.inner_steps == card["default_inner_steps"] and learner.inner_lr == card["default_inner_lr"]


@needs_omniglot
def test_adapts_well_above_chance_on_unseen_alphabets() -> None:
    learner, _ = load_checkpoint(MODEL)
    dataset = open_dataset(OMNIGLOT.parent, "omniglot", "evaluation", learner.backbone.input_spec)
    for way, chance in ((5, 20.0), (20, 5.0)):
        result = evaluate(learner, EpisodeSampler(dataset, way, 1, 5, seed=1), episodes=10)
        assert result["accuracy"] > chance + 50, (way, result)
