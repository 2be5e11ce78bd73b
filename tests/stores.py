"""History stores for tests: an SQLite file, and a fresh database on the PostgreSQL that
LOWPREC_TEST_POSTGRES_URL names (.ci/postgres starts one). Without it the PostgreSQL cases skip, unless
LOWPREC_REQUIRE_POSTGRES=1 (CI), where they fail."""

from __future__ import annotations

import os
import uuid

import pytest

from pytest_lowprec.gate import Kind, Status, Verdict
from pytest_lowprec.record import WorkloadRecord

POSTGRES = os.environ.get("LOWPREC_TEST_POSTGRES_URL")


def postgres_database():
    if not POSTGRES:
        if os.environ.get("LOWPREC_REQUIRE_POSTGRES"):
            pytest.fail("LOWPREC_REQUIRE_POSTGRES=1 but LOWPREC_TEST_POSTGRES_URL is unset (.ci/postgres start DIR)")
        pytest.skip("no PostgreSQL for the history tests: set LOWPREC_TEST_POSTGRES_URL (.ci/postgres start DIR "
                    "prints it)")
    sa = pytest.importorskip("sqlalchemy")
    admin = sa.create_engine(POSTGRES.replace("postgresql://", "postgresql+psycopg://", 1),
                             isolation_level="AUTOCOMMIT")
    name = f"lowprec_{uuid.uuid4().hex[:12]}"  # one database per test: xdist workers share the server
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    return admin, name, url


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """A history store URL of each engine, empty."""
    if request.param == "sqlite":
        yield str(tmp_path / "history.sqlite")
        return
    admin, name, url = postgres_database()
    yield url
    sa = pytest.importorskip("sqlalchemy")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def header(commit: str, gpu: str = "h100", date: str = "2026-12-01T00:00:00+00:00", torch: str = "2.13.0") -> dict:
    return {"gpu": gpu, "device_name": "NVIDIA H100 80GB HBM3", "software": {"torch": torch, "python": "3.11"},
            "commit": commit, "date": date, "baselines": "baselines/h100.json",
            "device": {"key": gpu, "name": "NVIDIA H100 80GB HBM3", "index": 0}}


def record(nodeid: str = "t.py::test_gemm", speedup: float = 1.6, sqnr: float = 28.0, status: str = "pass",
           width: float = 0.01) -> WorkloadRecord:
    verdicts = [Verdict("speedup", Kind.SPEEDUP, Status(status), value=speedup,
                        interval=(speedup - width, speedup + width), unit="x", baseline=1.6,
                        delta_pct=100 * (speedup - 1.6) / 1.6, extra={"tolerance_pct": 3.0}),
                Verdict("sqnr_db", Kind.ACCURACY, Status.PASS, value=sqnr, unit="dB")]
    return WorkloadRecord(nodeid, ("fp8",), {"n": 1024}, verdicts, outcome="failed" if status == "fail" else "passed")
