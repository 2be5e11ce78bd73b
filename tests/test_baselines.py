from __future__ import annotations

import errno
import json
import multiprocessing
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from pytest_lowprec import baselines
from pytest_lowprec.baseline_schema import MAX_BYTES
from pytest_lowprec.baselines import SCHEMA_VERSION, BaselineError, BaselineStore, baselines_directory, lock_holders


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
    with pytest.raises(BaselineError, match="not written: entry 'b' metric 'speedup' field 'value' .* found NaN"):
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


# -- reading a damaged or hostile file: one BaselineError naming the file, never a crash or a hang -----------


def doc(entries: dict, **top) -> str:
    return json.dumps({"schema": 1, "gpu": "h100", "entries": entries, **top})


def write(tmp_path, text: str | bytes):
    path = tmp_path / "h100.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_random_bytes_are_an_error_saying_the_file_is_not_utf8(tmp_path):
    write(tmp_path, bytes(range(256)) * 8)
    with pytest.raises(BaselineError, match=r"h100\.json: is not UTF-8 text"):
        BaselineStore(tmp_path).read("h100")


def test_utf16_file_is_an_error_saying_to_save_it_as_utf8(tmp_path):
    write(tmp_path, doc({}).encode("utf-16"))
    with pytest.raises(BaselineError, match=r"h100\.json: is UTF-16 text .*save it as UTF-8"):
        BaselineStore(tmp_path).read("h100")


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    write(tmp_path, b"\xef\xbb\xbf" + doc({"a": entry(1.0)}).encode())
    assert BaselineStore(tmp_path).read("h100") == {"a": entry(1.0)}


def test_a_5000_digit_integer_is_an_error_not_a_crash(tmp_path):
    write(tmp_path, doc({}).replace('"entries"', '"n": ' + "9" * 5000 + ', "entries"'))
    with pytest.raises(BaselineError, match="holds an integer of 5000 digits"):
        BaselineStore(tmp_path).read("h100")


def test_deep_nesting_is_an_error_not_a_recursion_error(tmp_path):
    write(tmp_path, "[" * 200_000 + "]" * 200_000)
    with pytest.raises(BaselineError, match="nests 200000 levels deep"):
        BaselineStore(tmp_path).read("h100")


def test_brackets_inside_strings_do_not_count_as_nesting(tmp_path):
    write(tmp_path, doc({"t[" * 100: entry(1.0)}))
    assert list(BaselineStore(tmp_path).read("h100")) == ["t[" * 100]


def test_a_link_to_dev_zero_is_refused_as_a_character_device(tmp_path):
    (tmp_path / "h100.json").symlink_to("/dev/zero")
    with pytest.raises(BaselineError, match="is a character device, not a regular file"):
        BaselineStore(tmp_path).read("h100")


def test_a_fifo_in_place_of_the_file_is_refused_without_hanging(tmp_path):
    os.mkfifo(tmp_path / "h100.json")
    outcome = []

    def read():
        try:
            BaselineStore(tmp_path).read("h100")
        except BaselineError as exc:
            outcome.append(str(exc))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    assert outcome and "is a FIFO (named pipe), not a regular file" in outcome[0]


def test_a_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path):
    with open(tmp_path / "h100.json", "wb") as fh:
        fh.truncate(MAX_BYTES + 1)  # sparse: no disk used
    with pytest.raises(BaselineError, match=f"is {MAX_BYTES + 1} bytes; a baseline file holds at most"):
        BaselineStore(tmp_path).read("h100")


def test_schema_true_is_not_schema_1(tmp_path):
    write(tmp_path, json.dumps({"schema": True, "gpu": "h100", "entries": {}}))
    with pytest.raises(BaselineError, match="'schema' must be a whole number such as 1, found true"):
        BaselineStore(tmp_path).read("h100")


@pytest.mark.parametrize(("metric", "message"), [
    ({"value": "2.0"}, "metric 'speedup' field 'value' must be a finite number, found the string '2.0'"),
    ({"value": True}, "metric 'speedup' field 'value' must be a finite number, found true"),
    ({"value": 2.0, "noise": "0.01"}, "metric 'speedup' field 'noise' must be a finite number >= 0 or null, "
                                      "found the string '0.01'"),
    ({"value": 2.0, "ci": [2.1, 1.9]}, "metric 'speedup' field 'ci' must be a list \\[low, high\\]"),
    ({"value": 2.0, "samples": 3.5}, "metric 'speedup' field 'samples' must be a whole number >= 0"),
    ({"noise": 0.01}, "metric 'speedup' has no 'value'"),
    (2.0, "metric 'speedup' must be an object with a 'value', found the number 2.0"),
])
def test_a_wrongly_typed_metric_is_an_error_naming_the_file_the_entry_and_the_field(tmp_path, metric, message):
    write(tmp_path, doc({"t.py::test_a": {"signature": {}, "metrics": {"speedup": metric}}}))
    with pytest.raises(BaselineError, match=r"h100\.json: entry 't\.py::test_a' " + message):
        BaselineStore(tmp_path).read("h100")


