"""Which device runs the gate: its key, its peak rates, its software stack and its clocks.

No pytest here. Probing goes through small functions that take torch or a command
runner as arguments' defaults, so tests fake a device without one.
"""

from __future__ import annotations

import ctypes
import platform
import re
import subprocess
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace

from . import precisions


@dataclass(frozen=True)
class GpuSpec:
    """A GPU in the registry: dense datasheet peaks (TFLOP/s per math unit, None where the chip has no
    such unit; HBM and host-link GB/s), and what this project measured on it (`measured`: ceiling
    metric names as suites/test_roofline.py records them, `measured_on`: device, stack and date)."""

    key: str
    pattern: str  # regex over the lower-cased device name
    bf16_tflops: float
    fp8_tflops: float | None
    fp4_tflops: float | None
    hbm_gbps: float
    fp32_tflops: float | None = None  # CUDA cores, no tensor cores
    link_gbps: float = 64.0  # host link per direction: PCIe Gen5 x16 unless said
    measured: Mapping[str, float] = field(default_factory=dict)
    measured_on: str = ""

    def tflops(self, unit: str) -> float | None:
        """Dense rate of a math unit; FP6 runs at FP8's rate where the chip has FP4 units (Blackwell, whose
        generation has both in precisions.GENERATIONS): no datasheet gives FP6 a figure of its own."""
        if unit == "fp6":
            return self.fp8_tflops if self.fp4_tflops else None
        return {"bf16": self.bf16_tflops, "fp8": self.fp8_tflops, "fp4": self.fp4_tflops,
                "fp32": self.fp32_tflops}.get(unit)


# Measured by suites/test_roofline.py (best of 20 CUDA-event timings; copy counts bytes read and
# written; GEMMs at 8192^3 on N(0,1) data): the H100's from baselines/h100.json.
_H100_MEASURED = {"ceiling.copy_tb_per_s": 3.008, "ceiling.gemm_tflops.bf16": 794.3, "ceiling.gemm_tflops.fp8": 1494.0}
_H100_ON = "NVIDIA H100 80GB HBM3, torch 2.11.0+cu130, cuBLAS 13.1.0, 2026-11-22"
# The H200's, by the same test with the pinned host-to-device link (256 MiB) and the cost of one kernel
# replayed from a CUDA graph (200 one-element kernels); the H100 predates those two measurements.
_H200_MEASURED = {"ceiling.copy_tb_per_s": 4.253, "ceiling.gemm_tflops.bf16": 802.1, "ceiling.gemm_tflops.fp8": 1506.0,
                  "ceiling.h2d_gb_per_s": 55.5, "ceiling.launch_us": 1.06}
_H200_ON = "NVIDIA H200, torch 2.11.0+cu130, driver 580.159.04, 2026-11-30"

# Ordered: the first pattern that matches a device name wins, so variants come
# before the plain part (an "H100 PCIe" must not become an "h100").
GPU_SPECS: tuple[GpuSpec, ...] = (
    GpuSpec("gb300", r"gb300", 2500.0, 5000.0, 15000.0, 8000.0, fp32_tflops=80.0, link_gbps=450.0),
    GpuSpec("b300", r"\bb300\b", 2250.0, 4500.0, 13500.0, 8000.0, fp32_tflops=75.0, link_gbps=128.0),
    GpuSpec("gb200", r"gb200", 2500.0, 5000.0, 10000.0, 8000.0, fp32_tflops=80.0, link_gbps=450.0),
    GpuSpec("b200", r"\bb200\b", 2250.0, 4500.0, 9000.0, 8000.0, fp32_tflops=75.0, link_gbps=64.0),
    GpuSpec("gh200", r"gh200", 989.0, 1979.0, None, 4000.0, fp32_tflops=67.0, link_gbps=450.0),
    GpuSpec("h200", r"\bh200\b", 989.0, 1979.0, None, 4800.0, fp32_tflops=67.0,
            measured=_H200_MEASURED, measured_on=_H200_ON),
    GpuSpec("h100-pcie", r"\bh100\b.*pcie", 756.0, 1513.0, None, 2000.0, fp32_tflops=51.0),
    GpuSpec("h100-nvl", r"\bh100\b.*nvl", 835.0, 1671.0, None, 3900.0, fp32_tflops=60.0),
    GpuSpec("h100", r"\bh100\b", 989.0, 1979.0, None, 3350.0, fp32_tflops=67.0,
            measured=_H100_MEASURED, measured_on=_H100_ON),
    GpuSpec("h20", r"\bh20\b", 148.0, 296.0, None, 4000.0, fp32_tflops=44.0),
    GpuSpec("l40s", r"\bl40s\b", 362.0, 733.0, None, 864.0, fp32_tflops=91.6, link_gbps=32.0),
    GpuSpec("l4", r"\bl4\b", 121.0, 242.0, None, 300.0, fp32_tflops=30.3, link_gbps=32.0),
    GpuSpec("a100", r"\ba100\b", 312.0, None, None, 2039.0, fp32_tflops=19.5, link_gbps=32.0),
    GpuSpec("a10g", r"\ba10g\b", 70.0, None, None, 600.0, fp32_tflops=31.2, link_gbps=32.0),
    GpuSpec("rtx5090", r"rtx 5090", 209.5, 419.0, 838.0, 1792.0, fp32_tflops=104.8),
    GpuSpec("rtx4090", r"rtx 4090", 165.2, 330.3, None, 1008.0, fp32_tflops=82.6, link_gbps=32.0),
)

