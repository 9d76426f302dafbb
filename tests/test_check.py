"""`metacore check` and your own model: every format of one network agrees, bad files are refused in one sentence."""

from __future__ import annotations

import json
import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from metacore.__main__ import main
from metacore.check import image_features, run_check, sample_episodes, zero_head_curve
from metacore.errors import MetacoreError
from metacore.yours import load_features, load_model

SIZE = 32


def coloured_folders(root: Path, classes: int = 6, per_class: int = 8) -> Path:
    """Class folders of small RGB images, each class its own colour and texture (so features can tell them apart)."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        colour = rng.integers(0, 255, 3)
        for i in range(per_class):
            noise = rng.normal(0, 40, (SIZE, SIZE, 3))
            stripes = (np.arange(SIZE)[:, None] % (c + 2) == 0)[..., None] * 60
            pixels = np.clip(colour + noise + stripes, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def small_resnet() -> nn.Module:
    """torchvision's resnet18 (random weights, seed 1), whose features are its penultimate layer."""
    torch.manual_seed(1)
    return torchvision.models.resnet18(num_classes=7).eval()


class Body(nn.Module):
    """The same network without its classifier: what a user exports as their feature extractor."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.net.fc = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.fixture(scope="module")
def formats(tmp_path_factory) -> dict[str, Path]:
    """One network in every format: a torchvision state dict (with its classifier), .pt2, ONNX and TorchScript of
    its feature extractor, and a .safetensors of the state dict."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("formats")
    net = small_resnet()
    torch.save(net.state_dict(), root / "weights.pt")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(root / "weights.safetensors"))
    body = Body(small_resnet()).eval()
    example = (torch.randn(2, 3, SIZE, SIZE),)
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.export.save(torch.export.export(body, example, dynamic_shapes=({0: batch},)), str(root / "model.pt2"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(body, example, str(root / "model.onnx"), input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}}, dynamo=True, verbose=False)  # fmt: skip
        torch.jit.save(torch.jit.trace(body, example), str(root / "model.ts"))
    return {
        "state dict": root / "weights.pt",
        "safetensors": root / "weights.safetensors",
        "pt2": root / "model.pt2",
        "onnx": root / "model.onnx",
        "torchscript": root / "model.ts",
    }


def loaded(path: Path):
    arch = "resnet18" if path.suffix in (".pt", ".safetensors") else None
    from metacore.images import InputSpec
    from metacore.yours import IMAGENET_SPEC

    spec = InputSpec(**{**IMAGENET_SPEC.to_dict(), "size": SIZE, "mean": IMAGENET_SPEC.mean, "std": IMAGENET_SPEC.std})
    return load_model(path, arch, spec)


def test_every_format_of_one_network_gives_the_same_features_and_check(formats, tmp_path: Path) -> None:
    data = coloured_folders(tmp_path / "data")
    files = sorted(data.rglob("*.png"))
    models = {name: loaded(path) for name, path in formats.items()}
    assert {m.kind for m in models.values()} == {"torchvision resnet18", "torch.export", "onnx", "torchscript"}
    reference, _ = image_features(models["state dict"], files)
    assert reference.shape == (len(files), 512)
    for name, model in models.items():
        features, bad = image_features(model, files)
        assert not bad and torch.allclose(features, reference, atol=1e-4, rtol=1e-4), name
    reports = {name: run_check(model, data, episodes=40) for name, model in models.items()}
    first = reports["state dict"]
    for name, report in reports.items():
        for setting in ("5w1s", "5w5s"):
            assert report["fewshot"][setting]["accuracy"] == pytest.approx(first["fewshot"][setting]["accuracy"]), name
        assert report["linear_probe"]["accuracy"] == first["linear_probe"]["accuracy"], name


def test_the_check_separates_classes_and_beats_nothing_on_noise(tmp_path: Path) -> None:
    """On images whose classes differ in colour, raw pixels separate them; the inner loop starts at chance and rises."""
    data = coloured_folders(tmp_path / "data", classes=6, per_class=10)
    from metacore.check import class_folder_images, raw_pixels

    images = class_folder_images(data)
    pixels = raw_pixels(images.files)
    report = run_check(None, features=(pixels, images.labels, images.classes), episodes=60)
    assert report["fewshot"]["5w5s"]["accuracy"] > 90
    curve = report["fewshot"]["5w1s"]["zero_head_curve"]
    assert curve[0] == pytest.approx(20.0) and curve[-1] > 80  # step 0: a zero head is chance, 5-way
    noise = torch.randn(len(images.labels), 64, generator=torch.Generator().manual_seed(0))
    chance = run_check(None, features=(noise, images.labels, images.classes), episodes=200)
    assert abs(chance["fewshot"]["5w5s"]["accuracy"] - 20) < 5  # random features: chance, within noise


