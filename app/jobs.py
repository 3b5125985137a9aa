"""Background fine-tuning: one `python -m captioning train` subprocess at a time per runs directory.

The job file `RUNS/.active_job.json` lets a reloaded page, a second tab or a restarted server
re-attach to the running job instead of starting another. Progress is read from the run's
`metrics.jsonl`; cancelling sends SIGTERM, on which the trainer saves a resumable `last.pt`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

from captioning import rundir
from captioning.checkpoint import load_checkpoint
from captioning.config import TrainConfig
from captioning.data import available_splits, read_ids_file
from captioning.io import atomic_write_text

JOB_FILE = ".active_job.json"
MAX_STEPS = 2000  # the app runs short fine-tunes; longer runs belong on the command line
MAX_NAME = 64
LOG_EVERY = 5  # steps between loss records: a short run still draws a curve
CANCELLED, FAILED = "cancelled", "failed"  # a job that ended before its run logged an ending
ENDED = (*rundir.ENDINGS, CANCELLED, FAILED)


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

    @property
    def out_dir(self) -> Path:
        return Path(self.out)


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
            root = job.command[job.command.index("--coco-root") + 1]
            return "warning", (
                f"Run **{job.name}** was cancelled {done}; `{job.out}/{rundir.LAST}` was saved. Resume it with "
                f"`{rundir.resume_command(root, job.out)}`."
            )
        if self.state == CANCELLED:
            return "warning", f"Run **{job.name}** was cancelled before its first step; nothing was saved."
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
    """Starts, watches and cancels the fine-tuning job of one runs directory. Thread-safe."""

    def __init__(self, runs: Path, cache_dir: Path | None = None, python: str = sys.executable) -> None:
        self.runs = Path(runs)
        self.cache_dir = cache_dir
        self.python = python
        self._lock = threading.Lock()
        self._children: dict[int, subprocess.Popen] = {}  # the jobs this process started

    @property
    def job_file(self) -> Path:
        return self.runs / JOB_FILE

    def current(self) -> Job | None:
        """The latest job (running or ended), from the job file."""
        try:
            return Job(**json.loads(self.job_file.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return None

    def start(
        self,
        name: str,
        base: Path,
        coco_root: Path,
        split: str,
        *,
        val_split: str | None = None,
        ids_file: Path | None = None,
        steps: int | None = None,
        epochs: int | None = None,
        lr: float = 1e-4,
        batch_size: int = 32,
        scst: bool = False,
        extra_args: tuple[str, ...] = (),
    ) -> Job:
        """Launch `python -m captioning train --init-from BASE --out RUNS/NAME`; JobError if it cannot.

        With `scst`, the run optimises CIDEr by self-critical training (`--epochs 0 --scst-epochs`),
        `batch_size` images a step at learning rate `lr`, instead of cross-entropy.
        """
        with self._lock:
            active = self.current()
            if active is not None and self._alive(active):
                raise JobError(f"run {active.name!r} is still training; one run at a time (cancel it first)")
            out = self._new_run_dir(name)
            cfg = self._config(out, base, coco_root, split, val_split, ids_file, steps, epochs, lr, batch_size, scst)
            cmd = [self.python, "-m", "captioning", "train", *cfg.to_argv()]
            out.mkdir(parents=True)
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
            job = Job(child.pid, out.name, str(out), dt.datetime.now().isoformat(timespec="seconds"), cmd)
            self._save(job)
            return job

    def status(self, job: Job | None = None) -> JobStatus | None:
        """The state of `job` (default: the current one) from its process and its metrics.jsonl."""
        job = job or self.current()
        if job is None:
            return None
        records = rundir.read_metrics(rundir.RunDir(job.out).metrics)
        steps = [r for r in records if r.get("kind") == rundir.STEP]
        events = [r.get("event") for r in records if r.get("kind") == rundir.EVENT]
        total = next((r.get("total_steps") for r in reversed(records) if r.get("total_steps")), None)
        ended = next((e for e in reversed(events) if e in rundir.ENDINGS), None)
        if self._alive(job):
            state = "stopping" if job.cancel_requested else ("running" if steps else "starting")
        else:
            state = ended or (CANCELLED if job.cancel_requested else FAILED)
        return JobStatus(
            job,
            state,
            steps[-1]["step"] if steps else 0,
            total,
            steps,
            [r for r in records if r.get("kind") == rundir.EPOCH],
            self.log_tail(job),
        )

    def cancel(self) -> bool:
        """Ask the running job to stop (SIGTERM, once: a second one would abort without saving)."""
        with self._lock:
            job = self.current()
            if job is None or not self._alive(job):
                return False
            if not job.cancel_requested:
                os.kill(job.pid, signal.SIGTERM)
                self._save(Job(**{**asdict(job), "cancel_requested": True}))
            return True

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for a job this process started; its exit code (None when not ours)."""
        job = self.current()
        child = self._children.get(job.pid) if job else None
        return child.wait(timeout) if child else None

    def log_tail(self, job: Job, lines: int = 25) -> str:
        """The last lines of the run's train.log, progress-bar redraws collapsed."""
        try:
            text = rundir.RunDir(job.out).train_log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        shown = [next((s for s in reversed(line.split("\r")) if s.strip()), "") for line in text.split("\n")]
        return "\n".join([s for s in shown if s.strip()][-lines:])

    def _new_run_dir(self, raw_name: str) -> Path:
        name = sanitize_name(raw_name)
        runs = self.runs.resolve()
        out = (runs / name).resolve()
        if out.parent != runs:
            raise JobError(f"run name {raw_name!r} must name a folder directly inside {runs}")
        if out.exists():
            raise JobError(f"a run named {name!r} already exists in {runs}; choose another name")
        return out

    def _config(
        self, out, base, coco_root, split, val_split, ids_file, steps, epochs, lr, batch_size, scst=False
    ) -> TrainConfig:
        """The run's TrainConfig, which checks the values; JobError for what only the app limits."""
        base, coco_root = Path(base), Path(coco_root)
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
        if ids_file is not None:
            read_ids_file(Path(ids_file))  # DatasetError now for a bad file
        values = {"epochs": epochs or 10**6, "lr": lr, "batch_size": batch_size}
        if scst:
            values.update({"epochs": 0, "scst_epochs": epochs or 10**6, "scst_lr": lr, "scst_batch_size": batch_size})
        return TrainConfig(
            coco_root=str(coco_root),
            out=str(out),
            train_split=split,
            val_split=val_split,
            train_ids=str(Path(ids_file).resolve()) if ids_file is not None else None,
            init_from=str(base.resolve()),
            max_steps=steps or MAX_STEPS,
            log_every=LOG_EVERY,
            **({"cache_dir": str(self.cache_dir)} if self.cache_dir is not None else {}),
            **values,
        )

    def _save(self, job: Job) -> None:
        self.runs.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.job_file, json.dumps(asdict(job), indent=2))

    def _alive(self, job: Job) -> bool:
        child = self._children.get(job.pid)
        if child is not None:
            return child.poll() is None
        try:  # started by an earlier server process: check the pid is still that trainer
            os.kill(job.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        try:
            stat = Path(f"/proc/{job.pid}/stat").read_text()
            cmdline = Path(f"/proc/{job.pid}/cmdline").read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return not Path("/proc/self").exists()  # gone just now; without /proc (macOS) trust the pid
        if stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
            return False  # exited, not yet reaped
        return not cmdline or job.out in cmdline  # empty while exiting; another command: the pid was reused
