"""Per-GPU baseline files: `<dir>/<gpu>.json`, schema-versioned, merged under a lock, written atomically.

A file that cannot be read, has an unknown schema or a field of the wrong type
(baseline_schema) is an error naming the file and is never overwritten: an
update reads the current file under the lock, merges only the entries that ran,
and replaces the file with one rename. A failed write is one BaselineError
saying why (read-only, no permission, disk full) and leaves the file as it was.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import tempfile
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout, UnixFileLock

from . import baseline_schema
from .baseline_schema import MAX_BYTES, SCHEMA_VERSION, SchemaError

_LOCK_TIMEOUT_S = 120.0


def _hard_lock(path: str, timeout: float):
    """An fcntl lock on POSIX (never filelock's soft, marker-file fallback), FileLock elsewhere."""
    return UnixFileLock(path, timeout=timeout) if os.name == "posix" else FileLock(path, timeout=timeout)


class BaselineError(Exception):
    """A baseline file is unreadable, of an unknown schema, malformed, or could not be written."""


@dataclass(frozen=True)
class BaselineStore:
    directory: Path
    # When the run began: a temp file older than this is an orphan of a killed update.
    started: float = field(default_factory=time.time, compare=False)

    def path_for(self, gpu: str) -> Path:
        return Path(self.directory) / f"{gpu}.json"

    def read(self, gpu: str) -> dict[str, dict]:
        """Entries of one GPU's file, keyed by node id; {} when the file does not exist."""
        return read_entries(self.path_for(gpu), gpu)

    def update(self, gpu: str, entries: dict[str, dict]) -> Path:
        """Merge `entries` into the GPU's file; every other entry and every other file stays as it was.

        Returns the file written: for a symbolic link, the file it points to (the link stays a link,
        and the new file keeps the old one's mode)."""
        path = self.path_for(gpu)
        target = Path(os.path.realpath(path)) if path.is_symlink() else path
        lock_path = Path(f"{target}.lock")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # A soft lock (a marker file) would break when its file is removed below: on POSIX the fcntl
            # lock itself, which no filelock version replaces by a soft one (GPU images pin older ones).
            with _hard_lock(str(lock_path), timeout=_LOCK_TIMEOUT_S):
                try:
                    _remove_orphans(target, self.started)
                    current = read_entries(path, gpu)
                    current.update(entries)
                    document = {"schema": SCHEMA_VERSION, "gpu": gpu, "entries": current}
                    try:  # never write a file the next run would refuse to read
                        baseline_schema.validate(document, gpu)
                    except SchemaError as exc:
                        raise BaselineError(f"{path}: not written: {exc}") from None
                    _atomic_write(target, document)
                finally:
                    _remove_lock_file(lock_path)
        except Timeout as exc:
            raise BaselineError(_lock_timeout_message(path, lock_path)) from exc
        except OSError as exc:
            raise BaselineError(_write_failure(path, exc)) from exc
        return target


def baselines_directory(text: str | None, root: Path) -> Path:
    """The folder `--lowprec-baselines` names (relative to the rootdir); a folder that does not exist yet
    is allowed. ValueError for what can never hold baseline files: an empty value, a file, a device."""
    if text is None or not str(text).strip():
        raise ValueError("--lowprec-baselines is empty; give the folder of <gpu>.json files (default: baselines)")
    directory = Path(text)
    if not directory.is_absolute():
        directory = Path(root) / directory
    existing = next((p for p in (directory, *directory.parents) if os.path.lexists(p)), None)
    if existing is not None and not existing.is_dir():
        so = "" if existing == directory else f", so {directory} cannot be one"
        raise ValueError(f"--lowprec-baselines {text}: {existing} is {_file_kind(existing)}, not a folder{so}; "
                         "give the folder that holds (or will hold) the <gpu>.json baseline files")
    return directory


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
    """Write beside the target, flush to disk, then rename: a killed process leaves the old file.

    The new file keeps the old one's mode (and owner, where this process may set it); a first
    file gets the mode a plain open() would give it, not mkstemp's 0600."""
    text = json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n"
    try:
        old = os.stat(path)
        mode, owner = stat.S_IMODE(old.st_mode), (old.st_uid, old.st_gid)
    except FileNotFoundError:
        mode, owner = 0o666 & ~_umask(), None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            if owner is not None and owner != (os.geteuid(), os.getegid()):
                with suppress(OSError):
                    os.fchown(fh.fileno(), *owner)
            os.fchmod(fh.fileno(), mode)
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
    with suppress(OSError):  # the rename itself on disk; a file system without directory fsync still has it
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _remove_orphans(path: Path, started: float) -> None:
    """Delete the temp files (`.<name>.<random>.tmp`) that killed updates left beside `path`.

    Runs under the lock, so no update that takes it is writing one now; the age check (older than
    this run) spares a file from a writer that does not take the lock."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[A-Za-z0-9_]+\.tmp")
    with os.scandir(path.parent) as found:
        for entry in found:
            if not pattern.fullmatch(entry.name):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(st.st_mode) and st.st_mtime < started:
                    os.unlink(entry.path)
            except OSError:
                continue  # gone already, or not ours to remove: it is never read as a baseline


def _remove_lock_file(lock_path: Path) -> None:
    """Remove the lock file while still holding its lock, so no `<gpu>.json.lock` stays in the folder.

    Safe only because every contender is filelock >= 3.30 (pyproject): one that waited on this inode
    and locks it after this unlink sees a file with no name (st_nlink 0) and tries again on the path,
    so two holders never lock two different files. Unlinking after release would not be safe."""
    with suppress(OSError):
        os.unlink(lock_path)


def lock_holders(lock_path: Path) -> list[int]:
    """PIDs that hold a flock on `lock_path`, from /proc/locks (Linux); [] where that cannot be known."""
    try:
        st = os.stat(lock_path)
        text = Path("/proc/locks").read_text()
    except OSError:
        return []
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = []
    for line in text.splitlines():
        fields = line.split()
        # "3: FLOCK  ADVISORY  WRITE 4242 00:2a:1234 0 EOF"; a waiter's line has "->" after the number.
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == inode and fields[4].isdigit():
            pids.append(int(fields[4]))
    return sorted(set(pids))


def _lock_timeout_message(path: Path, lock_path: Path) -> str:
    holders = lock_holders(lock_path)
    held_by = f" (pid {', '.join(map(str, holders))})" if holders else ""
    return (
        f"{path}: another process{held_by} has held the lock {lock_path} for {_LOCK_TIMEOUT_S:.0f} s. "
        "The lock is an flock on that file's open descriptor: it is released when the holder finishes its "
        f"update or exits. Find the holder with `fuser -v {lock_path}` or `lsof {lock_path}`, then wait for it "
        "or stop it. Do not delete the lock file while its holder is alive: the next run would lock a new file "
        f"at once and two runs would write {path.name} together"
    )


_WRITE_FAILURES = {
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "no permission to write there",
    errno.EPERM: "no permission to write there",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file is larger than the file system (or ulimit -f) allows",
    errno.ENOTDIR: "a part of the path is not a folder",
    errno.EISDIR: "the path is a folder",
    errno.EEXIST: "a file stands where a folder is needed",
    errno.ENOSYS: "the file system does not support file locks (flock)",
}


def _write_failure(path: Path, exc: OSError) -> str:
    why = _WRITE_FAILURES.get(exc.errno, exc.strerror or type(exc).__name__)
    return f"{path}: {why} ({exc}); the file was left as it was"


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask can only set it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mode_kind(mode: int) -> str:
    kinds = [(stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")]
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _file_kind(path: Path) -> str:
    try:
        return _mode_kind(os.stat(path).st_mode) if not os.path.isfile(path) else "a file"
    except OSError:
        return "a broken symbolic link" if os.path.islink(path) else "unreadable"
