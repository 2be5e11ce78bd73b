"""The decode-attention partial kernel's variants compiled offline for a GPU target, without a GPU.

    python benchmarks/decode_attention_sass.py [--arch 90] [--cache fp8k_nvfp4v] [--qk fma,mma] [--pv ...]
        [--block-n 64] [--warps 4] [--stages 2] [--e2m1 packed] [--loads pointers,tma] [--schedule splits,balanced]
        [--json PATH] [--dump DIR]

For each variant (every combination of the lists given) Triton compiles the kernel for sm_ARCH with the
divisibility hints a real launch has, and the script reads the cubin with the nvdisasm and cuobjdump
that Triton ships: registers, local memory (spills), shared memory, and the loop's instructions per
thread and per token (warp-instructions for one token of one head), by opcode. The loop is the longest
backward branch that does not span an EXIT (TMA kernels' barrier-wait retries sit after the kernel's end and
branch back into the loop); the rescale of the running sums (skipped unless the maximum rises) is left out. A
count, not a time: it shows which variants issue fewer instructions per byte, and which spill.
A benchmark: it prints a table and asserts nothing.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from lowprec_workloads.decode_attention import CACHES
from lowprec_workloads.decode_attention_triton import (
    E2M1_DECODES,
    EVICTS,
    PRODUCTS,
    V_FORMATS,
    Tile,
    _decode_partial_kernel,
    default_splits,
    partition,
    tma_loads,
)

_BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
_ELEMENT = {"bf16": "*bf16", "fp8": "*fp8e4nv"}
_V_ELEMENT = {"bf16": "*bf16", "fp8": "*fp8e4nv", "nvfp4": "*u8"}


def compile_variant(cache: str, tile: Tile, arch: int, head_dim: int = 128):
    k_fmt, v_fmt = CACHES[cache]
    k_tma, v_tma = tma_loads(tile, v_fmt)
    # launch() passes a [sequence-heads, seq, head_dim] descriptor where a tensor is loaded through TMA, None
    # (a constant) where not.
    box = f"[1, {tile.block_n}, {head_dim}]"
    k_desc = f"tensordesc<{_ELEMENT[k_fmt][1:]}{box}>" if k_tma else "constexpr"
    v_desc = f"tensordesc<{_V_ELEMENT[v_fmt][1:]}{box}>" if v_tma else "constexpr"
    signature = {"q_ptr": "*bf16", "k_ptr": _ELEMENT[k_fmt], "k_desc": k_desc, "k_scale_ptr": "*fp32",
                 "v_ptr": _V_ELEMENT[v_fmt], "v_desc": v_desc, "v_scale_ptr": "*fp32", "v_block_ptr": "*fp8e4nv",
                 "acc_ptr": "*fp32", "ml_ptr": "*fp32", "out_ptr": "*fp32", "arrivals_ptr": "*i32", "seq": "i32",
                 "split_len": "i32", "full_splits": "i32", "half_len": "i32", "num_splits": "i32", "bh_count": "i32",
                 "qk_scale": "fp32"}
    constants = {"K_FP8": k_fmt == "fp8", "V_FMT": V_FORMATS[v_fmt], "D": head_dim, "ROWS": max(16, head_dim // 8),
                 "BLOCK_N": tile.block_n, "QK": PRODUCTS[tile.qk], "PV": PRODUCTS[tile.pv],
                 "E2M1_DECODE": E2M1_DECODES[tile.e2m1], "STAGES": tile.stages, "DOT_F32": False,
                 "MMA_CARRY": tile.carry == "mma",
                 "FUSED_COMBINE": tile.combine == "fused", "SPLITS_FIRST": tile.order == "splits",
                 "BALANCED": tile.schedule == "balanced", "K_TMA": k_tma, "V_TMA": v_tma, "EVICT": EVICTS[tile.evict],
                 # the merge's vector at the suite's shape (8 x 32 heads, 32K tokens, 132 SMs)
                 "SPLITS": triton.next_power_of_2(partition(tile, 256, 32768,
                                                            default_splits(tile, 256, 32768, 132)).stride)}
    signature.update(dict.fromkeys(constants, "constexpr"))
    constants.update({name: None for name, tma in (("k_desc", k_tma), ("v_desc", v_tma)) if not tma})
    # What a launch on real tensors specializes: 16-byte aligned pointers, seq, split_len and half_len
    # multiples of 16 (full_splits, num_splits and bh_count are not specialized; descriptors take no such hint).
    names = list(signature)
    aligned = [name for name in names[: names.index("num_splits")]
               if name != "full_splits" and signature[name] != "constexpr"
               and not signature[name].startswith("tensordesc")]
    attrs = {(names.index(name),): [["tt.divisibility", 16]] for name in aligned}
    return triton.compile(ASTSource(_decode_partial_kernel, signature, constants, attrs),
                          target=GPUTarget("cuda", arch, 32), options={"num_warps": tile.warps})


def _run(tool: str, *args: str) -> str:
    return subprocess.run([str(_BIN / tool), *args], capture_output=True, text=True, check=True).stdout


def loop_profile(sass: str) -> tuple[collections.Counter, int]:
    """Opcodes of the longest backward-branch loop in `sass`, less the forward-skipped blocks that hold
    an exp2 (the rare rescale); and that loop's total length."""
    lines = sass.splitlines()
    ops, labels = [], {}
    for i, line in enumerate(lines):
        label = re.match(r"(\.L_x_\d+):", line)
        if label:
            labels[label.group(1)] = i
        op = re.match(r"\s+/\*[0-9a-f]+\*/\s+(@!?U?P\w+\s+)?([A-Z0-9_]+)[.\w]*", line)
        ops.append(op.group(2) if op else None)
    loop = None
    for i, line in enumerate(lines):
        branch = re.search(r"BRA `\((\.L_x_\d+)\)", line)
        if branch and labels.get(branch.group(1), i) < i:
            span = (labels[branch.group(1)], i)
            if "EXIT" in ops[span[0]:span[1]]:
                continue  # a retry stub past the kernel's end, not the loop
            if loop is None or span[1] - span[0] > loop[1] - loop[0]:
                loop = span
    if loop is None:
        return collections.Counter(), 0
    cold = set()
    for i in range(*loop):
        branch = re.search(r"@!?P\w+\s+BRA `\((\.L_x_\d+)\)", lines[i])
        if branch and i < labels[branch.group(1)] <= loop[1]:
            skipped = range(i + 1, labels[branch.group(1)])
            if "MUFU" in {ops[k] for k in skipped}:
                cold.update(skipped)
    body = [ops[i] for i in range(loop[0], loop[1] + 1) if ops[i] and i not in cold]
    return collections.Counter(body), sum(1 for i in range(loop[0], loop[1] + 1) if ops[i])


