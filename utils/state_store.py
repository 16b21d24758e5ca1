"""Durable JSON state files: one writer protocol for every process.

Contract:
- A reader always sees a whole file: writes go to a temporary file in the same directory, are fsynced, renamed over
  the target, and the directory is fsynced.
- Every read-modify-write holds an exclusive ``fcntl.flock`` on ``<file>.lock`` (a separate file, because the data
  file itself is replaced on every write and a lock on a replaced inode protects nothing).
- Any OS-level failure (read-only directory, full disk, permission) surfaces as :class:`StorageError` and leaves the
  previous file untouched.
- A file that exists but does not parse as a JSON object raises :class:`CorruptStateError`; the caller decides
  whether to repair it with :meth:`JsonStateStore.move_aside`.

This module is on the nightly hook's critical path: keep its imports minimal.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time

from utils.errors import EXIT_STORAGE, TrackerError

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover - typing costs import time on the hook's path
    from collections.abc import Callable
    from typing import Any


class StorageError(TrackerError):
    """The state file could not be read or written (I/O, permissions, disk full)."""

    exit_code = EXIT_STORAGE
    label = "storage error"


class CorruptStateError(StorageError):
    """The state file exists but is not a JSON object."""


class UnwritableValueError(StorageError, ValueError):
    """The document holds a value JSON cannot represent (NaN, Infinity); nothing was written."""


# Owner and group only, whatever the umask (which can only make these stricter).
STATE_DIRECTORY_MODE = 0o750
STATE_FILE_MODE = 0o640


def _describe_os_error(action: str, path: str, exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        reason = "no space left on device"
    return f"cannot {action} {path}: {reason}"


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_directory(directory: str, mode: int = STATE_DIRECTORY_MODE, *, exact: bool = False) -> None:
    """Create ``directory`` and any missing parents with ``mode`` (0750: owner and group only); raise OSError.

    ``os.makedirs`` gives parents the umask's default, so each missing level is made here; the
    umask can only make it stricter. With ``exact`` each level made gets exactly ``mode``, and an
    existing ``directory`` we own that is more open (left under a loose umask) is tightened.
    Other existing directories are left as they are.
    """
    directory = os.path.abspath(directory)
    missing = []
    current = directory
    while not os.path.isdir(current) and current != os.path.dirname(current):
        missing.append(current)
        current = os.path.dirname(current)
    for level in reversed(missing):
        try:
            os.mkdir(level, mode)
        except FileExistsError:
            if not os.path.isdir(level):
                raise
            continue  # another process made it first: not ours to chmod
        if exact:
            os.chmod(level, mode)
    if exact:
        try:
            info = os.stat(directory)
            if info.st_uid == os.geteuid() and info.st_mode & 0o777 & ~mode:
                os.chmod(directory, info.st_mode & 0o777 & mode)
        except OSError:
            pass


def write_json_atomically(path: str, document: Any) -> None:
    """Replace ``path`` with ``document`` as JSON (:func:`write_bytes_atomically`; raises StorageError).

    A document holding NaN or Infinity raises :class:`UnwritableValueError` before anything is touched.
    """
    try:
        # allow_nan=False: NaN/Infinity are not JSON; a reader would take the file for corrupt. Keys keep their
        # order: a batch's stages are in the order first reported, a jobs file's jobs in the file's order.
        payload = json.dumps(document, separators=(",", ":"), allow_nan=False).encode()
    except ValueError as exc:
        raise UnwritableValueError(
            f"refusing to write {path}: it would hold a number JSON cannot represent (NaN or Infinity)"
        ) from exc
    write_bytes_atomically(path, payload)


def write_bytes_atomically(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data``: temporary file in the same directory, fsync, rename, fsync the directory.

    Raises :class:`StorageError`; on failure the previous file is unchanged and no
    temporary file is left behind.
    """
    temp_path = f"{path}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, STATE_FILE_MODE)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp_path, path)
        _fsync_directory(os.path.dirname(path) or ".")
    except OSError as exc:
        try:
            os.unlink(temp_path)
        except OSError:
            pass
        raise StorageError(_describe_os_error("write", path, exc)) from exc


def append_line(path: str, line: bytes) -> int:
    """Append ``line`` (one JSON record, no newline) and a newline to ``path``, fsynced; return the file's new
    size. A torn last line a crashed writer left (no final newline) is cut off first, so every line a reader
    splits off is whole. Callers hold the lock. Raises :class:`StorageError`; a failed append leaves at most a
    torn line, which the next append cuts off."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, STATE_FILE_MODE)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                size = _end_of_last_whole_line(fd, size)
                os.ftruncate(fd, size)
            data = line + b"\n"
            written = 0
            while written < len(data):
                written += os.pwrite(fd, data[written:], size + written)
            os.fsync(fd)
            return size + len(data)
        finally:
            os.close(fd)
    except OSError as exc:
        raise StorageError(_describe_os_error("append to", path, exc)) from exc


def _end_of_last_whole_line(fd: int, size: int) -> int:
    block = 65536
    end = size
    while end > 0:
        start = max(0, end - block)
        chunk = os.pread(fd, end - start, start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        end = start
    return 0


def read_json_object(path: str) -> dict | None:
    """Return the JSON object stored at ``path``, or None when the file does not exist.

    Raises :class:`CorruptStateError` when it is not a JSON object and
    :class:`StorageError` when it cannot be read.
    """
    raw = read_bytes(path)
    return None if raw is None else _json_object(raw, path)


def read_bytes(path: str) -> bytes | None:
    """The bytes of the file at ``path``, None when it does not exist; StorageError when it cannot be read."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(_describe_os_error("read", path, exc)) from exc


