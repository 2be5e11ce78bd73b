"""pytest hooks of pytest-lowprec: options, marker, fixture, and where verdicts turn into outcomes.

This module declares; the decisions live in gate.py, baselines.py, hardware.py
and recorder.py, and the run's state in session.LowprecRun under a StashKey.
"""

from __future__ import annotations

import gc
import os
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from . import hookspec
from .report.pytest_html import html_cell

if TYPE_CHECKING:
    from .hardware import DeviceInfo
    from .record import WorkloadRecord  # noqa: F401 - names a StashKey's type
    from .recorder import Recorder
    from .session import LowprecRun

RUN_KEY = pytest.StashKey["LowprecRun"]()
RECORDER_KEY = pytest.StashKey["Recorder"]()
RECORD_KEY = pytest.StashKey["WorkloadRecord"]()
MARKER_KEY = pytest.StashKey["dict | None"]()  # the lowprec marker's arguments, parsed once per item
_MARKER_ARGS = {"precision", "device", "gpus"}
# Every option's dest: one given on the command line means the run uses lowprec from its start.
_OPTIONS = ("lowprec_gpu", "lowprec_update", "lowprec_merge", "lowprec_baselines", "lowprec_precision",
            "lowprec_strict", "lowprec_report", "lowprec_trace", "lowprec_csv", "lowprec_markdown", "lowprec_tolerance",
            "lowprec_time_budget", "lowprec_record_rounds", "lowprec_table", "lowprec_history",
            "lowprec_history_commits", "lowprec_json")


