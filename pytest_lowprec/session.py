"""The run: its settings, device and baseline store, the records of finished tests, and what happens at the end.

One `LowprecRun` lives in `config.stash`. On the controller (or a run without
xdist) it is also registered as a plugin, so it alone merges workers' records,
writes baselines and prints the summary.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from .baselines import BaselineError, BaselineStore, baselines_directory
from .config import GateConfig, parse_count, parse_fraction, parse_gpu, parse_positive, parse_precisions
from .gate import SpeedupTolerance
from .hardware import (
    DeviceInfo,
    derived_spec,
    gpu_for_worker,
    probe_cuda,
    probe_rates,
    select_device,
    software_fingerprint,
    spec_for,
    visible_gpu_ids,
)
from .names import terminal_text
from .record import WorkloadRecord
from .recordings import merge_entry
from .report.terminal import summary_lines
from .roofline import ceiling_metrics, ceilings_for
from .state import SharedState
from .timing import SamplingPolicy

WORKEROUTPUT_KEY = "lowprec_records"


def _git_commit(root: Path) -> str | None:
    """The commit measured: git's HEAD (with -dirty), else what CI says (a copy without .git)."""
    for var in ("LOWPREC_COMMIT", "GITHUB_SHA", "CI_COMMIT_SHA"):
        if os.environ.get(var):
            return os.environ[var][:12]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, timeout=5, check=False)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _option(config: pytest.Config, name: str, parse: Callable[[str], object] = str) -> object:
    """A CLI value wins over the ini value; an ini value is parsed (and rejected) like the CLI's."""
    cli = config.getoption(name)
    if cli is not None:
        return cli
    raw = config.getini(name)
    if isinstance(raw, bool):
        return raw
    try:
        return parse(raw) if raw != "" else None
    except ValueError as exc:
        raise pytest.UsageError(f"ini option {name}: {exc}") from None


def _gate_config(config: pytest.Config) -> GateConfig:
    try:
        baselines = baselines_directory(_option(config, "lowprec_baselines"), Path(config.rootpath))
        def path(name: str) -> Path | None:
            value = config.getoption(name)
            return Path(value).absolute() if value else None

        return GateConfig(
            gpu=_option(config, "lowprec_gpu", parse_gpu),
            update=bool(config.getoption("lowprec_update")),
            merge=bool(config.getoption("lowprec_merge")),
            baselines_dir=baselines,
            precisions=_option(config, "lowprec_precision", parse_precisions),
            strict=bool(_option(config, "lowprec_strict")),
            report_path=path("lowprec_report"),
            trace_dir=path("lowprec_trace"),
            csv_path=path("lowprec_csv"),
            markdown_path=path("lowprec_markdown"),
            tolerance=SpeedupTolerance(
                floor=_option(config, "lowprec_tolerance", parse_fraction),
                noise_k=float(config.getini("lowprec_noise_k")),
                cap=parse_fraction(config.getini("lowprec_max_tolerance")),
            ),
            sampling=SamplingPolicy(
                min_pairs=int(config.getini("lowprec_min_pairs")),
                max_pairs=int(config.getini("lowprec_max_pairs")),
                record_pairs=int(config.getini("lowprec_record_pairs")),
                confirm=int(config.getini("lowprec_confirm")),
                budget_s=_option(config, "lowprec_time_budget", parse_positive),
            ),
            confidence=float(config.getini("lowprec_confidence")),
            record_rounds=_option(config, "lowprec_record_rounds", parse_count),
            max_record_noise=parse_fraction(config.getini("lowprec_max_record_noise")),
            cpu_threads=parse_count(config.getini("lowprec_cpu_threads")),
        )
    except ValueError as exc:
        raise pytest.UsageError(f"pytest-lowprec: {exc}") from None


