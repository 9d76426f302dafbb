"""Does meta-learning on the natural classes here help on classes it never saw? Leave-classes-out folds (issue 41).

The 28 natural classes (10 CIFAR-10 + 18 ImageNet-18) are split into 6 folds: one half of CIFAR-10 and one third of
ImageNet-18 are held out, every candidate meta-trains on the other 17 classes (CIFAR-10 test images 0:400, ImageNet-18
train photos) and is scored on the held-out ones: ImageNet-18 `val` 5-way 1-shot (2 queries; photos the body never
saw) and held-out CIFAR-10 images 500:1000 at 5-way 1-shot and 5-shot (15 queries). Every candidate adapts a zero head
for 5 steps on the frozen EfficientNet-Lite2 body's features and is scored on the same episodes as the frozen-body
baseline (the adapter at initialisation: the body's own per-image-normalised features, no meta-learning), whose inner
lr is picked on the fold's training classes. The body's features are computed once (cached by metacore.bodies).

    python scripts/bench/photo_folds.py --data-root ../shared/data --out runs/folds/results.json

Prints the fold table (method x setting: mean over folds, 95% CI over all episodes, and the paired difference to the
baseline) and writes every per-episode score to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from metacore.algorithms import ANIL  # noqa: E402
from metacore.algorithms.metasgd import MetaSGD  # noqa: E402
from metacore.data import EpisodeSampler, ImageClass, ImageClasses, open_dataset  # noqa: E402
from metacore.evaluate import mean_ci95  # noqa: E402
from metacore.inner import run_to_end  # noqa: E402
from metacore.models import BACKBONES, Backbone  # noqa: E402

SPEC = BACKBONES["feature_adapter"].input_spec
STEPS = 5
LR_GRID = (0.1, 0.5, 2.0, 8.0)
SETTINGS = {  # name: (source, way, shot, query)
    "ImageNet-18 val 5w1s": ("imagenet", 5, 1, 2),
    "CIFAR-10 5w1s": ("cifar", 5, 1, 15),
    "CIFAR-10 5w5s": ("cifar", 5, 5, 15),
}


class HeadRates(ANIL, MetaSGD):
    """ANIL with Meta-SGD's learned head rates (one per feature, shared by the classes): the body stays frozen."""


CANDIDATES = {  # name: (learner class, adapter kwargs, meta lr, augmented training photos, centred)
    "frozen body (baseline)": (None, {"rank": 0, "affine": False}, 0.0, False, False),
    "temperature": (ANIL, {"rank": 0, "affine": False}, 1e-2, False, False),
    "head rates + temperature": (HeadRates, {"rank": 0, "affine": False}, 1e-3, False, False),
    "per-channel affine": (ANIL, {"rank": 0, "affine": True}, 1e-3, False, False),
    "adapter rank 8": (ANIL, {"rank": 8}, 1e-4, False, False),
    "adapter rank 64 (shipped design)": (ANIL, {"rank": 64}, 1e-4, False, False),
    "adapter rank 64 + augmentation": (ANIL, {"rank": 64}, 1e-4, True, False),
    "per-channel affine + augmentation": (ANIL, {"rank": 0, "affine": True}, 1e-3, True, False),
    "centred on the training classes' mean (no meta-learning)": (None, {"rank": 0, "affine": True}, 0.0, False, True),
    "centred, then per-channel affine": (ANIL, {"rank": 0, "affine": True}, 1e-3, False, True),
}


class WithViews(ImageClasses):
    """Training classes whose every image is drawn as itself or one of its augmented copies, at random."""

    def __init__(self, base: ImageClasses, augmented: dict[str, dict[str, torch.Tensor]], seed: int) -> None:
        super().__init__(base.classes, base.spec, base.description + " (augmented)")
        self._cache = base._cache
        self.augmented = augmented
        self.rng = np.random.default_rng(seed)

    def images(self, index: int, picks: list[int] | None = None) -> torch.Tensor:
        cls = self.classes[index]
        files = cls.files if picks is None else [cls.files[i] for i in picks]
        rows = []
        for f in files:
            label, name, i = f.parts
            views = self.augmented[label + "-aug"][name]
            view = int(self.rng.integers(len(views) + 1))
            rows.append(self._cache[f] if view == 0 else views[view - 1, int(i)])
        return torch.stack(rows)


