from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from pytest_lowprec.baseline_schema import MAX_BYTES
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
