"""The history store: every verdict of every run, keyed by commit, branch, GPU key, device and stack.

An SQLite file by default (`--lowprec-history reports/history.sqlite`), any SQLAlchemy URL otherwise
(`postgresql://user@host/db` for CI runners that share one store). SQLAlchemy is imported here only,
when a store is opened. The schema carries its version in `lowprec_schema`; `MIGRATIONS` are ordered
steps, each run once, in one transaction with the version bump. A store newer than this code, a file
that is not a database, or a server that cannot be reached is a `HistoryError` that says what to do,
and the store is left as it was.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

TABLE_PREFIX = "lowprec_"
_POSTGRES_LOCK = 0x6C6F7770  # "lowp": one migrating process at a time on a shared server


class HistoryError(Exception):
    """The store cannot be used as asked; the message says why and how to fix it."""


@dataclass(frozen=True)
class RunInfo:
    """One stored run, as listings and comparisons name it."""

    id: int
    commit: str | None
    branch: str | None
    gpu: str
    device_fingerprint: str
    stack: str
    date: str
    header: dict
    outcomes: dict

    @property
    def label(self) -> str:
        return f"#{self.id} {self.commit or 'unknown'}" + (f" ({self.branch})" if self.branch else "")


@dataclass(frozen=True)
class Point:
    """One commit's value of one metric: the latest run of that commit on the GPU key."""

    run_id: int
    commit: str | None
    date: str
    value: float
    low: float | None
    high: float | None
    status: str


def database_url(text: str) -> str:
    """A path is an SQLite file; `postgresql://` and `postgres://` use psycopg 3, the driver the extra installs."""
    if "://" not in text:
        return "sqlite:///" + str(Path(text).expanduser().absolute())
    scheme, rest = text.split("://", 1)
    if scheme in ("postgresql", "postgres"):
        return "postgresql+psycopg://" + rest
    return text


def shown_url(url: str) -> str:
    """The URL for messages, with any password hidden."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL is shown as given: it carries no parsed password to hide
        return url


def fingerprint(data: dict) -> str:
    """A short stable digest of a dict (the device without its index, the software stack)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def verdict_rows(records: Iterable) -> list[dict]:
    """One row per verdict of the run's records, in the columns of `lowprec_verdicts`."""
    rows = []
    for rec in records:
        for v in rec.verdicts:
            low, high = v.interval if v.interval else (None, None)
            rows.append({
                "test": rec.nodeid, "metric": v.metric, "kind": v.kind.value, "precision": ",".join(rec.precision),
                "status": v.status.value, "value": _number(v.value), "low": _number(low), "high": _number(high),
                "unit": v.unit, "bound": v.bound, "baseline": _number(v.baseline), "delta_pct": _number(v.delta_pct),
                "tolerance_pct": _number(v.extra.get("tolerance_pct")),
                "baseline_ms": _number(v.extra.get("baseline_ms")),
                "optimized_ms": _number(v.extra.get("optimized_ms")),
                "flags": ",".join(v.flags), "reasons": "; ".join(v.reasons),
            })
    return rows


