"""What an NVTX range costs the host when no profiler is attached (the plugin wraps every timed call).

    python benchmarks/nvtx_overhead.py

A benchmark, not a test: it prints per-range nanoseconds and asserts nothing.
"""

from __future__ import annotations

import time

from pytest_lowprec.profiling import NVTX_DOMAIN, NvtxRanges

N = 200_000


def per_call_ns(fn) -> float:
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter_ns()
        for _ in range(N):
            fn()
        best = min(best, (time.perf_counter_ns() - start) / N)
    return best


def empty() -> None:
    return None


def annotated() -> None:
    import nvtx

    with nvtx.annotate("bench", domain=NVTX_DOMAIN):
        return None


def main() -> None:
    try:
        import nvtx

        backend = f"nvtx {getattr(nvtx, '__version__', '')}".strip()
    except ImportError:
        backend = "torch.cuda.nvtx or none"
    bare = per_call_ns(empty)
    wrapped = per_call_ns(NvtxRanges().wrap("bench", empty))
    try:
        context = per_call_ns(annotated)
    except ImportError:
        context = float("nan")
    print(f"backend: {backend}")
    print(f"empty call                               {bare:8.0f} ns")
    print(f"in a prebuilt range (timed calls)        {wrapped:8.0f} ns  (+{wrapped - bare:.0f} ns)")
    print(f"in nvtx.annotate, built per call         {context:8.0f} ns  (+{context - bare:.0f} ns)")


if __name__ == "__main__":
    main()
