"""Where the shipped model and the data sets are found by default (CLI and app alike)."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHIPPED_MODEL = PROJECT_ROOT / "models" / "omniglot_metasgd.pt"
PHOTO_MODEL = PROJECT_ROOT / "models" / "photo_lite2.pt"
LSTM_MODEL = PROJECT_ROOT / "models" / "omniglot_lstm.pt"  # the LSTM meta-learner: a learned update rule


def default_data_root() -> Path:
    """METACORE_DATA_ROOT, else ../shared/data next to the project, else ./data."""
    env = os.environ.get("METACORE_DATA_ROOT")
    if env:
        return Path(env)
    shared = PROJECT_ROOT.parent / "shared" / "data"
    return shared if shared.is_dir() else PROJECT_ROOT / "data"
