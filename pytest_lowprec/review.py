"""What a reviewer needs beyond the verdicts: pytest's own outcomes, the history store, and a saved run.

`Review` is a plugin object on the controller (plugin.py registers it beside the run). It tallies every
test report the way pytest's terminal summary does (so the report's counts are pytest's), appends the run
to the history store (`--lowprec-history`), reads each metric's trend back for the report and the PR
summary, and saves the run as JSON (`--lowprec-json`) so a report can be rendered again later.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .gate import Status
from .history import HistoryError, HistoryStore, shown_url
from .trends import TrendView, trend_views

REVIEW_KEY = pytest.StashKey["Review"]()
RUN_FORMAT = "pytest-lowprec-run"
RUN_FORMAT_VERSION = 1
DEFAULT_COMMITS = 20


@dataclass
class Outcomes:
    """pytest's counts (a report per phase with a category, as the terminal summary counts them) and the
    reason of every skipped test."""

    counts: dict[str, int] = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)  # {"test", "reason"}
    deselected: int = 0

    def add(self, category: str, nodeid: str, longrepr) -> None:
        if not category:
            return
        self.counts[category] = self.counts.get(category, 0) + 1
        if category == "skipped":
            reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr or "")
            self.skipped.append({"test": nodeid, "reason": reason.removeprefix("Skipped: ")})

    @property
    def tests(self) -> int:
        return sum(self.counts.get(k, 0) for k in ("passed", "failed", "skipped", "xfailed", "xpassed"))

    def to_dict(self) -> dict:
        return {"counts": dict(self.counts), "skipped": list(self.skipped), "deselected": self.deselected}

    @classmethod
    def from_dict(cls, d: dict | None) -> Outcomes:
        d = d or {}
        return cls(dict(d.get("counts", {})), list(d.get("skipped", [])), int(d.get("deselected", 0)))


@dataclass
class ReviewData:
    """What the renderers take besides header and records; every field may be empty."""

    outcomes: Outcomes | None = None
    trends: dict[tuple[str, str], TrendView] = field(default_factory=dict)
    history_note: str = ""

    def markdown_lines(self, records, report_link: str | None) -> list[str]:
        """The PR summary's trend of each regressed metric, with a link to its chart in the HTML report."""
        from .names import markdown_text

        lines = []
        for rec in sorted(records, key=lambda r: r.nodeid):
            for v in rec.verdicts:
                view = self.trends.get((rec.nodeid, v.metric))
                if v.status != Status.FAIL or view is None:
                    continue
                link = f" ([trend]({report_link}#{view.anchor}))" if report_link else ""
                lines.append(f"- {markdown_text(rec.nodeid)} {markdown_text(v.metric)}: "
                             f"{markdown_text(view.describe())}{link}")
        return ["### Trends of the regressed metrics", "", *lines, ""] if lines else []


def _branch(root: Path) -> str | None:
    """The branch measured: what CI says (a pull request's head first), else git's."""
    for var in ("LOWPREC_BRANCH", "GITHUB_HEAD_REF", "GITHUB_REF_NAME", "CI_COMMIT_REF_NAME"):
        if os.environ.get(var):
            return os.environ[var]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--abbrev-ref", "HEAD"],
                             capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    name = out.stdout.strip()
    return name if out.returncode == 0 and name and name != "HEAD" else None


