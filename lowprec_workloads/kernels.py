"""Build the CUDA C++ sources in the repository's `kernels/` with nvcc, cache the shared libraries, load
them with ctypes.

Why nvcc and ctypes rather than a torch extension: a `.cu` here is plain CUDA C++ with
`extern "C"` launchers taking raw pointers and a stream, so it builds in seconds (no torch
headers), and CI, which has nvcc but no GPU, compiles every source the same way a GPU run
does (`compile_check`). Each launcher sets its device and launches on the stream it is given,
torch's current stream, so kernel launches are captured by CUDA graphs like torch's own.

The cache key is the source, every header beside it, the flags and nvcc's version: an
edited kernel is rebuilt, an unchanged one is loaded from `~/.cache/pytest-lowprec/kernels`
(or $LOWPREC_KERNEL_CACHE). A build is written to a temporary name and renamed into place
under a file lock, so xdist workers never load a half-written library.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


def _kernels_dir() -> Path:
    """The folder of the .cu sources: the package data an installed wheel carries (pyproject maps
    `lowprec_workloads.kernel_sources` onto kernels/), else the checkout's kernels/ beside this package,
    which a source tree on PYTHONPATH or an editable install imports this module from."""
    here = Path(__file__).resolve().parent
    packaged = here / "kernel_sources"
    return packaged if packaged.is_dir() else here.parent / "kernels"


KERNELS_DIR = _kernels_dir()
BASE_FLAGS = ("-O3", "-std=c++17", "-lineinfo", "--expt-relaxed-constexpr")
# nvcc reports "path(line): error: message"; the first such line names where a build broke.
_NVCC_ERROR = re.compile(r"^(?P<file>[^\s(][^(]*)\((?P<line>\d+)\): (?:catastrophic )?error[^:]*: (?P<msg>.*)$",
                         re.MULTILINE)


class KernelBuildError(RuntimeError):
    """A kernel source did not compile; the message names the file and line nvcc complained about."""

    def __init__(self, source: Path, output: str, command: list[str]):
        self.source = source
        self.output = output
        match = _NVCC_ERROR.search(output)
        if match:
            where = f"{match.group('file')}:{match.group('line')}: {match.group('msg').strip()}"
        else:
            tail = output.strip().splitlines()[-5:]
            where = f"{source}: " + (" | ".join(tail) if tail else "nvcc failed with no output")
        self.location = where
        super().__init__(f"CUDA kernel failed to compile: {where}\n  command: {' '.join(command)}\n{output.strip()}")


class KernelLaunchError(RuntimeError):
    """A launcher returned a CUDA error (bad configuration, a failed launch)."""


@dataclass(frozen=True)
class Target:
    """The architecture a library is built for, from the device's compute capability."""

    major: int
    minor: int

    @property
    def name(self) -> str:
        return f"sm_{self.major}{self.minor}{self.suffix}"

    @property
    def suffix(self) -> str:
        # The 'a' targets unlock an architecture's own instructions (wgmma and setmaxnreg on
        # sm_90a, tcgen05 on sm_100a); their code runs only on that exact architecture, which
        # is what a per-GPU gate wants.
        return "a" if (self.major, self.minor) in ((9, 0), (10, 0), (10, 3), (12, 0)) else ""

    @property
    def gencode(self) -> str:
        arch = f"{self.major}{self.minor}{self.suffix}"
        return f"-gencode=arch=compute_{arch},code=sm_{arch}"


def target_for(capability: tuple[int, int]) -> Target:
    major, minor = capability
    if major < 7:
        raise ValueError(f"compute capability {major}.{minor} is below 7.0; these kernels need Volta or newer")
    return Target(major, minor)


def programmatic_launches(device) -> bool:
    """Whether kernels on `device` (a torch.device) may launch as programmatic dependents (kernels/lowprec.cuh):
    CUDA devices of compute capability 9.0 and later. Older GPUs have no griddepcontrol instruction (ptxas
    refuses Triton's), and Triton's ROCm backend takes no launch_pdl."""
    import torch

    return (device.type == "cuda" and torch.version.hip is None
            and torch.cuda.get_device_capability(device) >= (9, 0))


