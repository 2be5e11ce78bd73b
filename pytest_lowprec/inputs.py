"""What a test hands the recorder, made fit for the gate: numbers checked at the call (a NaN bound would
let anything pass, text from a log line would compare as a number nobody measured), signature fields
made JSON scalars, and the test's own line found for every verdict's `where`."""

from __future__ import annotations

import math
import sys

from .roofline import Expectation


def plain(value: object) -> object:
    """A JSON scalar for a signature: numbers, strings and bools stay, anything else becomes its repr."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    return repr(value)


def call_site(depth: int = 2) -> str:
    frame = sys._getframe(depth)
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


def floor(minimum: float | Expectation | None) -> tuple[float | None, str, Expectation | None]:
    """A speedup's floor as a number, how it was reached, and the expectation it came from (if any)."""
    if isinstance(minimum, Expectation):
        return minimum.floor, minimum.note(), minimum
    return bound(minimum, "speedup min="), "", None


def bound(value: object, name: str) -> float | None:
    """A bound as given (None: no bound); a NaN bound would let anything pass, text is a typo."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number or None, got {value!r}")
    return float(value)


def as_float(value: object, what: str) -> float:
    """Metrics may arrive as 0-d tensors or numpy scalars; the gate works in Python floats. Text and
    booleans are refused: "35.0" from a log line would compare as a number nobody measured."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number (int, float, or a 0-d tensor), got {type(value).__name__} "
                        f"{value!r}")
    return float(value)
