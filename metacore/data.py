"""Datasets as folders of class subfolders, and a seeded N-way K-shot episode sampler."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from metacore.bodies import cached_inputs, load_input
from metacore.errors import MetacoreError
from metacore.images import InputSpec, image_files

OMNIGLOT_SPLITS = {"background": "images_background", "evaluation": "images_evaluation"}


@dataclass(frozen=True)
class ImageClass:
    """One class: its name, its image files, and a rotation (degrees) applied to all of them."""

    name: str
    files: tuple[Path, ...]
    rotation: int = 0


class ImageClasses:
    """A list of classes whose images are decoded once and kept as tensors."""

    def __init__(self, classes: list[ImageClass], spec: InputSpec, description: str = "") -> None:
        if not classes:
            raise MetacoreError(f"no classes found in {description or 'the dataset'}")
        self.classes = classes
        self.spec = spec
        self.description = description
        self._cache: dict[Path, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    def class_list_sha256(self) -> str:
        """A fingerprint of which classes these are (their names, one per line, in order)."""
        return hashlib.sha256("\n".join(self.names).encode()).hexdigest()

    def _load(self, path: Path) -> torch.Tensor:
        image = self._cache.get(path)
        if image is None:
            image = self._cache[path] = load_input(path, self.spec)
        return image

    def images(self, index: int, picks: list[int] | None = None) -> torch.Tensor:
        """Model inputs of class `index` (all, or those at `picks`): (n, C, H, W) pixels, or (n, D) body features."""
        cls = self.classes[index]
        files = cls.files if picks is None else [cls.files[i] for i in picks]
        batch = torch.stack([self._load(f) for f in files])
        return torch.rot90(batch, cls.rotation // 90, dims=(2, 3)) if cls.rotation else batch

    def subset(self, indices: list[int], description: str) -> ImageClasses:
        """Some of the classes, sharing this dataset's decoded images."""
        part = ImageClasses([self.classes[i] for i in indices], self.spec, description)
        part._cache = self._cache
        return part

    def split_held_out(self, fraction: float) -> tuple[ImageClasses, ImageClasses]:
        """(training classes, held-out validation classes): the last `fraction` of the sorted class list,
        so Omniglot's held-out classes are whole alphabets' characters with all their rotations."""
        n_val = max(2, round(len(self) * fraction))
        if len(self) - n_val < 2:
            raise MetacoreError(f"too few classes ({len(self)}) to hold out {n_val} for validation")
        cut = len(self) - n_val
        # Keep all rotations of one character on one side of the cut.
        while 0 < cut < len(self) and self.classes[cut].files == self.classes[cut - 1].files:
            cut -= 1
        return (
            self.subset(list(range(cut)), f"{self.description} (training classes)"),
            self.subset(list(range(cut, len(self))), f"{self.description} (held-out classes)"),
        )

    def preload(self, progress: bool = False) -> None:
        """Decode every image now (in threads), so episodes are sampled from memory."""
        files = sorted({f for c in self.classes for f in c.files} - set(self._cache))
        if not files:
            return
        if self.spec.body:  # features from the on-disk cache, or computed once and cached
            self._cache.update(zip(files, cached_inputs(files, self.spec, progress)))
            return
        from tqdm import tqdm

        with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
            loaded = pool.map(lambda f: load_input(f, self.spec), files)
            bar = tqdm(loaded, total=len(files), desc="loading images", disable=not progress, leave=False)
            for path, tensor in zip(files, bar):
                self._cache[path] = tensor