# Dense tensor-core FLOPs per clock per SM by compute capability and unit, the generation's figure that
# its datasheets imply (rate / SMs / boost clock): A100 312 T / 108 / 1.41 GHz = 2048; H100 989 T / 132 /
# 1.83 GHz = 4096; B200 2250 T / 148 / 1.86 GHz = 8192; consumer parts (8.9, 12.x) at their float32-accumulate
# rate. For a GPU that is not in GPU_SPECS, with its SM count and clock. Which units a generation has is
# the precision registry's (precisions.GENERATIONS); a unit it lacks gets no rate.
_PER_SM_CLOCK: dict[tuple[int, int], dict[str, float]] = {
    (8, 0): {"bf16": 2048.0},
    (8, 6): {"bf16": 512.0},
    (8, 9): {"bf16": 1024.0, "fp8": 2048.0},
    (9, 0): {"bf16": 4096.0, "fp8": 8192.0},
    (10, 0): {"bf16": 8192.0, "fp8": 16384.0, "fp4": 32768.0},
    (10, 3): {"bf16": 8192.0, "fp8": 16384.0, "fp4": 49152.0},
    (12, 0): {"bf16": 512.0, "fp8": 1024.0, "fp4": 2048.0},
}
# CUDA-core float32 FLOPs per clock per SM: 256 (128 FMA lanes; H100 67 T / 132 / 1.98 GHz) on every
# generation since GA10x and Hopper, 128 on the A100 (19.5 T / 108 / 1.41 GHz).
_FP32_PER_SM_CLOCK = {(8, 0): 128.0}
CPU_KEY = "cpu"
AUTO_KEY = "auto"
_MULTI_KEY = re.compile(r"^(\d+)x_([a-z0-9][a-z0-9-]*)$")


def known_keys() -> list[str]:
    return [spec.key for spec in GPU_SPECS] + [CPU_KEY]


def gpu_count(key: str) -> int:
    """2 for '2x_h200'; 1 for a single-GPU key."""
    match = _MULTI_KEY.match(key)
    return int(match.group(1)) if match else 1


def base_key(key: str) -> str:
    """'h200' for '2x_h200'."""
    match = _MULTI_KEY.match(key)
    return match.group(2) if match else key


def spec_for(key: str) -> GpuSpec | None:
    return next((s for s in GPU_SPECS if s.key == base_key(key)), None)


def derived_spec(device: DeviceInfo, sm_clock_mhz: float | None, memory_gbps: float | None) -> GpuSpec | None:
    """A registry entry for a GPU the registry does not name, from its compute capability, SM count and
    clock (the generation's per-SM rates); None where the capability is unknown to the table. A memory
    bandwidth that could not be read leaves memory-bound predictions to the measured ceilings."""
    if device.capability is None or device.sm_count is None or sm_clock_mhz is None:
        return None
    per_clock = _PER_SM_CLOCK.get(tuple(device.capability))
    generation = precisions.generation(tuple(device.capability))
    if per_clock is None or generation is None:
        return None
    scale = device.sm_count * sm_clock_mhz * 1e6 / 1e12
    bf16, fp8, fp4 = (per_clock[unit] * scale if unit in generation.units and unit in per_clock else None
                      for unit in ("bf16", "fp8", "fp4"))
    fp32 = _FP32_PER_SM_CLOCK.get(tuple(device.capability), 256.0) * scale
    major, minor = device.capability
    return GpuSpec(device.key, "", bf16, fp8, fp4, memory_gbps or 0.0, fp32_tflops=fp32,
                   measured_on=f"derived from sm_{major}{minor} x {device.sm_count} SMs x {sm_clock_mhz:.0f} MHz")


