"""The shipped models: intact (sha256 = their cards), safe to load, at exact chance before adapting (zero head),
and far above it after their default inner steps on classes they never trained on."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from conftest import OMNIGLOT, SHARED_DATA, needs_omniglot
from metacore.bodies import BODIES
from metacore.checkpoint import load_checkpoint, read_checkpoint, sha256
from metacore.data import EpisodeSampler, open_dataset
from metacore.evaluate import step_curve
from metacore.images import InputSpec
from metacore.paths import LSTM_MODEL, PHOTO_MODEL, SHIPPED_MODEL

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path[:0] = [str(SCRIPTS), str(SCRIPTS / "models"), str(SCRIPTS / "bench")]  # kept_results, model_card, results

MODELS = {"characters": SHIPPED_MODEL, "photos": PHOTO_MODEL, "characters_lstm": LSTM_MODEL}
IMAGENET = SHARED_DATA / "imagenet-mini18"


@pytest.mark.parametrize("name", MODELS)
def test_card_sha256_matches_the_file_and_its_defaults(name: str) -> None:
    model = MODELS[name]
    card = json.loads(model.with_suffix(".json").read_text())
    assert card["sha256"] == sha256(model)
    assert card["size_bytes"] == model.stat().st_size < 5_000_000
    torch.load(model, weights_only=True)  # raises if anything but tensors and plain values is inside
    learner, _ = load_checkpoint(model)
    assert learner.inner_steps == card["default_inner_steps"] and learner.inner_lr == card["default_inner_lr"]
    assert learner.head == card["head"] == "zero"


@pytest.mark.parametrize("name", MODELS)
def test_step_0_is_exact_chance(name: str) -> None:
    """A zero head: every class gets the same logit for any input, so the support loss is ln N."""
    learner, _ = load_checkpoint(MODELS[name])
    spec = learner.backbone.input_spec
    shape = (BODIES[spec.body].feature_dim,) if spec.body else (spec.channels, spec.size, spec.size)
    generator = torch.Generator().manual_seed(0)
    for way in (2, 5, 20):
        x = torch.rand(way * 2, *shape, generator=generator)
        y = torch.arange(way).repeat(2)
        step0 = next(iter(learner.adapt(x, y, x, y, steps=0, way=way)))
        assert torch.equal(step0.query_logits, torch.zeros_like(step0.query_logits))
        assert step0.support_loss.item() == pytest.approx(math.log(way), rel=1e-6)


def climbs(name: str, dataset_args: tuple, way: int, shot: int, minimum_rise: float) -> None:
    learner, _ = load_checkpoint(MODELS[name])
    dataset = open_dataset(*dataset_args, spec=learner.backbone.input_spec)
    rows = step_curve(learner, EpisodeSampler(dataset, way, shot, 5, seed=1), episodes=10, steps=learner.inner_steps)
    accuracy = [row["accuracy"] for row in rows]
    assert accuracy[0] == pytest.approx(100 / way)
    assert accuracy[-1] >= accuracy[0] + minimum_rise, accuracy
    assert rows[-1]["support_loss"] < rows[1]["support_loss"] < rows[0]["support_loss"]  # learning step by step


@needs_omniglot
def test_the_character_model_climbs_far_above_chance_on_unseen_alphabets() -> None:
    climbs("characters", (OMNIGLOT.parent, "omniglot", "evaluation"), 5, 1, minimum_rise=65)
    climbs("characters", (OMNIGLOT.parent, "omniglot", "evaluation"), 20, 1, minimum_rise=75)
    climbs("characters_lstm", (OMNIGLOT.parent, "omniglot", "evaluation"), 5, 1, minimum_rise=65)


@pytest.mark.skipif(not IMAGENET.is_dir(), reason=f"imagenet-mini18 not found at {IMAGENET} (no shared data)")
def test_the_photo_model_climbs_far_above_chance_on_held_out_imagenet_classes() -> None:
    climbs("photos", (SHARED_DATA, "imagenet-mini18", "train"), 5, 5, minimum_rise=60)  # as in its card


@pytest.mark.parametrize("name", MODELS)
def test_each_checkpoint_records_its_training_data_and_its_card_says_so(name: str) -> None:
    """The data line of a card is derived from the data records in the checkpoint (one per training stage), and
    those records are true: the class list they name is the one the recorded settings give (needs the data)."""
    payload = torch.load(MODELS[name], weights_only=True)
    card = json.loads(MODELS[name].with_suffix(".json").read_text())
    stages = payload["training"]["data_stages"]
    if payload["training"].get("meta_trained") is False:  # `metacore init`: the photo model (issue 41)
        assert (
            stages == []
            and card["meta_trained"] is False
            and "not meta-trained" in MODELS[name].with_suffix(".md").read_text()
        )
        return
    recorded = [stage for stage in stages if stage.get("recorded") is not False]
    assert recorded and not any(stage["evaluation_split"] for stage in recorded)
    for stage in recorded:
        assert stage["training_class_list_sha256"][:12] in card["data"]
    if name.startswith("characters"):
        assert "No recorded stage used test data (images_evaluation, or any model card's)" in card["data"]
    last, config = recorded[-1], payload["config"]
    dataset_args = (SHARED_DATA, last["dataset"], config["split"])
    if not (SHARED_DATA / ("omniglot-py" if last["dataset"] == "omniglot" else last["dataset"])).is_dir():
        pytest.skip(f"{last['dataset']} not found under {SHARED_DATA} (no shared data): the records stay unchecked")
    spec = InputSpec(**payload["backbone"]["input_spec"])
    data = open_dataset(*dataset_args, spec=spec, rotations=last["rotations"], images=last["images"])
    training = data if config.get("val_images") else data.split_held_out(config["val_fraction"])[0]
    assert training.class_list_sha256() == last["training_class_list_sha256"]


@pytest.mark.parametrize("model", [SHIPPED_MODEL, PHOTO_MODEL], ids=["characters", "photos"])
def test_results_page_carries_each_cards_inner_loop_curves(model) -> None:
    """docs/results.md copies the card's curves (hours of CPU) instead of measuring them again: every setting's
    accuracy at the default steps, as the card has it, and the random-init rows when the card has them."""
    from results import card_curves, read_card

    card = read_card(model)
    text = "\n".join(card_curves(model, card))
    steps = card["default_inner_steps"]
    for label, curve in card["curves"].items():
        row = next(line for line in text.splitlines() if line.startswith(f"| {label} |") and "±" in line)
        at_k = next(r for r in curve if r["step"] == steps)
        assert f"{at_k['accuracy']:.1f} ± {at_k['ci95']:.1f}" in row
    assert ("(random init, lr" in text) == bool(card.get("random_init"))


def test_results_cards_only_refreshes_the_shipped_rows_and_keeps_the_baselines(tmp_path: Path, monkeypatch) -> None:
    """`results.py --cards-only` (after a new card): the shipped models' rows and curves from their cards, every
    baseline row as the page had it, and no evaluation run."""
    import results

    page = tmp_path / "results.md"
    settings = [s[0] for s in results.SUITES["omniglot"]["settings"] if s[2] == 5]
    photo = [s[0] for s in results.SUITES["photo"]["settings"]]
    page.write_text("\n".join([
        "# Results", "", "## Photos (EfficientNet-Lite2 body, frozen)", "",
        "| model | " + " | ".join(photo) + " | inner steps |", "|---|" + "---|" * (len(photo) + 1),
        "| **shipped** (old) | " + " | ".join(["1.0 ± 0.1"] * len(photo)) + " | 5 |",
        "| ProtoNet baseline | " + " | ".join(["11.1 ± 0.1"] * len(photo)) + " | 0 |", "",
        "## Omniglot characters (Conv-4, 28x28)", "",
        "| model | " + " | ".join(settings) + " | inner steps |", "|---|" + "---|" * (len(settings) + 1),
        "| **shipped** (old) | " + " | ".join(["2.0 ± 0.2"] * len(settings)) + " | 5 |",
        "| maml, 300 iterations | " + " | ".join(["22.2 ± 0.2"] * len(settings)) + " | 2 |", "",
    ]))  # fmt: skip
    monkeypatch.setattr(results, "cli", lambda *args: pytest.fail(f"--cards-only ran {args[0]}"))
    monkeypatch.setattr(sys, "argv", ["results.py", "--cards-only", "--out", str(page)])
    results.main()
    text = page.read_text()
    assert "| ProtoNet baseline | " + " | ".join(["11.1 ± 0.1"] * len(photo)) + " | 0 |" in text
    assert "| maml, 300 iterations | " + " | ".join(["22.2 ± 0.2"] * len(settings)) + " | 2 |" in text
    assert "(old)" not in text
    for model in (SHIPPED_MODEL, PHOTO_MODEL):
        card = results.read_card(model)
        suite = "omniglot" if model == SHIPPED_MODEL else "photo"
        labels = settings if model == SHIPPED_MODEL else photo
        name, cells, _ = results.shipped_row(model, [(label,) for label in labels], card)
        assert f"| {name} | " + " | ".join(cells) in text, suite
        assert "\n".join(results.card_curves(model, card)) in text


def test_a_new_card_for_the_same_file_keeps_the_none_of_these_threshold(tmp_path: Path) -> None:
    """model_card.py rewrites a card from scratch; the threshold `unsure --card` measured on the same file (which
    classify reads) must survive that, and must not pass to a card for another file."""
    from model_card import unsure_section, with_other_measurements

    shipped = json.loads(SHIPPED_MODEL.with_suffix(".json").read_text())
    earlier = tmp_path / "card.json"
    earlier.write_text(json.dumps(shipped))
    fresh = {k: v for k, v in shipped.items() if k != "unsure"}
    assert with_other_measurements(fresh, earlier)["unsure"] == shipped["unsure"]
    assert "unsure" not in with_other_measurements(fresh | {"sha256": "0" * 64}, earlier)
    assert f"threshold {shipped['unsure']['threshold']:g}" in unsure_section(shipped)
    assert unsure_section(shipped).split("threshold ")[1].split(",")[0] in SHIPPED_MODEL.with_suffix(".md").read_text()


def test_a_kept_evaluation_is_reused_only_for_the_same_file_and_arguments(tmp_path: Path) -> None:
    """The scripts keep each `evaluate` result (hours of CPU for a card): the same file and arguments reuse it
    wherever the data root lies and whatever file a cut curve keeps its episodes in; a changed file or other
    arguments measure again."""
    from kept_results import cached

    model = tmp_path / "model.pt"
    model.write_bytes(b"weights, version 1")
    runs: list[int] = []

    def run() -> str:
        runs.append(1)
        return json.dumps({"accuracy": float(len(runs))})

    args = ["--checkpoint", str(model), "--data-root", "../shared/data", "--way", "5"]
    assert cached(args, run, tmp_path)["accuracy"] == 1.0
    assert cached(args, run, tmp_path)["accuracy"] == 1.0 and len(runs) == 1
    assert cached([*args[:5], "20"], run, tmp_path)["accuracy"] == 2.0
    elsewhere = [*args[:3], "data", *args[4:]]  # the same data sets where another machine keeps them
    assert cached(elsewhere, run, tmp_path)["accuracy"] == 1.0 and len(runs) == 2
    assert cached([*args, "--partial", "cut.partial.pt"], run, tmp_path)["accuracy"] == 1.0 and len(runs) == 2
    model.write_bytes(b"weights, version 2")
    assert cached(args, run, tmp_path)["accuracy"] == 3.0


def test_a_cards_evaluations_are_keyed_by_the_models_path_inside_the_repository(monkeypatch) -> None:
    """A card's evaluations measured in another checkout (a GPU machine's copy of the repository) are reused here:
    the kept result's key names the model by its path inside the repository, not where the checkout lies."""
    import model_card
    from kept_results import kept_result

    keys: list[list[str]] = []
    monkeypatch.setattr(model_card, "cached", lambda args, run: keys.append(args) or {"accuracy": 0.0})
    model_card.evaluate(SHIPPED_MODEL.resolve(), "../shared/data", ["--split", "evaluation"], 5, 1, 600, "0:5")
    assert keys[0][:2] == ["--checkpoint", SHIPPED_MODEL.relative_to(SHIPPED_MODEL.parents[1]).as_posix()]
    partial = Path(keys[0][keys[0].index("--partial") + 1])  # a cut curve's episodes: beside its kept result
    assert partial == kept_result(keys[0]).with_suffix(".partial.pt")