def test_episodes_are_the_same_for_every_model_and_refuse_too_few_classes() -> None:
    labels = torch.arange(6).repeat_interleave(7)
    a, b = sample_episodes(labels, 5, 5, 10, seed=3), sample_episodes(labels, 5, 5, 10, seed=3)
    assert torch.equal(a.support, b.support) and torch.equal(a.query, b.query)
    assert a.queries == 2  # 7 images a class: 5 support, 2 queries
    assert "5 classes" in sample_episodes(torch.arange(4).repeat_interleave(9), 5, 1, 10, seed=0)
    curve = zero_head_curve(torch.randn(42, 8), a)
    assert curve.shape == (10, 11) and torch.all(curve[:, 0] == 20.0)


def test_cli_json_has_the_promised_shape_and_a_report(formats, tmp_path: Path, capsys) -> None:
    data = coloured_folders(tmp_path / "data")
    report = tmp_path / "report.html"
    args = ["check", str(formats["pt2"]), "--data", str(data), "--size", str(SIZE), "--episodes", "30", "--json",
            "--no-baselines", "--report", str(report)]  # fmt: skip
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    for setting in ("5w1s", "5w5s"):
        cell = result["fewshot"][setting]
        assert 0 <= cell["accuracy"] <= 100 and cell["ci95"] >= 0
        pixels = result["baselines"]["raw_pixels"]["fewshot"][setting]
        assert 0 <= pixels["accuracy"] <= 100
    assert result["model"]["preprocessing"]["size"] == SIZE
    page = report.read_text()
    assert "<script" in page and 'src="http' not in page  # plotly inlined: the report opens offline
    assert "raw pixels" in page and "Few-shot accuracy" in page


class Boom:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/metacore-pickle-ran"),))


class BatchDependent(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - x.mean(0)).flatten(1)[:, :8]


class NotFinite(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :8] / 0.0


class FeatureMaps(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :4, :4]