def _usage(parser: str) -> Callable[[str], object]:
    """config.<parser>, imported when an option is given (not when pytest starts), and wrapped so a bad
    value stops pytest with the parser's own message, not argparse's."""

    def parse(text: str) -> object:
        from . import config

        try:
            return getattr(config, parser)(text)
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None

    parse.__name__ = parser
    return parse


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspec)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("lowprec", "low-precision regression gate (pytest-lowprec)")
    group.addoption("--gpu", dest="lowprec_gpu", default=None, type=_usage("parse_gpu"), metavar="KEY",
                    help="GPU key whose baselines gate this run: auto (detect, default), cpu (accuracy gates and "
                         "CPU-timed speedups; speed gates over CUDA work skip), or a key such as h100, h200, b200. "
                         "A key that does not match the device is a usage error.")
    group.addoption("--lowprec-update", dest="lowprec_update", action="store_true", default=None,
                    help="record or refresh the selected GPU's baselines for the tests that ran and passed "
                         "their absolute bounds; other entries and other GPUs' files are left untouched.")
    group.addoption("--lowprec-merge", dest="lowprec_merge", action="store_true", default=None,
                    help="with --lowprec-update: add each speed measurement to the stored entry of the same commit, "
                         "software and workload (another GPU of the key, another process) instead of replacing it: "
                         "the entry's value becomes the median of its recordings and their spread widens its "
                         "tolerance; a spread over lowprec_max_record_noise is refused.")
    group.addoption("--lowprec-baselines", dest="lowprec_baselines", default=None, metavar="DIR",
                    help="folder of <gpu>.json baseline files (default: baselines/ under the rootdir).")
    group.addoption("--lowprec-precision", dest="lowprec_precision", default=None,
                    type=_usage("parse_precisions"), metavar="LIST",
                    help="run only tests marked lowprec(precision=...) with one of these, e.g. fp8,nvfp4.")
    group.addoption("--lowprec-strict", dest="lowprec_strict", action="store_true", default=None,
                    help="a missing or stale baseline fails the test instead of being reported.")
    group.addoption("--lowprec-report", dest="lowprec_report", default=None, metavar="PATH",
                    help="write a self-contained HTML regression report to PATH (tables, plots, kernel tables, "
                         "links to traces).")
    group.addoption("--lowprec-trace", dest="lowprec_trace", default=None, metavar="DIR",
                    help="after timing, profile one untimed call of each side of every CUDA speedup and write "
                         "its chrome trace (Perfetto opens it) and kernel table to DIR.")
    group.addoption("--lowprec-csv", dest="lowprec_csv", default=None, metavar="PATH",
                    help="write every verdict as CSV (the accuracy-versus-throughput table) to PATH.")
    group.addoption("--lowprec-markdown", dest="lowprec_markdown", default=None, metavar="PATH",
                    help="write a pull-request summary (regressions first) in markdown to PATH.")
    group.addoption("--lowprec-tolerance", dest="lowprec_tolerance", default=None,
                    type=_usage("parse_fraction"), metavar="FRACTION",
                    help="smallest allowed speedup drop below the baseline median (default 0.03); "
                         "the tolerance grows to 2x the noise stored with the baseline when that is larger.")
    group.addoption("--lowprec-time-budget", dest="lowprec_time_budget", default=None,
                    type=_usage("parse_positive"), metavar="SECONDS",
                    help="most seconds one speedup may spend sampling while its interval straddles "
                         "a decision line (default 8); a verdict still straddling one then is inconclusive.")
    group.addoption("--lowprec-rounds", dest="lowprec_record_rounds", default=None,
                    type=_usage("parse_count"), metavar="N",
                    help="with --lowprec-update: measure each speedup N times (warm-up included) and record "
                         "the pooled pairs with the spread of the N medians; a spread or pair noise over "
                         "lowprec_max_record_noise is refused (default 1; 3 for a GPU's first baseline).")
    group.addoption("--lowprec-table", dest="lowprec_table", default=None, choices=("problems", "all"),
                    help="the verdict table at the end of the run: 'problems' (default) lists failed, inconclusive "
                         "and ungated verdicts under a one-line count of every status; 'all' lists every verdict, "
                         "as -v does.")
    # History and saved runs (review.py). Declared here, with no default, so the plugin module imports
    # nothing heavy and naming one of them starts the gate.
    group.addoption("--lowprec-history", dest="lowprec_history", default=None, metavar="URL",
                    help="append every verdict of the run to a history store and draw each metric's trend in the "
                         "report: an SQLite file path (e.g. reports/history.sqlite) or a database URL "
                         "(postgresql://user@host/db for runners that share one store).")
    group.addoption("--lowprec-history-commits", dest="lowprec_history_commits", default=None,
                    type=_usage("parse_count"), metavar="N",
                    help="commits of history the report's trends show (default 20).")
    group.addoption("--lowprec-json", dest="lowprec_json", default=None, metavar="PATH",
                    help="save the run (header, pytest outcomes, every record) as JSON to PATH; "
                         "`python -m pytest_lowprec report PATH` renders its HTML report again.")
    parser.addini("lowprec_gpu", "default for --gpu", default="auto")
    parser.addini("lowprec_baselines", "default for --lowprec-baselines", default="baselines")
    parser.addini("lowprec_strict", "default for --lowprec-strict", type="bool", default=False)
    parser.addini("lowprec_precision", "default for --lowprec-precision", default="")
    parser.addini("lowprec_tolerance", "default for --lowprec-tolerance", default="0.03")
    parser.addini("lowprec_noise_k", "multiple of the stored noise allowed below the baseline", default="2.0")
    parser.addini("lowprec_time_budget", "default for --lowprec-time-budget", default="8")
    parser.addini("lowprec_min_pairs", "A/B pairs taken before the first verdict check", default="30")
    parser.addini("lowprec_max_pairs", "most A/B pairs one speedup takes", default="600")
    parser.addini("lowprec_record_pairs", "A/B pairs taken when recording a baseline", default="120")
    parser.addini("lowprec_confirm", "times a failing speedup is measured again before it fails", default="1")
    parser.addini("lowprec_confidence", "confidence of the bootstrap interval", default="0.95")
    parser.addini("lowprec_max_tolerance", "largest tolerance below a baseline, whatever noise it stored",
                  default="0.10")
    parser.addini("lowprec_max_record_noise", "most pair noise (and spread of rounds) a recorded speedup may "
                  "carry; a noisier one is refused", default="0.05")
    parser.addini("lowprec_record_rounds", "default for --lowprec-rounds", default="1")
    parser.addini("lowprec_cpu_threads", "torch's intra-op threads for the run: host timings and CPU accuracy "
                  "values then do not depend on the machine's core count", default="2")


def _pin_worker_gpu(config: pytest.Config) -> None:
    """On an xdist worker, before CUDA starts: see only the GPU the controller assigned."""
    visible = config.workerinput.get("lowprec_gpus")
    if visible:
        from .hardware import gpu_for_worker

        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_for_worker(visible, config.workerinput["workerid"])


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "lowprec(precision=..., device=None, gpus=1): a low-precision workload; precision is one name or a "
        "tuple (fp8, nvfp4, ...); device='cuda' skips the test on a run without a GPU; gpus=N marks a "
        "multi-GPU test, run by --gpu Nx_<key> (its baselines live in <dir>/Nx_<key>.json); gpus='all' one "
        "that uses every GPU of any such run (N >= 2; lowprec.gpu.gpus says how many).",
    )
    if hasattr(config, "workerinput"):
        _pin_worker_gpu(config)
    # Free until used: a run that names no lowprec option starts the gate (torch, the device probe,
    # the baseline file) only once collection shows a test that uses it; see _run.
    if any(config.getoption(name) is not None for name in _OPTIONS):
        _run(config, named=True)


