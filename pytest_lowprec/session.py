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
from pathlib import Path

import pytest

from .baselines import BaselineError, BaselineStore
from .config import GateConfig
from .hardware import DeviceInfo, derived_spec, probe_rates, software_fingerprint, spec_for
from .names import terminal_text
from .recorder import SharedState, TestRecord
from .report import html, markdown
from .report.rows import verdict_frame, write_csv
from .report.terminal import summary_lines
from .review import REVIEW_KEY
from .roofline import ceiling_metrics, ceilings_for

_WORKEROUTPUT_KEY = "lowprec_records"


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


class LowprecRun:
    def __init__(self, pytest_config: pytest.Config, gate: GateConfig, device: DeviceInfo, store: BaselineStore,
                 entries: dict[str, dict]):
        self.pytest_config = pytest_config
        self.gate = gate
        self.device = device
        self.store = store
        self.entries = entries
        self.records: dict[str, TestRecord] = {}
        self.written: tuple[Path, int] | None = None
        self.write_error: str | None = None
        self.notes: list[str] = []  # what the update did besides recording: a folder created, a link followed
        self.lost_workers: list[str] = []  # xdist workers that went down without handing their records over
        self.reports: list[str] = []
        spec = spec_for(device.key)
        if spec is None and device.is_cuda:  # a GPU the registry does not name: its capability's rates
            spec = derived_spec(device, *probe_rates(device))
        self.shared = SharedState(spec=spec, ceilings=ceilings_for(spec, ceiling_metrics(entries)))

    # -- records ------------------------------------------------------------
    def add(self, record: TestRecord) -> None:
        self.records[record.nodeid] = record
        if not hasattr(self.pytest_config, "workerinput"):
            self.pytest_config.hook.pytest_lowprec_record(config=self.pytest_config, record=record)

    def baseline_entry(self, nodeid: str) -> dict | None:
        return self.entries.get(nodeid)

    def _entry(self, record: TestRecord, header: dict) -> dict:
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
        payload = getattr(node, "workeroutput", {}).get(_WORKEROUTPUT_KEY)
        if payload:
            for d in json.loads(payload):
                self.add(TestRecord.from_dict(d))
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

    def write_reports(self) -> None:
        """Render what was decided; a report that cannot be written is said, and changes no outcome."""
        review = self.pytest_config.stash.get(REVIEW_KEY, None)  # pytest's outcomes and the trends: review.py
        wanted = [(self.gate.report_path, functools.partial(html.render, review=review and review.data)),
                  (self.gate.markdown_path, functools.partial(markdown.render, appendix=review.markdown_lines(
                      self.gate.markdown_path, self.gate.report_path) if review else ()))]
        if not any(p for p, _ in wanted) and self.gate.csv_path is None:
            return
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
        for line in summary_lines(sorted(self.records.values(), key=lambda r: r.nodeid)):
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
    config.workeroutput[_WORKEROUTPUT_KEY] = json.dumps([r.to_dict() for r in run.records.values()])