def gpu_key_from_name(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100'; an unknown name becomes a slug of itself."""
    lowered = name.lower()
    for spec in GPU_SPECS:
        if re.search(spec.pattern, lowered):
            return spec.key
    slug = re.sub(r"[^a-z0-9]+", "-", lowered.replace("nvidia", "")).strip("-")
    return slug or "unknown-gpu"


def validate_key(key: str) -> str:
    """Accept a known key, 'auto', 'cpu', or 'Nx_<key>' for a multi-GPU run; else say what is valid."""
    key = key.strip().lower()
    if key in (AUTO_KEY, CPU_KEY) or spec_for(key) is not None:
        return key
    raise ValueError(
        f"unknown GPU key {key!r}; valid keys: auto, {', '.join(known_keys())} "
        "(or Nx_<key>, e.g. 2x_h200, for a multi-GPU run)"
    )


@dataclass(frozen=True)
class DeviceInfo:
    """The device the gate runs on. For the CPU, only `key` and `name` are meaningful."""

    key: str
    name: str
    index: int | None = None
    capability: tuple[int, int] | None = None
    sm_count: int | None = None
    memory_bytes: int | None = None
    l2_bytes: int | None = None
    uuid: str | None = None  # "GPU-..."; NVML and nvidia-smi number GPUs without CUDA_VISIBLE_DEVICES
    visible: int = 1  # CUDA devices this process sees: a property of the run, not stored with baselines

    @property
    def is_cuda(self) -> bool:
        return self.index is not None

    @property
    def gpus(self) -> int:
        """GPUs a test of this run may use: N for an 'Nx_<key>' run, else 1 (0 on the CPU)."""
        return gpu_count(self.key) if self.is_cuda else 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("visible")
        d["capability"] = list(self.capability) if self.capability else None
        return d


def cpu_device() -> DeviceInfo:
    return DeviceInfo(key=CPU_KEY, name=platform.processor() or platform.machine() or "cpu")


def probe_cuda(torch_module=None) -> DeviceInfo | None:
    """The current CUDA device, or None when there is none."""
    if torch_module is None:
        import torch as torch_module
    if not torch_module.cuda.is_available():
        return None
    index = torch_module.cuda.current_device()
    props = torch_module.cuda.get_device_properties(index)
    return DeviceInfo(
        key=gpu_key_from_name(props.name),
        name=props.name,
        index=index,
        capability=(props.major, props.minor),
        sm_count=props.multi_processor_count,
        memory_bytes=props.total_memory,
        l2_bytes=getattr(props, "L2_cache_size", None),
        uuid=f"GPU-{props.uuid}" if getattr(props, "uuid", None) else None,
        visible=torch_module.cuda.device_count(),
    )


def select_device(requested: str, detected: DeviceInfo | None) -> DeviceInfo:
    """Turn --gpu into the device the run uses; a mismatch is a ValueError that says how to fix it."""
    requested = validate_key(requested)
    if requested == CPU_KEY:
        return cpu_device()
    if detected is None:
        if requested == AUTO_KEY:
            return cpu_device()
        raise ValueError(
            f"--gpu {requested} asks for a GPU but no CUDA device is visible; "
            "run with --gpu cpu (accuracy gates and CPU-timed speedups) or on a machine with that GPU"
        )
    if requested in (AUTO_KEY, detected.key):
        return detected
    multi = _MULTI_KEY.match(requested)
    if multi and multi.group(2) == detected.key:
        wanted = int(multi.group(1))
        if wanted < 2:
            raise ValueError(f"--gpu {requested}: a multi-GPU key names 2 or more GPUs; use --gpu {detected.key}")
        if detected.visible < wanted:
            raise ValueError(
                f"--gpu {requested} asks for {wanted} GPUs but this process sees {detected.visible}; run on a "
                f"host with {wanted} {detected.key} GPUs (check CUDA_VISIBLE_DEVICES), or use --gpu {detected.key}"
            )
        return replace(detected, key=requested)
    raise ValueError(
        f"--gpu {requested} does not match this machine's device {detected.name!r} (key {detected.key}); "
        f"use --gpu {detected.key}, --gpu auto, or --gpu cpu"
    )


def _run(cmd: list[str], timeout: float = 5.0) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


# Throttle-reason bits that mean the clock was pulled down by heat or a hardware
# limit (nvidia-smi clocks_event_reasons): HW slowdown, SW/HW thermal, HW power brake.
_THROTTLE_BITS = 0x8 | 0x20 | 0x40 | 0x80


def _nvml_state(uuid: str) -> dict | None:
    """The same reading through NVML, in about a millisecond, where pynvml is installed."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByUUID(uuid.encode())
        clock = pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM)
        temperature = pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)
        reasons = pynvml.nvmlDeviceGetCurrentClocksThrottleReasons(handle)
    except Exception:  # any NVML failure means: no reading, fall back to nvidia-smi
        return None
    return _state(clock, temperature, reasons)


def _state(clock: int, temperature: int, reasons: int) -> dict:
    return {
        "sm_clock_mhz": int(clock),
        "temperature_c": int(temperature),
        "throttle_reasons": hex(reasons),
        "throttled": bool(reasons & _THROTTLE_BITS),
    }


def device_state(device: str | None, run=_run, nvml=_nvml_state) -> dict | None:
    """SM clock (MHz), temperature (C) and throttle reasons of one GPU, named by UUID (or index)."""
    if device is None:
        return None
    if device.startswith("GPU-"):
        reading = nvml(device)
        if reading is not None:
            return reading
    out = run([
        "nvidia-smi",
        f"--id={device}",
        "--query-gpu=clocks.sm,temperature.gpu,clocks_event_reasons.active",
        "--format=csv,noheader,nounits",
    ])
    if not out:
        return None
    parts = [p.strip() for p in out.splitlines()[0].split(",")]
    try:
        return _state(int(parts[0]), int(parts[1]), int(parts[2], 16))
    except (IndexError, ValueError):
        return None


def _nvml_bus_width(uuid: str | None) -> int | None:
    if uuid is None:
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
        return int(pynvml.nvmlDeviceGetMemoryBusWidth(pynvml.nvmlDeviceGetHandleByUUID(uuid.encode())))
    except Exception:  # no pynvml, or NVML without the query: no bandwidth, said by the caller
        return None


def probe_rates(device: DeviceInfo, run=_run, bus_width=_nvml_bus_width) -> tuple[float | None, float | None]:
    """Max SM clock (MHz) and memory bandwidth (GB/s: two transfers a memory clock over the bus) of a GPU
    the registry does not name, for `derived_spec`; None for what could not be read. nvidia-smi gives the
    clocks, NVML the bus width."""
    out = run(["nvidia-smi", f"--id={device.uuid or device.index}", "--query-gpu=clocks.max.sm,clocks.max.memory",
               "--format=csv,noheader,nounits"])
    try:
        sm_mhz, mem_mhz = (float(p) for p in out.splitlines()[0].split(","))
    except (AttributeError, IndexError, ValueError):
        return None, None
    bits = bus_width(device.uuid)
    return sm_mhz, (2 * mem_mhz * 1e6 * bits / 8 / 1e9 if bits else None)


def _cublas_version() -> str | None:
    # cuBLAS is loaded by torch's first GEMM; dlopen by soname finds that copy.
    for soname in ("libcublas.so.13", "libcublas.so.12", "libcublas.so.11"):
        try:
            lib = ctypes.CDLL(soname)
        except OSError:
            continue
        parts = []
        for prop in (0, 1, 2):  # MAJOR_VERSION, MINOR_VERSION, PATCH_LEVEL
            value = ctypes.c_int()
            if lib.cublasGetProperty(prop, ctypes.byref(value)) != 0:
                return None
            parts.append(str(value.value))
        return ".".join(parts)
    return None


def software_fingerprint(device: DeviceInfo, run=_run) -> dict:
    """The stack that produced a measurement: a baseline from another stack is flagged, not trusted blindly."""
    import torch

    fp = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "driver": None,
        "cublas": None,
    }
    if device.is_cuda:
        fp["driver"] = run(["nvidia-smi", f"--id={device.uuid or device.index}", "--query-gpu=driver_version",
                            "--format=csv,noheader"])
        fp["cublas"] = _cublas_version()
    return fp


def visible_gpu_ids(environ: dict, count: int) -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries (an outer setting is respected)."""
    outer = environ.get("CUDA_VISIBLE_DEVICES")
    if outer is not None:
        return [d.strip() for d in outer.split(",") if d.strip()]
    return [str(i) for i in range(count)]


def gpu_count_mismatch(needed: int | str, device: DeviceInfo) -> str | None:
    """Why a test that uses `needed` GPUs ("all": every GPU of a multi-GPU run, however many) does not
    run on this run's device, or None when it does.

    A multi-GPU run (--gpu 2x_h200) holds only tests marked for that many GPUs or for all of them, so
    its baseline file never mixes with the single-GPU one; on the CPU every test runs (a multi-GPU
    workload there runs its processes on the CPU, at a small size).
    """
    if not device.is_cuda or needed == device.gpus or (needed == "all" and device.gpus > 1):
        return None
    base = base_key(device.key)
    if needed == "all":
        return (f"a multi-GPU test: run it with --gpu Nx_{base} (N >= 2) on a host with N GPUs "
                f"(this run is --gpu {device.key})")
    if needed > 1:
        return (f"a {needed}-GPU test: run it with --gpu {needed}x_{base} on a host with {needed} GPUs "
                f"(this run is --gpu {device.key})")
    return f"a single-GPU test: a --gpu {device.key} run holds multi-GPU tests only; run --gpu {base} for it"


def gpu_for_worker(visible: list[str], worker_id: str) -> str:
    """xdist worker 'gw3' gets the 4th visible GPU, so no two workers share one."""
    index = int(worker_id.lstrip("gw"))
    if index >= len(visible):
        raise ValueError(f"worker {worker_id} has no GPU of its own: only {len(visible)} visible ({visible})")
    return visible[index]