def _tables(sa):
    """The schema at the newest version, as SQLAlchemy Core tables."""
    meta = sa.MetaData()
    schema = sa.Table(f"{TABLE_PREFIX}schema", meta, sa.Column("version", sa.Integer, nullable=False))
    runs = sa.Table(
        f"{TABLE_PREFIX}runs", meta,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("commit", sa.String(64)), sa.Column("branch", sa.String(255)),
        sa.Column("gpu", sa.String(64), nullable=False, index=True),
        sa.Column("device_fingerprint", sa.String(32), nullable=False), sa.Column("device", sa.Text, nullable=False),
        sa.Column("stack", sa.String(32), nullable=False), sa.Column("software", sa.Text, nullable=False),
        sa.Column("date", sa.String(40), nullable=False),
        sa.Column("header", sa.Text, nullable=False), sa.Column("outcomes", sa.Text, nullable=False),
    )
    verdicts = sa.Table(
        f"{TABLE_PREFIX}verdicts", meta,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.Integer, sa.ForeignKey(runs.c.id), nullable=False, index=True),
        sa.Column("test", sa.Text, nullable=False), sa.Column("metric", sa.Text, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False), sa.Column("precision", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        *(sa.Column(c, sa.Float) for c in ("value", "low", "high", "baseline", "delta_pct", "tolerance_pct",
                                           "baseline_ms", "optimized_ms")),
        sa.Column("unit", sa.String(16), nullable=False), sa.Column("bound", sa.Text, nullable=False),
        sa.Column("flags", sa.Text, nullable=False), sa.Column("reasons", sa.Text, nullable=False),
    )
    records = sa.Table(
        f"{TABLE_PREFIX}records", meta,
        sa.Column("run_id", sa.Integer, sa.ForeignKey(runs.c.id), primary_key=True),
        sa.Column("test", sa.Text, primary_key=True),
        sa.Column("record", sa.Text, nullable=False),
    )
    trend_index = sa.Index(f"ix_{TABLE_PREFIX}verdicts_test_metric", verdicts.c.test, verdicts.c.metric)
    return {"schema": schema, "runs": runs, "verdicts": verdicts, "records": records, "trend_index": trend_index}


def _migration_1(sa, conn, t) -> None:
    """Runs and their verdicts: what trends and comparisons read."""
    for table in (t["runs"], t["verdicts"]):
        table.create(conn, checkfirst=True)


def _migration_2(sa, conn, t) -> None:
    """Each test's whole record (traces, signature, every verdict), so a report can be re-rendered from the
    store; and the index a trend query (one test and metric over runs) walks."""
    t["records"].create(conn, checkfirst=True)
    t["trend_index"].create(conn, checkfirst=True)


# Ordered: step k brings a store from version k-1 to k. Append, never edit a released step.
MIGRATIONS: tuple[Callable, ...] = (_migration_1, _migration_2)
SCHEMA_VERSION = len(MIGRATIONS)


