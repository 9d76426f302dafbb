"""A few-shot task saved as one zip: its classes' names, support and query images (PNG, the exact pixels), and the
settings it was used with. Reading one is hostile input like any upload: every entry is checked before any image
is decoded, and the first problem found is said in one sentence.

Layout: `task.json` ({"format": "metacore-task/1", "classes": [{"name", "support": [paths], "query": [paths]}],
"settings": {...}}) and `images/<class index>/<support|query>-<i>.png`.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from PIL import Image

from metacore.errors import MetacoreError
from metacore.images import decode

FORMAT = "metacore-task/1"
MAX_IMAGES = 400  # as many as a task in the lab holds
MAX_IMAGE_BYTES = 16 * 2**20  # one PNG as written here is far smaller (images are at most 320 px a side)
MAX_TOTAL_BYTES = 256 * 2**20  # uncompressed, all entries together
MAX_RATIO = 200  # uncompressed / compressed per entry; a PNG barely compresses again, a bomb does by 1000x
MAX_CLASSES = 20


@dataclass
class SavedClass:
    name: str
    support: list[Image.Image] = field(default_factory=list)  # writing also takes PNG bytes
    query: list[Image.Image] = field(default_factory=list)


@dataclass
class SavedTask:
    classes: list[SavedClass]
    settings: dict = field(default_factory=dict)  # e.g. the model's label, the lr, the steps per Run


def _png(image: Image.Image | bytes) -> bytes:
    if isinstance(image, bytes):  # PNG already (the lab keeps each image's)
        return image
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def write_task(task: SavedTask) -> bytes:
    """The task as zip bytes (images stored, not deflated again: PNG is compressed already)."""
    index: list[dict] = []
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for number, saved in enumerate(task.classes):
            entry = {"name": saved.name, "support": [], "query": []}
            for part in ("support", "query"):
                for i, image in enumerate(getattr(saved, part)):
                    path = f"images/{number}/{part}-{i}.png"
                    archive.writestr(path, _png(image))
                    entry[part].append(path)
            index.append(entry)
        record = {"format": FORMAT, "classes": index, "settings": task.settings}
        archive.writestr("task.json", json.dumps(record, indent=1), zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def _checked_entries(archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """Every entry, refused if its name escapes the archive, it is too big or too compressed, or there are too many."""
    entries = [info for info in archive.infolist() if not info.is_dir()]
    if len(entries) > MAX_IMAGES + 1:
        raise MetacoreError(f"it holds {len(entries):,} files; a saved task holds at most {MAX_IMAGES} images")
    total = 0
    for info in entries:
        path = PurePosixPath(info.filename.replace("\\", "/"))
        if path.is_absolute() or ".." in path.parts or ":" in info.filename:
            raise MetacoreError(f"the entry '{info.filename}' points outside the archive; it is not a saved task")
        if info.file_size > MAX_IMAGE_BYTES:
            raise MetacoreError(f"'{info.filename}' unpacks to {info.file_size / 2**20:.0f} MB; too large for a task")
        if info.compress_size and info.file_size / info.compress_size > MAX_RATIO:
            raise MetacoreError(f"'{info.filename}' unpacks {info.file_size // info.compress_size:,} times larger "
                                "than it is stored (a zip bomb?); not opened")  # fmt: skip
        total += info.file_size
    if total > MAX_TOTAL_BYTES:
        raise MetacoreError(f"it unpacks to {total / 2**20:.0f} MB; a saved task is at most "
                            f"{MAX_TOTAL_BYTES // 2**20} MB")  # fmt: skip
    return {info.filename: info for info in entries}


def _read(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """An entry's bytes, never more than its header said (a header can lie about the size)."""
    with archive.open(info) as stream:
        data = stream.read(info.file_size + 1)
    if len(data) > info.file_size:
        raise MetacoreError(f"'{info.filename}' is larger than its zip header says; not opened")
    return data


def read_task(data: bytes) -> SavedTask:
    """A saved task from zip bytes; MetacoreError (one sentence, 'not a saved task: ...') on anything else."""
    try:
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
        except (zipfile.BadZipFile, ValueError):
            raise MetacoreError("it is not a zip file") from None
        with archive:
            entries = _checked_entries(archive)
            if "task.json" not in entries:
                raise MetacoreError("it has no task.json (save a task from the lab's Build page to get one)")
            try:
                record = json.loads(_read(archive, entries["task.json"]))
            except (ValueError, UnicodeDecodeError):
                raise MetacoreError("its task.json is not valid JSON") from None
            if not isinstance(record, dict) or record.get("format") != FORMAT:
                raise MetacoreError(f"its task.json is not of the format {FORMAT}")
            listed = record.get("classes")
            if not isinstance(listed, list) or not 2 <= len(listed) <= MAX_CLASSES:
                raise MetacoreError(f"it must list 2 to {MAX_CLASSES} classes")
            named = {path for c in listed if isinstance(c, dict) for part in ("support", "query")
                     for path in c.get(part) or [] if isinstance(path, str)}  # fmt: skip
            extra = sorted(set(entries) - named - {"task.json"})
            if extra:
                raise MetacoreError(f"'{extra[0]}' is not one of the task's images (only task.json and the images "
                                    "it lists belong in a saved task)")  # fmt: skip
            classes = []
            for c in listed:
                name = c.get("name") if isinstance(c, dict) else None
                if not isinstance(name, str) or not name.strip() or len(name) > 200:
                    raise MetacoreError("a class has no name (or one over 200 characters)")
                saved = SavedClass(name)
                for part in ("support", "query"):
                    for path in c.get(part) or []:
                        if path not in entries:
                            raise MetacoreError(f"class '{name}' lists '{path}', which is not in the zip")
                        getattr(saved, part).append(decode(_read(archive, entries[path]), path))
                classes.append(saved)
            settings = record.get("settings")
            return SavedTask(classes, settings if isinstance(settings, dict) else {})
    except MetacoreError as exc:
        raise MetacoreError(f"not a saved task: {exc}") from None
