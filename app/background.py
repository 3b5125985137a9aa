"""The app's background jobs (Fine-tune's training, Browse's download): one at a time per folder; start, status,
cancel, re-attach.

A job file (`RUNS/.active_job.json`, `DATA/.download.json`) names the job's process by pid, start time and boot,
so a reload, a second tab or a restarted server re-attaches, and a stranger that later got the pid is never taken
for the job nor signalled; a file lock beside it keeps two server processes from starting two. Each job runs
under `python -m app.procs`, which records its exit code and last stderr line; `ended_as` decides how a job
ended from that and from the ending event the job logged itself, never from the words of its output.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from app import procs
from captioning.io import atomic_write_text, file_lock, read_json, read_json_line

REPO = Path(__file__).resolve().parent.parent  # the jobs run here: `-m captioning` and `-m app.procs` import from it
RUNNING, STOPPING = "running", "stopping"
FINISHED, FAILED, CANCELLED, INTERRUPTED = "finished", "failed", "cancelled", "interrupted"
MAX_JOB_FILE = 1_000_000  # bytes of a job file that are read: a hand-made giant is not a job


class JobError(ValueError):
    """A job that cannot be started; the message says why."""


class Busy(JobError):
    """Another job of the folder is still running."""

    def __init__(self, job: Job) -> None:
        super().__init__(f"{job.name!r} is still running; one at a time (cancel it first)")
        self.job = job


@dataclass(frozen=True)
class Job:
    """A background job as its job file records it."""

    pid: int  # of its watcher (`python -m app.procs`); an older version's job file names the job itself
    name: str
    out: str  # the folder it writes into
    started: str
    command: list[str]  # what it runs, without the watcher
    cancel_requested: bool = False
    start_time: int | None = None  # the process's, from /proc: with boot_id it tells the job from a stranger
    boot_id: str | None = None
    log: str | None = None  # its stdout and stderr
    exit_file: str | None = None  # where its watcher records how it exited (None: an older version's job)

    @property
    def out_dir(self) -> Path:
        return Path(self.out)

    @property
    def process(self) -> procs.ProcessId:
        return procs.ProcessId(self.pid, self.start_time, self.boot_id)

    @classmethod
    def from_dict(cls, data) -> Job | None:
        """The job a job file describes; None for anything else (malformed, other types, unknown fields)."""
        text, number = (str, type(None)), (int, type(None))
        types = {"pid": int, "name": str, "out": str, "started": str, "command": list, "cancel_requested": bool,
                 "start_time": number, "boot_id": text, "log": text, "exit_file": text}  # fmt: skip
        if not isinstance(data, dict) or not set(types) >= set(data) or len(data) < 5:
            return None
        if not all(isinstance(data.get(k), t) for k, t in types.items() if k in data):
            return None
        if isinstance(data["pid"], bool) or data["pid"] <= 0 or not all(isinstance(c, str) for c in data["command"]):
            return None
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", data["name"]):
            return None
        return cls(**data)


@dataclass(frozen=True)
class Exit:
    """How a job's process exited, as its watcher recorded it."""

    code: int  # negative: killed by that signal
    error: str = ""  # the last line it wrote to stderr


def ended_as(ending: str | None, exited: Exit | None, cancel_requested: bool) -> str:
    """How a job whose process is gone ended.

    Args:
        ending: the ending event the job logged itself ("finished", "stopped", "failed", ...); None for none.
        exited: its exit record; None when there is none (an older version's job, or its watcher was killed).
        cancel_requested: whether it was asked to stop.
    Returns:
        `ending` when the exit agrees (code 0, or unknown); CANCELLED when asked to stop before it logged an
        ending; INTERRUPTED when killed from outside (a signal, or gone without a record); else FAILED (a failure
        it logged, a nonzero exit, an exit without an ending).
    """
    if ending == FAILED:
        return FAILED
    if ending is not None and (exited is None or exited.code == 0):
        return ending
    if cancel_requested:
        return CANCELLED
    return INTERRUPTED if exited is None or exited.code < 0 else FAILED


