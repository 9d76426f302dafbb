"""metacore: few-shot meta-learning with explicit parameter dicts."""

__version__ = "0.1.0"
