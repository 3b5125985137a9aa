"""Atomic file writes (a crash leaves either the old file or the new one, never half of one), file locks, and the
one JSON reader of files a user or a crash can hand us."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)` on a temp file beside `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~umask())  # mkstemp makes it 0600: the file gets the mode a plain open() would give
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@functools.cache
def umask() -> int:
    """The process's umask (read once: setting it to read it is not thread-safe, so /proc is asked first)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def read_json(text: str | bytes) -> Any:
    """json.loads, with JSON nested too deeply to parse refused as the ValueError every malformed file gives
    (instead of a RecursionError that no reader expects)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def read_json_line(line: str | bytes) -> Any:
    """One line of a JSON-lines file, or None where it is not JSON (a half-written or hand-edited line)."""
    try:
        return read_json(line)
    except ValueError:
        return None


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


@contextlib.contextmanager
def file_lock(path: Path, waiting: str | None = None):
    """Hold an exclusive lock on `path` (created if need be), waiting for whoever holds it; the OS drops the
    lock when the holder dies, however it dies. `waiting` is printed once when another process holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            if waiting:
                print(waiting, file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