def _detect(config: pytest.Config, gate: GateConfig) -> DeviceInfo:
    if gate.gpu == "cpu":
        return select_device("cpu", None)
    detected = config.hook.pytest_lowprec_device(config=config)
    if detected is None:
        detected = probe_cuda()
    elif not detected.is_cuda:
        detected = None  # a conftest faking a machine without a GPU
    try:
        return select_device(gate.gpu, detected)
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


def _check_worker_count(config: pytest.Config, device: DeviceInfo) -> None:
    workers = getattr(config.option, "numprocesses", None)
    if not device.is_cuda or not isinstance(workers, int) or workers <= 1:
        return
    if device.gpus > 1:
        raise pytest.UsageError(
            f"-n {workers} with --gpu {device.key}: each test of a multi-GPU run uses all {device.gpus} GPUs, "
            "and an xdist worker is pinned to one; run it without -n"
        )
    import torch

    gpus = visible_gpu_ids(dict(os.environ), torch.cuda.device_count())
    if workers > len(gpus):
        raise pytest.UsageError(_too_many_workers(workers, len(gpus)))


def _fix_cpu_threads(threads: int) -> int:
    """Run torch's CPU work on a fixed number of threads; returns the number it had, to restore."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    return before


def start_run(config: pytest.Config, *, named: bool) -> LowprecRun:
    """The run's settings, device, baselines and CPU threads, once the run is known to use lowprec.

    `named`: a lowprec option is on the command line, so this runs in pytest_configure, and on the
    controller the worker count is checked against the GPUs before any worker starts."""
    gate = _gate_config(config)
    device = _detect(config, gate)
    worker = hasattr(config, "workerinput")
    if named and not worker:
        _check_worker_count(config, device)
    store = BaselineStore(gate.baselines_dir)
    try:
        entries = store.read(device.key)
    except BaselineError as exc:
        raise pytest.UsageError(f"pytest-lowprec: {exc}") from None
    run = LowprecRun(config, gate, device, store, entries)
    run.threads_before = _fix_cpu_threads(gate.cpu_threads)
    if not worker:  # the controller (or a run without xdist) alone merges, writes and prints
        from .review import Review

        config.pluginmanager.register(run, "lowprec-run")
        config.pluginmanager.register(Review.start(config, run), "lowprec-review")
    return run


def pin_worker_late(config: pytest.Config) -> None:
    """An xdist worker of a run that named no lowprec option learns at collection that its tests use
    lowprec: it takes its own GPU now, which works only while CUDA has not started in this process."""
    import torch

    visible = visible_gpu_ids(dict(os.environ), torch.cuda.device_count())
    if not visible or "lowprec_gpus" in config.workerinput:
        return
    if torch.cuda.is_initialized():
        raise pytest.UsageError(
            "pytest-lowprec: CUDA started in this xdist worker before its tests were collected (a test module "
            "or conftest touched a GPU at import), so the worker can no longer be pinned to a GPU of its own; "
            "name a lowprec option (e.g. --gpu auto) to pin every worker when it starts")
    workers = config.workerinput.get("workercount", 1)
    if workers > len(visible):
        raise pytest.UsageError(_too_many_workers(workers, len(visible)))
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu_for_worker(visible, config.workerinput["workerid"])


def _too_many_workers(workers: int, gpus: int) -> str:
    return (f"-n {workers} asks for {workers} workers but {gpus} GPU(s) are visible; workers sharing a GPU "
            f"disturb each other's timings. Use -n {gpus} or fewer, or --gpu cpu (accuracy gates and CPU-timed "
            "speedups; speed gates over CUDA work skip)")


class LowprecRun:
    def __init__(self, pytest_config: pytest.Config, gate: GateConfig, device: DeviceInfo, store: BaselineStore,
                 entries: dict[str, dict]):
        self.pytest_config = pytest_config
        self.gate = gate
        self.device = device
        self.store = store
        self.entries = entries
        self.records: dict[str, WorkloadRecord] = {}
        self.written: tuple[Path, int] | None = None
        self.write_error: str | None = None
        self.notes: list[str] = []  # what the update did besides recording: a folder created, a link followed
        self.lost_workers: list[str] = []  # xdist workers that went down without handing their records over
        self.reports: list[str] = []
        self.threads_before: int | None = None  # torch's CPU threads before the run fixed them, to restore
        spec = spec_for(device.key)
        if spec is None and device.is_cuda:  # a GPU the registry does not name: its capability's rates
            spec = derived_spec(device, *probe_rates(device))
        self.shared = SharedState(spec=spec, ceilings=ceilings_for(spec, ceiling_metrics(entries)))

    # -- records ------------------------------------------------------------
    def add(self, record: WorkloadRecord) -> None:
        self.records[record.nodeid] = record
        if not hasattr(self.pytest_config, "workerinput"):
            self.pytest_config.hook.pytest_lowprec_record(config=self.pytest_config, record=record)

    def baseline_entry(self, nodeid: str) -> dict | None:
        return self.entries.get(nodeid)

    def _entry(self, record: WorkloadRecord, header: dict) -> dict:
        return {
            "recorded": header["date"],
            "commit": header["commit"],
            "device": record.device or self.device.to_dict(),
            "software": header["software"],
            "signature": record.signature,
            "precision": list(record.precision),
            "metrics": record.metrics,
        }

    def write_baselines(self) -> None:
        recordable = [r for r in self.records.values() if r.recordable]
        if not recordable:
            self.written = (self.store.path_for(self.device.key), 0)
            return
        header = self.header()
        entries = {r.nodeid: self._entry(r, header) for r in recordable}
        if self.gate.merge:
            for nodeid, entry in entries.items():
                entries[nodeid], notes = merge_entry(nodeid, self.entries.get(nodeid), entry,
                                                     self.gate.max_record_noise)
                self.notes.extend(notes)
        for nodeid, entry in entries.items():  # an entry is replaced whole: say what leaves the file
            dropped = sorted(set(self.entries.get(nodeid, {}).get("metrics", {})) - set(entry["metrics"]))
            if dropped:
                self.notes.append(f"lowprec: {nodeid} no longer records {', '.join(dropped)}: "
                                  "this update removes them from its baseline entry")
        directory, link = Path(self.store.directory), self.store.path_for(self.device.key)
        created = not directory.exists()
        try:
            path = self.store.update(self.device.key, entries)
        except BaselineError as exc:
            self.write_error = str(exc)
            return
        self.written = (path, len(entries))
        if created:
            self.notes.append(f"lowprec: created the baselines folder {directory}")
        if path != link:
            self.notes.append(f"lowprec: {link} is a symbolic link: wrote the file it points to, {path}; "
                              "the link is unchanged")

    # -- hooks on the controller --------------------------------------------
    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error) -> None:
        payload = getattr(node, "workeroutput", {}).get(WORKEROUTPUT_KEY)
        if payload:
            for d in json.loads(payload):
                self.add(WorkloadRecord.from_dict(d))
        elif error is not None:
            self.lost_workers.append(f"{node.gateway.id}: {error}")

    def header(self) -> dict:
        """The run as reports and baseline entries name it: device, software stack, commit, date."""
        return {
            "gpu": self.device.key,
            "device_name": self.device.name,
            "software": software_fingerprint(self.device),
            "commit": _git_commit(Path(self.pytest_config.rootpath)),
            "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
            "baselines": str(self.store.path_for(self.device.key)),
            "cpu_threads": self.gate.cpu_threads,
        }

    def trace_note(self) -> str | None:
        """What --lowprec-trace did, when it wrote nothing: traces come from CUDA speedups only."""
        if self.gate.trace_dir is None:
            return None
        if any(t.file for r in self.records.values() for sides in r.traces.values() for t in sides.values()):
            return None
        why = (f"this run has no CUDA device (--gpu {self.device.key})" if not self.device.is_cuda
               else "no test timed a speedup of CUDA work (device='cuda')")
        return (f"lowprec: WARNING: --lowprec-trace {self.gate.trace_dir} did nothing: {why}; traces are taken "
                "of CUDA speedups only")

    def write_reports(self) -> None:
        """Render what was decided; a report that cannot be written is said, and changes no outcome."""
        if not (self.gate.report_path or self.gate.markdown_path or self.gate.csv_path):
            return
        from .report import html, markdown  # jinja2 and pandas: only for a run that writes reports
        from .report.rows import verdict_frame, write_csv
        from .review import REVIEW_KEY

        review = self.pytest_config.stash.get(REVIEW_KEY, None)  # pytest's outcomes and the trends: review.py
        wanted = [(self.gate.report_path, functools.partial(html.render, review=review and review.data)),
                  (self.gate.markdown_path, functools.partial(markdown.render, appendix=review.markdown_lines(
                      self.gate.markdown_path, self.gate.report_path) if review else (),
                      outcomes=review and review.outcomes))]
        header, records = self.header(), list(self.records.values())
        for path, render in wanted:
            if path is not None:
                self._report(path, lambda p=path, r=render: r(p, header, records))
        if self.gate.csv_path is not None:
            self._report(self.gate.csv_path, lambda: write_csv(verdict_frame(records), self.gate.csv_path))

    def _report(self, path: Path, write) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write()
            self.reports.append(f"lowprec: wrote {path}")
        except OSError as exc:
            self.reports.append(f"lowprec: could not write {path}: {exc}")

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        try:
            if self.gate.update:
                self.write_baselines()
                if self.write_error or self.lost_workers:
                    session.exitstatus = pytest.ExitCode.TESTS_FAILED
        finally:  # the reports say what was measured even when the baselines could not be written
            self.write_reports()

    def pytest_terminal_summary(self, terminalreporter) -> None:
        for line in self.reports:
            terminalreporter.write_line(line)
        trace_note = self.trace_note()
        if trace_note:
            terminalreporter.write_line(terminal_text(trace_note), yellow=True, bold=True)
        for lost in self.lost_workers:
            terminalreporter.write_line(terminal_text(
                f"lowprec: worker {lost}: it went down before handing over its records; its tests' verdicts are "
                "missing from the reports" + (" and none of them was recorded" if self.gate.update else "")),
                red=True, bold=True)
        if not self.records:
            return
        tr = terminalreporter
        path = self.store.path_for(self.device.key)
        tr.write_sep("=", f"lowprec gate on {self.device.key} ({self.device.name}), baselines {path}")
        table = self.pytest_config.getoption("lowprec_table")
        every = table == "all" or (table is None and self.pytest_config.get_verbosity() > 0)
        for line in summary_lines(sorted(self.records.values(), key=lambda r: r.nodeid), every=every):
            tr.write_line(line)
        if not self.gate.update and not Path(self.store.directory).is_dir():
            tr.write_line(terminal_text(f"lowprec: WARNING: the baselines folder {self.store.directory} does not "
                                        "exist (a typo in --lowprec-baselines?); no test had a stored baseline"),
                          yellow=True, bold=True)
        if self.gate.update:
            for note in self.notes:
                tr.write_line(terminal_text(note))
            if self.write_error:
                tr.write_line(terminal_text(f"lowprec: baselines NOT written: {self.write_error}"), red=True, bold=True)
            elif self.written:
                written_path, count = self.written
                skipped = len(self.records) - count
                tr.write_line(f"lowprec: recorded {count} entr{'y' if count == 1 else 'ies'} in {written_path}"
                              + (f"; {skipped} not recorded (failed, skipped, or no metrics)" if skipped else ""))


def publish_worker_records(config: pytest.Config, run: LowprecRun) -> None:
    """On an xdist worker: hand the records to the controller, which alone writes files."""
    config.workeroutput[WORKEROUTPUT_KEY] = json.dumps([r.to_dict() for r in run.records.values()])