def profile(cache: str, tile: Tile, arch: int, dump: Path | None = None) -> dict:
    kernel = compile_variant(cache, tile, arch)
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "k.cubin")
        Path(cubin).write_bytes(kernel.asm["cubin"])
        usage = _run("cuobjdump", "--dump-resource-usage", cubin)
        sass = _run("nvdisasm", "-c", cubin)
    if dump:
        stem = dump / f"{cache}_{tile.qk}_{tile.pv}_{tile.block_n}x{tile.warps}x{tile.stages}_{tile.e2m1}_{tile.loads}"
        stem.with_suffix(".sass").write_text(sass)
        stem.with_suffix(".ttgir").write_text(kernel.asm["ttgir"])
    field = {name: int(re.search(name + r":(\d+)", usage).group(1)) for name in ("REG", "SHARED", "LOCAL")}
    hot, total = loop_profile(sass)
    per_thread = sum(hot.values())
    return {"cache": cache, **tile.__dict__, "regs": field["REG"], "spill_bytes": field["LOCAL"],
            "smem": field["SHARED"], "loop_per_thread": per_thread, "loop_with_rescale": total,
            "warp_instr_per_token": per_thread * tile.warps / tile.block_n, "ops": dict(hot.most_common())}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--cache", default=",".join(CACHES))
    parser.add_argument("--qk", default=",".join(PRODUCTS))
    parser.add_argument("--pv", default=",".join(PRODUCTS))
    parser.add_argument("--block-n", default="64")
    parser.add_argument("--warps", default="4")
    parser.add_argument("--stages", default="2")
    parser.add_argument("--e2m1", default="packed")
    parser.add_argument("--loads", default="pointers")
    parser.add_argument("--schedule", default="splits")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--dump", type=Path, help="write each variant's SASS and TTGIR here")
    args = parser.parse_args()
    if args.dump:
        args.dump.mkdir(parents=True, exist_ok=True)
    split = lambda text, kind=str: [kind(x) for x in text.split(",")]  # noqa: E731
    rows = []
    print(f"triton {triton.__version__}, sm_{args.arch}; per token = warp-instructions per token and head")
    print(f"{'cache':12} {'qk':6} {'pv':6} {'tile':>8} {'e2m1':8} {'loads':8} {'schedule':8} {'regs':>4} {'spill':>5} "
          f"{'loop':>5} {'per token':>9}  top opcodes")
    for cache, qk, pv, block_n, warps, stages, e2m1, loads, schedule in itertools.product(
            split(args.cache), split(args.qk), split(args.pv), split(args.block_n, int), split(args.warps, int),
            split(args.stages, int), split(args.e2m1), split(args.loads), split(args.schedule)):
        if e2m1 != "packed" and CACHES[cache][1] != "nvfp4":
            continue
        tile = Tile(qk=qk, pv=pv, block_n=block_n, warps=warps, stages=stages, e2m1=e2m1, loads=loads,
                    schedule=schedule)
        name = f"{cache:12} {qk:6} {pv:6} {f'{block_n}x{warps}x{stages}':>8} {e2m1:8} {loads:8} {schedule:8}"
        try:
            row = profile(cache, tile, args.arch, args.dump)
        except Exception as exc:  # a variant Triton cannot compile is reported, the rest still run
            print(f"{name} failed: {str(exc).strip().splitlines()[-1][:100]}")
            rows.append({"cache": cache, **tile.__dict__, "error": str(exc)[-400:]})
            continue
        rows.append(row)
        top = " ".join(f"{op}:{n}" for op, n in list(row["ops"].items())[:8])
        print(f"{name} {row['regs']:4} {row['spill_bytes']:5} {row['loop_per_thread']:5} "
              f"{row['warp_instr_per_token']:9.1f}  {top}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