class Grey(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean((2, 3))


def scripted(module: nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(module), str(path))
    return path


def test_bad_files_are_refused_in_one_sentence(tmp_path: Path, formats, capsys) -> None:
    marker = Path("/tmp/metacore-pickle-ran")
    marker.unlink(missing_ok=True)
    pickled = tmp_path / "evil.pkl"
    pickled.write_bytes(pickle.dumps(Boom()))
    torch_pickle = tmp_path / "evil.pt"
    torch.save({"weights": Boom()}, torch_pickle)
    cases = {
        pickled: "never unpickles",
        torch_pickle: "does not unpickle",
        scripted(BatchDependent(), tmp_path / "batch.ts"): "depending on the rest of its batch",
        scripted(NotFinite(), tmp_path / "nan.ts"): "NaN or infinite",
        scripted(FeatureMaps(), tmp_path / "maps.ts"): "one vector per image",
        scripted(Grey(), tmp_path / "grey.ts"): "fails on a batch of 3x224x224",
        formats["state dict"]: "--arch",
        tmp_path / "missing.onnx": "not found",
    }
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "model.onnx").write_bytes(formats["onnx"].read_bytes())  # its weights' .data file left behind
    cases[alone / "model.onnx"] = "separate file"
    (tmp_path / "junk.onnx").write_bytes(b"\x08junk" * 10)
    cases[tmp_path / "junk.onnx"] = "not a loadable ONNX model"
    for path, words in cases.items():
        with pytest.raises(MetacoreError, match=words):
            load_model(path)
    assert not marker.exists()  # the pickle's payload never ran
    with pytest.raises(MetacoreError, match="not a torchvision classifier"):
        load_model(formats["state dict"], arch="resnet1")
    with pytest.raises(MetacoreError, match="does not fit torchvision's resnet34"):
        load_model(formats["state dict"], arch="resnet34")
    with pytest.raises(MetacoreError, match="over the 1 MB limit"):
        load_model(formats["state dict"], arch="resnet18", max_bytes=2**20)
    data = coloured_folders(tmp_path / "data")
    assert main(["check", str(pickled), "--data", str(data)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: evil.pkl is a Python pickle")


def test_features_files_are_checked_without_a_model(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat([f"c{i}" for i in range(5)], 6)
    centres = rng.normal(0, 1, (5, 16))
    features = centres[np.repeat(np.arange(5), 6)] + 0.1 * rng.normal(0, 1, (30, 16))
    csv_path = tmp_path / "f.csv"
    rows = [f"{lab}," + ",".join(map(str, row)) for lab, row in zip(labels, features)]
    csv_path.write_text("label," + ",".join(f"f{i}" for i in range(16)) + "\n" + "\n".join(rows))
    np.savez(tmp_path / "f.npz", features=features, labels=labels)
    np.save(tmp_path / "f.npy", features)
    (tmp_path / "labels.txt").write_text("\n".join(labels))
    tables = [load_features(csv_path), load_features(tmp_path / "f.npz"),
              load_features(tmp_path / "f.npy", tmp_path / "labels.txt")]  # fmt: skip
    for table in tables:
        assert table.features.shape == (30, 16) and table.classes == [f"c{i}" for i in range(5)]
        assert torch.allclose(table.features, tables[0].features, atol=1e-5)
    assert main(["check", "--features", str(csv_path), "--episodes", "50", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["fewshot"]["5w1s"]["accuracy"] > 95 and result["baselines"] == {}
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(MetacoreError, match="pickles"):
        load_features(tmp_path / "objects.npy", tmp_path / "labels.txt")
    with pytest.raises(MetacoreError, match="30 feature rows but 29 labels"):
        (tmp_path / "short.txt").write_text("\n".join(labels[:-1]))
        load_features(tmp_path / "f.npy", tmp_path / "short.txt")


def test_the_photo_model_exported_checks_the_same_as_itself(tmp_path: Path) -> None:
    """`metacore export` to .pt2 and ONNX: checked as "your model", the same numbers as the checkpoint itself."""
    from metacore.export import export
    from metacore.paths import PHOTO_MODEL

    data = coloured_folders(tmp_path / "data", classes=5, per_class=6)
    reports = {}
    for path in (PHOTO_MODEL, export(PHOTO_MODEL, tmp_path / "photo.pt2"), export(PHOTO_MODEL, tmp_path / "p.onnx")):
        model = load_model(path)
        assert model.spec.size == 260 and model.spec.crop == 0.875
        reports[path.suffix] = run_check(model, data, episodes=20)
    assert not (tmp_path / "p.onnx.data").exists()  # one file, weights inside
    for suffix, report in reports.items():
        for setting in ("5w1s", "5w5s"):
            assert report["fewshot"][setting]["accuracy"] == pytest.approx(
                reports[".pt"]["fewshot"][setting]["accuracy"], abs=0.1
            ), suffix


def test_none_of_these_is_calibrated_from_the_task_itself() -> None:
    """Your model has no card: the threshold comes from leaving each support image, and each class, out."""
    from metacore.algorithms.frozen import FrozenFeatures
    from metacore.models import Backbone
    from metacore.openset import novelty, task_threshold

    g = torch.Generator().manual_seed(0)
    centres = 5 * torch.randn(6, 32, generator=g)
    features = centres.repeat_interleave(5, 0) + torch.randn(30, 32, generator=g)
    labels = torch.arange(6).repeat_interleave(5)
    in_task = labels < 4
    learner = FrozenFeatures(Backbone("centred_norm", in_dim=32), 0.1, 5, "zero")
    *_, last = learner.adapt(features[in_task], labels[in_task], way=4)
    unsure = task_threshold(learner, last.params, features[in_task], labels[in_task])
    assert unsure is not None and "20 support images" in unsure["task"]
    assert unsure["in_task_kept"] >= 90 and unsure["out_of_task_flagged"] >= 90  # well-separated classes
    scores = novelty(learner, last.params, features[in_task], labels[in_task], features[~in_task], 4)
    assert (scores > unsure["threshold"]).float().mean() > 0.8  # images of the two classes outside the task
    assert task_threshold(learner, last.params, features[:2], torch.tensor([0, 1])) is None  # too small to tell


def test_per_class_takes_the_first_images_of_each_class(formats, tmp_path: Path, capsys) -> None:
    data = coloured_folders(tmp_path / "data", classes=5, per_class=9)
    args = ["check", str(formats["pt2"]), "--data", str(data), "--size", str(SIZE), "--episodes", "20", "--json",
            "--no-baselines", "--per-class", "6"]  # fmt: skip
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["data"]["images"] == 30 and result["fewshot"]["5w5s"]["queries_per_class"] == 1


def test_the_whole_network_adapts_without_touching_the_loaded_model(formats) -> None:
    """`WholeNetwork` on your torch module: the same zero-head start as the frozen view, every layer moving from
    step 2 (a zero head passes no gradient back at step 1), and the shared module never changed."""
    from metacore.yours import feature_learner, whole_network_learner

    model = loaded(formats["pt2"])
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    whole, frozen = whole_network_learner(model), feature_learner(model)
    assert whole_network_learner(loaded(formats["torchscript"])) is None  # TorchScript: frozen view only
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 3, SIZE, SIZE, generator=g), torch.arange(3).repeat(2)
    snaps = list(whole.adapt(x, y, steps=3, way=3))
    assert [round(float(s.support_loss), 4) for s in snaps[:1]] == [round(float(torch.log(torch.tensor(3.0))), 4)]
    body = [k for k in whole.backbone.params if k not in ("center", "scale")]
    assert all(torch.equal(snaps[1].params[k], snaps[0].params[k]) for k in body)  # step 1: the head only
    assert any(not torch.equal(snaps[2].params[k], snaps[1].params[k]) for k in body)  # then the network too
    assert all(torch.equal(v, model.module.state_dict()[k]) for k, v in before.items())
    inputs = frozen.backbone.input_spec  # the frozen view reads the same features through its body
    from metacore.bodies import model_inputs

    start = next(frozen.adapt(model_inputs(x, inputs), y, steps=0, way=3)).params
    features = frozen.backbone.features(start, model_inputs(x, inputs))
    assert torch.allclose(features, whole.backbone.features(snaps[0].params, x), atol=1e-4)


def meta_trained_on(data_root: Path, dataset: str) -> Path:
    """A tiny character model meta-trained (1 outer step) on `data_root/dataset`'s classes: its records list them."""
    out = data_root / "trained.pt"
    args = ["train", "--algo", "maml", "--data-root", str(data_root), "--dataset", dataset, "--way", "3", "--query",
            "2", "--iterations", "1", "--meta-batch", "2", "--val-every", "1", "--val-episodes", "2", "--steps", "2",
            "--images", "0:4", "--val-images", "4:8", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    return out


def test_checking_a_metacore_model_says_when_its_classes_were_meta_trained_on(tmp_path: Path, monkeypatch) -> None:
    """A checkpoint records the classes it meta-trained on: a check on folders of those classes says so, one on
    other classes does not."""
    coloured_folders(tmp_path / "seen", classes=5, per_class=8)
    monkeypatch.setenv("METACORE_DATA_ROOT", str(tmp_path))
    model = load_model(meta_trained_on(tmp_path, "seen"))
    novel = tmp_path / "novel"
    for folder, name in zip(sorted((tmp_path / "seen").iterdir()), ["cat", "dog", "ship", "frog", "truck"]):
        shutil.copytree(folder, novel / name)
    assert run_check(model, novel, episodes=5)["meta_training"]["trained_classes_scored"] == 0
    seen = run_check(model, tmp_path / "seen", episodes=5)["meta_training"]
    assert seen["trained_classes_scored"] == 5 and "trained classes, not classes it never saw" in seen["warning"]


def test_a_baseline_on_its_own_meta_training_classes_is_flagged_too(tmp_path: Path, formats, monkeypatch) -> None:
    """Checking your model on folders of the classes the baseline model meta-trained on: the baseline's row says it
    trained on them (your model's own row has no records to check)."""
    import metacore.paths
    from metacore.check import baselines_for, overlap_warnings

    folders = coloured_folders(tmp_path / "made", classes=5, per_class=8)
    monkeypatch.setenv("METACORE_DATA_ROOT", str(tmp_path))
    monkeypatch.setattr(metacore.paths, "PHOTO_MODEL", meta_trained_on(tmp_path, "made"))
    model = loaded(formats["pt2"])
    report = run_check(model, folders, baselines={"photo_model": baselines_for(model)["photo_model"]}, episodes=5)
    warnings = overlap_warnings(report)
    assert len(warnings) == 1 and warnings[0].startswith("trained.pt: 5 of the 5 classes")


def test_the_shipped_photo_model_meta_trained_on_nothing() -> None:
    """The photo model is the frozen body's features (issue 41): its records list no meta-training classes, so no
    photo figure can be on trained classes."""
    from metacore.paths import PHOTO_MODEL, default_data_root
    from metacore.provenance import trained_classes

    meta = {k: v for k, v in torch.load(PHOTO_MODEL, weights_only=True).items() if k != "state_dict"}
    assert meta["training"]["meta_trained"] is False and meta["training"]["data_stages"] == []
    assert trained_classes(meta["training"], default_data_root()) == (set(), [])
