"""Background fine-tuning: one `python -m captioning train` subprocess at a time per runs directory.

The job file `RUNS/.active_job.json` lets a reloaded page, a second tab or a restarted server
re-attach to the running job instead of starting another; it names the process by pid, start time and boot,
so a stranger that later got the pid is never taken for the job, nor signalled. A file lock keeps two server
processes from starting two jobs. Progress is read from the run's `metrics.jsonl`; cancelling sends SIGTERM,
on which the trainer saves a resumable `last.pt`.
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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from app import procs
from captioning import rundir
from captioning.checkpoint import load_checkpoint
from captioning.config import TrainConfig
from captioning.data import available_splits
from captioning.io import atomic_write_text, file_lock

JOB_FILE, JOB_LOCK, IDS_FILE = ".active_job.json", ".job.lock", "train_ids.txt"
MAX_STEPS = 2000  # the app runs short fine-tunes; longer runs belong on the command line
MAX_NAME = 64
LOG_EVERY = 5  # steps between loss records: a short run still draws a curve
CANCELLED, FAILED = "cancelled", "failed"  # a job that ended before its run logged an ending
ENDED = (*rundir.ENDINGS, CANCELLED, FAILED, rundir.INTERRUPTED)


class JobError(ValueError):
    """A job that cannot be started; the message says why."""


@dataclass(frozen=True)
class Job:
    pid: int
    name: str
    out: str
    started: str
    command: list[str]
    cancel_requested: bool = False
    start_time: int | None = None  # the process's, from /proc: with boot_id it tells the job from a stranger
    boot_id: str | None = None

    @property
    def out_dir(self) -> Path:
        return Path(self.out)

    @property
    def coco_root(self) -> str:
        """The --coco-root of its command."""
        i = self.command.index("--coco-root") + 1 if "--coco-root" in self.command else len(self.command)
        return self.command[i] if i < len(self.command) else "ROOT"

    @property
    def process(self) -> procs.ProcessId:
        return procs.ProcessId(self.pid, self.start_time, self.boot_id)

    @classmethod
    def from_dict(cls, data) -> Job | None:
        """The job a job file describes, None for one that is not a job file (malformed, other types)."""
        types = {
            "pid": int,
            "name": str,
            "out": str,
            "started": str,
            "command": list,
            "cancel_requested": bool,
            "start_time": (int, type(None)),
            "boot_id": (str, type(None)),
        }
        if not isinstance(data, dict) or not {f.name for f in fields(cls)} >= set(data):
            return None
        if not all(isinstance(data.get(k), t) for k, t in types.items() if k in data) or len(data) < 5:
            return None
        if isinstance(data["pid"], bool) or data["pid"] <= 0 or not all(isinstance(c, str) for c in data["command"]):
            return None
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", data["name"]):  # what sanitize_name makes
            return None
        return cls(**data)


@dataclass
class JobStatus:
    """A job's state and the run's records so far."""

    job: Job
    state: str  # "starting", "running", "stopping", or one of ENDED ("cancelled": ended before saving)
    step: int = 0
    total_steps: int | None = None
    steps: list[dict] = field(default_factory=list)  # step records: loss per step
    epochs: list[dict] = field(default_factory=list)  # epoch records: validation scores
    log_tail: str = ""

    @property
    def running(self) -> bool:
        return self.state not in ENDED

    @property
    def fraction(self) -> float:
        return min(self.step / self.total_steps, 1.0) if self.total_steps else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds left, from the pace so far (None before the first step)."""
        if not self.steps or not self.total_steps or not self.steps[-1].get("elapsed"):
            return None
        return self.steps[-1]["elapsed"] / self.step * (self.total_steps - self.step)

    def progress_text(self) -> str:
        """E.g. "running: step 40 of 200, about 2 min left"."""
        text = f"{self.state}: step {self.step}" + (f" of {self.total_steps}" if self.total_steps else "")
        eta = self.eta_s
        if eta is not None and self.state == "running":
            text += f", about {eta / 60:.0f} min left" if eta >= 90 else f", about {eta:.0f} s left"
        return text

    def summary(self) -> tuple[str, str]:
        """(level, message) for an ended job: "success", "warning" or "error" and a sentence for the user."""
        job, best = self.job, max((e["CIDEr"] for e in self.epochs if "CIDEr" in e), default=None)
        done = f"at step {self.step}" + (f", best val CIDEr {best:.3f}" if best is not None else "")
        if self.state in (rundir.FINISHED, rundir.EARLY_STOPPED):
            return (
                "success",
                f"Run **{job.name}** finished {done}. It is now in Home's checkpoint selector and on Training logs.",
            )
        if self.state == rundir.STOPPED:
            return "warning", (
                f"Run **{job.name}** was cancelled {done}; `{job.out}/{rundir.LAST}` was saved. Resume it with "
                f"`{rundir.resume_command(job.coco_root, job.out)}`."
            )
        if self.state == CANCELLED:
            return "warning", f"Run **{job.name}** was cancelled before its first step; nothing was saved."
        if self.state == rundir.INTERRUPTED:
            saved = rundir.RunDir(job.out).last.is_file()
            again = f" Resume it with `{rundir.resume_command(job.coco_root, job.out)}`." if saved else ""
            return "warning", (
                f"Run **{job.name}** was interrupted at step {self.step}: its process is gone (killed, or the "
                f"machine restarted).{again}"
            )
        return "error", f"Run **{job.name}** ended with an error at step {self.step}; its log ends with:"


