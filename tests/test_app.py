"""The Streamlit lab driven page by page with streamlit.testing (no browser)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from conftest import OMNIGLOT, SHARED_DATA, jpeg, photo
from metacore.algorithms import MAML
from metacore.paths import SHIPPED_MODEL

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def png(seed: int, size: int = 40) -> bytes:
    """A random 'character': a few dark strokes on white."""
    rng = np.random.default_rng(seed)
    arr = np.full((size, size), 255, np.uint8)
    for _ in range(3):
        r, c = rng.integers(4, size - 4, 2)
        if rng.random() < 0.5:
            arr[r : r + 2, 4 : size - 4] = 0
        else:
            arr[4 : size - 4, c : c + 2] = 0
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, "PNG")
    return buffer.getvalue()


def start() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def page(at: AppTest, name: str) -> AppTest:
    at.switch_page(f"pages/{name}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def lr_box(at: AppTest):
    return next(n for n in at.number_input if n.label == "Inner learning rate")


def one_rate_for_every_weight(at: AppTest) -> AppTest:
    """On the Adapt page of a model with learned rates (Meta-SGD), switch them off so that the lr box is in force."""
    own_rates = [t for t in at.toggle if t.key == "own_rates"]
    if own_rates and own_rates[0].value:
        own_rates[0].set_value(False).run()
    return at


def button(at: AppTest, label: str):
    matches = [b for b in at.button if b.label.startswith(label)]
    assert matches, f"no button '{label}' among {[b.label for b in at.button]}"
    return matches[0]


def test_home_opens_with_the_shipped_model_and_an_example_ready() -> None:
    at = start()
    assert at.title[0].value.startswith("🧪")
    assert any("5 classes" in m.value for m in at.markdown)
    assert any("Device" in c.value for c in at.sidebar.caption)


def test_a_bookmarked_page_opens_framed_by_the_app_with_the_example_ready() -> None:
    """A new session whose first page is /adapt (a bookmark, a restarted server): Streamlit would run the pages/
    folder as a legacy multipage app (file names for a menu, no app.py) for it and every later visit; the lab leaves
    that mode, and the page has Home's example task instead of two empty classes."""
    from streamlit.runtime.pages_manager import PagesManager

    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page(str(Path(APP).parent / "pages" / "adapt.py")).run()
    assert not at.exception, [e.value for e in at.exception]
    assert PagesManager.uses_pages_directory is False  # True here without the lab's switch
    assert [t.value for t in at.title] == ["📉 Adapt step by step"] and not at.warning
    assert len(at.session_state["classes"]) == 5 and at.session_state["example"].startswith("Omniglot")
    button(at, "Step").click().run()
    assert len(at.session_state["runs"]["maml"]["records"]) == 2


def test_settings_are_kept_while_the_user_looks_at_other_pages() -> None:
    """A teacher sets the lr and the steps on Adapt, looks at Features, comes back: the settings are as left."""
    at = page(start(), "features")
    at.radio(key="proj").set_value("PCA").run()
    at = page(at, "adapt")
    at.toggle(key="own_rates").set_value(False).run()
    lr_box(at).set_value(0.005).run()
    next(s for s in at.slider if s.label == "Steps per Run").set_value(12).run()
    at = page(at, "features")
    assert at.radio(key="proj").value == "PCA"
    at = page(at, "adapt")
    assert lr_box(at).value == 0.005 and at.toggle(key="own_rates").value is False
    assert next(s for s in at.slider if s.label == "Steps per Run").value == 12
    button(at, "Run").click().run()
    assert len(at.session_state["runs"]["maml"]["records"]) == 13  # steps 0..12 at the kept settings
    at.sidebar.radio[0].set_value(next(o for o in at.sidebar.radio[0].options if "LSTM" in o)).run()
    assert at.toggle(key="own_rates").value is True  # a newly picked model starts at its own defaults
    assert next(s for s in at.slider if s.label == "Steps per Run").value == 5


