"""The decode-attention kernel's inline PTX (E2M1 decodes), run on the CPU by a small emulator of the
instructions it uses, for every byte at every position: a wrong shift, mask or prmt selector shows here,
not on a GPU run."""

from __future__ import annotations

import re

import pytest
import torch

from pytest_lowprec.formats.minifloat import E2M1

MASK = 0xFFFFFFFF


def _prmt(a: int, b: int, selector: int) -> int:
    """prmt.b32 (default mode): result byte i is byte (selector nibble i & 7) of {b, a}; with the nibble's
    bit 3 set, that byte's sign bit repeated over the byte."""
    source = (b << 32) | a
    out = 0
    for i in range(4):
        nibble = (selector >> (4 * i)) & 0xF
        byte = (source >> (8 * (nibble & 7))) & 0xFF
        if nibble & 8:
            byte = 0xFF if byte & 0x80 else 0
        out |= byte << (8 * i)
    return out


def _e4m3x2_to_f16x2(h: int) -> int:
    """cvt.rn.f16x2.e4m3x2: the low byte to the low half, the high byte to the high half (exact)."""
    codes = torch.tensor([h & 0xFF, (h >> 8) & 0xFF], dtype=torch.uint8).view(torch.float8_e4m3fn)
    lo, hi = (int(x) for x in codes.to(torch.float16).view(torch.int16).tolist())
    return (lo & 0xFFFF) | ((hi & 0xFFFF) << 16)


def _f16x2_mul(a: int, b: int) -> int:
    """mul.rn.f16x2: each half times the same half of b, rounded to nearest even (the float32 product of
    two float16 values is exact, so one rounding to float16 is the correctly rounded product)."""
    halves = torch.tensor([a & 0xFFFF, a >> 16, b & 0xFFFF, b >> 16], dtype=torch.int32).to(torch.int16)
    x = halves.view(torch.float16).float()
    product = (x[:2] * x[2:]).to(torch.float16).view(torch.int16).tolist()
    return (product[0] & 0xFFFF) | ((product[1] & 0xFFFF) << 16)


def run_ptx(asm: str, inputs: list[int], outputs: int) -> list[int]:
    """Execute `asm` (the subset the kernel's decodes use) with $0..$(outputs-1) as outputs and the
    following operands bound to `inputs`; returns the outputs as unsigned 32-bit integers."""
    regs = {f"${outputs + i}": value & MASK for i, value in enumerate(inputs)}

    def val(operand: str) -> int:
        operand = operand.strip()
        if operand in regs:
            return regs[operand]
        return int(operand, 0) & MASK

    for raw in asm.split(";"):
        line = raw.strip().removeprefix("{").strip()  # the block's own braces, not a {lo, hi} operand's
        if not line or line == "}" or line.startswith(".reg"):
            continue
        op, rest = line.split(None, 1)
        unpack = re.fullmatch(r"\{\s*(\S+),\s*(\S+)\s*\},\s*(\S+)", rest)
        if op == "mov.b32" and unpack:
            word = val(unpack.group(3))
            regs[unpack.group(1)], regs[unpack.group(2)] = word & 0xFFFF, word >> 16
            continue
        pack = re.fullmatch(r"(\S+),\s*\{\s*(\S+),\s*(\S+)\s*\}", rest)
        if op == "mov.b32" and pack:
            regs[pack.group(1)] = (val(pack.group(2)) & 0xFFFF) | ((val(pack.group(3)) & 0xFFFF) << 16)
            continue
        dst, *srcs = (x.strip() for x in rest.split(","))
        if op == "mov.b32":
            regs[dst] = val(srcs[0])
        elif op == "prmt.b32":
            regs[dst] = _prmt(val(srcs[0]), val(srcs[1]), val(srcs[2]))
        elif op == "shl.b32":
            regs[dst] = (val(srcs[0]) << val(srcs[1])) & MASK
        elif op == "shr.b32":
            regs[dst] = val(srcs[0]) >> val(srcs[1])
        elif op == "mul.lo.u32":
            regs[dst] = (val(srcs[0]) * val(srcs[1])) & MASK
        elif op == "mul.rn.f16x2":
            regs[dst] = _f16x2_mul(val(srcs[0]), val(srcs[1]))
        elif op == "and.b32":
            regs[dst] = val(srcs[0]) & val(srcs[1])
        elif op == "or.b32":
            regs[dst] = val(srcs[0]) | val(srcs[1])
        elif op == "cvt.rn.f16x2.e4m3x2":
            regs[dst] = _e4m3x2_to_f16x2(val(srcs[0]))
        else:
            raise NotImplementedError(f"the emulator has no {op!r} (line: {line!r})")
    return [regs[f"${i}"] for i in range(outputs)]


def _f16_bits(values: torch.Tensor) -> list[int]:
    return [x & 0xFFFF for x in values.to(torch.float16).view(torch.int16).tolist()]


def _e2m1(code: int) -> torch.Tensor:
    return E2M1.decode(torch.tensor([code]))


@pytest.fixture(scope="module")
def kernel_module():
    from lowprec_workloads import decode_attention_triton

    return decode_attention_triton


