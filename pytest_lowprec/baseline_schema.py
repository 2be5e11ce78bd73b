"""What a baseline file may hold (schema 1), checked field by field before anything uses it.

A value of the wrong type or a non-finite number would otherwise pass the read
and break later: a string speedup raises TypeError inside a user's test, and a
NaN stored accuracy value silently turns drift off. So the whole document is
checked when it is read (and before it is written): every known field's type,
every number finite, a bool never taken for a number (JSON `true` is not 1),
and bounded size, depth and integer length, so a hostile or damaged file is
one error naming the entry and the field, never a crash or a hang.

Fields this version does not know are kept, checked only for finite numbers and
bounded depth: a newer plugin of the same schema may add descriptive fields.
Pure: no pytest, no I/O; `parse` takes the file's bytes.
"""

from __future__ import annotations

import json
import math
import re

SCHEMA_VERSION = 1
MAX_BYTES = 64 * 1024 * 1024
MAX_DEPTH = 64
MAX_INT_DIGITS = 40

_BRACKETS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)


class SchemaError(ValueError):
    """The document is not a schema-1 baseline file; the message says where and what."""


def parse(data: bytes) -> object:
    """The JSON document in `data` (UTF-8), refusing what would exhaust memory, the stack or int()."""
    if len(data) > MAX_BYTES:
        raise SchemaError(f"is {len(data)} bytes; a baseline file holds at most {MAX_BYTES} bytes")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise SchemaError("is UTF-16 text (it starts with a UTF-16 byte-order mark); save it as UTF-8")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SchemaError(f"is not UTF-8 text (byte {exc.start}: {exc.reason}); the file is damaged "
                          "or not a baseline file") from None
    depth = _depth(text)
    if depth > MAX_DEPTH:
        raise SchemaError(f"nests {depth} levels deep; a baseline file nests at most {MAX_DEPTH}")
    try:
        return json.loads(text, parse_int=_bounded_int)
    except json.JSONDecodeError as exc:
        raise SchemaError(
            f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "the file is corrupt or truncated. Restore it from version control "
            "(git checkout -- <file>) or delete it and re-record with --lowprec-update"
        ) from None


def _bounded_int(literal: str) -> int:
    digits = len(literal.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise SchemaError(f"holds an integer of {digits} digits; a baseline number has at most {MAX_INT_DIGITS}")
    return int(literal)


def _depth(text: str) -> int:
    """How deep arrays and objects nest, counted outside strings (so json.loads cannot run out of stack)."""
    depth = deepest = 0
    for match in _BRACKETS.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif token in "]}":
            depth -= 1
    return deepest


def validate(data: object, gpu: str) -> dict[str, dict]:
    """The entries of a schema-1 document for `gpu`, keyed by node id, every field checked."""
    if not isinstance(data, dict):
        raise SchemaError(f"expected a JSON object at top level, found {_kind(data)}")
    schema = data.get("schema")
    if not _is_int(schema):
        raise SchemaError(f"'schema' must be a whole number such as {SCHEMA_VERSION}, found {_kind(schema)}")
    if schema != SCHEMA_VERSION:
        raise SchemaError(
            f"unknown baseline schema {schema!r}; this pytest-lowprec reads schema {SCHEMA_VERSION}. "
            "Upgrade pytest-lowprec, or re-record the file with --lowprec-update after moving it aside"
        )
    if data.get("gpu") != gpu:
        raise SchemaError(f"file says gpu {data.get('gpu')!r} but is named for {gpu!r}; rename or re-record it")
    entries = data.get("entries")
    if not isinstance(entries, dict):
        raise SchemaError("'entries' must be an object keyed by test id")
    for node_id, entry in entries.items():
        validate_entry(node_id, entry)
    for key, value in data.items():
        if key not in ("schema", "gpu", "entries"):
            _check_free(value, f"field {key!r}")
    return dict(entries)


def validate_entry(node_id: str, entry: object) -> None:
    """One entry: the fields the gate and the reports read have the types they expect."""
    where = f"entry {node_id!r}"
    if not isinstance(entry, dict) or not isinstance(entry.get("metrics"), dict):
        raise SchemaError(f"{where} has no 'metrics' object")
    for key, value in entry.items():
        at = f"{where} field {key!r}"
        if key == "metrics":
            for metric, fields in value.items():
                _check_metric(f"{where} metric {metric!r}", fields)
        elif key in ("signature", "device", "software"):
            _expect(isinstance(value, dict), at, "an object", value)
            _check_free(value, at)
        elif key == "recorded":
            _expect(isinstance(value, str), at, "a date string", value)
        elif key == "commit":
            _expect(value is None or isinstance(value, str), at, "a string or null", value)
        elif key == "precision":
            _expect(isinstance(value, list) and all(isinstance(p, str) for p in value), at,
                    "a list of precision names", value)
        else:
            _check_free(value, at)


def _number(v: object) -> bool:
    return _is_number(v) and math.isfinite(v)


def _optional_number(v: object) -> bool:
    return v is None or _number(v)


# Known fields of a metric: what the gate and the reports read, and the type each must have.
_METRIC_FIELDS = {
    "kind": (lambda v: isinstance(v, str), "a string"),
    "unit": (lambda v: isinstance(v, str), "a string"),
    "timer": (lambda v: isinstance(v, str), "a string"),
    "median": (_number, "a finite number"),
    "noise": (lambda v: v is None or (_number(v) and v >= 0), "a finite number >= 0 or null"),
    "confidence": (lambda v: _number(v) and 0 < v < 1, "a number between 0 and 1"),
    "samples": (lambda v: _is_int(v) and v >= 0, "a whole number >= 0"),
    "ci": (lambda v: isinstance(v, list) and len(v) == 2 and all(_number(x) for x in v) and v[0] <= v[1],
           "a list [low, high] of finite numbers"),
    "baseline_ms": (_optional_number, "a finite number or null"),
    "optimized_ms": (_optional_number, "a finite number or null"),
    "throttled": (lambda v: isinstance(v, bool), "true or false"),
}


def _check_metric(where: str, fields: object) -> None:
    if not isinstance(fields, dict):
        raise SchemaError(f"{where} must be an object with a 'value', found {_kind(fields)}")
    if "value" not in fields:
        raise SchemaError(f"{where} has no 'value'")
    _expect(_number(fields["value"]), f"{where} field 'value'", "a finite number", fields["value"])
    for key, value in fields.items():
        rule = _METRIC_FIELDS.get(key)
        if rule is not None:
            _expect(rule[0](value), f"{where} field {key!r}", rule[1], value)
        elif key != "value":
            _check_free(value, f"{where} field {key!r}")


def _check_free(value: object, where: str) -> None:
    """A field of no fixed type: any JSON, but every number in it finite."""
    if _is_number(value) and not math.isfinite(value):
        raise SchemaError(f"{where} is {_kind(value)}; numbers in a baseline file are finite")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_free(item, f"{where}[{key!r}]")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_free(item, f"{where}[{i}]")


def _expect(ok: bool, where: str, wanted: str, value: object) -> None:
    if not ok:
        raise SchemaError(f"{where} must be {wanted}, found {_kind(value)}")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _kind(value: object) -> str:
    """How a value reads in the file, for messages: `true`, `NaN`, `the string '2.0'`, `a list`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"the string {shown!r}"
    return {dict: "an object", list: "a list"}.get(type(value), type(value).__name__)