def sanitize_name(raw: str) -> str:
    """A run name of [A-Za-z0-9_-], at most 64 characters; JobError when nothing is left."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", raw.strip()).strip("-_")[:MAX_NAME].strip("-_")
    if not name:
        raise JobError("the run name needs at least one letter or digit (allowed: A-Z a-z 0-9 _ -)")
    return name


def default_name() -> str:
    return "finetune-" + dt.datetime.now().strftime("%Y%m%d-%H%M%S")


class JobManager:
    """Starts, watches and cancels the fine-tuning job of one runs directory. Thread- and process-safe.

    `roots`, when given, lists the COCO roots a job may read (the app's data folders); any other is refused.
    """

    def __init__(
        self,
        runs: Path,
        cache_dir: Path | None = None,
        python: str = sys.executable,
        roots: Callable[[], list[Path]] | None = None,
    ) -> None:
        self.runs = Path(runs)
        self.cache_dir = cache_dir
        self.python = python
        self.roots = roots
        self._lock = threading.Lock()
        self._children: dict[int, subprocess.Popen] = {}  # the jobs this process started

    @property
    def job_file(self) -> Path:
        return self.runs / JOB_FILE

    def current(self) -> Job | None:
        """The latest job (running or ended), from the job file; None when there is none or it is malformed."""
        try:
            with open(self.job_file, "rb") as f:
                return Job.from_dict(json.loads(f.read(1_000_000)))
        except (OSError, ValueError):
            return None

    def start(
        self,
        name: str,
        base: Path,
        coco_root: Path,
        split: str,
        *,
        val_split: str | None = None,
        train_ids: list[int] | None = None,
        steps: int | None = None,
        epochs: int | None = None,
        lr: float = 1e-4,
        batch_size: int = 32,
        scst: bool = False,
        extra_args: tuple[str, ...] = (),
    ) -> Job:
        """Launch `python -m captioning train --init-from BASE --out RUNS/NAME`; JobError if it cannot.

        With `scst`, the run optimises CIDEr by self-critical training (`--epochs 0 --scst-epochs`),
        `batch_size` images a step at learning rate `lr`, instead of cross-entropy. `train_ids` (already
        parsed) restricts the training images; they are written into the run folder.
        """
        out = self.runs.resolve() / sanitize_name(name)
        ids_file = out / IDS_FILE if train_ids else None
        cfg = self._config(out, base, coco_root, split, val_split, ids_file, steps, epochs, lr, batch_size, scst)
        cmd = [self.python, "-m", "captioning", "train", *cfg.to_argv()]
        with self._exclusive():  # checks the job file and the name, then starts: nothing else is read here
            active = self.current()
            if active is not None and self._alive(active):
                raise JobError(f"run {active.name!r} is still training; one run at a time (cancel it first)")
            if out.exists():
                raise JobError(f"a run named {out.name!r} already exists in {self.runs}; choose another name")
            out.mkdir(parents=True)
            if ids_file is not None:
                atomic_write_text(ids_file, "\n".join(map(str, train_ids)) + "\n")
            job = self._spawn(out, cmd, extra_args)
            self._save(job)
            return job

    def _spawn(self, out: Path, cmd: list[str], extra_args: tuple[str, ...]) -> Job:
        with open(rundir.RunDir(out).train_log, "wb") as log:
            child = subprocess.Popen(
                [*cmd, *extra_args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=Path(__file__).resolve().parent.parent,
                start_new_session=True,
            )
        self._children[child.pid] = child
        ident = procs.identify(child.pid)
        started = dt.datetime.now().isoformat(timespec="seconds")
        return Job(child.pid, out.name, str(out), started, cmd, start_time=ident.start_time, boot_id=ident.boot_id)

    @contextlib.contextmanager
    def _exclusive(self):
        """This manager's lock and the runs folder's file lock, which other server processes share."""
        with self._lock, file_lock(self.runs / JOB_LOCK):  # held for milliseconds: the others wait, not fail
            yield

    def status(self, job: Job | None = None) -> JobStatus | None:
        """The state of `job` (default: the current one) from its process and its metrics.jsonl."""
        job = job or self.current()
        if job is None:
            return None
        records = rundir.read_metrics(rundir.RunDir(job.out).metrics)
        steps = [r for r in records if r["kind"] == rundir.STEP]
        events = [r["event"] for r in records if r["kind"] == rundir.EVENT]
        total = next((r["total_steps"] for r in reversed(records) if isinstance(r.get("total_steps"), int)), None)
        ended = next((e for e in reversed(events) if e in rundir.ENDINGS), None)
        tail = self.log_tail(job)
        if self._alive(job):
            state = "stopping" if job.cancel_requested else ("running" if steps else "starting")
        elif ended or job.cancel_requested:
            state = ended or CANCELLED
        else:  # gone without an ending: its own error, or killed from outside (or a reboot)
            ours = job.pid in self._children
            state = (
                FAILED
                if (ours and self._children[job.pid].returncode) or "error" in tail.lower()
                else (rundir.INTERRUPTED)
            )
        epochs = [r for r in records if r["kind"] == rundir.EPOCH]
        return JobStatus(job, state, steps[-1]["step"] if steps else 0, total, steps, epochs, tail)

    def cancel(self) -> bool:
        """Ask the running job to stop (SIGTERM, once: a second one would abort without saving). Only the
        process this manager (or an earlier server process) started is ever signalled."""
        with self._exclusive():
            job = self.current()
            if job is None or not self._alive(job):
                return False
            if not job.cancel_requested:
                child = self._children.get(job.pid)
                sent = procs.send(job.process) if child is None else (child.terminate() or True)
                if not sent:
                    return False
                self._save(Job(**{**asdict(job), "cancel_requested": True}))
            return True

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for a job this process started; its exit code (None when not ours)."""
        job = self.current()
        child = self._children.get(job.pid) if job else None
        return child.wait(timeout) if child else None

    def log_tail(self, job: Job, lines: int = 25, max_bytes: int = 65536) -> str:
        """The last lines of the run's train.log, progress-bar redraws collapsed."""
        try:
            with open(rundir.RunDir(job.out).train_log, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - max_bytes))
                text = f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""
        shown = [next((s for s in reversed(line.split("\r")) if s.strip()), "") for line in text.split("\n")]
        return "\n".join([s for s in shown if s.strip()][-lines:])

    def _config(
        self, out, base, coco_root, split, val_split, ids_file, steps, epochs, lr, batch_size, scst=False
    ) -> TrainConfig:
        """The run's TrainConfig, which checks the values; JobError for what only the app limits."""
        base, coco_root = Path(base), Path(coco_root)
        if self.roots is not None and coco_root.resolve() not in {Path(r).resolve() for r in self.roots()}:
            raise JobError(f"{coco_root} is not one of the app's data folders")
        load_checkpoint(base)  # CheckpointError (a ValueError) now rather than in the log later
        splits = available_splits(coco_root) if coco_root.is_dir() else []
        for wanted in (split, val_split):
            if wanted is not None and wanted not in splits:
                have = ", ".join(splits) or "none"
                raise JobError(f"split {wanted!r} is not under {coco_root} (splits there: {have})")
        if (steps is None) == (epochs is None):
            raise JobError("give either steps or epochs")
        if steps is not None and not 1 <= steps <= MAX_STEPS:
            raise JobError(f"steps must be between 1 and {MAX_STEPS} (longer runs: python -m captioning train)")
        values = {"epochs": epochs or 10**6, "lr": lr, "batch_size": batch_size}
        if scst:
            values.update({"epochs": 0, "scst_epochs": epochs or 10**6, "scst_lr": lr, "scst_batch_size": batch_size})
        if self.cache_dir is not None:
            values["cache_dir"] = str(self.cache_dir)
        return TrainConfig(
            coco_root=str(coco_root),
            out=str(out),
            train_split=split,
            val_split=val_split,
            train_ids=str(ids_file) if ids_file else None,
            init_from=str(base.resolve()),
            max_steps=steps or MAX_STEPS,
            log_every=LOG_EVERY,
            **values,
        )

    def _save(self, job: Job) -> None:
        self.runs.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.job_file, json.dumps(asdict(job), indent=2))

    def _alive(self, job: Job) -> bool:
        child = self._children.get(job.pid)
        if child is not None:
            return child.poll() is None
        return procs.is_running(job.process)  # started by an earlier server process, if it is that process
