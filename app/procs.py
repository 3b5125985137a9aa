"""The app's background processes: telling one from a stranger that later got its pid (start time from /proc,
the kernel's boot id), signalling only the former, and a watcher that records how a job exited.

Run (as app.background does): python -m app.procs EXIT_FILE COMMAND... ; stdlib only, so it starts at once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
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


def screen_lines(text: str) -> list[str]:
    """The non-empty lines of terminal output as a terminal shows them: of a line redrawn with \\r (a progress
    bar), its last non-empty drawing."""
    shown = [next((s for s in reversed(line.split("\r")) if s.strip()), "") for line in text.split("\n")]
    return [s for s in shown if s.strip()]


def supervise(exit_file: Path, command: list[str]) -> int:
    """Run `command`, pass a SIGTERM on to it (once), copy its stderr to ours, then write how it exited to
    `exit_file` ({"code": its exit code, negative for a signal, "error": its last stderr line}) and exit alike.

    The record outlives the server process that started the job, so any later one can tell a failure (nonzero
    code) from a kill (a signal) without reading the job's words."""
    state: dict = {"child": None, "asked": False, "sent": False}

    def forward(*_) -> None:  # a second SIGTERM would make the trainer abort without saving
        state["asked"] = True
        if state["child"] is not None and not state["sent"]:
            state["sent"] = True
            state["child"].send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)  # before the child exists: a cancel in between is kept, not lost
    try:
        state["child"] = child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except OSError as exc:  # no such program: as a shell says it
        _write_json(Path(exit_file), {"code": 127, "error": f"cannot run {command[0]}: {exc.strerror}"})
        return 127
    if state["asked"]:
        forward()
    tail = b""
    while chunk := os.read(child.stderr.fileno(), 65536):
        sys.stderr.buffer.write(chunk)
        sys.stderr.buffer.flush()
        tail = (tail + chunk)[-8192:]
    code = child.wait()
    last = screen_lines(tail.decode("utf-8", "replace"))
    _write_json(Path(exit_file), {"code": code, "error": last[-1][-500:] if last else ""})
    if code < 0:  # die of the same signal, so whoever waits for this process sees what the job saw
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code if code >= 0 else 128 - code


def _write_json(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(tmp, path)  # whole or absent: a reader never sees half a record


if __name__ == "__main__":
    sys.exit(supervise(Path(sys.argv[1]), sys.argv[2:]))