def _run(config: pytest.Config, *, named: bool = False) -> LowprecRun:
    """The run's LowprecRun, started on first use."""
    run = config.stash.get(RUN_KEY, None)
    if run is None:
        from .session import pin_worker_late, start_run

        if hasattr(config, "workerinput") and not named:
            pin_worker_late(config)
        run = config.stash[RUN_KEY] = start_run(config, named=named)
    return run


def pytest_unconfigure(config: pytest.Config) -> None:
    run = config.stash.get(RUN_KEY, None)
    if run is not None and run.threads_before is not None:
        import torch

        torch.set_num_threads(run.threads_before)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """Controller: give every worker the list of GPUs, so each pins its own before CUDA starts."""
    run = node.config.stash.get(RUN_KEY, None)
    if run is not None and run.device.is_cuda:
        import torch

        from .hardware import visible_gpu_ids

        node.workerinput["lowprec_gpus"] = visible_gpu_ids(dict(os.environ), torch.cuda.device_count())


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """`-n auto` means one worker per visible GPU on a GPU run."""
    run = config.stash.get(RUN_KEY, None)
    if run is None or not run.device.is_cuda:
        return None
    import torch

    from .hardware import visible_gpu_ids

    return len(visible_gpu_ids(dict(os.environ), torch.cuda.device_count()))


def _marker_args(item: pytest.Item) -> dict | None:
    """The lowprec marker's arguments (None: no marker), parsed at the item's first use and kept."""
    if MARKER_KEY not in item.stash:
        item.stash[MARKER_KEY] = _parse_marker(item)
    return item.stash[MARKER_KEY]


def _uses_lowprec(item: pytest.Item) -> bool:
    return _marker_args(item) is not None or "lowprec" in getattr(item, "fixturenames", ())


def _parse_marker(item: pytest.Item) -> dict | None:
    """Closest marker first (a parametrize mark overrides the function's)."""
    marks = list(item.iter_markers("lowprec"))
    if not marks:
        return None
    merged: dict = {}
    for mark in reversed(marks):
        if mark.args:
            raise pytest.UsageError(f"{item.nodeid}: lowprec marker takes keywords only, e.g. precision='fp8'")
        merged.update(mark.kwargs)
    unknown = set(merged) - _MARKER_ARGS
    if unknown:
        raise pytest.UsageError(f"{item.nodeid}: unknown lowprec marker argument(s) {sorted(unknown)}; "
                                f"valid: {sorted(_MARKER_ARGS)}")
    precision = merged.get("precision", ())
    names = (precision,) if isinstance(precision, str) else tuple(precision)
    from .config import parse_precisions

    try:
        merged["precision"] = tuple(sorted(parse_precisions(",".join(names)))) if names else ()
    except ValueError as exc:
        raise pytest.UsageError(f"{item.nodeid}: {exc}") from None
    if merged.get("device") not in (None, "cuda"):
        raise pytest.UsageError(f"{item.nodeid}: lowprec device= must be 'cuda' or absent")
    gpus = merged.setdefault("gpus", 1)
    if gpus != "all" and (not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 1):
        raise pytest.UsageError(f"{item.nodeid}: lowprec gpus= must be a whole number >= 1 or 'all', got {gpus!r}")
    return merged


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run = config.stash.get(RUN_KEY, None)
    if run is None:
        # --collect-only runs nothing: nothing to start the gate for.
        if config.option.collectonly or not any(_uses_lowprec(item) for item in items):
            return
        run = _run(config)
    wanted = run.gate.precisions
    keep, drop = [], []
    for item in items:
        args = _marker_args(item)
        if wanted is None or (args is not None and wanted & set(args["precision"])):
            keep.append(item)
        else:
            drop.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_runtest_setup(item: pytest.Item) -> None:
    if not _uses_lowprec(item):
        return
    args = _marker_args(item)
    run = _run(item.config)
    if args and args.get("device") == "cuda" and not run.device.is_cuda:
        pytest.skip(f"needs a CUDA device; this run is on {run.device.key}")
    from .hardware import gpu_count_mismatch

    reason = gpu_count_mismatch((args or {}).get("gpus", 1), run.device)
    if reason:
        pytest.skip(reason)


