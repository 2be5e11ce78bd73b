"""The precision registry: every name `lowprec(precision=...)` accepts, with its element formats, the math
unit its GEMMs want, the quantize-dequantize formats whose accuracy floors it gates, and the nox session
that runs its tests. Config, the hardware model, the noxfile and the suites read it; adding a format is
one entry here beside its quantizer and its expected SQNR (docs/adding-a-format.md).

Pure, and loadable on its own: it imports only the standard library at import time (formats.bounds
inside the method that needs it), so the noxfile reads this file by path in nox's own interpreter,
which need not have this package or its dependencies.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# Math units, narrowest first: the roofline's rates are keyed by these.
UNITS = ("fp4", "fp6", "fp8", "bf16", "fp32")


@dataclass(frozen=True)
class Precision:
    name: str
    elements: tuple[str, ...]  # element formats (formats.minifloat names, or an integer/16-bit type)
    unit: str  # the tensor-core unit its GEMMs run on where the chip has it (else emulated on bf16)
    formats: tuple[str, ...] = ()  # keys of formats.bounds.EXPECTED_QDQ_SQNR_DB (tests/test_precisions.py)
    session: str | None = None  # the nox session that runs its tests; None: only the full `suites` session

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(f"precision {self.name!r}: unit {self.unit!r} is not one of {', '.join(UNITS)}")

    def floors_db(self, data: str = "normal") -> dict[str, float]:
        """Each of its formats' default SQNR floor (dB) on one of the suites' inputs: what a correct
        quantizer gives there, less formats.bounds.MARGIN_DB."""
        from .formats.bounds import expected_floor

        return {fmt: expected_floor(fmt, data) for fmt in self.formats}


PRECISIONS: tuple[Precision, ...] = (
    Precision("fp8", ("fp8_e4m3", "fp8_e5m2"), "fp8",
              ("fp8_e4m3_tensorwise", "fp8_e4m3_rowwise", "fp8_e4m3_1x128", "fp8_e5m2_tensorwise"), "fp8"),
    Precision("fp6", ("fp6_e2m3", "fp6_e3m2"), "fp6", session="fp6"),
    Precision("fp4", ("fp4_e2m1",), "fp4", session="fp4"),
    Precision("nvfp4", ("fp4_e2m1",), "fp4", ("nvfp4", "nvfp4_2d"), "nvfp4"),
    Precision("mxfp8", ("fp8_e4m3", "fp8_e5m2"), "fp8", ("mxfp8", "mxfp8_e5m2"), "fp8"),
    Precision("mxfp6", ("fp6_e2m3", "fp6_e3m2"), "fp6", ("mxfp6", "mxfp6_e3m2"), "fp6"),
    Precision("mxfp4", ("fp4_e2m1",), "fp4", ("mxfp4",), "fp4"),
    # INT8 GEMMs run at the FP8 rate on the chips that have both; INT4 has no tensor-core rate of its own here.
    Precision("int8", ("int8",), "fp8"),
    Precision("int4", ("int4",), "bf16"),
    Precision("bf16", ("bf16",), "bf16"),
    Precision("fp16", ("fp16",), "bf16"),
)
NAMES: tuple[str, ...] = tuple(p.name for p in PRECISIONS)


@dataclass(frozen=True)
class Generation:
    name: str
    capabilities: tuple[tuple[int, int], ...]
    units: tuple[str, ...]  # tensor-core units; a precision whose unit is missing runs emulated on bf16


GENERATIONS: tuple[Generation, ...] = (
    Generation("ampere", ((8, 0), (8, 6), (8, 7)), ("bf16", "fp32")),
    Generation("ada", ((8, 9),), ("fp8", "bf16", "fp32")),
    Generation("hopper", ((9, 0),), ("fp8", "bf16", "fp32")),
    Generation("blackwell", ((10, 0), (10, 3), (12, 0)), ("fp4", "fp6", "fp8", "bf16", "fp32")),
)


def get(name: str) -> Precision:
    for precision in PRECISIONS:
        if precision.name == name:
            return precision
    raise ValueError(f"unknown precision {name!r}; valid precisions: {', '.join(NAMES)}")


def of_format(fmt: str) -> Precision:
    """The precision a quantize-dequantize format (a key of formats.bounds.EXPECTED_QDQ_SQNR_DB) belongs to."""
    for precision in PRECISIONS:
        if fmt in precision.formats:
            return precision
    raise ValueError(f"no precision lists the format {fmt!r}; add it to an entry of pytest_lowprec.precisions")


def sessions() -> dict[str, tuple[str, ...]]:
    """nox session -> the precisions whose tests it runs, in registry order."""
    found: dict[str, tuple[str, ...]] = {}
    for precision in PRECISIONS:
        if precision.session:
            found[precision.session] = (*found.get(precision.session, ()), precision.name)
    return found


def unit_for(names: Iterable[str]) -> str:
    """The math unit the narrowest of these precisions uses; bf16 when none names a narrower one.
    A name the registry does not know (a free-form label) asks for nothing narrower."""
    units = [p.unit for p in PRECISIONS if p.name in set(names)]
    return min(units, key=UNITS.index, default="bf16")


def generation(capability: tuple[int, int]) -> Generation | None:
    return next((g for g in GENERATIONS if tuple(capability) in g.capabilities), None)

