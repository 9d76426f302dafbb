"""The adapted model of the session's task, exported to run anywhere (`metacore.export.export_task`), as one zip."""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path

from metacore.algorithms import MAML
from metacore.export import export_task
from metacore.isolation import compute_slot
from metacore.models import Params


def exported_zip(learner: MAML, params: Params, classes: list[str]) -> bytes:
    """model.onnx, predict.py, model.pt2 and a README in a zip, made in a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="export-") as folder:
        out = Path(folder) / "few_shot_model"
        with compute_slot():
            export_task(learner, params, classes, out)
        (out / "README.txt").write_text(
            f"A few-shot model adapted to {len(classes)} classes: {', '.join(classes)}.\n\n"
            "pip install onnxruntime numpy pillow\n"
            "python predict.py photo1.jpg photo2.png ...   # prints file<TAB>class<TAB>probability\n\n"
            "model.onnx takes uint8 pixels (n, size, size, channels) after predict.py's resize and crop, and gives\n"
            "class probabilities; its metadata holds the class names ('classes') and the input size ('input').\n"
            "model.pt2 is the same network for PyTorch: torch.export.load('model.pt2').module()(pixels).\n"
        )
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(out.iterdir()):
                archive.write(file, f"few_shot_model/{file.name}")
    return buffer.getvalue()