def read_jsonl(path: Path, max_bytes: int = 1 << 20) -> list[dict]:
    """The JSON objects in the last `max_bytes` of a JSON-lines file; a line cut in half or malformed is skipped."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - max_bytes))
            lines = f.read().split(b"\n")
    except OSError:
        return []
    records = []
    for line in lines:
        record = read_json_line(line)
        if isinstance(record, dict):
            records.append(record)
    return records


class Background:
    """The one background job of `folder`, recorded in its `job_file`; thread- and process-safe.

    `upgrade` turns an older version's job file into this one's fields (it may get any JSON object).
    """

    def __init__(self, folder: Path, job_file: str, lock_file: str, upgrade: Callable[[dict], dict] | None = None):
        self.folder = Path(folder).resolve()  # the watcher runs elsewhere: its paths must not be relative
        self.job_file, self.lock_file = self.folder / job_file, self.folder / lock_file
        self.exit_file = self.folder / (Path(job_file).stem + ".exit.json")
        self.upgrade = upgrade or (lambda data: data)
        self._lock = threading.Lock()
        self._children: dict[procs.ProcessId, subprocess.Popen] = {}  # the jobs this process started

    def current(self) -> Job | None:
        """The latest job (running or ended), from the job file; None when there is none or it is malformed."""
        try:
            with open(self.job_file, "rb") as f:
                data = read_json(f.read(MAX_JOB_FILE))
        except (OSError, ValueError):
            return None
        job = Job.from_dict(self.upgrade(data)) if isinstance(data, dict) else None
        if job is None or not all(self._inside(path) for path in (job.log, job.exit_file) if path is not None):
            return None  # its files are this folder's: a job file cannot have the page show another file
        return job

    def _inside(self, path: str) -> bool:
        return Path(path).resolve().is_relative_to(self.folder)

    def start(
        self, name: str, out: Path, command: list[str], log: Path, prepare: Callable[[], None] = lambda: None
    ) -> Job:
        """Run `command` in the background as this folder's job; Busy while another runs.

        `prepare` runs under the lock once the folder is free (e.g. makes the run folder); it may raise JobError.
        """
        if not self._inside(str(log)):
            raise ValueError(f"a job's log must be under {self.folder} (got {log})")
        with self._exclusive():  # held for milliseconds: other tabs and server processes wait, not fail
            active = self.current()
            if active is not None and self.alive(active):
                raise Busy(active)
            prepare()
            self.exit_file.unlink(missing_ok=True)  # the last job's
            job = self._spawn(name, Path(out), command, Path(log))
            self._save(job)
            return job

    def _spawn(self, name: str, out: Path, command: list[str], log: Path) -> Job:
        self._children = {k: c for k, c in self._children.items() if c.poll() is None}  # reaped: no zombies
        watched = [sys.executable, "-m", "app.procs", str(self.exit_file), *command]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # its log is read while it runs
        with open(log, "wb") as f:
            child = subprocess.Popen(watched, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=REPO, env=env, start_new_session=True)  # fmt: skip
        ident = procs.identify(child.pid)
        self._children[ident] = child
        started = dt.datetime.now().isoformat(timespec="seconds")
        return Job(child.pid, name, str(out), started, command, False, ident.start_time, ident.boot_id,
                   str(log), str(self.exit_file))  # fmt: skip

    def alive(self, job: Job) -> bool:
        """Whether the job's process still runs (and is that process, not a stranger with its pid)."""
        child = self._children.get(job.process)
        if child is not None:
            return child.poll() is None
        return procs.is_running(job.process)  # started by an earlier server process, if it is that process

    def exit_of(self, job: Job) -> Exit | None:
        """The exit record its watcher wrote; None while it runs, or when there is none."""
        try:
            data = read_json(Path(job.exit_file).read_text(encoding="utf-8")) if job.exit_file else None
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or not isinstance(data.get("code"), int):
            return None
        return Exit(data["code"], str(data.get("error") or ""))

    def state(self, job: Job, alive: bool, ending: str | None) -> str:
        """RUNNING or STOPPING while `alive`, else how it ended (`ended_as`). Take `alive` before reading the
        job's records, so an ending it logged just before exiting is in them."""
        if alive:
            return STOPPING if job.cancel_requested else RUNNING
        return ended_as(ending, self.exit_of(job), job.cancel_requested)

    def failure(self, job: Job, logged: str | None = None) -> str:
        """Why a failed job failed: the message it logged, else the last line it wrote to stderr."""
        exited = self.exit_of(job)
        if logged or exited is None:
            return logged or ""
        if exited.code == 0:
            return "it exited without logging how it ended"
        return exited.error or f"it exited with code {exited.code}"

    def cancel(self) -> bool:
        """Ask the running job to stop: SIGTERM, once (a second one would make a trainer abort without saving),
        to the process this app started and to no other. Its watcher passes it on to the job."""
        with self._exclusive():
            job = self.current()
            if job is None or not self.alive(job):
                return False
            if not job.cancel_requested:
                child = self._children.get(job.process)
                if not (procs.send(job.process) if child is None else (child.terminate() or True)):
                    return False
                self._save(replace(job, cancel_requested=True))
            return True

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the job if this process started it; its exit code (negative: a signal), else None."""
        job = self.current()
        child = self._children.get(job.process) if job else None
        return child.wait(timeout) if child else None

    def log_tail(self, job: Job, lines: int = 25, max_bytes: int = 65536) -> str:
        """The last lines of the job's output, progress-bar redraws collapsed."""
        try:
            with open(job.log or os.devnull, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - max_bytes))
                text = f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(procs.screen_lines(text)[-lines:])

    @contextlib.contextmanager
    def _exclusive(self):
        """This manager's lock and the folder's file lock, which other server processes share."""
        with self._lock, file_lock(self.lock_file):
            yield

    def _save(self, job: Job) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.job_file, json.dumps(asdict(job), indent=2))