def test_a_signature_that_is_a_list_is_an_error_naming_the_field(tmp_path):
    write(tmp_path, doc({"t": {"signature": [1, 2], "metrics": {}}}))
    with pytest.raises(BaselineError, match="entry 't' field 'signature' must be an object, found a list"):
        BaselineStore(tmp_path).read("h100")


@pytest.mark.parametrize(("literal", "word"), [("NaN", "NaN"), ("-Infinity", "-Infinity"),
                                               ("Infinity", "Infinity"), ("1e999", "Infinity")])
def test_a_non_finite_stored_value_is_an_error_not_a_disabled_gate(tmp_path, literal, word):
    write(tmp_path, doc({"t": {"metrics": {"sqnr_db": {"value": 0}}}}).replace('"value": 0', f'"value": {literal}'))
    with pytest.raises(BaselineError, match=f"entry 't' metric 'sqnr_db' field 'value' must be a finite number, "
                                            f"found {word}"):
        BaselineStore(tmp_path).read("h100")


def test_a_non_finite_number_in_a_free_form_field_is_an_error_naming_its_path(tmp_path):
    write(tmp_path, doc({"t": {"signature": {"shape": [1, 0]}, "metrics": {}}}).replace("[1, 0]", "[1, NaN]"))
    with pytest.raises(BaselineError, match=r"entry 't' field 'signature'\['shape'\]\[1\] is NaN"):
        BaselineStore(tmp_path).read("h100")


def test_fields_this_version_does_not_know_are_kept(tmp_path):
    stored = {"t": {"metrics": {"speedup": {"value": 2.0, "p_value": 0.01}}, "history": ["2026-11-01"]}}
    write(tmp_path, doc(stored))
    assert BaselineStore(tmp_path).read("h100") == stored


def test_an_update_over_a_malformed_file_is_an_error_and_leaves_it_untouched(tmp_path):
    path = write(tmp_path, doc({"t": {"metrics": {"speedup": {"value": "fast"}}}}))
    before = path.read_bytes()
    with pytest.raises(BaselineError, match="entry 't' metric 'speedup' field 'value'"):
        BaselineStore(tmp_path).update("h100", {"u": entry(1.0)})
    assert path.read_bytes() == before


# -- writing: the file keeps its mode and its link, the folder keeps no debris, a failure is one error -------


def test_an_update_keeps_the_files_mode(tmp_path):
    store = BaselineStore(tmp_path)
    path = store.update("h100", {"a": entry(1.0)})
    path.chmod(0o640)
    store.update("h100", {"b": entry(1.0)})
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_a_first_write_gets_the_mode_of_a_plain_new_file_not_the_temp_files_0600(tmp_path):
    mask = os.umask(0o022)
    try:
        path = BaselineStore(tmp_path).update("h100", {"a": entry(1.0)})
    finally:
        os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_an_update_through_a_symlink_writes_its_target_and_keeps_the_link(tmp_path):
    (tmp_path / "shared").mkdir()
    (tmp_path / "local").mkdir()
    target = BaselineStore(tmp_path / "shared").update("h100", {"a": entry(1.0)})
    link = tmp_path / "local" / "h100.json"
    link.symlink_to(target)
    written = BaselineStore(tmp_path / "local").update("h100", {"b": entry(2.0)})
    assert written == Path(os.path.realpath(target)) and link.is_symlink()
    assert sorted(BaselineStore(tmp_path / "shared").read("h100")) == ["a", "b"]


