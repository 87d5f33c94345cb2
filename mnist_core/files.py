"""Files as input and output: atomic writes, and reads that only take what they should.

Run folders are copied, unzipped and shared, so every file in them is input: a name may be a
named pipe (a read would wait forever), a link to /dev/zero or to /etc/passwd, a directory, or
gigabytes. `read_bytes` opens without blocking, reads regular files only, never more than a
limit, and (for files inside a run folder) never through a symbolic link. Writes go to a temp
file in the same directory, are fsynced and renamed over the target, so a crash or a full disk
never leaves half a file. Imports nothing of the project.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
from pathlib import Path

SMALL_FILE_BYTES = 4 * 1024 * 1024  # config.json, status.json, card.md: a few KB when they are ours


class UnreadableFile(ValueError):
    """A file that is not to be read: not a regular file, a link where none may be, or too large."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


@contextlib.contextmanager
def open_regular(path: str | Path, follow_links: bool = True):
    """(fd, stat) of a regular file, opened without blocking (a named pipe cannot hang the caller)
    and, with follow_links=False, never through a symbolic link; closed on leaving. FileNotFoundError
    when it is missing; UnreadableFile naming the file for a pipe, device, directory or link."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | (0 if follow_links else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ELOOP and not follow_links:
            raise UnreadableFile(f"{path}: is a symbolic link; only the run's own files are read") from None
        if e.errno == errno.EISDIR:
            raise UnreadableFile(f"{path}: is a directory, not a file") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnreadableFile(f"{path}: is {_kind(st.st_mode)}, not a file")
        yield fd, st
    finally:
        os.close(fd)


def read_bytes(path: str | Path, limit: int, follow_links: bool = True) -> bytes:
    """At most `limit` bytes of a regular file (see open_regular); UnreadableFile also for more
    than `limit` bytes; OSError for the rest."""
    with open_regular(path, follow_links) as (fd, st):
        if st.st_size > limit:
            raise UnreadableFile(f"{path}: {st.st_size / 1e6:.1f} MB is more than the {limit / 1e6:.0f} MB allowed")
        chunks, size = [], 0
        while size <= limit:  # the size can grow while we read: never take more than limit + 1
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise UnreadableFile(f"{path}: more than the {limit / 1e6:.0f} MB allowed")
        return b"".join(chunks)


def read_tail(path: str | Path, size: int, follow_links: bool = False) -> bytes:
    """The last `size` bytes of a regular file (a log of any length); errors as open_regular."""
    with open_regular(path, follow_links) as (fd, st):
        return os.pread(fd, size, max(0, st.st_size - size))


def read_json(path: str | Path, default=None, follow_links: bool = False):
    """A small JSON file's value, or `default` when it is missing, unreadable or not JSON
    (a file nested thousands deep included)."""
    try:
        return json.loads(read_bytes(path, SMALL_FILE_BYTES, follow_links))
    except (OSError, ValueError, RecursionError):  # UnreadableFile and JSON's errors are ValueErrors
        return default


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:  # a read-only or full disk: name the file we meant to write
        raise OSError(e.errno, e.strerror, str(path)) from None
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; run files are ordinary readable files
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError) and e.filename is None and e.errno is not None:
            # a failed write or fsync names no file; say which one (a full disk, say)
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def describe_os_error(e: OSError) -> str:
    """One line for a user: '<file>: No space left on device'."""
    where = e.filename or ""
    return f"{where}: {e.strerror or e}" if where else str(e.strerror or e)