class HistoryStore:
    """An open store. `HistoryStore.open(url)` connects, checks the schema and brings an older one up to date."""

    def __init__(self, engine, sa, tables: dict, url: str):
        self._engine, self._sa, self._t, self.url = engine, sa, tables, url

    @classmethod
    def open(cls, text: str) -> HistoryStore:
        url = database_url(text)
        try:
            import sqlalchemy as sa
        except ModuleNotFoundError:
            raise HistoryError("the history store needs SQLAlchemy 2: pip install 'pytest-lowprec[history]'") from None
        if url.startswith("sqlite:///"):
            _check_sqlite_path(Path(url[len("sqlite:///"):]))
        try:
            engine = sa.create_engine(url)
        except ModuleNotFoundError as exc:
            raise HistoryError(f"the history store {shown_url(url)} needs the database driver {exc.name!r}: "
                               "pip install 'pytest-lowprec[postgres]' for PostgreSQL") from None
        except sa.exc.ArgumentError as exc:
            raise HistoryError(f"--lowprec-history {text!r} is neither a file path nor a database URL ({exc}); "
                               "give a path such as reports/history.sqlite or a URL such as "
                               "postgresql://user@host/db") from None
        store = cls(engine, sa, _tables(sa), url)
        try:
            store._migrate()
        except HistoryError:
            engine.dispose()
            raise
        except Exception as exc:
            engine.dispose()
            # By class name: SQLAlchemy wraps the driver's errors, but a driver imported apart from the
            # dialect (a test runner that re-imports modules) raises its own OperationalError unwrapped.
            names = {c.__name__ for c in type(exc).__mro__}
            if "OperationalError" in names:
                raise HistoryError(f"cannot reach the history store {shown_url(url)}: {_first_line(exc)}. Check "
                                   "that the server runs and accepts this user, or give a SQLite path instead"
                                   ) from None
            if names & {"DatabaseError", "DBAPIError"}:
                raise HistoryError(f"{shown_url(url)} is not a usable history store: {_first_line(exc)}; "
                                   "it was not changed. Give another path or URL") from None
            raise
        return store

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> HistoryStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- schema -------------------------------------------------------------
    def version(self) -> int:
        """The schema version the store is at (0: empty)."""
        with self._engine.connect() as conn:
            return self._read_version(conn)

    def _read_version(self, conn) -> int:
        sa, names = self._sa, set(self._sa.inspect(conn).get_table_names())
        if f"{TABLE_PREFIX}schema" not in names:
            if f"{TABLE_PREFIX}runs" in names:
                raise HistoryError(f"{shown_url(self.url)} has lowprec tables but no {TABLE_PREFIX}schema table: "
                                   "it was not made by pytest-lowprec, or was damaged by hand; it was not changed")
            return 0
        versions = [r[0] for r in conn.execute(sa.select(self._t["schema"].c.version))]
        if len(versions) != 1:
            raise HistoryError(f"{shown_url(self.url)}: {TABLE_PREFIX}schema holds {len(versions)} rows, not one; "
                               "the store was damaged by hand and was not changed")
        return int(versions[0])

    def _migrate(self) -> None:
        sa = self._sa
        with self._engine.begin() as conn:
            if conn.dialect.name == "postgresql":  # CI runners sharing a server: one migrates, the others wait
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _POSTGRES_LOCK})
            current = self._read_version(conn)
            if current > SCHEMA_VERSION:
                raise HistoryError(
                    f"the history store {shown_url(self.url)} has schema version {current}, newer than this "
                    f"pytest-lowprec understands ({SCHEMA_VERSION}); upgrade pytest-lowprec to use it. "
                    "The store was not changed")
            if current == SCHEMA_VERSION:
                return
            if current == 0:
                self._t["schema"].create(conn, checkfirst=True)
            for step in MIGRATIONS[current:]:
                step(sa, conn, self._t)
            schema = self._t["schema"]
            conn.execute(schema.delete())
            conn.execute(schema.insert().values(version=SCHEMA_VERSION))

    # -- writing ------------------------------------------------------------
    def append(self, header: dict, records: list, *, branch: str | None = None, outcomes: dict | None = None) -> int:
        """Store one run, its verdicts and its records in one transaction; returns the run's id."""
        t = self._t
        device = {k: v for k, v in (header.get("device") or {}).items() if k != "index"}
        software = header.get("software") or {}
        with self._engine.begin() as conn:
            run_id = conn.execute(t["runs"].insert().values(
                commit=header.get("commit"), branch=branch, gpu=header["gpu"],
                device_fingerprint=fingerprint(device), device=json.dumps(device, sort_keys=True),
                stack=fingerprint(software), software=json.dumps(software, sort_keys=True, default=str),
                date=header["date"], header=json.dumps(header, sort_keys=True, default=str),
                outcomes=json.dumps(outcomes or {}, sort_keys=True),
            )).inserted_primary_key[0]
            rows = verdict_rows(records)
            if rows:
                conn.execute(t["verdicts"].insert(), [{**r, "run_id": run_id} for r in rows])
            if records:
                conn.execute(t["records"].insert(), [
                    {"run_id": run_id, "test": r.nodeid, "record": json.dumps(r.to_dict(), default=str)}
                    for r in records])
        return int(run_id)

    # -- reading ------------------------------------------------------------
    def runs(self, gpu: str | None = None, limit: int | None = None) -> list[RunInfo]:
        """Stored runs, newest first."""
        sa, runs = self._sa, self._t["runs"]
        query = sa.select(runs).order_by(runs.c.id.desc())
        if gpu is not None:
            query = query.where(runs.c.gpu == gpu)
        if limit is not None:
            query = query.limit(limit)
        with self._engine.connect() as conn:
            return [_run_info(r) for r in conn.execute(query).mappings()]

    def resolve(self, ref: str, gpu: str | None = None) -> RunInfo:
        """A run named by its id (`12` or `#12`), or by a commit (a prefix of at least 4 characters: its latest run)."""
        text = ref.strip()
        candidates = self.runs(gpu)
        if text.lstrip("#").isdigit():
            found = [r for r in candidates if r.id == int(text.lstrip("#"))]
            if found:
                return found[0]
        if len(text) >= 4:
            found = [r for r in candidates if r.commit and r.commit.startswith(text)]
            if len({r.commit for r in found}) > 1:
                raise HistoryError(f"{ref!r} names several commits ({', '.join(sorted({r.commit for r in found}))}); "
                                   "give more of the commit, or a run id")
            if found:
                return found[0]
        where = f" on {gpu}" if gpu else ""
        raise HistoryError(f"no stored run{where} is {ref!r}: give a run id or a commit; "
                           "`python -m pytest_lowprec runs --history URL` lists them")

    def verdicts(self, run_id: int) -> list[dict]:
        sa, v = self._sa, self._t["verdicts"]
        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(v).where(v.c.run_id == run_id).order_by(v.c.test, v.c.id)).mappings()
            return [dict(r) for r in rows]

    def records(self, run_id: int) -> list[dict]:
        """The run's WorkloadRecord dicts (WorkloadRecord.from_dict turns them back)."""
        sa, t = self._sa, self._t["records"]
        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(t.c.record).where(t.c.run_id == run_id).order_by(t.c.test))
            return [json.loads(r[0]) for r in rows]

    def series(self, gpu: str, commits: int, upto_run: int | None = None,
               keys: set[tuple[str, str]] | None = None) -> dict[tuple[str, str], list[Point]]:
        """Each (test, metric)'s value over the last `commits` commits on `gpu` (up to run `upto_run`),
        oldest first; a commit run several times counts once, by its latest run."""
        chosen: dict[str | None, RunInfo] = {}
        for run in self.runs(gpu):
            if upto_run is not None and run.id > upto_run:
                continue
            key = run.commit if run.commit else f"run-{run.id}"  # runs without a commit stand alone
            if key not in chosen:
                if len(chosen) == commits:
                    break
                chosen[key] = run
        if not chosen:
            return {}
        sa, v = self._sa, self._t["verdicts"]
        ids = {r.id: r for r in chosen.values()}
        query = sa.select(v.c.run_id, v.c.test, v.c.metric, v.c.value, v.c.low, v.c.high, v.c.status).where(
            v.c.run_id.in_(list(ids)), v.c.value.is_not(None), v.c.kind.in_(["speedup", "accuracy", "memory",
                                                                            "efficiency"]))
        out: dict[tuple[str, str], list[Point]] = {}
        with self._engine.connect() as conn:
            for r in conn.execute(query.order_by(v.c.run_id)).mappings():
                if keys is not None and (r["test"], r["metric"]) not in keys:
                    continue
                run = ids[r["run_id"]]
                out.setdefault((r["test"], r["metric"]), []).append(
                    Point(run.id, run.commit, run.date, r["value"], r["low"], r["high"], r["status"]))
        return out


def _run_info(r) -> RunInfo:
    return RunInfo(id=r["id"], commit=r["commit"], branch=r["branch"], gpu=r["gpu"],
                   device_fingerprint=r["device_fingerprint"], stack=r["stack"], date=r["date"],
                   header=json.loads(r["header"]), outcomes=json.loads(r["outcomes"]))


def _first_line(exc: Exception) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_sqlite_path(path: Path) -> None:
    """SQLite would create any missing file; a folder or an unrelated file is refused before it is touched."""
    if path.is_dir():
        raise HistoryError(f"--lowprec-history {path} is a folder; give a file such as {path / 'history.sqlite'}")
    if path.exists() and path.stat().st_size > 0:
        with path.open("rb") as fh:
            if fh.read(16) != b"SQLite format 3\x00":
                raise HistoryError(f"{path} is not an SQLite database; it was not changed. Give a new file "
                                   "name (the store is created on first use) or an existing history store")
    path.parent.mkdir(parents=True, exist_ok=True)