def find_nvcc() -> str | None:
    """nvcc from $CUDA_HOME, $PATH or the usual install place; None when there is none."""
    candidates = []
    for env in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(env):
            candidates.append(Path(os.environ[env]) / "bin" / "nvcc")
    found = shutil.which("nvcc")
    if found:
        candidates.append(Path(found))
    candidates.append(Path("/usr/local/cuda/bin/nvcc"))
    return next((str(c) for c in candidates if c.is_file() and os.access(c, os.X_OK)), None)


def _require_nvcc(nvcc: str | None) -> str:
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise KernelBuildError(Path("nvcc"), "nvcc not found: install the CUDA toolkit or set CUDA_HOME", ["nvcc"])
    return nvcc


def sources(kernels_dir: Path = KERNELS_DIR) -> list[Path]:
    return sorted(kernels_dir.glob("*.cu"))


def _nvcc_version(nvcc: str) -> str:
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else "unknown"


def _cache_dir() -> Path:
    root = os.environ.get("LOWPREC_KERNEL_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "pytest-lowprec" / "kernels"


def _key(source: Path, flags: list[str], nvcc_version: str) -> str:
    digest = hashlib.sha256()
    digest.update(source.read_bytes())
    for header in sorted(source.parent.glob("*.cuh")):
        digest.update(header.name.encode())
        digest.update(header.read_bytes())
    digest.update(" ".join(flags).encode())
    digest.update(nvcc_version.encode())
    return digest.hexdigest()[:16]


def _run_nvcc(command: list[str], source: Path) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise KernelBuildError(source, result.stdout + result.stderr, command)


def build(source: Path, target: Target, *, nvcc: str | None = None, cache_dir: Path | None = None) -> Path:
    """The shared library of `source` for `target`, compiled now or taken from the cache."""
    from filelock import FileLock

    source = Path(source).resolve()
    if not source.is_file():
        raise FileNotFoundError(f"no kernel source {source}; the sources are {[s.name for s in sources()]}")
    nvcc = _require_nvcc(nvcc)
    flags = [*BASE_FLAGS, target.gencode]
    cache = cache_dir or _cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    library = cache / f"{source.stem}-{target.name}-{_key(source, flags, _nvcc_version(nvcc))}.so"
    with FileLock(str(library) + ".lock"):
        if library.exists():
            return library
        partial = library.with_suffix(f".{os.getpid()}.tmp")
        command = [nvcc, *flags, "-shared", "-Xcompiler", "-fPIC", f"-I{source.parent}",
                   "-o", str(partial), str(source)]
        try:
            _run_nvcc(command, source)
            os.replace(partial, library)
        finally:
            partial.unlink(missing_ok=True)
    return library


def compile_check(source: Path, target: Target, *, nvcc: str | None = None) -> None:
    """Compile `source` for `target` without linking or loading it: what CI does with no GPU."""
    import tempfile

    source = Path(source).resolve()
    nvcc = _require_nvcc(nvcc)
    with tempfile.TemporaryDirectory() as tmp:
        command = [nvcc, *BASE_FLAGS, target.gencode, "-Xcompiler", "-fPIC", f"-I{source.parent}",
                   "-c", "-o", str(Path(tmp) / "out.o"), str(source)]
        _run_nvcc(command, source)


class KernelLibrary:
    """A loaded kernel library: `call(name, *args)` runs an extern "C" launcher and checks its status."""

    def __init__(self, path: Path, signatures: dict[str, list]):
        self.path = path
        self._lib = ctypes.CDLL(str(path))
        self._lib.lowprec_error_string.restype = ctypes.c_char_p
        self._lib.lowprec_error_string.argtypes = [ctypes.c_int]
        self._functions = {}
        for name, argtypes in signatures.items():
            fn = getattr(self._lib, name)
            fn.restype = ctypes.c_int
            fn.argtypes = argtypes
            self._functions[name] = fn

    def call(self, name: str, *args) -> None:
        status = self._functions[name](*args)
        if status != 0:
            message = self._lib.lowprec_error_string(status).decode()
            raise KernelLaunchError(f"{self.path.name}:{name} returned CUDA error {status}: {message}")


def load(name: str, capability: tuple[int, int], signatures: dict[str, list], *,
         kernels_dir: Path = KERNELS_DIR, cache_dir: Path | None = None) -> KernelLibrary:
    """Build (or reuse) `kernels/<name>.cu` for a device of `capability` and bind its launchers."""
    library = build(kernels_dir / f"{name}.cu", target_for(capability), cache_dir=cache_dir)
    return KernelLibrary(library, signatures)
