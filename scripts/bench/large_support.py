"""How long `classify --support` takes on a large support set: 2 classes x 5,000 small PNGs (105x105 drawings).

    python scripts/bench/large_support.py [--per-class 5000] [--checkpoint models/omniglot_metasgd.pt]

Draws the images into a temporary folder (an outline ellipse or rectangle at a random place, one shape a class),
then runs the CLI as a user would, in a fresh process, and prints one JSON line: wall time, peak memory (RSS),
the answer for one held-back image of each class, and the progress bar's last lines (reading, adapting, ETA).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[2]


def draw(folder: Path, per_class: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for shape in ("ellipse", "rectangle"):
        (folder / "support" / shape).mkdir(parents=True)
        for i in range(per_class + 1):  # the last one of each class is the query
            image = Image.new("L", (105, 105), 255)
            x, y = (int(v) for v in rng.integers(10, 40, 2))
            getattr(ImageDraw.Draw(image), shape)((x, y, x + 50, y + 50), outline=0, width=4)
            image.save(folder / ("query" if i == per_class else f"support/{shape}") / f"{shape}_{i:05d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=5000)
    parser.add_argument("--checkpoint", default=None, help="default: the shipped character model")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "query").mkdir()
        draw(folder, args.per_class)
        command = [sys.executable, "-m", "metacore", "classify", "--support", str(folder / "support"),
                   str(folder / "query")]  # fmt: skip
        if args.checkpoint:
            command += ["--checkpoint", args.checkpoint]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        seconds = time.perf_counter() - started
    lines = [line.strip() for line in done.stderr.replace("\r", "\n").splitlines() if line.strip()]
    bars = [line for line in lines if "|" in line]
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({
        "images": 2 * args.per_class, "checkpoint": args.checkpoint or "shipped", "exit": done.returncode,
        "seconds": round(seconds, 1), "peak_rss_mb": round(peak_mb),
        "answers": done.stdout.strip().splitlines(), "messages": [line for line in lines if "|" not in line],
        "last_bars": bars[-3:],
    }))  # fmt: skip


if __name__ == "__main__":
    main()
