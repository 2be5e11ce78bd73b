"""The low-precision workloads the suites gate: models, KV caches, training recipes, mixed-precision
strategies, adaptive precision, and the Python side of the CUDA kernels in the repository's kernels/.

Why a package of its own, beside the engine rather than inside suites/: the suites, the benchmarks and
a user's own tests import these the same way (`from lowprec_workloads.fp8_training import Linear`),
from an installed wheel or a checkout, with no sys.path edits and under any pytest import mode; the
engine (pytest_lowprec) stays generic and never imports from here, while this package builds on the
engine's formats, hardware model and timers. suites/ then holds only tests, whose node ids key the
baseline files. The kernel sources ship inside the wheel as `lowprec_workloads/kernel_sources/`
(kernels.KERNELS_DIR).

Importing the package imports nothing: each module pulls in torch (or triton) where it is used.
"""