def test_build_by_upload_then_step_and_the_support_loss_falls() -> None:
    at = page(start(), "build")
    button(at, "Clear all").click().run()
    uploaders = at.file_uploader  # class 1 support, class 1 query, class 2 support, class 2 query
    uploaders[0].set_value([(f"a{i}.png", png(i), "image/png") for i in range(3)])
    at.run()
    at.file_uploader[2].set_value([(f"b{i}.png", png(100 + i), "image/png") for i in range(3)])
    at.run()
    classes = at.session_state["classes"]
    assert [len(c.support) for c in classes] == [3, 3]
    assert any("Ready: 2-way task" in s.value for s in at.success)

    at = page(at, "adapt")
    card = json.loads(SHIPPED_MODEL.with_suffix(".json").read_text())
    assert at.number_input[0].value == card["default_inner_lr"]  # the lr field starts at the model's own
    button(at, "Step").click().run()
    button(at, "Run").click().run()
    records = at.session_state["runs"]["maml"]["records"]
    losses = [r["support_loss"] for r in records]
    assert len(records) >= 5 and losses[-1] < losses[0]
    assert len(at.get("plotly_chart")) >= 2


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("notes.txt", b"just some text", "not an image"),
        ("cut.png", png(1)[:50], "corrupt or truncated"),
        ("empty.png", b"", "empty"),
    ],
)
def test_bad_uploads_get_a_message_and_keep_the_rest(name: str, data: bytes, message: str) -> None:
    at = page(start(), "build")
    button(at, "Clear all").click().run()
    at.file_uploader[0].set_value([("good.png", png(7), "image/png"), (name, data, "application/octet-stream")])
    at.run()
    assert not at.exception
    assert any(message in e.value and name in e.value for e in at.error), [e.value for e in at.error]
    assert [i.name for i in at.session_state["classes"][0].support] == ["good.png"]


def test_decompression_bomb_upload_is_refused() -> None:
    buffer = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buffer, "PNG")
    at = page(start(), "build")
    at.file_uploader[0].set_value(("bomb.png", buffer.getvalue(), "image/png"))
    at.run()
    assert any("too large" in e.value for e in at.error)


def test_a_class_with_no_images_is_flagged_everywhere() -> None:
    at = page(start(), "build")
    button(at, "Clear all").click().run()
    at.file_uploader[0].set_value(("a.png", png(3), "image/png"))
    at.run()
    assert any("'class 2' has no images" in w.value for w in at.warning)
    at = page(at, "adapt")
    assert any("'class 2' has no images" in w.value for w in at.warning)


def test_digits_example_then_features_and_classify() -> None:
    at = page(start(), "build")
    button(at, "Handwritten digits").click().run()
    assert len(at.session_state["classes"]) == 5
    at = page(at, "features")
    assert len(at.get("plotly_chart")) == 2
    labels = [m.label for m in at.metric]
    assert labels.count("Silhouette") == 2 and labels.count("Nearest-class-mean accuracy") == 2
    at = page(at, "classify")
    at.file_uploader[0].set_value(("new.png", png(11), "image/png"))
    at.run()
    assert any("% confident" in m.value or "None of these?" in m.value for m in at.markdown)
    assert at.get("plotly_chart")  # the probabilities stay visible either way


def test_switching_model_keeps_the_task_and_clears_the_runs() -> None:
    at = page(start(), "build")
    assert any(t.label == "Draw" for t in at.toggle)
    at = page(at, "adapt")
    button(at, "Run").click().run()
    button(at, "Compare (").click().run()  # the comparison of the character model's four starting points
    assert at.session_state["runs"] and at.session_state["comparison"]
    before = [(c.name, len(c.support)) for c in at.session_state["classes"]]
    photos_label = next(o for o in at.sidebar.radio[0].options if o.startswith("Photos"))
    at.sidebar.radio[0].set_value(photos_label).run()
    assert not at.exception
    assert all(not run["records"] for run in at.session_state["runs"].values())  # old model's steps are gone
    assert "comparison" not in at.session_state  # and its comparison: the photo model has other starting points
    assert not page(at, "adapt").exception
    assert [(c.name, len(c.support)) for c in at.session_state["classes"]] == before
    assert not any(t.label == "Draw" for t in page(at, "build").toggle)  # the canvas: character models only


def test_a_missing_model_file_gives_a_message_not_a_traceback(monkeypatch, tmp_path) -> None:
    from lab.models import MODELS

    at = start()
    photos_label = next(o for o in at.sidebar.radio[0].options if o.startswith("Photos"))
    monkeypatch.setitem(MODELS, photos_label, tmp_path / "gone.pt")
    at.sidebar.radio[0].set_value(photos_label).run()
    for name in ("adapt", "features", "classify"):
        at = page(at, name)
        assert any("Model could not be loaded" in e.value and "not found" in e.value for e in at.sidebar.error)