def _make_timer(config: pytest.Config, device: DeviceInfo) -> Callable[[str, dict], object]:
    from .timing import default_timer

    def make(kind: str, options: dict):
        timer = config.hook.pytest_lowprec_make_timer(config=config, device=device, kind=kind, options=options)
        if timer is not None:
            return timer
        return default_timer(kind, device.index, device.l2_bytes, device.uuid, options)

    return make


@pytest.fixture
def lowprec(request: pytest.FixtureRequest) -> Recorder:
    """Record accuracy, memory and speedup verdicts; they are judged when the test body returns."""
    from .recorder import Recorder

    item = request.node
    run = _run(item.config)
    args = _marker_args(item) or {"precision": ()}
    params = dict(item.callspec.params) if hasattr(item, "callspec") else {}
    recorder = Recorder(item.nodeid, args["precision"], params, run.device, run.gate,
                        run.baseline_entry(item.nodeid), _make_timer(item.config, run.device), run.shared)
    item.stash[RECORDER_KEY] = recorder
    return recorder


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    recorder = item.stash.get(RECORDER_KEY, None)
    try:
        if recorder is None:
            result = yield
        else:
            from .profiling import nvtx_range

            with nvtx_range(item.nodeid):  # one range per gated test, around its whole body
                result = yield
    except BaseException:
        if recorder is not None:
            item.stash[RECORD_KEY] = recorder.finish()
            del item.stash[RECORDER_KEY]
        raise
    if recorder is None:
        return result
    record = recorder.finish()
    del item.stash[RECORDER_KEY]  # items live all session: keep the record, not the test's tensors
    item.stash[RECORD_KEY] = record
    from .names import xml_text

    # JUnit XML writes property names as given: a control character in a metric name would break the file.
    for v in record.verdicts:
        if v.value is not None:
            item.user_properties.append((f"lowprec.{xml_text(v.metric)}", v.value))
        if v.status.value != "pass":  # JUnit readers see what was not gated or not decided, not only failures
            item.user_properties.append((f"lowprec.{xml_text(v.metric)}.status", v.status.value))
    for name, sides in record.traces.items():
        for side, trace in sides.items():
            if trace.file:
                item.user_properties.append((f"lowprec.trace.{xml_text(name)}.{side}", trace.file))
    if record.failed_verdicts:
        from .report.terminal import failure_message

        pytest.fail(failure_message(item.nodeid, item.config.stash[RUN_KEY].device.key, record.verdicts),
                    pytrace=False)
    if record.verdicts and all(v.status.value == "skip" for v in record.verdicts):
        pytest.skip("; ".join(sorted({r for v in record.verdicts for r in v.reasons})))
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    record = item.stash.get(RECORD_KEY, None)
    if call.when == "call" and record is not None:
        # An XPASS is reported "passed": a test expected to fail must not become a baseline.
        record.outcome = "xpassed" if hasattr(report, "wasxfail") else report.outcome
        item.config.stash[RUN_KEY].add(record)
        if call.excinfo is not None and _is_cuda_oom(call.excinfo.value):
            _release_after_oom(call.excinfo.tb)
    elif call.when == "teardown" and record is not None and report.failed:
        record.outcome = "error"  # a teardown that failed: the test did not pass in every phase
    return report


@pytest.hookimpl(optionalhook=True)
def pytest_html_results_table_header(cells: list) -> None:
    """pytest-html, when installed: a column of each test's lowprec metrics and trace links."""
    cells.append("<th>lowprec</th>")


@pytest.hookimpl(optionalhook=True)
def pytest_html_results_table_row(report: pytest.TestReport, cells: list) -> None:
    cells.append(f"<td>{html_cell(report.user_properties)}</td>")


def _is_cuda_oom(exc: BaseException) -> bool:
    return type(exc).__name__ == "OutOfMemoryError" and "torch" in type(exc).__module__


def _release_after_oom(tb) -> None:
    """Drop the failed test's frames and cached blocks, so the next test gets its memory back."""
    traceback.clear_frames(tb)
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    run = config.stash.get(RUN_KEY, None)
    if run is not None and hasattr(config, "workeroutput"):
        from .session import publish_worker_records

        publish_worker_records(config, run)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """Controller of a run that named no lowprec option: the first worker that hands over lowprec
    records starts the run here, which then takes these records and every later worker's itself."""
    config = node.config
    if RUN_KEY in config.stash:
        return
    from .session import WORKEROUTPUT_KEY

    if getattr(node, "workeroutput", {}).get(WORKEROUTPUT_KEY):
        _run(config).pytest_testnodedown(node, error)

