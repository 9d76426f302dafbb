"""Example tasks as PIL images: scikit-learn's bundled digits (no download), Omniglot and photos (a data root)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from metacore.data import ImageClass, open_dataset
from metacore.errors import MetacoreError
from metacore.images import open_image

ExampleTask = dict[str, dict[str, list[Image.Image]]]  # class name -> {"support": [...], "query": [...]}


def digits_task(way: int = 5, shot: int = 1, query: int = 5, seed: int = 0) -> ExampleTask:
    """Handwritten digits from scikit-learn's bundled copy (8x8, upscaled), one class per digit."""
    from sklearn.datasets import load_digits

    if not 2 <= way <= 10:
        raise MetacoreError("the digits example has 10 classes: choose 2 to 10")
    digits = load_digits()
    rng = np.random.default_rng(seed)
    task: ExampleTask = {}
    for digit in sorted(rng.choice(10, size=way, replace=False).tolist()):
        picks = rng.choice(np.flatnonzero(digits.target == digit), size=shot + query, replace=False)
        images = [
            Image.fromarray((digits.images[i] * (255 / 16)).astype(np.uint8)).resize((56, 56), Image.Resampling.NEAREST)
            for i in picks
        ]
        task[f"digit {digit}"] = {"support": images[:shot], "query": images[shot:]}
    return task


SAMPLE_ROOT = Path(__file__).resolve().parent / "sample_data"  # bundled: works on a fresh install, no data root


def sample_characters_task(way: int = 5, shot: int = 1, query: int = 5, seed: int = 0) -> ExampleTask:
    """Omniglot characters bundled with metacore (10 evaluation-alphabet characters, 6 drawings each)."""
    if not 2 <= way <= 10 or shot + query > 6:
        raise MetacoreError(
            "the built-in characters are 10 classes of 6 drawings: choose 2-10 classes, shot + query <= 6"
        )
    return dataset_task(SAMPLE_ROOT, "omniglot_sample", None, way, shot, query, seed)


BUNDLED_BACKGROUND = SAMPLE_ROOT / "omniglot_background_300.npz"  # scripts/models/make_bundled_background.py


def bundled_background_root() -> Path:
    """A data root holding `omniglot-bundled/`: the bundled 300 background characters (20 drawings each) as class
    folders of 28x28 PNGs, unpacked once into the cache folder. Meta-training works on a fresh install."""
    from metacore.bodies import cache_dir

    root = cache_dir() / f"bundled-{BUNDLED_BACKGROUND.stat().st_size}"
    folder = root / "omniglot-bundled"
    done = folder / ".complete"
    if not done.is_file():
        with np.load(BUNDLED_BACKGROUND) as data:
            images, names = data["images"], data["names"]
        for name, drawings in zip(names, images):
            target = folder / str(name).replace("/", "__")
            target.mkdir(parents=True, exist_ok=True)
            for i, pixels in enumerate(drawings):
                Image.fromarray(pixels).save(target / f"{i:02d}.png")
        done.write_text("unpacked\n")
    return root


def meta_training_data(data_root: str | Path) -> tuple[str, str, str | None, str]:
    """(data root, dataset, split, a description) to meta-train characters on: Omniglot's background alphabets
    when the data root has them, else the bundled 300 background characters."""
    if omniglot_available(data_root):
        return str(data_root), "omniglot", "background", f"Omniglot's background alphabets under `{data_root}`"
    return str(bundled_background_root()), "omniglot-bundled", None, "300 Omniglot background characters bundled"


IMAGENET_NAMES = {  # the 18 ImageNet-1k classes of imagenet-mini18
    "n01440764": "tench", "n01443537": "goldfish", "n01484850": "great white shark", "n01491361": "tiger shark",
    "n01494475": "hammerhead", "n01496331": "electric ray", "n01498041": "stingray", "n01514668": "cock",
    "n01514859": "hen", "n01518878": "ostrich", "n01530575": "brambling", "n01531178": "goldfinch",
    "n01532829": "house finch", "n01534433": "junco", "n01537544": "indigo bunting", "n01558993": "robin",
    "n01560419": "bulbul", "n01580077": "jay",
}  # fmt: skip
PHOTO_EXAMPLES = {  # label -> (dataset folder, split) under the data root
    "ImageNet photos (fish and birds)": ("imagenet-mini18", "train"),
    "CIFAR-10 photos": ("cifar10-test", None),
}
PHOTO_EXAMPLE_NOTES = {  # what the photo model has already seen of each example's images
    "ImageNet photos (fish and birds)": "ImageNet-1k training photos: the photo model's frozen body was trained on "
    "them, with their labels. A demo, not a test on unseen photos.",
    "CIFAR-10 photos": "CIFAR-10 test photos: nothing in the photo model was trained on them (its body was trained "
    "on ImageNet, whose classes include some close to these).",
}


def dataset_task(
    data_root: str | Path,
    dataset: str,
    split: str | None,
    way: int,
    shot: int,
    query: int,
    seed: int = 0,
    classes: Sequence[ImageClass] | None = None,
) -> ExampleTask:
    """An N-way K-shot task drawn from a data set under the data root, as PIL images with readable class names.
    `classes`: the data set's listing when the caller already has it (listing Omniglot takes ~0.3 s)."""
    classes = open_dataset(data_root, dataset, split).classes if classes is None else classes
    rng = np.random.default_rng(seed)
    if way > len(classes):
        raise MetacoreError(f"{dataset} has {len(classes)} classes: choose at most {len(classes)}")
    task: ExampleTask = {}
    for index in sorted(rng.choice(len(classes), size=way, replace=False).tolist()):
        cls = classes[index]
        if len(cls.files) < shot + query:
            raise MetacoreError(f"class '{cls.name}' has only {len(cls.files)} images: ask for fewer")
        files = [cls.files[i] for i in rng.choice(len(cls.files), size=shot + query, replace=False)]
        images = [open_image(f) for f in files]
        name = IMAGENET_NAMES.get(cls.name, cls.name.replace("/character", " #"))
        task[name] = {"support": images[:shot], "query": images[shot:]}
    return task


OMNIGLOT_EXAMPLES = ("omniglot", "evaluation")  # (dataset, split): alphabets never seen in training


def omniglot_task(
    data_root: str | Path,
    way: int = 5,
    shot: int = 1,
    query: int = 5,
    seed: int = 0,
    classes: Sequence[ImageClass] | None = None,
) -> ExampleTask:
    """An N-way K-shot task from the Omniglot evaluation alphabets (never seen in training)."""
    return dataset_task(data_root, *OMNIGLOT_EXAMPLES, way, shot, query, seed, classes)


def photo_examples_available(data_root: str | Path) -> dict[str, tuple[str, str | None]]:
    return {label: ds for label, ds in PHOTO_EXAMPLES.items() if (Path(data_root) / ds[0]).is_dir()}


def omniglot_available(data_root: str | Path) -> bool:
    return (Path(data_root) / "omniglot-py" / "images_evaluation").is_dir()


def download_omniglot(data_root: str | Path) -> None:
    """Fetch Omniglot with torchvision (an explicit user action); a clear error when offline."""
    from torchvision.datasets import Omniglot

    try:
        for background in (True, False):
            Omniglot(str(data_root), background=background, download=True)
    except Exception as exc:  # network errors come in many types
        raise MetacoreError(f"could not download Omniglot ({type(exc).__name__}: {exc}); are you offline?") from None