def _json_object(raw: bytes, path: str) -> dict:
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise CorruptStateError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise CorruptStateError(f"{path} does not hold a JSON object")
    return document


class ParsedFile:
    """The JSON object at ``path`` for a reader that asks again and again (the monitor, at every check and
    scrape): parsed again only when the file's bytes changed, so an unchanged file costs a read, not a parse.
    Bytes, not (inode, mtime, size): a file replaced twice within one timestamp tick can get its old inode
    number back at the same size. The same object is returned while the file is unchanged (callers must not
    change it; ``is`` tells a caller that derived something from it whether to derive again). No lock."""

    __slots__ = ("_last", "path")

    def __init__(self, path: str):
        self.path = path
        self._last: tuple[bytes, dict] | None = None

    def read(self) -> dict | None:
        """As :func:`read_json_object`."""
        raw = read_bytes(self.path)
        if raw is None:
            return None
        last = self._last
        if last is not None and last[0] == raw:
            return last[1]
        document = _json_object(raw, self.path)
        self._last = (raw, document)  # one assignment: a concurrent reader sees the old pair or the new one
        return document


class exclusive_lock:
    """``with exclusive_lock(path):`` holds an exclusive ``flock`` on ``path`` (created, with its directory, when
    missing); entering raises StorageError. A class, not ``contextlib.contextmanager``: every hook takes the lock,
    and contextlib costs it an import."""

    __slots__ = ("_fd", "lock_path")

    def __init__(self, lock_path: str):
        self.lock_path = lock_path
        self._fd: int | None = None

    def __enter__(self) -> None:
        try:
            ensure_directory(os.path.dirname(self.lock_path) or ".")
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, STATE_FILE_MODE)
        except OSError as exc:
            raise StorageError(_describe_os_error("lock", self.lock_path, exc)) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def __exit__(self, *exc_info: object) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing releases the flock


def remove_stale_temp_files(path: str) -> list[str]:
    """Delete temporary files that writers of ``path`` left behind when killed mid-write.

    A temporary file is stale when the process named in it no longer exists.
    Returns the removed paths. Never raises for files it cannot remove.
    """
    directory = os.path.dirname(path) or "."
    prefix = os.path.basename(path) + ".tmp-"
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        pid_text = name[len(prefix) :].split("-", 1)[0]
        if not name.startswith(prefix) or (pid_text.isdigit() and _process_exists(int(pid_text))):
            continue
        try:
            os.unlink(os.path.join(directory, name))
        except OSError:
            continue
        removed.append(os.path.join(directory, name))
    return removed


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by another user
    return True


def sibling_file(path: str | os.PathLike, name: str) -> str:
    """The file beside ``path`` that holds ``name`` state, e.g.
    ``data/batch_tracker.json`` + ``monitor`` -> ``data/batch_tracker.monitor.json``."""
    path = os.fspath(path)
    base = path[:-5] if path.endswith(".json") else path
    return f"{base}.{name}.json"


class JsonStateStore:
    """A JSON object persisted at ``path`` under the lock-and-replace protocol."""

    def __init__(self, path: str | os.PathLike, *, lock_path: str | os.PathLike | None = None):
        self.path = os.fspath(path)
        self.lock_path = os.fspath(lock_path) if lock_path else self.path + ".lock"

    def read(self) -> dict | None:
        """Read without locking: atomic replacement guarantees a whole file."""
        return read_json_object(self.path)

    def locked(self) -> exclusive_lock:
        """A context manager holding the store's exclusive lock (blocking) for a read-modify-write."""
        return exclusive_lock(self.lock_path)

    def write(self, document: dict) -> None:
        """Replace the file; callers hold :meth:`locked` when they read first."""
        write_json_atomically(self.path, document)

    def update(self, mutate: Callable[[dict | None], dict]) -> dict:
        """Apply ``mutate`` to the current document under the lock and persist its result."""
        with self.locked():
            document = mutate(self.read())
            self.write(document)
            return document

    def move_aside(self, now: float | None = None) -> str:
        """Rename a corrupt file to ``<file>.corrupt-<UTC timestamp>``; return the new path.

        Callers hold :meth:`locked`.
        """
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
        target = f"{self.path}.corrupt-{stamp}"
        suffix = 1
        while os.path.exists(target):
            suffix += 1
            target = f"{self.path}.corrupt-{stamp}-{suffix}"
        try:
            os.replace(self.path, target)
        except OSError as exc:
            raise StorageError(_describe_os_error("move aside", self.path, exc)) from exc
        return target
