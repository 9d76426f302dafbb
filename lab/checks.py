"""Check runs a session starts on the Check page: the data it picks, and `metacore.check` in a background thread."""

from __future__ import annotations

import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import streamlit as st

from metacore.check import run_check
from metacore.data import folder_classes
from metacore.errors import MetacoreError
from metacore.isolation import compute_slot
from metacore.yours import FeatureModel

MAX_ZIP_FILES = 50_000
MAX_ZIP_BYTES = 2 * 2**30


@st.cache_data(ttl=300, show_spinner=False)  # listing them reads every file name (0.2 s): not on every rerun
def class_folder_sets(root: Path) -> dict[str, Path]:
    """The folders under the data root (two levels deep) that hold one folder of images per class."""
    found = {}
    for folder in sorted(p for p in [root, *root.glob("*"), *root.glob("*/*")] if p.is_dir()):
        try:
            if len(folder_classes(folder)) >= 2:
                found[str(folder.relative_to(root)) or "."] = folder
        except MetacoreError:
            continue
    return found


def unpack_zip(name: str, data: bytes) -> Path:
    """A .zip of class folders, extracted under a fresh temp folder; refuses paths that leave it and zip bombs.
    Returns the folder holding the class folders (the zip's single top folder, if it has one)."""
    import io

    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise MetacoreError(f"{name} is not a readable .zip file") from None
    members = [m for m in archive.infolist() if not m.is_dir()]
    if len(members) > MAX_ZIP_FILES or sum(m.file_size for m in members) > MAX_ZIP_BYTES:
        raise MetacoreError(f"{name} holds more than {MAX_ZIP_FILES:,} files or 2 GB unpacked: check a smaller set")
    out = Path(tempfile.mkdtemp(prefix="metacore-check-"))
    for member in members:
        target = (out / member.filename).resolve()
        if not target.is_relative_to(out.resolve()):
            raise MetacoreError(f"{name}: '{member.filename}' points outside the archive's folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(archive.read(member))
    tops = [p for p in out.iterdir() if not p.name.startswith(("__MACOSX", "."))]
    if len(tops) == 1 and tops[0].is_dir() and all(p.is_dir() for p in tops[0].iterdir()):
        return tops[0]
    return out


@dataclass
class CheckRun:
    """One check in a background thread: what it is doing, how far it is, and its report or its error."""

    model: FeatureModel
    data: Path | tuple  # a folder of class folders, or precomputed (features, labels, classes)
    baselines: dict[str, FeatureModel]
    episodes: int
    per_class: int | None
    label: str = ""  # what the page calls the data (a zip's name, not its temp folder)
    stage: str = "starting"
    done: int = 0
    total: int = 0
    stage_started: float = field(default_factory=time.monotonic)
    report: dict | None = None
    error: str | None = None
    thread: threading.Thread | None = None

    def start(self) -> CheckRun:
        self.thread = threading.Thread(target=self._main, name="check", daemon=True)
        self.thread.start()
        return self

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def eta(self) -> float | None:
        """Seconds left in the current stage, from its pace so far (None before there is a pace)."""
        if self.done <= 0 or self.total <= 0:
            return None
        spent = time.monotonic() - self.stage_started
        return spent / self.done * (self.total - self.done)

    def _progress(self, stage: str, done: int, total: int) -> None:
        if stage != self.stage:
            self.stage, self.stage_started = stage, time.monotonic()
        self.done, self.total = done, total

    def _main(self) -> None:
        try:
            if isinstance(self.data, tuple):  # a features file: no model, no images
                self.report = run_check(None, features=self.data, episodes=self.episodes)
                self.report["model"] = {"name": self.label, "kind": "features"}
            else:
                self.report = run_check(
                    self.model, self.data, baselines=self.baselines, episodes=self.episodes, per_class=self.per_class,
                    progress=self._progress, slot=compute_slot,
                )  # fmt: skip
        except MetacoreError as exc:
            self.error = str(exc)
        except Exception as exc:  # noqa: BLE001 (a bug reaches the page as a sentence; the thread must not die silently)
            self.error = f"the check failed: {type(exc).__name__}: {exc}"