def folder_classes(root: Path) -> list[ImageClass]:
    """Every subfolder of `root` that holds images is a class (named after the subfolder)."""
    if not root.is_dir():
        raise MetacoreError(f"folder not found: {root}")
    subs = {p: image_files(p) for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")}
    if subs and all(not files and any(p.is_dir() for p in sub.iterdir()) for sub, files in subs.items()):
        splits = ", ".join(sub.name for sub in subs)  # e.g. train/ and val/, each a folder of class folders
        raise MetacoreError(f"{root} holds splits ({splits}), not classes: choose one with --split")
    classes = []
    for sub, files in subs.items():
        if not files:
            raise MetacoreError(f"class folder '{sub.name}' in {root} has no images")
        classes.append(ImageClass(sub.name, tuple(files)))
    if not classes:
        raise MetacoreError(f"{root} has no class subfolders (expected one folder of images per class)")
    return classes


def omniglot_classes(data_root: Path, split: str, rotations: bool = False) -> list[ImageClass]:
    """Omniglot characters as classes (`alphabet/characterNN`), optionally rotated x90 as extra classes."""
    if split not in OMNIGLOT_SPLITS:
        raise MetacoreError(f"unknown Omniglot split '{split}' (choose: {', '.join(OMNIGLOT_SPLITS)})")
    root = Path(data_root) / "omniglot-py" / OMNIGLOT_SPLITS[split]
    if not root.is_dir():
        raise MetacoreError(
            f"Omniglot not found at {root}; pass --data-root pointing at the folder that holds omniglot-py/"
        )
    classes = []
    for alphabet in sorted(p for p in root.iterdir() if p.is_dir()):
        for character in sorted(p for p in alphabet.iterdir() if p.is_dir()):
            files = image_files(character)
            if not files:
                raise MetacoreError(f"character folder {character} has no images")
            name = f"{alphabet.name}/{character.name}"
            for rotation in (0, 90, 180, 270) if rotations else (0,):
                label = name if rotation == 0 else f"{name}@{rotation}"
                classes.append(ImageClass(label, tuple(files), rotation))
    if not classes:
        raise MetacoreError(f"no Omniglot characters found under {root}")
    return classes


def open_dataset(
    data_root: str | Path,
    dataset: str = "omniglot",
    split: str | None = None,
    spec: InputSpec | None = None,
    rotations: bool = False,
    images: str | None = None,
) -> ImageClasses:
    """A dataset by name under a data root: `omniglot` (characters) or any folder of class folders.

    For a folder dataset, `split` names a subfolder (e.g. `train`/`val`) when there is one.
    `images` ("start:stop", Python slice syntax) keeps a slice of each class's sorted files, so one
    folder can give disjoint meta-training and evaluation images (e.g. "0:500" and "500:").
    """
    spec = spec or InputSpec()
    if rotations and spec.body:
        raise MetacoreError("rotations apply to character images, not to a model that works on body features")
    classes = _dataset_classes(Path(data_root).expanduser(), dataset, split, rotations)
    description = f"{dataset}/{split}" if split else dataset
    if images:
        keep = parse_slice(images)
        classes = [ImageClass(c.name, c.files[keep], c.rotation) for c in classes]
        empty = [c.name for c in classes if not c.files]
        if empty:
            raise MetacoreError(f"--images {images} leaves no images in class '{empty[0]}'")
        description += f" images {images}"
    return ImageClasses(classes, spec, description)


def parse_slice(text: str) -> slice:
    parts = text.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        return slice(*(int(p) if p.strip() else None for p in parts))
    except ValueError:
        raise MetacoreError(f"images must look like start:stop (e.g. 0:500 or 500:), got '{text}'") from None


def dataset_folder(data_root: str | Path, dataset: str, split: str | None = None) -> Path:
    """The folder a data set name resolves to under a data root (whether or not it exists)."""
    root = Path(data_root).expanduser()
    if dataset == "omniglot":
        return root / "omniglot-py" / OMNIGLOT_SPLITS.get(split or "background", f"images_{split}")
    return root / dataset / split if split else root / dataset


def _dataset_classes(root: Path, dataset: str, split: str | None, rotations: bool) -> list[ImageClass]:
    root = root.expanduser()
    if not root.is_dir():
        raise MetacoreError(f"data root not found: {root}")
    if dataset == "omniglot":
        return omniglot_classes(root, split or "background", rotations)
    folder = root / dataset
    if not folder.is_dir():
        raise MetacoreError(f"dataset folder not found: {folder}")
    if split:
        if not (folder / split).is_dir():
            raise MetacoreError(f"split '{split}' not found: {folder / split}")
        folder = folder / split
    classes = folder_classes(folder)
    if rotations:
        classes = [ImageClass(f"{c.name}@{r}" if r else c.name, c.files, r) for c in classes for r in (0, 90, 180, 270)]
    return classes


def parse_range(value: str | int | tuple[int, int], name: str) -> tuple[int, int]:
    """'5' -> (5, 5); '5-20' -> (5, 20)."""
    if isinstance(value, tuple):
        lo, hi = value
    elif isinstance(value, int):
        lo = hi = value
    else:
        try:
            parts = [int(p) for p in str(value).split("-")]
        except ValueError:
            raise MetacoreError(f"--{name} must be a number or a range like 5-20, got '{value}'") from None
        if len(parts) not in (1, 2):
            raise MetacoreError(f"--{name} must be a number or a range like 5-20, got '{value}'")
        lo, hi = parts[0], parts[-1]
    if lo < 1 or hi < lo:
        raise MetacoreError(f"--{name} must be positive and low-high ordered, got {value}")
    return lo, hi


@dataclass
class Task:
    """One episode. Labels are 0..way-1; `classes[i]` names label i. Tensors may carry a leading task axis."""

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    classes: list[str]

    @property
    def way(self) -> int:
        return len(self.classes)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Task:
        def move(x: torch.Tensor, cast: bool) -> torch.Tensor:
            return x.to(device, dtype) if cast and dtype is not None else x.to(device)

        return Task(
            move(self.support_x, True),
            move(self.support_y, False),
            move(self.query_x, True),
            move(self.query_y, False),
            self.classes,
        )


def stack_tasks(tasks: list[Task]) -> Task:
    """Tasks of one shape -> one Task with a leading task axis (for vectorised meta-batches)."""
    return Task(
        torch.stack([t.support_x for t in tasks]),
        torch.stack([t.support_y for t in tasks]),
        torch.stack([t.query_x for t in tasks]),
        torch.stack([t.query_y for t in tasks]),
        tasks[0].classes,
    )


class EpisodeSampler:
    """Seeded N-way K-shot Q-query episodes; way and shot may be ranges (one draw per meta-batch)."""

    def __init__(
        self,
        dataset: ImageClasses,
        way: int | str | tuple[int, int],
        shot: int | str | tuple[int, int],
        query: int,
        seed: int = 0,
    ) -> None:
        self.dataset = dataset
        self.way = parse_range(way, "way")
        self.shot = parse_range(shot, "shot")
        if query < 0:
            raise MetacoreError(f"--query must be >= 0, got {query}")
        self.query = query
        if self.way[0] < 2:
            raise MetacoreError("a task needs at least 2 classes (--way >= 2)")
        if self.way[1] > len(dataset):
            raise MetacoreError(
                f"--way {self.way[1]} is larger than the number of classes ({len(dataset)}) in {dataset.description}"
            )
        need = self.shot[1] + query
        counts = [len(c.files) for c in dataset.classes]
        short = [c.name for c, n in zip(dataset.classes, counts) if n < need]
        if len(dataset) - len(short) < self.way[1]:
            raise MetacoreError(
                f"each class needs at least shot+query = {need} images, but '{short[0]}' has "
                f"{counts[dataset.names.index(short[0])]} ({len(short)} classes are too small)"
            )
        self._eligible = [i for i, n in enumerate(counts) if n >= need]
        self.rng = np.random.default_rng(seed)

    def sample(self, way: int | None = None, shot: int | None = None) -> Task:
        way = way or int(self.rng.integers(self.way[0], self.way[1] + 1))
        shot = shot or int(self.rng.integers(self.shot[0], self.shot[1] + 1))
        chosen = self.rng.choice(self._eligible, size=way, replace=False)
        support, query = [], []
        for index in chosen:
            n = len(self.dataset.classes[index].files)
            picks = self.rng.choice(n, size=shot + self.query, replace=False).tolist()
            images = self.dataset.images(int(index), picks)
            support.append(images[:shot])
            query.append(images[shot:])
        labels = torch.arange(way)
        return Task(
            torch.cat(support),
            labels.repeat_interleave(shot),
            torch.cat(query),
            labels.repeat_interleave(self.query),
            [self.dataset.classes[i].name for i in chosen],
        )

    def sample_batch(self, size: int) -> list[Task]:
        """`size` tasks sharing one way and shot (drawn once), so they can be stacked."""
        way = int(self.rng.integers(self.way[0], self.way[1] + 1))
        shot = int(self.rng.integers(self.shot[0], self.shot[1] + 1))
        return [self.sample(way, shot) for _ in range(size)]


def augment(
    images: torch.Tensor, generator: torch.Generator, shift: float = 0.1, degrees: float = 10.0, scale: float = 0.1
) -> torch.Tensor:
    """Each image under its own small random affine map: a shift of up to `shift` of the image size,
    a rotation of up to `degrees`, a scaling of up to 1 +/- `scale`. Edges extend the border (the
    character's ground). Random numbers come from the CPU `generator`, so runs repeat on any device."""
    n = images.shape[0]

    def uniform(limit: float) -> torch.Tensor:
        return (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) * limit

    angle, zoom = uniform(degrees) * torch.pi / 180, 1 + uniform(scale)
    tx, ty = uniform(2 * shift), uniform(2 * shift)  # affine_grid's coordinates span [-1, 1]
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    theta = theta.to(images.device, images.dtype)
    grid = torch.nn.functional.affine_grid(theta, list(images.shape), align_corners=False)
    return torch.nn.functional.grid_sample(images, grid, padding_mode="border", align_corners=False)


def augment_task(task: Task, generator: torch.Generator) -> Task:
    """The same episode with every support and query image independently distorted (`augment`)."""
    return Task(
        augment(task.support_x, generator),
        task.support_y,
        augment(task.query_x, generator),
        task.query_y,
        task.classes,
    )
