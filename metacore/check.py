"""The few-shot check of a network's features: do they separate classes it never saw, from 1 or 5 examples?

On a folder of class folders: 5-way 1-shot and 5-shot accuracy over the same episodes by nearest class mean and by
a zero head's inner loop on the frozen features, a linear probe, silhouette, k-NN precision, per-class recall and
the most confused pairs, a 2-D map, each next to baselines (raw pixels, the same architecture at random
initialisation, the shipped photo model) measured on the same images and episodes.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from metacore.bodies import cache_dir
from metacore.data import folder_classes, parse_slice
from metacore.errors import MetacoreError
from metacore.evaluate import mean_ci95
from metacore.images import InputSpec, try_load_pixels
from metacore.yours import FeatureModel

SETTINGS = {"5w1s": (5, 1), "5w5s": (5, 5)}
QUERIES = 15
CHUNK_NUMBERS = 4_000_000  # episodes are batched up to this many feature numbers: memory never grows with episodes
HEAD_STEPS, HEAD_LR, FEATURE_SCALE = 10, 0.1, 10.0  # the zero head's inner loop on CL2N features x 10
RAW_SPEC = InputSpec(size=32, channels=3, invert="never", mean=(0.5,) * 3, std=(0.5,) * 3)  # the pixels baseline
MAX_MAP_POINTS = 1000
MAX_KNN_POINTS = 5000
Progress = Callable[[str, int, int], None]  # (what, done, total)


@dataclass
class Images:
    files: list[Path]
    labels: Tensor
    classes: list[str]


def class_folder_images(folder: str | Path, per_class: int | None = None, images: str | None = None) -> Images:
    """The image files of a folder of class folders, with class indices: of each class's sorted files, the slice
    `images` ("start:stop", as `evaluate --images`), then the first `per_class` of it."""
    classes = folder_classes(Path(folder))
    if len(classes) < 2:
        raise MetacoreError(f"{folder} must hold at least 2 class folders, found {len(classes)}")
    keep = parse_slice(images) if images else slice(None)
    chosen = [list(c.files[keep])[:per_class] for c in classes]
    if any(not files for files in chosen):
        empty = classes[[bool(part) for part in chosen].index(False)].name
        raise MetacoreError(f"--images {images} leaves no images in class '{empty}'")
    files = [f for part in chosen for f in part]
    labels = torch.tensor([i for i, part in enumerate(chosen) for _ in part])
    return Images(files, labels, [c.name for c in classes])


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:20]


_memory: dict[str, dict[str, Tensor]] = {}  # the cache of one process (the app): model+spec -> image -> features
MEMORY_MODELS = 4  # the in-process cache keeps the features of this many models (+ preprocessing); the disk keeps all


def image_features(
    model: FeatureModel, files: list[Path], progress: Progress | None = None, batch: int = 32, slot=nullcontext
) -> tuple[Tensor, list[int]]:
    """Features of image files under `model` (at its stated preprocessing), and the indices of the files that could
    not be read. Each (model, preprocessing, image content) is computed once: kept in memory and under
    cache_dir()/check, so a second look costs nothing. Each batch runs inside `slot()` (the lab's compute slot)."""
    key = f"{model.sha256[:16]}-{hashlib.sha256(json.dumps(model.spec.to_dict()).encode()).hexdigest()[:12]}"
    if key not in _memory:
        while len(_memory) >= MEMORY_MODELS:
            _memory.pop(next(iter(_memory)))  # the oldest: a long-running server's memory stays bounded
        _memory[key] = _read_store(key)
    store = _memory[key]
    digests = [file_digest(f) for f in files]
    todo = [i for i, d in enumerate(digests) if d not in store]
    bad: list[int] = []
    for start in range(0, len(todo), batch):
        part = todo[start : start + batch]
        pixels = try_load_pixels([files[i] for i in part], model.spec)
        good = [(i, p) for i, p in zip(part, pixels) if not isinstance(p, MetacoreError)]
        bad += [i for i, p in zip(part, pixels) if isinstance(p, MetacoreError)]
        if good:
            with slot():
                feats = model.features(torch.stack([p for _, p in good]), batch)
            for (i, _), f in zip(good, feats):
                store[digests[i]] = f.clone()
        if progress:
            progress(f"features of {model.name}", min(start + batch, len(todo)), len(todo))
    if todo:
        _write_store(key, store)
    unreadable = set(bad)
    kept = [i for i in range(len(files)) if i not in unreadable]
    if not kept:
        raise MetacoreError("none of the images could be read")
    return torch.stack([store[digests[i]] for i in kept]), bad


def _store_path(key: str) -> Path:
    return cache_dir() / "check" / f"{key}.pt"


def _read_store(key: str) -> dict[str, Tensor]:
    path = _store_path(key)
    try:
        store = torch.load(path, map_location="cpu", weights_only=True)
        return store if isinstance(store, dict) else {}
    except Exception:  # noqa: BLE001 (absent or damaged: recomputed)
        return {}


def _write_store(key: str, store: dict[str, Tensor]) -> None:
    path = _store_path(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(store, tmp)
        tmp.replace(path)
    except OSError:
        pass  # a read-only cache only costs the recomputation


def raw_pixels(files: list[Path]) -> Tensor:
    """The pixels baseline: each image at 32x32 RGB, flattened (3072 numbers)."""
    parts = [p for p in try_load_pixels(files, RAW_SPEC) if not isinstance(p, MetacoreError)]
    return torch.stack(parts).flatten(1)


@dataclass
class Episodes:
    """Indices into the images: support (E, way*shot) and query (E, way*queries), labels 0..way-1 in blocks."""

    support: Tensor
    query: Tensor
    way: int
    shot: int
    queries: int


def sample_episodes(labels: Tensor, way: int, shot: int, episodes: int, seed: int) -> Episodes | str:
    """The same episodes for every model compared (a seed, not the features, decides them); a sentence when the
    images cannot make such episodes."""
    counts = torch.bincount(labels)
    eligible = torch.nonzero(counts >= shot + 1).flatten()
    if len(eligible) < way:
        return f"needs {way} classes with at least {shot + 1} images each; {len(eligible)} have that"
    queries = int(min(QUERIES, counts[eligible].min() - shot))
    members = {int(c): torch.nonzero(labels == c).flatten() for c in eligible}
    g = torch.Generator().manual_seed(seed)
    support, query = [], []
    for _ in range(episodes):
        chosen = eligible[torch.randperm(len(eligible), generator=g)[:way]]
        s, q = [], []
        for c in chosen.tolist():
            pick = members[c][torch.randperm(len(members[c]), generator=g)[: shot + queries]]
            s.append(pick[:shot])
            q.append(pick[shot:])
        support.append(torch.cat(s))
        query.append(torch.cat(q))
    return Episodes(torch.stack(support), torch.stack(query), way, shot, queries)


def normalised(features: Tensor) -> Tensor:
    return F.normalize(features.double(), dim=-1)


def chunks(features: Tensor, episodes: Episodes) -> range:
    """Where each batch of episodes starts: as many episodes at once as fit in CHUNK_NUMBERS feature numbers."""
    per_episode = (episodes.support.shape[1] + episodes.query.shape[1]) * features.shape[1]
    return range(0, len(episodes.support), max(1, CHUNK_NUMBERS // per_episode))


def episode_features(features: Tensor, episodes: Episodes, at: slice) -> tuple[Tensor, Tensor]:
    """Support and query features of the episodes `at`, centred on each episode's support mean and L2-normalised
    ("CL2N", SimpleShot): features that all point one way (ReLU outputs) still differ by class."""
    s = features[episodes.support[at]].double()  # (e, way*shot, d)
    q = features[episodes.query[at]].double()
    centre = s.mean(1, keepdim=True)
    return normalised(s - centre), normalised(q - centre)


def nearest_mean(features: Tensor, episodes: Episodes) -> list[float]:
    """Each episode's query accuracy (%) by the nearest class mean of the support features (CL2N)."""
    accuracies = []
    query_y = torch.arange(episodes.way).repeat_interleave(episodes.queries)
    starts = chunks(features, episodes)
    for start in starts:
        s, q = episode_features(features, episodes, slice(start, start + starts.step))
        means = s.view(len(s), episodes.way, episodes.shot, -1).mean(2)
        predicted = torch.cdist(q, means).argmin(-1)
        accuracies += (100 * (predicted == query_y).double().mean(1)).tolist()
    return accuracies


def zero_head_curve(features: Tensor, episodes: Episodes, steps: int = HEAD_STEPS, lr: float = HEAD_LR) -> Tensor:
    """(episodes, steps + 1) query accuracies (%) of a zero linear head trained by full-batch gradient descent on the
    support set (CL2N features times FEATURE_SCALE): step 0 is chance, every step is the inner loop's."""
    support_y = torch.arange(episodes.way).repeat_interleave(episodes.shot)
    query_y = torch.arange(episodes.way).repeat_interleave(episodes.queries)
    curves = []
    starts = chunks(features, episodes)
    for start in starts:
        s, q = (FEATURE_SCALE * x for x in episode_features(features, episodes, slice(start, start + starts.step)))
        weight = s.new_zeros(len(s), episodes.way, s.shape[-1])
        bias = s.new_zeros(len(s), 1, episodes.way)
        onehot = F.one_hot(support_y, episodes.way).to(s)
        accuracy = [(100 * ((q @ weight.transpose(1, 2) + bias).argmax(-1) == query_y).double().mean(1))]
        for _ in range(steps):
            probs = (s @ weight.transpose(1, 2) + bias).softmax(-1)
            error = (probs - onehot) / len(support_y)  # d(mean cross-entropy)/d(logits)
            weight = weight - lr * error.transpose(1, 2) @ s
            bias = bias - lr * error.sum(1, keepdim=True)
            accuracy.append(100 * ((q @ weight.transpose(1, 2) + bias).argmax(-1) == query_y).double().mean(1))
        curves.append(torch.stack(accuracy, 1))
    return torch.cat(curves)


def linear_probe(features: Tensor, labels: Tensor, classes: list[str], seed: int = 0) -> dict:
    """Logistic regression on half of each class's images (the same number from every class), scored on the rest:
    accuracy, per-class recall and the most confused pairs."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import confusion_matrix

    rng = np.random.default_rng(seed)
    counts = np.bincount(labels.numpy(), minlength=len(classes))
    per_class = int(counts[counts > 0].min()) // 2
    if per_class < 1:
        return {"skipped": "a class has fewer than 2 images"}
    train, test = [], []
    for c in range(len(classes)):
        members = rng.permutation(np.flatnonzero(labels.numpy() == c))
        train += list(members[:per_class])
        test += list(members[per_class:])
    x = normalised(features).numpy()
    y = labels.numpy()
    probe = LogisticRegression(max_iter=2000, C=10.0).fit(x[train], y[train])
    predicted = probe.predict(x[test])
    matrix = confusion_matrix(y[test], predicted, labels=range(len(classes)))
    recall = {classes[c]: round(100 * matrix[c, c] / max(1, matrix[c].sum()), 2) for c in range(len(classes))}
    off = [(int(matrix[a, b] + matrix[b, a]), classes[a], classes[b]) for a in range(len(classes)) for b in range(a)]
    pairs = [{"classes": [a, b], "confused": n} for n, a, b in sorted(off, reverse=True)[:5] if n > 0]
    return {
        "accuracy": round(100 * float((predicted == y[test]).mean()), 2),
        "train_per_class": per_class,
        "test_images": len(test),
        "per_class_recall": recall,
        "most_confused": pairs,
    }


def knn_precision(features: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5), seed: int = 0) -> dict:
    """Leave-one-out k-NN precision@k (%) by cosine similarity: the share of each image's k nearest neighbours
    in its own class (on at most MAX_KNN_POINTS images)."""
    keep = _subsample(len(labels), MAX_KNN_POINTS, seed)
    x, y = normalised(features[keep]).float(), labels[keep]
    k = max(ks)
    hits = []
    for start in range(0, len(x), 1024):
        similarity = x[start : start + 1024] @ x.T
        similarity[torch.arange(len(similarity)), torch.arange(start, start + len(similarity))] = -2.0
        neighbours = similarity.topk(k, dim=1).indices
        hits.append(y[neighbours] == y[start : start + 1024, None])
    matches = torch.cat(hits).double()
    return {f"p@{n}": round(100 * float(matches[:, :n].mean()), 2) for n in ks}


def _subsample(n: int, most: int, seed: int) -> Tensor:
    if n <= most:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:most].sort().values


def silhouette(features: Tensor, labels: Tensor, seed: int = 0) -> float | None:
    from sklearn.metrics import silhouette_score

    keep = _subsample(len(labels), 2000, seed)
    if len(set(labels[keep].tolist())) < 2:
        return None
    return round(float(silhouette_score(normalised(features[keep]).numpy(), labels[keep].numpy(), metric="cosine")), 4)


def feature_map(features: Tensor, labels: Tensor, seed: int = 0) -> dict:
    """A 2-D t-SNE map of at most MAX_MAP_POINTS images: coordinates, labels and which images they are."""
    from metacore.projection import project

    keep = _subsample(len(labels), MAX_MAP_POINTS, seed)
    xy = project(normalised(features[keep]).numpy(), "tsne", 30.0, seed)
    return {"index": keep.tolist(), "x": xy[:, 0].round(3).tolist(), "y": xy[:, 1].round(3).tolist()}


def fewshot(features: Tensor, episodes: dict[str, Episodes | str]) -> dict:
    """5w1s and 5w5s: nearest class mean and the zero head's inner loop (final step and the per-step curve)."""
    result = {}
    for name, eps in episodes.items():
        if isinstance(eps, str):
            result[name] = {"skipped": eps}
            continue
        mean, ci = mean_ci95(nearest_mean(features, eps))
        curve = zero_head_curve(features, eps)
        steps = [mean_ci95(curve[:, i].tolist()) for i in range(curve.shape[1])]
        result[name] = {
            "accuracy": round(mean, 2),
            "ci95": round(ci, 2),
            "method": "nearest class mean",
            "zero_head": {"accuracy": round(steps[-1][0], 2), "ci95": round(steps[-1][1], 2), "steps": HEAD_STEPS},
            "zero_head_curve": [round(m, 2) for m, _ in steps],
            "episodes": len(eps.support),
            "queries_per_class": eps.queries,
        }
    return result


def evaluate_features(
    features: Tensor,
    labels: Tensor,
    classes: list[str],
    episodes: dict[str, Episodes | str],
    seed: int = 0,
    with_map: bool = True,
) -> dict:
    """Every measure of the check for one feature matrix (rows aligned with `labels`)."""
    out = {
        "feature_dim": int(features.shape[1]),
        "fewshot": fewshot(features, episodes),
        "linear_probe": linear_probe(features, labels, classes, seed),
        "knn": knn_precision(features, labels, seed=seed),
        "silhouette": silhouette(features, labels, seed),
    }
    if with_map:
        out["map"] = feature_map(features, labels, seed)
    return out


def run_check(
    model: FeatureModel | None,
    data: str | Path | None = None,
    *,
    features: tuple[Tensor, Tensor, list[str]] | None = None,
    baselines: dict[str, FeatureModel] | None = None,
    episodes: int = 600,
    seed: int = 0,
    progress: Progress | None = None,
    per_class: int | None = None,
    images: str | None = None,
    slot=nullcontext,
) -> dict:
    """The whole check: `model` on the images of `data` (or precomputed `features` = (features, labels, classes)),
    and each baseline (raw pixels always, when there are images) on the same images and episodes."""
    started = time.perf_counter()
    if episodes < 1:
        raise MetacoreError(f"--episodes must be at least 1, got {episodes}")
    report: dict = {"episodes": episodes, "seed": seed}
    if features is not None:
        feats, labels, classes = features
        files: list[Path] = []
        report["model"] = {"kind": "features"}
    else:
        chosen = class_folder_images(data, per_class, images)
        feats, bad = image_features(model, chosen.files, progress, slot=slot)
        unreadable = set(bad)
        keep = [i for i in range(len(chosen.files)) if i not in unreadable]
        files = [chosen.files[i] for i in keep]
        labels, classes = chosen.labels[keep], chosen.classes
        report["skipped_files"] = [str(chosen.files[i]) for i in bad][:20]
        report["model"] = {
            "name": model.name,
            "kind": model.kind,
            "sha256": model.sha256,
            "feature_dim": model.feature_dim,
            "preprocessing": model.spec.to_dict(),
            "preprocessing_source": model.spec_source,
        }
    report["data"] = {
        "folder": str(data) if data is not None else None,
        "images": len(labels),
        "classes": len(classes),
        "class_names": classes,
        "slice": images,
    }
    if progress:
        progress("measuring: episodes, probe, k-NN, map", 0, 0)
    eps = {name: sample_episodes(labels, way, shot, episodes, seed) for name, (way, shot) in SETTINGS.items()}
    if all(isinstance(e, str) for e in eps.values()):
        raise MetacoreError(f"the data cannot make 5-way episodes: {eps['5w1s']}")
    ours = evaluate_features(feats, labels, classes, eps, seed)
    report.update(ours)
    report["baselines"] = {}
    if files:
        report["baselines"]["raw_pixels"] = evaluate_features(raw_pixels(files), labels, classes, eps, seed, False)
        for name, baseline in (baselines or {}).items():
            base_feats, base_bad = image_features(baseline, files, progress, slot=slot)
            if base_bad:
                continue  # the same files read for the model: cannot happen unless a file changed meanwhile
            report["baselines"][name] = evaluate_features(base_feats, labels, classes, eps, seed, False)
            report["baselines"][name]["model"] = {"name": baseline.name, "kind": baseline.kind}
            if baseline.kind == "metacore":  # the photo model on its own meta-training classes is no novel-class row
                report["baselines"][name]["meta_training"] = trained_overlap(baseline.path, classes)
    if model is not None and model.kind == "metacore":
        report["meta_training"] = trained_overlap(model.path, classes)
    report["files"] = [str(f) for f in files]
    report["labels"] = labels.tolist()
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def overlap_warnings(report: dict) -> list[str]:
    """One sentence per row (the model, each baseline) whose classes were in its meta-training."""
    rows = [(report.get("model", {}).get("name", "the model"), report)]
    rows += [(result["model"]["name"], result) for result in report.get("baselines", {}).values() if "model" in result]
    return [
        f"{name}: {result['meta_training']['warning']}"
        for name, result in rows
        if (result.get("meta_training") or {}).get("warning")
    ]


def trained_overlap(checkpoint: str, classes: list[str]) -> dict:
    """For a metacore checkpoint: how many of the checked classes it meta-trained on (`metacore.provenance`)."""
    from metacore.checkpoint import read_checkpoint
    from metacore.data import ImageClass, ImageClasses
    from metacore.paths import default_data_root
    from metacore.provenance import overlap

    meta = {k: v for k, v in read_checkpoint(checkpoint).items() if k != "state_dict"}
    scored = ImageClasses([ImageClass(name, ()) for name in classes], InputSpec())
    return overlap(meta, scored, default_data_root())


def baselines_for(model: FeatureModel) -> dict[str, FeatureModel]:
    """The same architecture at random initialisation (when known) and the shipped photo model (unless it is it)."""
    from metacore.paths import PHOTO_MODEL
    from metacore.yours import load_model, random_init

    found = {}
    if model.architecture:
        found["random_init"] = random_init(model.architecture, model.spec)
    if PHOTO_MODEL.is_file():
        photo = load_model(PHOTO_MODEL)
        if photo.sha256 != model.sha256:
            found["photo_model"] = photo
    return found


def summary_lines(report: dict) -> list[str]:
    """The check in a few lines of text, for the CLI."""
    lines = []
    name = report["model"].get("name", "features")
    data = report["data"]
    lines.append(f"{name}: {data['images']} images, {data['classes']} classes, {report['episodes']} episodes")
    rows = [("your model", report)] + [(k, v) for k, v in report["baselines"].items()]
    for setting in SETTINGS:
        lines.append(f"{setting} (nearest class mean | zero head, {HEAD_STEPS} steps):")
        for label, result in rows:
            cell = result["fewshot"][setting]
            if "skipped" in cell:
                lines.append(f"  {label:<14} skipped: {cell['skipped']}")
                continue
            head = cell["zero_head"]
            lines.append(
                f"  {label:<14} {cell['accuracy']:6.2f} ± {cell['ci95']:.2f}%  |  {head['accuracy']:6.2f} ± "
                f"{head['ci95']:.2f}%"
            )
    probe = report["linear_probe"]
    if "accuracy" in probe:
        lines.append(
            f"linear probe {probe['accuracy']:.2f}%, k-NN p@1 {report['knn']['p@1']:.2f}%, p@5 "
            f"{report['knn']['p@5']:.2f}%, silhouette {report['silhouette']}"
        )
        if probe["most_confused"]:
            pairs = ", ".join(
                f"{a} / {b} ({p['confused']})" for p in probe["most_confused"][:3] for a, b in [p["classes"]]
            )
            lines.append(f"most confused: {pairs}")
    return lines
