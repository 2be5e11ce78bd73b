"""The work an eager PyTorch callable asks of the chip, read from the operators it dispatches.

For the hardware model (roofline.Work): every ATen operator that launches a kernel becomes one phase,
moving its input and output tensors' bytes once through device memory and doing the FLOPs torch's own
flop counter assigns it (matrix products, convolutions, attention) on the math unit of its inputs.
Views, allocations and host reads launch nothing and are left out. Kernels that do not go through
ATen (Triton, CUDA C++ loaded with ctypes) are invisible here: declare those sides by hand.
The callable runs twice, untimed, and only the second call is read: a first call autotunes Triton
kernels (whose benchmarking zeroes a 256 MB buffer through ATen between trials: an FP8 training step
read 100x its own bytes that way), builds cuBLAS handles and fills caches. Its side effects happen
twice more.
"""

from __future__ import annotations

from collections.abc import Callable

from .roofline import Work

# Operators that overwrite their destination without reading it.
_OVERWRITE = ("copy_", "fill_", "zero_", "normal_", "uniform_", "random_", "bernoulli_")
# Operators that allocate or read a scalar back without launching a kernel of their own.
_NO_KERNEL = ("empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "_local_scalar_dense",
              "lift_fresh", "set_", "resize_", "record_stream", "_to_copy_meta")


def _unit(dtypes: set) -> str:
    import torch

    if any(d in (torch.float8_e4m3fn, torch.float8_e5m2) for d in dtypes):
        return "fp8"
    if getattr(torch, "float4_e2m1fn_x2", None) in dtypes:
        return "fp4"
    if dtypes & {torch.bfloat16, torch.float16}:
        return "bf16"
    return "fp32"


def eager_work(fn: Callable[[], object], device_type: str = "cuda") -> tuple[Work, ...]:
    """Run `fn` to warm it up, then once more, returning one Work per kernel-launching ATen operator on
    `device_type` tensors of that second call."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten
    from torch.utils.flop_counter import flop_registry

    phases: list[Work] = []

    def tensors(tree) -> list:
        return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor) and t.device.type == device_type]

    class Counter(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            if func.is_view or func.__name__.split(".")[0] in _NO_KERNEL:
                return out
            inputs, outputs = tensors((args, kwargs)), tensors(out)
            # An argument the operator writes in place (copy_, the fused optimizer's states) is read and written.
            written = [arg for arg, spec in zip(args, func._schema.arguments, strict=False)
                       if spec.alias_info is not None and spec.alias_info.is_write]
            written += [kwargs[spec.name] for spec in func._schema.arguments
                        if spec.alias_info is not None and spec.alias_info.is_write and spec.name in kwargs]
            written = tensors(written)
            if func.__name__.split(".")[0] in _OVERWRITE:
                inputs = [t for t in inputs if not any(t is w for w in written)]
            if not inputs and not outputs:
                return out
            nbytes = sum(t.numel() * t.element_size() for t in inputs + written
                         + [t for t in outputs if not any(t is w for w in written)])
            formula = flop_registry.get(func._overloadpacket)
            flops = float(formula(*args, **kwargs, out_val=out)) if formula is not None else 0.0
            phases.append(Work(flops=flops, nbytes=float(nbytes), unit=_unit({t.dtype for t in inputs})))
            return out

    fn()
    with Counter():
        fn()
    if not phases:
        raise ValueError(f"{fn!r} dispatched no ATen operator on {device_type} tensors: its kernels are not "
                         "torch's (Triton, CUDA C++), so declare its Work by hand")
    return tuple(phases)
