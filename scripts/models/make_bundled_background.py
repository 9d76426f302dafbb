"""Rebuild metacore/sample_data/omniglot_background_300.npz: a small meta-training set bundled with the lab.

    python scripts/models/make_bundled_background.py [--data-root ../shared/data]

The first 10 characters (in sorted order) of each of Omniglot's 30 background alphabets, all 20 drawings each,
at the 28x28 the character model reads (the same bilinear resize `metacore.images.preprocess` applies to the
105x105 originals): 300 classes x 20 images, uint8, ~950 KB compressed. Omniglot: Lake, Salakhutdinov and
Tenenbaum (2015), MIT licence.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from metacore.examples import BUNDLED_BACKGROUND  # noqa: E402
from metacore.paths import default_data_root  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=str(default_data_root()))
    args = parser.parse_args()
    background = Path(args.data_root) / "omniglot-py" / "images_background"
    characters = [
        character
        for alphabet in sorted(p for p in background.iterdir() if p.is_dir())
        for character in sorted(p for p in alphabet.iterdir() if p.is_dir())[:10]
    ]
    images = np.array(
        [
            [
                np.asarray(Image.open(f).convert("L").resize((28, 28), Image.Resampling.BILINEAR, reducing_gap=2.0))
                for f in sorted(character.glob("*.png"))
            ]
            for character in characters
        ],
        dtype=np.uint8,
    )
    names = np.array([f"{c.parent.name}/{c.name}" for c in characters])
    np.savez_compressed(BUNDLED_BACKGROUND, images=images, names=names)
    print(f"{BUNDLED_BACKGROUND}: {images.shape}, {BUNDLED_BACKGROUND.stat().st_size / 1024:.0f} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
