"""What a checkpoint meta-trained on, from its records, and whether the classes a command scores are among them.

Few-shot numbers mean "classes it never saw" only when the scored classes are disjoint from meta-training. Each
recorded stage names its data set and split; its classes are listed again under the data root in use (the record's
class-list hash says whether they are still the same list). Names are compared without rotation suffixes.
"""

from __future__ import annotations

from pathlib import Path

from metacore.data import ImageClasses, _dataset_classes
from metacore.errors import MetacoreError


def stage_name(stage: dict) -> str:
    split = f"/{stage['split']}" if stage.get("split") else ""
    images = f" images {stage['images']}" if stage.get("images") else ""
    return f"{stage.get('dataset')}{split}{images}"


def trained_classes(training: dict, data_root: str | Path) -> tuple[set[str], list[str]]:
    """(the names of every class a recorded stage trained or validated on, the stages that could not be listed)."""
    names: set[str] = set()
    unknown: list[str] = []
    for stage in training.get("data_stages") or []:
        if not stage.get("dataset"):
            unknown.append(str(stage.get("checkpoint", "an unrecorded stage")))
            continue
        try:
            classes = _dataset_classes(Path(data_root), stage["dataset"], stage.get("split"), False)
        except MetacoreError:
            unknown.append(stage_name(stage))
            continue
        names |= {c.name for c in classes}
    return names, unknown


def overlap(meta: dict, scored: ImageClasses, data_root: str | Path) -> dict:
    """How many of the scored classes the checkpoint meta-trained on, a sentence when any, and the recorded stages
    whose data set is not under this data root (so could not be checked)."""
    training = meta.get("training") if isinstance(meta.get("training"), dict) else {}
    names = {n.split("@")[0] for n in scored.names}
    trained, unknown = trained_classes(training, data_root)
    shared = sorted(names & trained)
    stages = ", ".join(sorted({stage_name(s) for s in training.get("data_stages") or [] if s.get("dataset")}))
    warning = None
    if shared:
        warning = (
            f"{len(shared)} of the {len(names)} classes scored here were in this model's meta-training ({stages}; "
            f"e.g. {', '.join(shared[:3])}): trained classes, not classes it never saw (and the images may be ones it "
            "trained on)"
        )
    return {
        "trained_classes_scored": len(shared),
        "classes_scored": len(names),
        "unchecked_stages": unknown,  # recorded stages whose data set is not under this data root
        "warning": warning,
    }