def _words():
    """Every byte value at every position of a 32-bit word."""
    for v in range(256):
        yield [v, (v + 85) % 256, (v + 170) % 256, (v + 255) % 256]


def test_packed_decode_places_each_nibble_at_2_to_the_minus_14_of_its_e2m1_value(kernel_module):
    for b in _words():
        word = b[0] | b[1] << 8 | b[2] << 16 | b[3] << 24
        lo01, lo23, hi01, hi23 = run_ptx(kernel_module.PACKED_PTX, [word], 4)
        got = [lo01 & 0xFFFF, lo01 >> 16, lo23 & 0xFFFF, lo23 >> 16, hi01 & 0xFFFF, hi01 >> 16, hi23 & 0xFFFF,
               hi23 >> 16]
        codes = [x & 0xF for x in b] + [x >> 4 for x in b]
        want = _f16_bits(torch.cat([_e2m1(c) for c in codes]) * 2.0**-14)
        assert got == want, f"bytes {[hex(x) for x in b]}"


def test_scaled_pairs_decode_gives_each_byte_times_its_block_scale_exactly(kernel_module):
    """Every byte times every finite positive E4M3 scale (times 2**7, as the kernel passes it): both halves
    are the exact float16 of 2**-7 of the code's E2M1 value times the scale, low nibble in the low half."""
    scales = torch.arange(1, 127, dtype=torch.uint8).view(torch.float8_e4m3fn).to(torch.float64)
    codes = E2M1.decode(torch.arange(16)).to(torch.float64)
    for byte in range(256):
        for scale in scales.tolist():
            (word,) = run_ptx(kernel_module.SCALED_PAIRS_PTX, [byte, _f16_bits(torch.tensor([scale * 128]))[0]], 1)
            exact = torch.stack([codes[byte & 0xF], codes[byte >> 4]]) * scale * 2.0**-7
            assert torch.equal(exact.to(torch.float16).to(torch.float64), exact), (byte, scale)
            assert [word & 0xFFFF, word >> 16] == _f16_bits(exact), (hex(byte), scale)


def test_the_emulators_f16x2_multiply_rounds_each_half_to_nearest_even():
    one_and_ulp, three = 0x3C01, 0x4200  # 1 + 2**-10 and 3: their product, 3 + 3 * 2**-10, is a tie
    assert _f16x2_mul(one_and_ulp | 0x3C00 << 16, three | three << 16) == 0x4202 | 0x4200 << 16


def _words_and_halves(asm: str, word: int) -> tuple[list[int], list[int]]:
    """The four bytes' low-nibble outputs and high-nibble outputs of `asm` on one 32-bit word."""
    lo01, lo23, hi01, hi23 = run_ptx(asm, [word], 4)
    return ([lo01 & 0xFFFF, lo01 >> 16, lo23 & 0xFFFF, lo23 >> 16],
            [hi01 & 0xFFFF, hi01 >> 16, hi23 & 0xFFFF, hi23 >> 16])


def test_lut_decode_widens_both_nibbles_of_each_byte_to_their_exact_e2m1_values(kernel_module):
    for b in _words():
        lo, hi = _words_and_halves(kernel_module.LUT_PTX, b[0] | b[1] << 8 | b[2] << 16 | b[3] << 24)
        assert lo == _f16_bits(torch.cat([_e2m1(x & 0xF) for x in b])), f"bytes {[hex(x) for x in b]}"
        assert hi == _f16_bits(torch.cat([_e2m1(x >> 4) for x in b])), f"bytes {[hex(x) for x in b]}"


@pytest.mark.parametrize("name", ["PACKED_PTX", "LUT_PTX"])
def test_each_decodes_outputs_depend_on_their_own_byte_alone(kernel_module, name):
    """Triton may move a pure elementwise asm across a broadcast or a reshape; an asm whose output i read
    any byte but byte i would then decode other bytes (the first lut decode did, on an H200)."""
    asm = getattr(kernel_module, name)
    for position in range(4):
        others = [0x5A, 0xC3, 0x7E, 0x18]
        first = _words_and_halves(asm, sum(x << 8 * i for i, x in enumerate(others)))
        for v in range(256):
            word = sum((v if i == position else x) << 8 * i for i, x in enumerate(others))
            lo, hi = _words_and_halves(asm, word)
            unchanged = [i for i in range(4) if i != position]
            assert [lo[i] for i in unchanged] == [first[0][i] for i in unchanged], (name, position, v)
            assert [hi[i] for i in unchanged] == [first[1][i] for i in unchanged], (name, position, v)


def test_the_emulator_refuses_an_instruction_it_does_not_model():
    with pytest.raises(NotImplementedError, match="xor.b32"):
        run_ptx("xor.b32 $0, $1, 1;", [0], 1)


def test_the_emulators_prmt_replicates_the_selected_bytes_sign_when_the_selector_asks():
    assert _prmt(0x00008000, 0, 0x0009) == 0x000000FF  # byte 1 of a (0x80): sign set, repeated
    assert _prmt(0x44332211, 0x88776655, 0x7654) == 0x88776655
