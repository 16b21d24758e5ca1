"""What counts as a number in the state files: finite ints and floats, never a bool, NaN or infinity."""

from __future__ import annotations

import math


def finite_number(value: object) -> float | None:
    """``value`` as a float when it is a finite int or float (not a bool), else None."""
    valid = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if valid else None