def test_the_random_init_contrast_can_be_measured_alone_before_the_model_is_trained(
    tmp_path: Path, monkeypatch
) -> None:
    """`--contrast-only` measures the random-init runs a card will reuse (the lr grid, then every setting) and
    writes no card and no model: the contrast depends only on the architecture and the defaults."""
    import model_card

    measured: list[list[str]] = []
    result = {"accuracy": 50.0, "ci95": 1.0, "curve": []}
    monkeypatch.setattr(model_card, "cached", lambda args, run: measured.append(args) or result)
    out = tmp_path / "models" / "new_model.pt"
    argv = [str(SHIPPED_MODEL), "--out", str(out), "--steps", "5", "--inner-lr", "0.001", "--contrast-only"]
    monkeypatch.setattr(sys, "argv", ["model_card.py", *argv])
    model_card.main()
    checkpoints = {args[args.index("--checkpoint") + 1] for args in measured}
    assert len(checkpoints) == 1 and Path(checkpoints.pop()).name.startswith("random_init_")
    suite = model_card.SUITES["omniglot"]
    assert len(measured) == len(suite["lr_grid"]) + len(suite["settings"])
    assert not out.exists() and not list(tmp_path.rglob("*.pt"))  # no card's model, and the random init is gone


def test_the_random_init_contrast_is_the_same_file_for_every_model_of_one_architecture(tmp_path: Path) -> None:
    """The card's random-init contrast (hours of CPU) is kept by file: two models that differ only in training
    give the same random-init bytes, and other learner defaults give another file."""
    import io

    from model_card import random_init_payload

    def saved(payload: dict) -> bytes:
        buffer = io.BytesIO()
        torch.save(random_init_payload(payload), buffer)
        return buffer.getvalue()

    shipped = read_checkpoint(SHIPPED_MODEL)
    retrained = shipped | {"training": {"iteration": 1}, "config": {**shipped["config"], "meta_lr": 1.0}}
    assert saved(shipped) == saved(retrained)
    assert saved(shipped) != saved(shipped | {"learner": {**shipped["learner"], "inner_lr": 0.5}})
    assert "training" not in random_init_payload(shipped)
    # learned rates and a way-scaled head come from meta-training: a random init takes plain steps at one lr
    metasgd = {**shipped, "learner": {**shipped["learner"], "algorithm": "metasgd", "way_scaled_head": True}}
    assert saved(metasgd) == saved(shipped)
    torch.save(random_init_payload(metasgd), tmp_path / "metasgd_random_init.pt")
    learner, _ = load_checkpoint(tmp_path / "metasgd_random_init.pt")
    assert learner.name == "maml" and not learner.way_scaled_head and not learner.learns_rates
