from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from pytest_lowprec.baselines import SCHEMA_VERSION, BaselineError, BaselineStore


def entry(value: float) -> dict:
    return {"recorded": "2026-11-22T00:00:00+00:00", "signature": {}, "metrics": {"speedup": {"value": value}}}


def test_missing_file_reads_as_no_entries(tmp_path):
    assert BaselineStore(tmp_path).read("h100") == {}


def test_update_writes_sorted_indented_schema_versioned_json(tmp_path):
    store = BaselineStore(tmp_path)
    path = store.update("h100", {"b::t": entry(1.0), "a::t": entry(2.0)})
    text = path.read_text()
    data = json.loads(text)
    assert data["schema"] == SCHEMA_VERSION and data["gpu"] == "h100"
    assert list(data["entries"]) == ["a::t", "b::t"]
    assert text.endswith("\n") and '\n  "entries": {' in text


def test_update_merges_only_the_entries_given_and_leaves_other_gpus_alone(tmp_path):
    store = BaselineStore(tmp_path)
    store.update("h100", {"a": entry(1.0), "b": entry(2.0)})
    store.update("h200", {"a": entry(3.0)})
    h200_before = store.path_for("h200").read_bytes()
    store.update("h100", {"b": entry(2.5)})
    assert store.read("h100") == {"a": entry(1.0), "b": entry(2.5)}
    assert store.path_for("h200").read_bytes() == h200_before


def test_truncated_file_is_an_error_naming_it_and_is_never_overwritten(tmp_path):
    store = BaselineStore(tmp_path)
    path = store.path_for("h100")
    path.write_text('{"schema": 1, "gpu": "h100", "entries": {"a": {"metr')
    before = path.read_bytes()
    with pytest.raises(BaselineError, match=r"h100\.json: not valid JSON .*corrupt or truncated"):
        store.update("h100", {"b": entry(1.0)})
    assert path.read_bytes() == before


def test_unknown_schema_is_an_error_that_says_which_schema_is_read(tmp_path):
    path = tmp_path / "h100.json"
    path.write_text(json.dumps({"schema": 99, "gpu": "h100", "entries": {}}))
    with pytest.raises(BaselineError, match="unknown baseline schema 99; this pytest-lowprec reads schema 1"):
        BaselineStore(tmp_path).read("h100")


def test_file_for_another_gpu_is_an_error(tmp_path):
    (tmp_path / "h100.json").write_text(json.dumps({"schema": 1, "gpu": "b200", "entries": {}}))
    with pytest.raises(BaselineError, match="file says gpu 'b200'"):
        BaselineStore(tmp_path).read("h100")


def test_entry_without_metrics_is_an_error(tmp_path):
    (tmp_path / "h100.json").write_text(json.dumps({"schema": 1, "gpu": "h100", "entries": {"x": {}}}))
    with pytest.raises(BaselineError, match="entry 'x' has no 'metrics'"):
        BaselineStore(tmp_path).read("h100")


def test_nan_is_never_written(tmp_path):
    store = BaselineStore(tmp_path)
    store.update("h100", {"a": entry(1.0)})
    with pytest.raises(ValueError):
        store.update("h100", {"b": entry(float("nan"))})
    assert list(store.read("h100")) == ["a"]


def _update_one(directory: str, key: str) -> None:
    BaselineStore(directory).update("h100", {key: entry(1.0)})


def test_concurrent_updates_from_separate_processes_lose_no_entry(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_update_one, args=(str(tmp_path), f"t{i}")) for i in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert sorted(BaselineStore(tmp_path).read("h100")) == sorted(f"t{i}" for i in range(8))


def test_process_killed_during_an_update_leaves_the_old_file_intact(tmp_path):
    store = BaselineStore(tmp_path)
    store.update("h100", {"old": entry(1.0)})
    before = store.path_for("h100").read_bytes()
    # The child stalls inside the write (after the temp file exists, before the rename) and is killed there.
    child = textwrap.dedent(f"""
        import os, time
        from pytest_lowprec.baselines import BaselineStore
        real_fsync = os.fsync
        def stall(fd):
            real_fsync(fd)
            print("writing", flush=True)
            time.sleep(60)
        os.fsync = stall
        BaselineStore({str(tmp_path)!r}).update("h100", {{"new": {{"metrics": {{}}, "signature": {{}}}}}})
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert store.path_for("h100").read_bytes() == before
    assert list(store.read("h100")) == ["old"]
    time.sleep(0)  # the stale temp file may remain; it is never read as a baseline
