"""Speed and memory of `metacore check` (the figures in docs/check.md).

    python scripts/bench/check_speed.py [--data ../shared/data/cifar10-test] [--per-class 100]

A torchvision ResNet-18 (random weights: speed does not depend on them) at 224 px: features per second from
preprocessed images, through torch (batches of 32, inference_mode, channels-last) and through ONNX Runtime; then on
the data's image files, first look and second look (cached); then the 600-episode check on those images after
their features, with the raw-pixels baseline; the peak memory of the process.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from metacore.check import class_folder_images, image_features, run_check  # noqa: E402
from metacore.yours import load_model, torchvision_body  # noqa: E402


def rate(model, images: torch.Tensor, repeats: int = 2) -> float:
    model.features(images[:32])  # warm-up: first calls choose kernels
    started = time.perf_counter()
    for _ in range(repeats):
        model.features(images)
    return repeats * len(images) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10-test"))
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--images", type=int, default=128, help="preprocessed images timed per pass")
    args = parser.parse_args()
    results: dict = {"threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as folder:
        net, _ = torchvision_body("resnet18")
        weights, onnx_file = Path(folder) / "resnet18.pt", Path(folder) / "resnet18.onnx"
        torch.save(net.state_dict(), weights)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net,
                (torch.randn(2, 3, 224, 224),),
                str(onnx_file),
                input_names=["x"],
                dynamic_axes={"x": {0: "batch"}},
                dynamo=True,
                verbose=False,
            )
        torch_model, onnx_model = load_model(weights, "resnet18"), load_model(onnx_file)
        images = torch.randn(args.images, 3, 224, 224)
        results["resnet18_224_torch_images_per_s"] = round(rate(torch_model, images), 1)
        results["resnet18_224_onnx_images_per_s"] = round(rate(onnx_model, images), 1)
        files = class_folder_images(args.data, args.per_class).files
        started = time.perf_counter()
        image_features(torch_model, files)
        results["files"] = len(files)
        results["first_look_s"] = round(time.perf_counter() - started, 1)
        started = time.perf_counter()
        image_features(torch_model, files)
        results["second_look_s"] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        report = run_check(torch_model, args.data, episodes=600, per_class=args.per_class)
        results["check_600_episodes_after_features_s"] = round(time.perf_counter() - started, 1)
        results["check_5w5s"] = report["fewshot"]["5w5s"]["accuracy"]
    results["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
