"""The one exception type that means "bad input": the CLI and app show its message."""

import math


class MetacoreError(Exception):
    """A user-facing error with a clear, one-line message."""


def check_number(value, name: str, low: float, high: float, integer: bool = False, above: bool = False) -> float:
    """`value` as a finite number from `low` (or, with `above`, more than it) to `high`, a whole one if `integer`;
    else a MetacoreError naming it."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (float(value).is_integer() or not integer) and (low < value if above else low <= value)
    ok = ok and value <= high
    if not ok:
        show = (lambda x: f"{int(x):,}") if integer else (lambda x: f"{x:g}")
        kind = "a whole number" if integer else "a finite number"
        bound = f"above {show(low)}" if above else f"from {show(low)}"
        raise MetacoreError(f"{name} must be {kind} {bound} up to {show(high)}, got {value!r}")
    return int(value) if integer else float(value)
