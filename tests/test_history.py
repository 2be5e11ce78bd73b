"""The history store on SQLite and PostgreSQL: append, read back as trends, migrate, and refuse bad stores."""

from __future__ import annotations

import pytest
from stores import header, record, store_url  # noqa: F401  (store_url is a fixture)

sa = pytest.importorskip("sqlalchemy")

from pytest_lowprec.history import (  # noqa: E402
    MIGRATIONS,
    SCHEMA_VERSION,
    HistoryError,
    HistoryStore,
    _tables,
    database_url,
)


def test_a_new_store_is_created_at_the_current_schema_version(store_url):  # noqa: F811
    with HistoryStore.open(store_url) as store:
        assert store.version() == SCHEMA_VERSION


def test_two_runs_read_back_as_one_series_per_metric_oldest_first(store_url):  # noqa: F811
    with HistoryStore.open(store_url) as store:
        store.append(header("aaaa1111"), [record(speedup=1.60)], branch="main")
        second = store.append(header("bbbb2222"), [record(speedup=1.45, status="fail")], branch="pr-7")
        series = store.series("h100", commits=10, upto_run=second)
    speed = series[("t.py::test_gemm", "speedup")]
    assert [p.commit for p in speed] == ["aaaa1111", "bbbb2222"]
    assert [p.value for p in speed] == [1.60, 1.45] and speed[1].status == "fail"
    assert speed[1].low == pytest.approx(1.44)


def test_a_commit_run_twice_counts_once_by_its_latest_run(store_url):  # noqa: F811
    with HistoryStore.open(store_url) as store:
        store.append(header("aaaa1111"), [record(speedup=1.50)])
        store.append(header("aaaa1111"), [record(speedup=1.60)])
        series = store.series("h100", commits=10)
    assert [p.value for p in series[("t.py::test_gemm", "speedup")]] == [1.60]


def test_a_series_holds_only_the_last_n_commits_of_its_gpu(store_url):  # noqa: F811
    with HistoryStore.open(store_url) as store:
        for i in range(5):
            store.append(header(f"c{i}c{i}c{i}"), [record(speedup=1.0 + i / 10)])
        store.append(header("other1", gpu="b200"), [record(speedup=9.0)])
        series = store.series("h100", commits=3)
    assert [p.commit for p in series[("t.py::test_gemm", "speedup")]] == ["c2c2c2", "c3c3c3", "c4c4c4"]


def test_a_run_keeps_its_branch_device_and_stack(store_url):  # noqa: F811
    with HistoryStore.open(store_url) as store:
        store.append(header("aaaa1111", torch="2.12.0"), [record()], branch="main")
        store.append(header("bbbb2222", torch="2.13.0"), [record()], branch="main")
        runs = store.runs("h100")
    assert [r.branch for r in runs] == ["main", "main"]
    assert runs[0].device_fingerprint == runs[1].device_fingerprint and runs[0].stack != runs[1].stack


def test_a_stored_run_gives_back_its_records(store_url):  # noqa: F811
    with HistoryStore.open(store_url) as store:
        run = store.append(header("aaaa1111"), [record(nodeid="t.py::test_<script>")])
        (saved,) = store.records(run)
    assert saved["nodeid"] == "t.py::test_<script>" and len(saved["verdicts"]) == 2


def test_runs_resolve_by_id_and_by_commit_prefix(store_url):  # noqa: F811
    with HistoryStore.open(store_url) as store:
        first = store.append(header("abcdef012345"), [record()])
        store.append(header("abcd99998888"), [record()])
        assert store.resolve(f"#{first}").commit == "abcdef012345"
        assert store.resolve("abcdef").id == first
        with pytest.raises(HistoryError, match="names several commits"):
            store.resolve("abcd")
        with pytest.raises(HistoryError, match="no stored run"):
            store.resolve("fedcba")


def _older_store(url: str) -> None:
    """A store as the first release wrote it: schema version 1, one run."""
    engine = sa.create_engine(database_url(url))
    tables = _tables(sa)
    with engine.begin() as conn:
        tables["schema"].create(conn)
        MIGRATIONS[0](sa, conn, tables)
        conn.execute(tables["schema"].insert().values(version=1))
        conn.execute(tables["runs"].insert().values(
            commit="old00000", branch="main", gpu="h100", device_fingerprint="d", device="{}", stack="s",
            software="{}", date="2026-11-01T00:00:00+00:00", header='{"gpu": "h100"}', outcomes="{}"))
    engine.dispose()


def test_an_older_store_is_migrated_in_place_and_keeps_its_runs(store_url):  # noqa: F811
    _older_store(store_url)
    with HistoryStore.open(store_url) as store:
        assert store.version() == SCHEMA_VERSION
        assert [r.commit for r in store.runs()] == ["old00000"]
        store.append(header("new11111"), [record()])  # the records table the migration added
        assert len(store.runs()) == 2


def test_a_store_with_a_newer_schema_is_refused_and_left_alone(store_url):  # noqa: F811
    HistoryStore.open(store_url).close()
    engine = sa.create_engine(database_url(store_url))
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE lowprec_schema SET version = 99"))
    with pytest.raises(HistoryError, match=r"schema version 99, newer than .* upgrade pytest-lowprec.*not changed"):
        HistoryStore.open(store_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version FROM lowprec_schema")).scalar() == 99
    engine.dispose()


def test_a_file_that_is_not_a_database_is_refused_and_unchanged(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    with pytest.raises(HistoryError, match="is not an SQLite database; it was not changed"):
        HistoryStore.open(str(notes))
    assert notes.read_text() == "my notes\n"


def test_a_folder_is_refused_with_a_file_name_to_use(tmp_path):
    with pytest.raises(HistoryError, match="is a folder; give a file such as"):
        HistoryStore.open(str(tmp_path))


def test_an_unreachable_server_is_a_clear_error_that_hides_the_password():
    pytest.importorskip("psycopg")
    with pytest.raises(HistoryError, match=r"cannot reach the history store .*\*\*\*.*Check that the server runs") as e:
        HistoryStore.open("postgresql://ci:secret@127.0.0.1:1/history")
    assert "secret" not in str(e.value)


def test_postgres_urls_use_psycopg_3_and_paths_become_sqlite_files(tmp_path):
    assert database_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert database_url(str(tmp_path / "h.sqlite")) == f"sqlite:///{tmp_path / 'h.sqlite'}"