def test_an_update_removes_temp_files_that_killed_updates_left_before_the_run(tmp_path):
    orphan = tmp_path / ".h100.json.k3j_h5g6.tmp"
    orphan.write_bytes(b"{" * 4096)
    an_hour_ago = time.time() - 3600
    os.utime(orphan, (an_hour_ago, an_hour_ago))
    BaselineStore(tmp_path).update("h100", {"a": entry(1.0)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h100.json"]


def test_the_temp_file_of_an_update_killed_mid_write_is_removed_by_the_next_runs_update(tmp_path):
    child = textwrap.dedent(f"""
        import os, time
        from pytest_lowprec.baselines import BaselineStore
        def stall(fd):
            print("writing", flush=True)
            time.sleep(60)
        os.fsync = stall
        BaselineStore({str(tmp_path)!r}).update("h100", {{"killed": {{"metrics": {{}}}}}})
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert len(list(tmp_path.glob(".h100.json.*.tmp"))) == 1
    time.sleep(0.05)  # the next run starts after the orphan was last written
    BaselineStore(tmp_path).update("h100", {"next": entry(1.0)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h100.json"]


def test_an_update_spares_temp_files_newer_than_the_run_and_other_files(tmp_path):
    store = BaselineStore(tmp_path, started=time.time() - 3600)
    newer = tmp_path / ".h100.json.abcdefgh.tmp"
    newer.write_text("{")
    other_gpu = tmp_path / ".h200.json.abcdefgh.tmp"
    other_gpu.write_text("{")
    os.utime(other_gpu, (0, 0))
    store.update("h100", {"a": entry(1.0)})
    assert newer.exists() and other_gpu.exists()


def test_an_update_leaves_no_lock_file_in_the_folder(tmp_path):
    BaselineStore(tmp_path).update("h100", {"a": entry(1.0)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h100.json"]


def _update_many(directory: str, prefix: str, n: int) -> None:
    for i in range(n):
        BaselineStore(directory).update("h100", {f"{prefix}{i}": entry(1.0)})


def test_removing_the_lock_file_keeps_updates_from_many_processes_exclusive(tmp_path):
    # Each update reads, merges and renames under the lock: two holders at once would lose an entry.
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_update_many, args=(str(tmp_path), f"p{k}.", 6)) for k in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert len(BaselineStore(tmp_path).read("h100")) == 36
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h100.json"]


def _hold_lock(lock_path: Path):
    child = textwrap.dedent(f"""
        import time
        from filelock import FileLock
        lock = FileLock({str(lock_path)!r})
        lock.acquire()
        print("held", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_lock_timeout_says_how_to_find_the_holder_and_not_to_delete_the_lock(tmp_path, monkeypatch):
    monkeypatch.setattr(baselines, "_LOCK_TIMEOUT_S", 0.3)
    holder = _hold_lock(tmp_path / "h100.json.lock")
    try:
        with pytest.raises(BaselineError) as info:
            BaselineStore(tmp_path).update("h100", {"a": entry(1.0)})
    finally:
        holder.kill()
        holder.wait(10)
    message = str(info.value)
    assert "released when the holder finishes its update or exits" in message
    assert f"fuser -v {tmp_path}/h100.json.lock" in message and "Do not delete the lock file" in message
    assert message.lower().count("delete the lock file") == 1  # only in "do not delete the lock file"


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="/proc/locks is Linux's")
def test_lock_holders_names_the_process_that_holds_the_lock(tmp_path):
    holder = _hold_lock(tmp_path / "x.lock")
    try:
        assert lock_holders(tmp_path / "x.lock") == [holder.pid]
    finally:
        holder.kill()
        holder.wait(10)


def _fail_with(err: int):
    def fail(*args, **kwargs):
        raise OSError(err, os.strerror(err), "simulated")
    return fail


@pytest.mark.parametrize(("where", "err", "words"), [
    ("lock", errno.EROFS, "the file system is read-only"),  # a read-only mount: not even the lock file
    ("mkstemp", errno.EACCES, "no permission to write there"),  # a 0555 folder, for a user who is not root
    ("fsync", errno.ENOSPC, "no space left on the device"),  # a full disk
    ("fsync", errno.EFBIG, "the file is larger than the file system"),
])
def test_a_failed_write_is_one_error_that_leaves_the_file_as_it_was(tmp_path, monkeypatch, where, err, words):
    # Tests run as root here, where a 0555 folder or chmod stops nothing: each case's OSError is simulated.
    path = BaselineStore(tmp_path).update("h100", {"a": entry(1.0)})
    before = path.read_bytes()
    patch = {"lock": (baselines, "_hard_lock"), "mkstemp": (baselines.tempfile, "mkstemp"),
             "fsync": (baselines.os, "fsync")}[where]
    monkeypatch.setattr(*patch, _fail_with(err))
    with pytest.raises(BaselineError, match=f"h100\\.json: {words} .*; the file was left as it was"):
        BaselineStore(tmp_path).update("h100", {"b": entry(2.0)})
    monkeypatch.undo()
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["h100.json"]


def test_an_update_into_a_folder_that_is_a_file_is_an_error_not_a_traceback(tmp_path):
    (tmp_path / "plain").write_text("")
    with pytest.raises(BaselineError, match="plain/h100.json: a file stands where a folder is needed"):
        BaselineStore(tmp_path / "plain").update("h100", {"a": entry(1.0)})


# -- the folder --lowprec-baselines names ----------------------------------------------------------------------


def test_a_relative_baselines_folder_is_under_the_rootdir(tmp_path):
    assert baselines_directory("stored/gpus", tmp_path) == tmp_path / "stored" / "gpus"


def test_a_missing_baselines_folder_is_allowed(tmp_path):
    assert baselines_directory(str(tmp_path / "not-yet"), tmp_path) == tmp_path / "not-yet"


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_baselines_folder_is_refused(tmp_path, value):
    with pytest.raises(ValueError, match="--lowprec-baselines is empty"):
        baselines_directory(value, tmp_path)


@pytest.mark.parametrize(("value", "kind"), [("plain", "a file"), ("plain/sub", "a file"),
                                             ("/dev/null", "a character device")])
def test_a_baselines_folder_that_is_a_file_or_a_device_is_refused(tmp_path, value, kind):
    (tmp_path / "plain").write_text("")
    with pytest.raises(ValueError, match=f"is {kind}, not a folder"):
        baselines_directory(value, tmp_path)
