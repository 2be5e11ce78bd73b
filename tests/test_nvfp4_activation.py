"""The NVFP4 activation round trip in one launch (lowprec_workloads/nvfp4_activation.py) gives the bits of
the eager quantizer and dequantizer it replaces, quantize_nvfp4(x).dequantize() rounded to bfloat16.

On the CPU the kernel runs in Triton's interpreter, in one child process for the module; on a GPU compiled.
"""

from __future__ import annotations

import pytest
import torch

from lowprec_workloads import nvfp4_activation
from pytest_lowprec.formats.nvfp4 import quantize_nvfp4

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
interpreter = pytest.mark.slow  # the interpreter's child process takes seconds: `pytest tests/ --slow`


def _cases() -> dict[str, torch.Tensor]:
    """bfloat16 activations: decode rows at the suite's widths, several rows, and the scales' edges."""
    g = torch.Generator().manual_seed(21)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    nan, inf, negative_zeros = randn(1, 64), randn(1, 64), randn(1, 64)
    nan[0, 3], inf[0, 20] = float("nan"), float("-inf")
    negative_zeros[0, 16:32] = -0.0  # a block of -0.0, and -0.0 beside values
    negative_zeros[0, 40] = -0.0
    cases = {
        "one-row-4096": randn(1, 4096),
        "one-row-14336": randn(1, 14336) * 7,  # 14 programs; the last step of the amax pass partly masked
        "the-largest-it-takes": randn(4, 16384),  # MAX_ELEMENTS: 64 programs, a 16-step amax pass
        "rows": randn(3, 1040) * 5,  # blocks never cross a row; 3120 elements, one partial program
        "zeros": torch.zeros(1, 64),  # global scale 1, every block scale 0
        # amax under 2688 / FLT_MAX: the largest finite encode scale, subnormal values and decode scale
        "tiny": randn(1, 48) * 1e-38,
        "huge": randn(2, 32) * 1e38,
        "blocks-of-far-apart-magnitudes": torch.cat([randn(1, 32) * 1e-6, randn(1, 32) * 1e4], 1),
        "nan": nan,
        "inf": inf,
        "negative-zeros": negative_zeros,
    }
    return {name: x.to(torch.bfloat16) for name, x in cases.items()}


def _eager(x: torch.Tensor) -> torch.Tensor:
    return quantize_nvfp4(x, check_finite=False).dequantize().to(torch.bfloat16)


def _same_bits(got: torch.Tensor, expected: torch.Tensor) -> bool:
    """Equal bits, NaN where the expected has NaN (a NaN's payload is the arithmetic's, not torch's)."""
    nan = torch.isnan(expected)
    return (got.dtype == expected.dtype and got.shape == expected.shape and torch.equal(torch.isnan(got), nan)
            and torch.equal(got[~nan].view(torch.int16), expected[~nan].view(torch.int16)))


@pytest.fixture(scope="module")
def interpreted() -> dict[str, torch.Tensor]:
    cases = _cases()
    return dict(zip(cases, nvfp4_activation.interpreted(list(cases.values())), strict=True))


@interpreter
@pytest.mark.parametrize("case", list(_cases()))
def test_round_trip_gives_the_eager_quantizers_bits_in_the_interpreter(interpreted, case):
    assert _same_bits(interpreted[case], _eager(_cases()[case]))


@interpreter
def test_a_nan_makes_its_block_nan_and_leaves_the_others_scaled_as_eagerly(interpreted):
    out = interpreted["nan"]
    assert torch.isnan(out[0, :16]).all() and not torch.isnan(out[0, 16:]).any()


def test_only_a_decode_sized_activation_takes_the_launch():
    assert nvfp4_activation.fits(4096) and nvfp4_activation.fits(4 * 14336)
    assert not nvfp4_activation.fits(64 * 4096)  # a prefill: the eager quantizer
    assert not nvfp4_activation.fits(0)


@pytest.mark.parametrize(("x", "message"), [
    (torch.zeros(1, 64), "takes a bfloat16 tensor .* got torch.float32"),
    (torch.zeros(1, 40, dtype=torch.bfloat16), "last dimension is a multiple of 16, got .* \\(1, 40\\)"),
    (torch.zeros(64, 4096, dtype=torch.bfloat16), "of 1 to 65536 elements"),
    (torch.zeros((), dtype=torch.bfloat16), "takes a bfloat16 tensor"),
])
def test_round_trip_refuses_what_it_cannot_quantize_and_names_the_eager_path(x, message):
    with pytest.raises(ValueError, match=message) as refused:
        nvfp4_activation.nvfp4_roundtrip(x)
    assert "quantize_nvfp4(x).dequantize()" in str(refused.value)


def test_round_trip_refuses_cpu_tensors_outside_the_interpreter():
    with pytest.raises(ValueError, match="runs on CUDA tensors"):
        nvfp4_activation.nvfp4_roundtrip(torch.zeros(1, 64, dtype=torch.bfloat16))


def test_round_trip_work_reads_and_writes_the_bfloat16_activation_in_one_launch():
    work = nvfp4_activation.roundtrip_work(4096)
    assert (work.nbytes, work.kernels) == (4096 * 4, 1)


@needs_cuda
@pytest.mark.parametrize("case", list(_cases()))
def test_round_trip_gives_the_eager_quantizers_bits_on_cuda(case):
    x = _cases()[case].cuda()
    assert _same_bits(nvfp4_activation.nvfp4_roundtrip(x), _eager(x))