def body_features(data_root: Path) -> dict[str, dict[str, torch.Tensor]]:
    """{"cifar": {class: (n, 1280)}, "imagenet-train": ..., "imagenet-val": ...}, files in sorted order."""
    out = {}
    for key, name, split in (("imagenet-val", "imagenet-mini18", "val"), ("imagenet-train", "imagenet-mini18", "train"),
                             ("cifar", "cifar10-test", None)):  # fmt: skip
        dataset = open_dataset(data_root, name, split, SPEC)
        dataset.preload(progress=True)
        out[key] = {c.name: torch.stack([dataset._cache[f] for f in c.files]) for c in dataset.classes}
    return out


def augmented_features(data_root: Path, views: int = 2, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """Body features of `views` strongly augmented copies of every training photo (random resized crop of 35-100%
    of the area, flip, colour jitter): {"cifar-aug": {class: (views, 400, 1280)}, "imagenet-train-aug": ...}. The
    body is too slow on a CPU to augment afresh at every step, so training draws from these fixed copies."""
    from torchvision import transforms

    from metacore.bodies import encode
    from metacore.images import decode, preprocess

    torch.manual_seed(seed)
    distort = transforms.Compose([
        transforms.RandomResizedCrop(256, scale=(0.35, 1.0)),
        transforms.RandomHorizontalFlip(),
        transforms.ColorJitter(0.4, 0.4, 0.4, 0.1),
    ])  # fmt: skip
    out = {}
    for key, name, split, images in (("imagenet-train-aug", "imagenet-mini18", "train", slice(None)),
                                     ("cifar-aug", "cifar10-test", None, slice(0, 400))):  # fmt: skip
        out[key] = {}
        for c in open_dataset(data_root, name, split, SPEC).classes:
            photos = [decode(f) for f in c.files[images]]
            out[key][c.name] = torch.stack([
                encode(torch.stack([preprocess(distort(p), SPEC) for p in photos]), SPEC.body) for _ in range(views)
            ])  # fmt: skip
            print(key, c.name, flush=True)
    return out


def classes_of(features: dict[str, torch.Tensor], names: list[str], images: slice, label: str) -> ImageClasses:
    """Feature tensors as an ImageClasses (file names stand in for the files whose features these are)."""
    classes, cache = [], {}
    for name in names:
        rows = features[name][images]
        files = tuple(Path(label, name, str(i)) for i in range(len(rows)))
        classes.append(ImageClass(name, files))
        cache.update(zip(files, rows))
    dataset = ImageClasses(classes, SPEC, label)
    dataset._cache = cache
    return dataset


def folds(features: dict) -> list[dict]:
    cifar = sorted(features["cifar"])
    imagenet = sorted(features["imagenet-train"])
    out = []
    for half in range(2):
        for third in range(3):
            held_cifar = cifar[5 * half : 5 * half + 5]
            held_imagenet = imagenet[6 * third : 6 * third + 6]
            train_cifar = [c for c in cifar if c not in held_cifar]
            train_imagenet = [c for c in imagenet if c not in held_imagenet]
            train = classes_of(features["cifar"], train_cifar, slice(0, 400), "cifar")
            imagenet_train = classes_of(features["imagenet-train"], train_imagenet, slice(None), "imagenet-train")
            train.classes += imagenet_train.classes
            train._cache |= imagenet_train._cache
            out.append(
                {
                    "name": f"C{half}I{third}",
                    "held_out": held_cifar + held_imagenet,
                    "train": train,
                    "imagenet": classes_of(features["imagenet-val"], held_imagenet, slice(None), "imagenet-val"),
                    "cifar": classes_of(features["cifar"], held_cifar, slice(500, 1000), "cifar"),
                }
            )
    return out


def episode_scores(learner, dataset: ImageClasses, way: int, shot: int, query: int, episodes: int, seed: int,
                   lr: float | None) -> list[float]:  # fmt: skip
    sampler = EpisodeSampler(dataset, way, shot, query, seed=seed)
    scores = []
    with torch.no_grad():
        for _ in range(episodes):
            task = sampler.sample()
            last = run_to_end(
                learner.adapt(
                    task.support_x, task.support_y, task.query_x, task.query_y, lr=lr, way=way, query_steps=()
                )  # fmt: skip
            )
            scores.append(100.0 * last.query_acc.item())
    return scores


def pick_lr(learner, train: ImageClasses, seed: int) -> float:
    """The inner lr (of LR_GRID) with the best mean 5w1s and 5w5s accuracy on the training classes."""
    means = {
        lr: np.mean([np.mean(episode_scores(learner, train, 5, shot, 10, 100, seed, lr)) for shot in (1, 5)])
        for lr in LR_GRID
    }
    return max(means, key=means.get)


def centred(backbone: Backbone, train: ImageClasses) -> Backbone:
    """The adapter with its LayerNorm shift set to minus the mean normalised feature of the training photos."""
    features = torch.cat([train.images(i) for i in range(len(train))])
    mean = torch.nn.functional.layer_norm(features, features.shape[-1:]).mean(0)
    return Backbone("feature_adapter", backbone.params | {"norm.bias": -mean}, **backbone.kwargs)


def meta_train(learner, meta_lr: float, train: ImageClasses, iterations: int, seed: int):
    torch.manual_seed(seed)
    learner.params = {k: v.detach().clone().requires_grad_(True) for k, v in learner.params.items()}
    optimizer = torch.optim.Adam(learner.params.values(), lr=meta_lr)
    sampler = EpisodeSampler(train, "2-5", "1-5", 10, seed=seed)
    for _ in range(iterations):
        learner.outer_step(optimizer, sampler.sample_batch(8), "threads")
    learner.params = {k: v.detach() for k, v in learner.params.items()}
    return learner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--features", nargs="+", help="saved body_features() / augmented_features() dicts (torch.save)")
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--only", nargs="*", help="candidate names to run (default: all)")
    parser.add_argument("--folds", nargs="*", help="fold names to run (default: all six)")
    parser.add_argument("--out", default="runs/folds/results.json")
    parser.add_argument("--make-features", metavar="PATH", help="compute the body features (and augmented ones), save")
    args = parser.parse_args()
    if args.make_features:
        root = Path(args.data_root)
        torch.save(body_features(root) | augmented_features(root), args.make_features)
        return
    if args.features:
        features = {k: v for path in args.features for k, v in torch.load(path, weights_only=True).items()}
    else:
        features = body_features(Path(args.data_root)) | augmented_features(Path(args.data_root))
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {}
    for f, fold in enumerate(folds(features)):
        if args.folds and fold["name"] not in args.folds:
            continue
        baseline = ANIL(Backbone("feature_adapter", rank=0, affine=False), inner_lr=0.5, inner_steps=STEPS)
        lr = pick_lr(baseline, fold["train"], seed=100 + f)
        for name, (cls, kwargs, meta_lr, augment, centre) in CANDIDATES.items():
            if args.only and name not in args.only:
                continue
            started = time.perf_counter()
            torch.manual_seed(f)
            backbone = Backbone("feature_adapter", **kwargs)
            if centre:
                backbone = centred(backbone, fold["train"])
            learner = (cls or ANIL)(backbone, inner_lr=lr, inner_steps=STEPS, head="zero")
            if cls is not None:
                train = WithViews(fold["train"], features, seed=f) if augment else fold["train"]
                learner = meta_train(learner, meta_lr, train, args.iterations, f)
            trained = time.perf_counter() - started
            row = results.setdefault(name, {}).setdefault(fold["name"], {"lr": lr, "train_seconds": round(trained, 1)})
            for setting, (source, way, shot, query) in SETTINGS.items():
                row[setting] = episode_scores(learner, fold[source], way, shot, query, args.episodes, 1000 + f, None)
            summary = ", ".join(f"{s} {np.mean(row[s]):.2f}" for s in SETTINGS)
            print(f"{fold['name']} {name}: lr {lr}, {trained:.0f} s; {summary}", flush=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results))
    print_table(results)


def print_table(results: dict) -> None:
    print("\n".join(table(results)))


def table(results: dict) -> list[str]:
    """Markdown rows: each method's mean over all folds' episodes with its 95% CI, and (in brackets) its paired
    difference to the frozen-body baseline on the same episodes, with that difference's 95% CI."""
    base = results.get("frozen body (baseline)", {})
    lines = ["| method | " + " | ".join(SETTINGS) + " |", "|---|" + "---|" * len(SETTINGS)]
    for name, by_fold in results.items():
        cells = []
        for setting in SETTINGS:
            scores = [s for fold in by_fold.values() for s in fold.get(setting, [])]
            if not scores:
                cells.append("")
                continue
            mean, ci = mean_ci95(scores)
            cell = f"{mean:.2f} ± {ci:.2f}"
            paired = [
                a - b
                for fold, row in by_fold.items()
                for a, b in zip(row.get(setting, []), base.get(fold, {}).get(setting, []))
            ]
            if name != "frozen body (baseline)" and len(paired) == len(scores):
                d, dci = mean_ci95(paired)
                cell += f" ({d:+.2f} ± {dci:.2f})"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


if __name__ == "__main__":
    main()
