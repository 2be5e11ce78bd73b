"""Per-GPU baseline files: `<dir>/<gpu>.json`, schema-versioned, merged under a lock, written atomically.

A file that cannot be read or has an unknown schema is an error naming the file
and is never overwritten: an update reads the current file under the lock, merges
only the entries that ran, and replaces the file with one rename.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

SCHEMA_VERSION = 1
_LOCK_TIMEOUT_S = 120.0


class BaselineError(Exception):
    """A baseline file is unreadable, of an unknown schema, or malformed."""


@dataclass(frozen=True)
class BaselineStore:
    directory: Path

    def path_for(self, gpu: str) -> Path:
        return Path(self.directory) / f"{gpu}.json"

    def read(self, gpu: str) -> dict[str, dict]:
        """Entries of one GPU's file, keyed by node id; {} when the file does not exist."""
        return read_entries(self.path_for(gpu), gpu)

    def update(self, gpu: str, entries: dict[str, dict]) -> Path:
        """Merge `entries` into the GPU's file; every other entry and every other file stays as it was."""
        path = self.path_for(gpu)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path) + ".lock", timeout=_LOCK_TIMEOUT_S)
        try:
            with lock:
                current = read_entries(path, gpu)
                current.update(entries)
                _atomic_write(path, {"schema": SCHEMA_VERSION, "gpu": gpu, "entries": current})
        except Timeout as exc:
            raise BaselineError(
                f"{path}: another process has held {path}.lock for {_LOCK_TIMEOUT_S:.0f} s; "
                "if no other pytest run is updating baselines, delete the lock file"
            ) from exc
        return path


def read_entries(path: Path, gpu: str) -> dict[str, dict]:
    if not path.exists():
        return {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BaselineError(f"{path}: cannot read baseline file ({exc})") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BaselineError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "the file is corrupt or truncated. Restore it from version control "
            "(git checkout -- <file>) or delete it and re-record with --lowprec-update"
        ) from exc
    return _validate(path, data, gpu)


def _validate(path: Path, data: object, gpu: str) -> dict[str, dict]:
    if not isinstance(data, dict):
        raise BaselineError(f"{path}: expected a JSON object at top level, found {type(data).__name__}")
    schema = data.get("schema")
    if schema != SCHEMA_VERSION:
        raise BaselineError(
            f"{path}: unknown baseline schema {schema!r}; this pytest-lowprec reads schema {SCHEMA_VERSION}. "
            "Upgrade pytest-lowprec, or re-record the file with --lowprec-update after moving it aside"
        )
    if data.get("gpu") != gpu:
        raise BaselineError(
            f"{path}: file says gpu {data.get('gpu')!r} but is named for {gpu!r}; rename or re-record it"
        )
    entries = data.get("entries")
    if not isinstance(entries, dict):
        raise BaselineError(f"{path}: 'entries' must be an object keyed by test id")
    for node_id, entry in entries.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("metrics"), dict):
            raise BaselineError(f"{path}: entry {node_id!r} has no 'metrics' object")
    return dict(entries)


def _atomic_write(path: Path, data: dict) -> None:
    """Write beside the target, flush to disk, then rename: a killed process leaves the old file."""
    text = json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
