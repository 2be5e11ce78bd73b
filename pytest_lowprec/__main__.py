"""`python -m pytest_lowprec`: compare two runs, list stored runs, render a report from a saved run.

    python -m pytest_lowprec compare A B --history reports/history.sqlite [--gpu h200] [--markdown]
    python -m pytest_lowprec runs --history reports/history.sqlite [--gpu h200]
    python -m pytest_lowprec report reports/run.json -o reports/lowprec.html [--history URL]
    python -m pytest_lowprec report --history URL --run 1a2b3c4 -o reports/lowprec.html

A and B are run ids (12 or #12), commits (a prefix; the commit's latest run) or files saved by
--lowprec-json. Errors are one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .history import HistoryError, HistoryStore, shown_url, verdict_rows


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pytest_lowprec", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare", help="compare two runs (ids, commits or saved JSON runs), largest moves first")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("--history", help="the history store (a path or URL); needed unless A and B are JSON files")
    c.add_argument("--gpu", help="only runs on this GPU key (a commit may have run on several)")
    c.add_argument("--markdown", action="store_true", help="a markdown table instead of the terminal table")
    c.add_argument("--only-changed", action="store_true",
                   help="only metrics whose intervals separate, whose status moved, or (without intervals) that "
                        "moved by more than --threshold")
    c.add_argument("--threshold", type=float, default=1.0, metavar="PCT", help="see --only-changed (default 1)")
    r = sub.add_parser("runs", help="list the stored runs, newest first")
    r.add_argument("--history", required=True)
    r.add_argument("--gpu")
    r.add_argument("--limit", type=int, default=30)
    p = sub.add_parser("report", help="render the HTML report of a saved run, or of a stored run")
    p.add_argument("saved", nargs="?", type=Path, help="a run saved by --lowprec-json")
    p.add_argument("--history", help="the history store: draws trends (and is the run's source with --run)")
    p.add_argument("--run", help="a stored run (id or commit) to render, instead of a saved file")
    p.add_argument("--gpu")
    p.add_argument("--commits", type=int, default=20, help="commits of history in the trends (default 20)")
    p.add_argument("-o", "--output", type=Path, required=True)
    return parser


def _side(ref: str, store: HistoryStore | None, gpu: str | None):
    """(label, header, verdict rows) of a run named on the command line."""
    from .review import load_run

    if ref.endswith(".json") and Path(ref).is_file():
        header, records, _ = load_run(Path(ref))
        return f"{ref} ({header.get('commit') or 'unknown'})", header, verdict_rows(records)
    if store is None:
        raise HistoryError(f"{ref!r} is not a saved run file; give --history to name stored runs")
    run = store.resolve(ref, gpu)
    return f"{run.label} {run.gpu} {run.date}", run.header, store.verdicts(run.id)


def _compare(args) -> int:
    from .compare import compare, stack_differences
    from .report import compare_text

    store = HistoryStore.open(args.history) if args.history else None
    try:
        (la, ha, ra), (lb, hb, rb) = _side(args.a, store, args.gpu), _side(args.b, store, args.gpu)
    finally:
        if store is not None:
            store.close()
    changes = compare(ra, rb)
    if args.only_changed:
        changes = [c for c in changes if c.changed(args.threshold)]
    title = [f"A: {la}", f"B: {lb}"]
    if ha.get("gpu") != hb.get("gpu"):
        title.append(f"WARNING: different GPU keys ({ha.get('gpu')} vs {hb.get('gpu')}): speedups do not compare")
    stack = stack_differences(ha.get("software") or {}, hb.get("software") or {})
    if stack:
        title.append("stack differs: " + "; ".join(stack))
    render = compare_text.markdown if args.markdown else compare_text.terminal
    sys.stdout.write(render(title, changes) + ("" if args.markdown else "\n"))
    return 0


def _runs(args) -> int:
    from .report.terminal import table

    with HistoryStore.open(args.history) as store:
        runs = store.runs(args.gpu, args.limit)
    rows = [[f"#{r.id}", r.commit or "-", r.branch or "-", r.gpu, r.date, r.stack] for r in runs]
    print("\n".join(table(("run", "commit", "branch", "gpu", "date", "stack"), rows)))
    return 0


def _report(args) -> int:
    from .record import WorkloadRecord
    from .report import html
    from .review import Outcomes, ReviewData, load_run
    from .trends import trend_views

    if (args.saved is None) == (args.run is None):
        raise HistoryError("give either a saved run file or --run with --history")
    store = HistoryStore.open(args.history) if args.history else None
    try:
        if args.run is not None:
            if store is None:
                raise HistoryError("--run names a stored run: give --history too")
            info = store.resolve(args.run, args.gpu)
            header, outcomes = info.header, Outcomes.from_dict(info.outcomes)
            records = [WorkloadRecord.from_dict(d) for d in store.records(info.id)]
            upto = info.id
        else:
            header, records, outcomes = load_run(args.saved)
            upto = None
        review = ReviewData(outcomes=outcomes)
        if store is not None:
            keys = {(r.nodeid, v.metric) for r in records for v in r.verdicts}
            if upto is None:  # a saved run: the trend up to its commit's latest stored run, if stored
                found = [r for r in store.runs(header["gpu"]) if r.commit == header.get("commit")]
                upto = found[0].id if found else None
            review.trends = trend_views(store.series(header["gpu"], args.commits, upto, keys))
            review.history_note = shown_url(store.url)
    finally:
        if store is not None:
            store.close()
    html.render(args.output, header, records, review)
    print(f"wrote {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"compare": _compare, "runs": _runs, "report": _report}[args.command](args)
    except (HistoryError, ValueError) as exc:
        print(f"pytest_lowprec {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
