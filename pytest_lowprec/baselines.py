"""Per-GPU baseline files: `<dir>/<gpu>.json`, schema-versioned, merged under a lock, written atomically.

A file that cannot be read, has an unknown schema or a field of the wrong type
(baseline_schema) is an error naming the file and is never overwritten: an
update reads the current file under the lock, merges only the entries that ran,
and replaces the file with one rename.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from . import baseline_schema
from .baseline_schema import MAX_BYTES, SCHEMA_VERSION, SchemaError

__all__ = ["SCHEMA_VERSION", "BaselineError", "BaselineStore", "read_entries"]

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
                document = {"schema": SCHEMA_VERSION, "gpu": gpu, "entries": current}
                try:  # never write a file the next run would refuse to read
                    baseline_schema.validate(document, gpu)
                except SchemaError as exc:
                    raise BaselineError(f"{path}: not written: {exc}") from None
                _atomic_write(path, document)
        except Timeout as exc:
            raise BaselineError(
                f"{path}: another process has held {path}.lock for {_LOCK_TIMEOUT_S:.0f} s; "
                "if no other pytest run is updating baselines, delete the lock file"
            ) from exc
        return path


def read_entries(path: Path, gpu: str) -> dict[str, dict]:
    """The checked entries of the file at `path`; {} when there is no file."""
    data = _read_bytes(path)
    if data is None:
        return {}
    try:
        return baseline_schema.validate(baseline_schema.parse(data), gpu)
    except SchemaError as exc:
        raise BaselineError(f"{path}: {exc}") from None


def _read_bytes(path: Path) -> bytes | None:
    """The file's bytes, None when there is none. Only a regular file is read, and only up to the size
    limit: the open does not block (a FIFO in the file's place cannot hang the run) and the type is
    checked on the opened descriptor (a link to /dev/zero cannot fill memory)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BaselineError(f"{path}: cannot read baseline file ({exc})") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BaselineError(f"{path}: is {_mode_kind(st.st_mode)}, not a regular file; "
                                "a baseline file is a plain JSON file")
        if st.st_size > MAX_BYTES:
            raise BaselineError(f"{path}: is {st.st_size} bytes; a baseline file holds at most {MAX_BYTES} bytes")
        chunks, size = [], 0
        while size <= MAX_BYTES:
            chunk = os.read(fd, min(1 << 20, MAX_BYTES + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise BaselineError(f"{path}: cannot read baseline file ({exc})") from exc
    finally:
        os.close(fd)


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


def _mode_kind(mode: int) -> str:
    kinds = [(stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")]
    return next((name for test, name in kinds if test(mode)), "not a regular file")
