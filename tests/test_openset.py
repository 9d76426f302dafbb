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


def support_folder(root, shot: int) -> list:
    """The bundled characters as a 3-class support folder of `shot` images each, and 3 query files."""
    from metacore.examples import sample_characters_task

    queries = []
    for name, parts in sample_characters_task(way=3, shot=shot, query=1, seed=0).items():
        (root / "support" / name).mkdir(parents=True)
        for i, image in enumerate(parts["support"]):
            image.save(root / "support" / name / f"{i}.png")
        queries.append(root / f"{name}.png")
        parts["query"][0].save(queries[-1])
    return queries


@pytest.mark.parametrize("shot", [1, 2])
def test_classify_measures_none_of_these_on_the_task_for_a_model_without_a_card(tmp_path, capsys, shot: int) -> None:
    import shutil

    from metacore.__main__ import main

    model = tmp_path / "no_card.pt"  # the shipped model's weights, without its card (and so without a threshold)
    shutil.copyfile(SHIPPED_MODEL, model)
    queries = support_folder(tmp_path, shot)
    capsys.readouterr()
    args = ["classify", "--checkpoint", str(model), "--support", str(tmp_path / "support"), *map(str, queries)]
    assert main([*args, "--json"]) == 0
    captured = capsys.readouterr()
    rows = json.loads(captured.out)
    if shot == 1:  # no class has a second image to leave out: said, not silently off
        assert "none of these?: off" in captured.err and all("unsure" not in r for r in rows)
    else:
        assert "none of these?: threshold" in captured.err and "measured on the support set" in captured.err
        assert all(isinstance(r["unsure"], bool) for r in rows)
        assert not any(r["unsure"] for r in rows)  # each class's own query image belongs to the task


def test_the_classify_page_says_none_of_these_for_a_model_without_a_card(tmp_path, monkeypatch) -> None:
    import shutil

    from test_app import button, page, png, start

    import lab.models

    model = tmp_path / "no_card.pt"
    shutil.copyfile(SHIPPED_MODEL, model)
    monkeypatch.setattr(lab.models, "MODELS", {"Characters without a card": model})
    at = page(start(), "classify")  # the built-in example: 5-way 1-shot, too small to measure a threshold on
    at.file_uploader[0].set_value([("x.png", png(3), "image/png")]).run()
    assert any("**None of these?** is off for this task" in c.value for c in at.caption)
    at = page(at, "build")
    at.slider(key="ex_way").set_value(3).run()
    at.slider(key="ex_shot").set_value(2).run()
    at.slider(key="ex_query").set_value(2).run()
    button(at, "Omniglot characters (built in)").click().run()
    at = page(at, "classify")
    at.file_uploader[0].set_value([("x.png", png(3), "image/png")]).run()
    assert any("keeps 95% of this task's own support images" in c.value for c in at.caption)