def test_photo_model_adapts_to_uploaded_photos_and_shows_tsne() -> None:
    at = start()
    photos_label = next(o for o in at.sidebar.radio[0].options if o.startswith("Photos"))
    at.sidebar.radio[0].set_value(photos_label).run()
    assert at.session_state["model_label"] == photos_label
    at = page(at, "build")
    button(at, "Clear all").click().run()
    for upload, (label, part) in enumerate([(0, "s"), (0, "q"), (1, "s"), (1, "q")]):
        seeds = range(label, label + 9, 3) if part == "s" else range(label + 30, label + 36, 3)
        at.file_uploader[upload].set_value([(f"{part}{s}.jpg", jpeg(photo(s)), "image/jpeg") for s in seeds])
        at.run()
    assert [(len(c.support), len(c.query)) for c in at.session_state["classes"]] == [(3, 2), (3, 2)]
    at = page(at, "adapt")
    button(at, "Run").click().run()
    records = at.session_state["runs"]["maml"]["records"]
    assert records[-1]["query_acc"] == 1.0
    at = page(at, "features")
    assert len(at.get("plotly_chart")) == 2
    at = page(at, "classify")
    at.file_uploader[0].set_value(("new.jpg", jpeg(photo(40)), "image/jpeg"))
    at.run()
    assert any("% confident" in m.value or "None of these?" in m.value for m in at.markdown)
    assert at.get("plotly_chart")  # the probabilities stay visible either way


@pytest.mark.skipif(not OMNIGLOT.is_dir(), reason=f"Omniglot not found at {OMNIGLOT}")
def test_omniglot_example() -> None:
    at = page(start(), "build")
    button(at, "Omniglot characters (all").click().run()
    assert at.session_state["example"].startswith("Omniglot 5-way")


def test_learn_page_shows_the_maml_equations() -> None:
    at = page(start(), "learn")
    assert len(at.latex) >= 3


