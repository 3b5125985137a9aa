"""Telling a process the app started from a stranger that later got its process id (after it exited, or after
a reboot), and signalling only the former. Linux: the start time from /proc and the kernel's boot id."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


@dataclass(frozen=True)
class ProcessId:
    """A process as the kernel knows it: its pid, when it started (clock ticks after boot) and which boot."""

    pid: int
    start_time: int | None
    boot_id: str | None


def boot_id() -> str | None:
    try:
        return BOOT_ID.read_text().strip() or None
    except OSError:
        return None


def start_time(pid: int) -> int | None:
    """The process's start time from /proc/PID/stat (field 22), None when it does not exist (or no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # the command name, in parentheses, may hold spaces
    if fields and fields[0] in ("Z", "X"):  # exited, not yet reaped
        return None
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def identify(pid: int) -> ProcessId:
    return ProcessId(pid, start_time(pid), boot_id())


def is_running(ident: ProcessId) -> bool:
    """Whether `ident` is still that very process: same boot, same start time, not a zombie."""
    if ident.start_time is None or ident.boot_id is None:
        return False
    return ident.boot_id == boot_id() and start_time(ident.pid) == ident.start_time


def send(ident: ProcessId, sig: int = signal.SIGTERM) -> bool:
    """Signal `ident` if, and only if, it is still that process; True when the signal went.

    A pidfd pins the process before the check, so the pid cannot pass to another process in between.
    """
    try:
        fd = os.pidfd_open(ident.pid)
    except OSError:  # gone (or no pidfd support)
        return False
    try:
        if not is_running(ident):
            return False
        signal.pidfd_send_signal(fd, sig)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