class Review:
    """Registered on the controller next to the run; see the module docstring."""

    def __init__(self, config: pytest.Config, run, store: HistoryStore | None):
        self.config = config
        self.run = run
        self.store = store
        self.outcomes = Outcomes()
        self.data = ReviewData(outcomes=self.outcomes)
        self.lines: list[tuple[str, bool]] = []  # terminal lines, and whether each is an error
        self.json_path = Path(config.getoption("lowprec_json")).absolute() if config.getoption("lowprec_json") else None

    @classmethod
    def start(cls, config: pytest.Config, run) -> Review:
        """Open the history store before any test runs: a bad URL stops the run now, not after an hour."""
        url = config.getoption("lowprec_history")
        store = None
        if url:
            try:
                store = HistoryStore.open(url)
            except HistoryError as exc:
                raise pytest.UsageError(f"pytest-lowprec: --lowprec-history: {exc}") from None
        review = cls(config, run, store)
        config.stash[REVIEW_KEY] = review
        return review

    # -- hooks ----------------------------------------------------------------
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        category = self.config.hook.pytest_report_teststatus(report=report, config=self.config)[0]
        self.outcomes.add(category, report.nodeid, report.longrepr if report.skipped else None)

    def pytest_deselected(self, items) -> None:
        self.outcomes.deselected += len(items)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Before the run's reports are written (its hook is trylast): they draw the trends read here."""
        header = self.header()
        records = sorted(self.run.records.values(), key=lambda r: r.nodeid)
        if self.store is not None:
            try:
                run_id = self.store.append(header, records, branch=header["branch"],
                                           outcomes=self.outcomes.to_dict())
                keys = {(r.nodeid, v.metric) for r in records for v in r.verdicts}
                commits = self.config.getoption("lowprec_history_commits") or DEFAULT_COMMITS
                self.data.trends = trend_views(self.store.series(header["gpu"], commits, run_id, keys))
                self.data.history_note = f"run #{run_id} in {shown_url(self.store.url)}"
                self.lines.append((f"lowprec: appended run #{run_id} ({sum(len(r.verdicts) for r in records)} "
                                   f"verdicts) to the history {shown_url(self.store.url)}", False))
            except Exception as exc:  # the database went away mid-run: say so, fail the run, keep the reports
                self.lines.append((f"lowprec: history NOT written to {shown_url(self.store.url)}: "
                                   f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", True))
                if session.exitstatus == pytest.ExitCode.OK:
                    session.exitstatus = pytest.ExitCode.TESTS_FAILED
            finally:
                self.store.close()
        if self.json_path is not None:
            try:
                save_run(self.json_path, header, records, self.outcomes)
                self.lines.append((f"lowprec: wrote {self.json_path}", False))
            except OSError as exc:
                self.lines.append((f"lowprec: could not write {self.json_path}: {exc}", True))

    def pytest_terminal_summary(self, terminalreporter) -> None:
        for line, error in self.lines:
            terminalreporter.write_line(line, red=error, bold=error)

    def header(self) -> dict:
        return {**self.run.header(), "device": self.run.device.to_dict(),
                "branch": _branch(Path(self.config.rootpath))}

    def markdown_lines(self, markdown_path: Path | None, report_path: Path | None) -> list[str]:
        """The trend lines of the PR summary; links go to LOWPREC_REPORT_URL (CI: the uploaded report),
        else to the HTML report beside the markdown file."""
        link = os.environ.get("LOWPREC_REPORT_URL") or None
        if link is None and report_path is not None and markdown_path is not None:
            link = os.path.relpath(report_path, Path(markdown_path).parent)
        return self.data.markdown_lines(self.run.records.values(), link)


def save_run(path: Path, header: dict, records, outcomes: Outcomes) -> None:
    """The run as one JSON file: enough to render its report again, anywhere."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": RUN_FORMAT, "version": RUN_FORMAT_VERSION, "header": header,
               "outcomes": outcomes.to_dict(), "records": [r.to_dict() for r in records]}
    path.write_text(json.dumps(payload, indent=1, default=str), encoding="utf-8")


def load_run(path: Path) -> tuple[dict, list, Outcomes]:
    """A run saved by `--lowprec-json`: header, TestRecords, outcomes; a wrong file is a clear ValueError."""
    from .record import WorkloadRecord

    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read the saved run {path}: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != RUN_FORMAT:
        raise ValueError(f"{path} is not a run saved by --lowprec-json (no \"format\": \"{RUN_FORMAT}\")")
    if payload.get("version", 0) > RUN_FORMAT_VERSION:
        raise ValueError(f"{path} was saved by a newer pytest-lowprec (format {payload['version']}); "
                         "upgrade pytest-lowprec to read it")
    return (payload["header"], [WorkloadRecord.from_dict(r) for r in payload["records"]],
            Outcomes.from_dict(payload.get("outcomes")))