def test_two_sessions_adapting_at_once_match_each_alone() -> None:
    """What two browser sessions do: adapt the one cached model in two threads at the same time."""
    import threading

    import torch

    from lab.models import DEFAULT_MODEL
    from lab.runs import adaptation_records
    from lab.task import TaskClass, make_item, task_tensors
    from metacore.checkpoint import load_checkpoint
    from metacore.examples import digits_task

    shared, _ = load_checkpoint(DEFAULT_MODEL)
    before = {k: v.clone() for k, v in shared.params.items()}
    tasks = []
    for seed in (0, 1):
        classes = [
            TaskClass(
                name,
                [make_item(name, im) for im in parts["support"]],
                [make_item(name, im) for im in parts["query"]],
            )
            for name, parts in digits_task(4, 2, 3, seed).items()
        ]
        tasks.append(task_tensors(classes, shared.backbone.input_spec, torch.device("cpu")))

    def losses(tensors) -> list[float]:
        return [r["support_loss"] for r in adaptation_records(shared, tensors, 4, 0.05)]

    alone = [losses(t) for t in tasks]
    together: list = [None, None]
    threads = [threading.Thread(target=lambda i=i: together.__setitem__(i, losses(tasks[i]))) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone
    assert all(torch.equal(before[k], v) for k, v in shared.params.items())


def test_a_new_click_waits_for_the_step_a_previous_script_run_is_still_taking() -> None:
    """Under load a rerun can start while the last one is inside the run's generator (waiting for the compute
    slot): it must wait for that step, not fail with 'generator already executing' (seen with 20 sessions)."""
    import threading

    import torch

    from lab.models import DEFAULT_MODEL
    from lab.runs import advance_run, new_run
    from lab.task import TaskClass, make_item, task_tensors
    from metacore.checkpoint import load_checkpoint
    from metacore.examples import digits_task
    from metacore.isolation import compute_slot

    shared, _ = load_checkpoint(DEFAULT_MODEL)
    classes = [
        TaskClass(name, [make_item(name, im) for im in parts["support"]])
        for name, parts in digits_task(3, 1, 0, 0).items()
    ]
    run = new_run(shared, task_tensors(classes, shared.backbone.input_spec, torch.device("cpu")), 5, 0.05)
    errors: list = []

    def click() -> None:
        try:
            advance_run(run)
        except Exception as exc:
            errors.append(exc)

    with compute_slot():  # another session's step is running: both clicks queue behind it
        threads = [threading.Thread(target=click) for _ in range(2)]
        for t in threads:
            t.start()
        threads[0].join(0.5)
    for t in threads:
        t.join()
    assert errors == []
    assert [r["step"] for r in run["records"]] == [0, 1]


def chart_layout(at: AppTest, index: int = 0) -> dict:
    return json.loads(at.get("plotly_chart")[index].proto.spec)["layout"]


def test_step_charts_show_whole_steps_full_accuracy_range_and_a_log_loss_when_it_explodes() -> None:
    at = page(start(), "adapt")
    button(at, "Step").click().run()
    button(at, "Step").click().run()
    layout = chart_layout(at)
    assert layout["xaxis"]["dtick"] == 1 and layout["xaxis"]["tickformat"] == "d"
    assert layout["yaxis2"]["range"] == [-3, 103]  # accuracy: always the whole 0-100 %
    records = at.session_state["runs"]["maml"]["records"]
    losses = [r[k] for r in records for k in ("support_loss", "query_loss")]  # what the loss panel draws
    assert (layout["yaxis"].get("type") == "log") == (max(losses) > 100 * min(losses))
    button(at, "Reset").click().run()
    one_rate_for_every_weight(at)
    at.button(key="lr_×10").click().run()  # 10x the default: the support loss all but vanishes ...
    next(s for s in at.slider if s.label == "Steps per Run").set_value(20).run()
    button(at, "Run").click().run()
    records = at.session_state["runs"]["maml"]["records"]
    losses = [v for r in records for k in ("support_loss", "query_loss") if (v := r[k]) > 0]
    assert max(losses) > 100 * min(losses)
    assert chart_layout(at)["yaxis"]["type"] == "log"  # ... and the loss axis says so instead of flattening the rest


def test_the_learning_rate_follows_the_model_and_reset_restores_it() -> None:
    from lab.models import MODELS
    from metacore.checkpoint import read_checkpoint

    at = page(start(), "adapt")
    photos_label = next(o for o in at.sidebar.radio[0].options if o.startswith("Photos"))
    characters = read_checkpoint(MODELS[next(iter(MODELS))])["learner"]["inner_lr"]
    photo_lr = read_checkpoint(MODELS[photos_label])["learner"]["inner_lr"]
    at.sidebar.radio[0].set_value(photos_label).run()
    at = page(at, "adapt")
    assert lr_box(at).value == photo_lr != characters
    lr_box(at).set_value(5.0).run()
    at.sidebar.radio[0].set_value(next(iter(MODELS))).run()  # back to the characters
    at = page(at, "adapt")
    assert lr_box(at).value == characters
    one_rate_for_every_weight(at)
    lr_box(at).set_value(3.0).run()
    button(at, "Reset").click().run()
    assert lr_box(at).value == characters


def test_a_diverging_run_stops_at_that_step_and_says_why() -> None:
    at = page(start(), "adapt")
    at.selectbox(key="init").set_value("random").run()
    at.button(key="lr_×10").click().run()  # 10x the model's default: too large from a random init
    lr = lr_box(at).value
    next(s for s in at.slider if s.label == "Steps per Run").set_value(50).run()
    button(at, "Run").click().run()
    records = at.session_state["runs"]["random"]["records"]
    first, last = records[0]["support_loss"], records[-1]["support_loss"]
    assert len(records) < 51 and not (last <= 10 * first)  # stopped at the first step that diverged
    assert all(r["support_loss"] <= 10 * first for r in records[:-1])
    message = next(e.value for e in at.error if "Stopped at step" in e.value)
    assert f"Stopped at step {records[-1]['step']}" in message and f"lr {lr:g} is too large" in message
    button(at, "Step").click().run()
    assert len(at.session_state["runs"]["random"]["records"]) == len(records)  # nothing more until Reset
    advised = float(message.split("Use at most ")[1].split()[0].rstrip("."))
    lr_box(at).set_value(advised).run()  # the advice holds: 50 steps at that lr, no divergence
    button(at, "Run").click().run()
    assert len(at.session_state["runs"]["random"]["records"]) == 51
    assert not any("Stopped at step" in e.value for e in at.error)


def test_features_page_maps_before_and_after_together_and_says_when_nothing_can_move() -> None:
    at = page(start(), "features")
    assert any("one projection fitted on the features before and after together" in c.value for c in at.caption)
    assert len(at.get("plotly_chart")) == 2
    deltas = [m.delta for m in at.metric if m.label == "Silhouette"]
    assert not deltas[0] and deltas[1]  # after: shown as the change from before
    assert any("of their length" in i.value for i in at.info)  # how far the features moved, measured
    table = at.dataframe[0].value  # what changed for each image: step 0 (zero head: chance) → adapted
    assert set(table["before"]) == {"no class (20% each)"}
    assert (table["change"] == "now right").sum() >= 0.8 * len(table)
    photos_label = next(o for o in at.sidebar.radio[0].options if o.startswith("Photos"))
    at.sidebar.radio[0].set_value(photos_label).run()
    at = page(at, "features")  # the photo model adapts its head only: the features cannot change
    assert any("The features did not change" in i.value for i in at.info)


def test_a_click_on_a_features_map_recomputes_nothing_and_an_edited_task_is_recomputed(monkeypatch) -> None:
    at = page(start(), "features")
    table = at.dataframe[0].value
    adapted = []
    adapt = MAML.adapt
    monkeypatch.setattr(MAML, "adapt", lambda self, *a, **k: (adapted.append(self), adapt(self, *a, **k))[1])
    at.run()  # what a click on a map does (on_select="rerun")
    assert not at.exception and not adapted
    assert at.dataframe[0].value.equals(table) and len(at.get("plotly_chart")) == 2
    at = page(at, "build")
    first = at.session_state["classes"][0]
    at.text_input(key=f"name_{first.uid}").set_value("renamed").run()
    at = page(at, "features")
    assert adapted  # a new task: adapted again, and the page shows it
    assert "renamed" in set(at.dataframe[0].value["class"])


def test_a_fresh_install_opens_on_bundled_characters_the_model_recognises() -> None:
    from metacore.examples import SAMPLE_ROOT

    files = [f for f in (SAMPLE_ROOT / "omniglot_sample").rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) < 100_000  # tens of KB in the repository
    assert (SAMPLE_ROOT / "omniglot_background_300.npz").stat().st_size < 2**20  # the Meta-train page's data
    assert "MIT License" in (SAMPLE_ROOT / "omniglot_sample" / "LICENSE").read_text()
    at = start()
    assert at.session_state["example"] == "Omniglot characters 5-way 1-shot"
    at = page(at, "adapt")
    button(at, "Run").click().run()
    records = at.session_state["runs"]["maml"]["records"]
    assert records[0]["query_acc"] == pytest.approx(0.2)  # step 0: a zero head, exact chance among 5 classes
    assert records[-1]["query_acc"] >= 0.8  # after the default steps; alphabets never seen in training, 1 shot
    assert records[-1]["support_loss"] < records[1]["support_loss"] < records[0]["support_loss"]
    button(at, "Compare").click().run()  # what the README's walk-through says about a random initialisation
    random_init = at.session_state["comparison"]["random"]
    assert random_init[-1]["query_acc"] <= records[-1]["query_acc"] - 0.4
    assert any("That gap is what meta-training bought" in c.value for c in at.caption)


def test_an_example_that_does_not_suit_the_model_gets_a_warning() -> None:
    at = page(start(), "build")  # the bundled characters, with the character model: no warning
    assert not any("expect poor accuracy" in w.value for w in at.warning)
    photos_label = next(o for o in at.sidebar.radio[0].options if o.startswith("Photos"))
    at.sidebar.radio[0].set_value(photos_label).run()
    for name in ("build", "adapt"):
        at = page(at, name)
        assert any("This example is characters, but the picked model reads photos" in w.value for w in at.warning)


def test_lr_presets_set_the_models_default_divided_or_multiplied_by_ten() -> None:
    from lab.models import MODELS
    from metacore.checkpoint import read_checkpoint

    default = read_checkpoint(MODELS[next(iter(MODELS))])["learner"]["inner_lr"]
    at = one_rate_for_every_weight(page(start(), "adapt"))
    for key, expected in (("lr_×10", 10 * default), ("lr_÷10", default / 10), ("lr_default", default)):
        at.button(key=key).click().run()
        assert lr_box(at).value == pytest.approx(expected)


def test_the_comparison_says_when_two_lines_coincide() -> None:
    at = page(start(), "adapt")
    button(at, "Step").click().run()  # the comparison sits below the stepping area, shown once there is a step
    button(at, "Compare").click().run()
    assert len(at.get("plotly_chart")) >= 1
    records = at.session_state["comparison"]
    maml, anil = ([r["query_acc"] for r in records[key]] for key in ("maml", "anil"))
    same = [step for step, (a, b) in enumerate(zip(maml, anil)) if a == b]
    note = " ".join(c.value for c in at.caption if "on top of each other" in c.value)
    pair = "**Meta-trained init (the picked model)** and **Meta-trained init, head only (ANIL)**"
    if len(same) == len(maml):
        assert f"{pair} give the same values at every step" in note
    elif len(same) >= 2:  # partly: the note names the steps
        assert f"{pair} at steps {', '.join(map(str, same))}" in note
    else:
        assert pair not in note


def test_features_maps_have_one_legend_entry_per_class_and_distinct_colours() -> None:
    at = page(start(), "features")
    data = json.loads(at.get("plotly_chart")[0].proto.spec)["data"]
    names = [trace["name"] for trace in data]
    classes = [c.name for c in at.session_state["classes"]]
    assert names == [*classes, "support", "query"]  # not one entry per class and set
    colours = [trace["marker"]["color"] for trace in data[: len(classes)]]
    assert len(set(colours)) == len(classes)


def test_classify_says_none_of_these_exactly_when_an_image_is_far_from_every_class() -> None:
    import torch

    from lab.task import image_to_png
    from metacore.checkpoint import load_checkpoint
    from metacore.examples import SAMPLE_ROOT
    from metacore.images import decode, preprocess
    from metacore.openset import novelty

    at = start()  # the built-in characters task: 5 of the 10 bundled characters
    classes = at.session_state["classes"]
    outsiders = [d for d in sorted((SAMPLE_ROOT / "omniglot_sample").iterdir()) if d.is_dir()]
    outsiders = [d for d in outsiders if d.name not in {c.name for c in classes}]
    files = [classes[0].query[0].name] + [d.name for d in outsiders]
    uploads = [image_to_png(classes[0].query[0].image)] + [(d / sorted(p.name for p in d.iterdir())[0]).read_bytes()
                                                     for d in outsiders]  # fmt: skip
    at = page(at, "classify")
    at.file_uploader[0].set_value([(f"{name}.png", data, "image/png") for name, data in zip(files, uploads)])
    at.run()
    card = json.loads(SHIPPED_MODEL.with_suffix(".json").read_text())["unsure"]
    assert any(f"{card['threshold']:.2f} times" in c.value for c in at.caption)
    verdicts = [m.value for m in at.markdown if "None of these?" in m.value or "% confident" in m.value]

    learner, _ = load_checkpoint(SHIPPED_MODEL)
    spec = learner.backbone.input_spec
    support = torch.stack([preprocess(item.image, spec) for c in classes for item in c.support])
    labels = torch.tensor([k for k, c in enumerate(classes) for _ in c.support])
    *_, last = learner.adapt(support, labels, way=len(classes))
    images = torch.stack([preprocess(decode(data, "x.png"), spec) for data in uploads])
    expected = novelty(learner, last.params, support, labels, images, len(classes)) > card["threshold"]
    assert ["None of these?" in v for v in verdicts] == expected.tolist()
    assert not expected[0]  # the task's own character is recognised


def test_features_shows_predictions_before_and_after_when_only_the_head_adapts() -> None:
    at = page(start(), "adapt")
    at.selectbox(key="init").set_value("anil").run()  # the head alone adapts: the features cannot change
    button(at, "Run").click().run()
    at = page(at, "features")
    assert any("The features did not change" in i.value for i in at.info)
    table = at.dataframe[0].value
    classes = at.session_state["classes"]
    assert len(table) == sum(len(c.support) + len(c.query) for c in classes)
    assert list(table.columns) == ["image", "class", "set", "before", "after", "change"]
    assert table["after"].str.endswith("%)").all()
    right_after = [a.startswith(f"{c} (") for a, c in zip(table["after"], table["class"])]
    right_before = [b.startswith(f"{c} (") for b, c in zip(table["before"], table["class"])]
    expected = ["now right" if (a and not b) else "now wrong" if (b and not a) else "" for a, b in
                zip(right_after, right_before)]  # fmt: skip
    assert table["change"].tolist() == expected


@pytest.fixture
def metasgd_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Meta-SGD character model trained for 2 iterations on random class folders, offered in the sidebar."""
    import lab.models
    from metacore.__main__ import main
    from test_data import make_class_folders

    make_class_folders(tmp_path / "toy", {f"c{i}": 4 for i in range(6)})
    out = tmp_path / "metasgd.pt"
    args = ["train", "--algo", "metasgd", "--data-root", str(tmp_path), "--dataset", "toy", "--way", "3",
            "--query", "2", "--iterations", "2", "--meta-batch", "2", "--val-every", "2", "--val-episodes", "2",
            "--steps", "1", "--inner-lr", "0.05", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    monkeypatch.setattr(lab.models, "MODELS", {"Meta-SGD (test)": out})
    return out


def test_a_meta_sgd_model_adapts_with_its_learned_rates_unless_overridden(metasgd_model: Path) -> None:
    from metacore.checkpoint import load_checkpoint

    at = page(start(), "adapt")
    assert at.toggle(key="own_rates").value is True and lr_box(at).disabled
    assert any("In force: **its learned rates**" in c.value for c in at.caption)
    assert "learned per-parameter rates (Meta-SGD; mean" in at.toggle(key="own_rates").help  # the numbers: a tooltip
    button(at, "Step").click().run()
    run = at.session_state["runs"]["maml"]
    assert run["lr"] is None  # the model's own rates

    learner, _ = load_checkpoint(metasgd_model)
    tensors = lab_tensors(at, learner)
    own = list(learner.adapt(tensors[0], tensors[1], steps=1))[-1].support_loss.item()
    scalar = list(learner.adapt(tensors[0], tensors[1], steps=1, lr=0.05))[-1].support_loss.item()
    assert own != pytest.approx(scalar, rel=1e-4)  # the two really differ on this task ...
    assert run["records"][-1]["support_loss"] == pytest.approx(own, rel=1e-5)  # ... and the page used its own

    at.toggle(key="own_rates").set_value(False).run()
    assert not lr_box(at).disabled
    assert any("(replacing the learned rates)" in c.value for c in at.caption)
    button(at, "Step").click().run()
    assert at.session_state["runs"]["maml"]["lr"] == lr_box(at).value


def lab_tensors(at: AppTest, learner) -> tuple:
    import torch

    from metacore.images import preprocess

    classes = at.session_state["classes"]
    spec = learner.backbone.input_spec
    x = torch.stack([preprocess(item.image, spec) for c in classes for item in c.support])
    y = torch.tensor([k for k, c in enumerate(classes) for _ in c.support])
    return x, y


@pytest.mark.skipif(not (SHARED_DATA / "imagenet-mini18").is_dir(), reason="no imagenet-mini18 under ../shared/data")
def test_the_comparison_caption_says_what_the_photo_curves_show() -> None:
    """Photos: the model is not meta-trained (issue 41), so Compare sets its zero head against ProtoNet on the same
    features, with no random-init contrast, and the caption gives both numbers and says why."""
    at = start()
    photos_label = next(o for o in at.sidebar.radio[0].options if o.startswith("Photos"))
    at.sidebar.radio[0].set_value(photos_label).run()
    at = page(at, "build")
    button(at, "ImageNet photos").click().run()
    at = page(at, "adapt")
    button(at, "Step").click().run()
    button(at, "Compare").click().run()
    assert set(at.session_state["comparison"]) == {"maml", "protonet"}
    head, proto = (100 * at.session_state["comparison"][key][-1]["query_acc"] for key in ("maml", "protonet"))
    caption = next(c.value for c in at.caption if "ProtoNet on the same features" in c.value)
    assert f"{head:.0f}%" in caption and f"{proto:.0f}%" in caption
    assert "Nothing in this model is meta-trained" in caption


def test_the_rates_in_force_say_when_the_head_steps_further_in_a_task_of_more_than_5_ways() -> None:
    """The shipped character model steps its head at lr x N/5 (way-scaled): the Adapt page says so for the task."""
    from metacore.checkpoint import read_checkpoint
    from metacore.paths import SHIPPED_MODEL

    assert read_checkpoint(SHIPPED_MODEL)["learner"]["way_scaled_head"] is True
    at = page(start(), "adapt")
    [in_force] = [c.value for c in at.caption if c.value.startswith("In force")]
    assert "x 5/5" not in in_force and "-way task" not in in_force  # the built-in example: 5 ways, no scaling
    at = page(at, "build")
    at.slider(key="ex_way").set_value(10).run()
    button(at, "Handwritten digits").click().run()
    at = page(at, "adapt")
    [in_force] = [c.value for c in at.caption if c.value.startswith("In force")]
    assert "the head's step x 10/5 in this 10-way task" in in_force


def test_the_head_only_comparison_steps_its_head_as_the_model_does() -> None:
    """ANIL on the Adapt page is the picked model with its body frozen: its head steps at the model's (way-scaled)
    head rate, so at 10 ways its first head step equals the full model's."""
    import torch

    from lab.models import learner_for, shared_model

    shipped, _ = shared_model()
    anil = learner_for("anil")
    assert anil.way_scaled_head == shipped.way_scaled_head
    spec = shipped.backbone.input_spec
    x, y = torch.randn(20, spec.channels, spec.size, spec.size), torch.arange(10).repeat(2)
    full, head_only = (list(m.adapt(x, y, steps=1))[1].params for m in (shipped, anil))
    assert torch.allclose(full["head.weight"], head_only["head.weight"], atol=1e-6)


def test_the_lr_comparison_shows_three_rates_and_says_what_they_change() -> None:
    """The lr lesson: ÷10, the default and ×10 side by side, and a caption read off their curves."""
    at = page(start(), "adapt")
    charts_before = len(at.get("plotly_chart"))
    button(at, "Compare the rates").click().run()
    assert not at.exception
    runs = at.session_state["lr_comparison"]
    assert len(runs) == 3 and all(len(records) == 6 for records in runs.values())  # steps 0..5 at each rate
    slow, default, fast = (records[-1]["support_loss"] for records in runs.values())
    assert slow > default > fast  # on the built-in task, a larger rate lowers the support loss faster
    assert len(at.get("plotly_chart")) == charts_before + 2
    caption = next(c.value for c in at.caption if "support loss after the last step" in c.value)
    assert f"{slow:.3g} at lr" in caption and "Accuracy is set by step 1" in caption


def test_the_lstm_model_shows_the_gates_it_learned_step_by_step_beside_mamls_fixed_lr() -> None:
    at = start()
    label = next(o for o in at.sidebar.radio[0].options if "LSTM" in o)
    at.sidebar.radio[0].set_value(label).run()
    at = page(at, "adapt")
    assert at.toggle(key="own_rates").label == "Use its learned update rule" and at.toggle(key="own_rates").value
    assert any(s.value == "The learned optimiser at work" for s in at.subheader) is False  # nothing stepped yet
    button(at, "Run").click().run()
    records = at.session_state["runs"]["maml"]["records"]
    assert len(records) == 6 and records[0]["gates"] is None
    assert set(records[1]["gates"]["head"]) == {"input", "forget"}
    assert records[1]["gates"] != records[2]["gates"]  # set anew at each step
    assert any(s.value == "The learned optimiser at work" for s in at.subheader)
    assert any("the layers step at" in c.value and "x MAML's lr" in c.value for c in at.caption)
    traces = json.loads(at.get("plotly_chart")[-1].proto.spec)["data"]
    hidden = {t["legendgroup"] for t in traces if t.get("visible") == "legendonly"}
    assert hidden == {"scale"}  # its saturated gate (~1) would squash the rates the lesson is about; one click shows it
    at.toggle(key="own_rates").set_value(False).run()  # gates fixed: plain SGD at the box's lr
    button(at, "Step").click().run()
    records = at.session_state["runs"]["maml"]["records"]
    assert records[-1]["gates"]["head"] == {"input": pytest.approx(lr_box(at).value), "forget": 1.0}
    assert any(c.value.startswith("The gates are fixed here") for c in at.caption)
