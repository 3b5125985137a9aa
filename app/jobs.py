"""Background fine-tuning: one `python -m captioning train` at a time per runs directory, run by app.background.

The job file `RUNS/.active_job.json` lets a reloaded page, a second tab or a restarted server re-attach to the
running job. Progress and the ending are read from the run's own `metrics.jsonl`; cancelling sends SIGTERM, on
which the trainer saves a resumable `last.pt`.
"""

from __future__ import annotations

import datetime as dt
import random
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from app import catalog
from app.background import CANCELLED, FAILED, INTERRUPTED, RUNNING, Background, Busy, Job, JobError
from captioning import formats, rundir
from captioning.checkpoint import load_checkpoint
from captioning.config import TrainConfig
from captioning.data import CocoSplit, DatasetError
from captioning.io import atomic_write_text

__all__ = [
    "DEFAULT_MINUTES",
    "MAX_MINUTES",
    "MAX_STEPS",
    "Job",
    "JobError",
    "JobManager",
    "JobStatus",
    "default_name",
    "sanitize_name",
]

JOB_FILE, JOB_LOCK, IDS_FILE, VAL_IDS_FILE = ".active_job.json", ".job.lock", "train_ids.txt", "val_ids.txt"
# A visitor's budget bounds the whole run: the app runs short fine-tunes; longer runs belong on the command line.
MAX_STEPS = 2000  # optimizer steps
MAX_MINUTES, DEFAULT_MINUTES = 60, 10  # wall time from the start, extraction included; then the run ends cleanly
MAX_VALIDATIONS = 10  # validations (each with a save of best.pt and last.pt), however many epochs the steps span
MAX_TRAIN_IMAGES = 5000  # images whose features are extracted for training (a seeded sample of a larger split)
MAX_VAL_IMAGES = 250  # images validated on, likewise
MAX_NAME = 64
LOG_EVERY = 5  # steps between loss records: a short run still draws a curve
ENDED = (*rundir.ENDINGS, CANCELLED, FAILED, INTERRUPTED)


def _coco_root(job: Job) -> str:
    """The --coco-root of a training job's command."""
    i = job.command.index("--coco-root") + 1 if "--coco-root" in job.command else len(job.command)
    return job.command[i] if i < len(job.command) else "ROOT"


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
    message: str = ""  # why a failed run failed: the last line its trainer wrote to stderr
    stage: dict | None = None  # the latest progress record, while extraction or validation is under way

    @property
    def running(self) -> bool:
        return self.state not in ENDED

    @property
    def fraction(self) -> float:
        if self.stage is not None:
            return min(self.stage["done"] / max(self.stage["total"], 1), 1.0)
        return min(self.step / self.total_steps, 1.0) if self.total_steps else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds left, from the pace so far (None before the first step)."""
        if not self.steps or not self.total_steps or not self.steps[-1].get("elapsed"):
            return None
        return self.steps[-1]["elapsed"] / self.step * (self.total_steps - self.step)

    def progress_text(self) -> str:
        """What the run is doing: "Extracting image features (train): 1,200 of 5,000 images", "Validating: 64 of
        250 images" or "Training: step 40 of 200, about 2 min left"."""
        if self.stage is not None:
            done, total, name = self.stage["done"], self.stage["total"], str(self.stage["stage"])
            doing = "Validating" if name == "validation" else f"Extracting image features ({name.split()[-1]})"
            return f"{doing}: {done:,} of {total:,} images"
        if self.state == "starting" or (self.state == "running" and not self.steps):
            return (
                "Preparing: loading the model, reading the captions, extracting image features (the first step follows)"
            )
        text = f"{self.state.capitalize()}: step {self.step}" + (f" of {self.total_steps}" if self.total_steps else "")
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
                f"`{rundir.resume_command(_coco_root(job), job.out)}`."
            )
        if self.state == CANCELLED:
            return "warning", f"Run **{job.name}** was cancelled before its first step; nothing was saved."
        if self.state == rundir.INTERRUPTED:
            saved = rundir.RunDir(job.out).last.is_file()
            again = f" Resume it with `{rundir.resume_command(_coco_root(job), job.out)}`." if saved else ""
            return "warning", (
                f"Run **{job.name}** was interrupted at step {self.step}: its process is gone (killed, or the "
                f"machine restarted).{again}"
            )
        return "error", f"Run **{job.name}** failed at step {self.step}:"


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

    `roots`, when given, lists the datasets (folders or caption files) a job may read; any other is refused.
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
        self.jobs = Background(self.runs, JOB_FILE, JOB_LOCK, upgrade=_with_log)

    @property
    def job_file(self) -> Path:
        return self.jobs.job_file

    def current(self) -> Job | None:
        """The latest job (running or ended), from the job file; None when there is none or it is malformed."""
        return self.jobs.current()

    def start(
        self,
        name: str,
        base: Path,
        data: Path,
        split: str,
        *,
        fmt: str = "auto",
        val_split: str | None = None,
        train_ids: list[int] | None = None,
        steps: int | None = None,
        epochs: int | None = None,
        lr: float = 1e-4,
        batch_size: int = 32,
        scst: bool = False,
        minutes: float = DEFAULT_MINUTES,
    ) -> Job:
        """Launch `python -m captioning train --data DATA --format FMT --init-from BASE --out RUNS/NAME`; JobError
        if it cannot. DATA is a dataset folder or caption file of format `fmt` ("auto": detected now).

        With `scst`, the run optimises CIDEr by self-critical training (`--epochs 0 --scst-epochs`),
        `batch_size` images a step at learning rate `lr`, instead of cross-entropy. `train_ids` (already
        parsed) restricts the training images; a split larger than MAX_TRAIN_IMAGES (MAX_VAL_IMAGES to validate
        on) is sampled, so the features extracted stay bounded; the ids are written into the run folder.
        """
        catalog.prune_app_runs(self.runs, catalog.KEEP_APP_RUNS, protect=[Path(base)])  # keeps the app's runs bounded
        out = self.runs.resolve() / sanitize_name(name)
        data = Path(data)
        self._check_root(data)  # before anything under it is read
        fmt = _format(data, fmt)
        if not 0 < minutes <= MAX_MINUTES:
            raise JobError(f"the time budget must be between 1 and {MAX_MINUTES} minutes")
        chosen = {IDS_FILE: _bounded_ids(data, fmt, split, train_ids, MAX_TRAIN_IMAGES)}
        chosen[VAL_IDS_FILE] = _bounded_ids(data, fmt, val_split, None, MAX_VAL_IMAGES) if val_split else None
        files = {name: out / name if ids else None for name, ids in chosen.items()}
        cfg = self._config(out, base, data, fmt, split, val_split, files, steps, epochs, lr, batch_size, scst, minutes)

        def make_run_folder() -> None:  # under the job lock, once no other run trains
            if out.exists():
                raise JobError(f"a run named {out.name!r} already exists in {self.runs}; choose another name")
            out.mkdir(parents=True)
            for name, ids in chosen.items():
                if ids:
                    atomic_write_text(out / name, "\n".join(map(str, ids)) + "\n")

        command = [self.python, "-m", "captioning", "train", *cfg.to_argv()]
        try:
            return self.jobs.start(out.name, out, command, rundir.RunDir(out).train_log, make_run_folder)
        except Busy as busy:
            raise JobError(f"run {busy.job.name!r} is still training; one run at a time (cancel it first)") from None

    def status(self, job: Job | None = None) -> JobStatus | None:
        """The state of `job` (default: the current one) from its process, its exit and its metrics.jsonl."""
        job = job or self.current()
        if job is None:
            return None
        alive = self.jobs.alive(job)  # before the records: an ending logged just before it exited is in them
        records = rundir.read_metrics(rundir.RunDir(job.out).metrics)
        steps = [r for r in records if r["kind"] == rundir.STEP]
        epochs = [r for r in records if r["kind"] == rundir.EPOCH]
        events = [r["event"] for r in records if r["kind"] == rundir.EVENT]
        total = next((r["total_steps"] for r in reversed(records) if isinstance(r.get("total_steps"), int)), None)
        state = self.jobs.state(job, alive, next((e for e in reversed(events) if e in rundir.ENDINGS), None))
        if state == RUNNING and not steps:
            state = "starting"
        message = self.jobs.failure(job) if state == FAILED else ""
        step = steps[-1]["step"] if steps else 0
        last = records[-1] if records else {}
        stage = last if last.get("event") == rundir.PROGRESS and _progress(last) else None
        return JobStatus(job, state, step, total, steps, epochs, self.jobs.log_tail(job), message, stage)

    def cancel(self) -> bool:
        """Ask the running job to stop (SIGTERM, once); the trainer then saves a resumable last.pt. Only the
        process this app started is ever signalled."""
        return self.jobs.cancel()

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for a job this process started; its exit code (None when not ours)."""
        return self.jobs.wait(timeout)

    def log_tail(self, job: Job, lines: int = 25) -> str:
        """The last lines of the run's train.log, progress-bar redraws collapsed."""
        return self.jobs.log_tail(job, lines)

    def _check_root(self, data: Path) -> None:
        if self.roots is not None and data.resolve() not in {Path(r).resolve() for r in self.roots()}:
            raise JobError(f"{data} is not one of the app's datasets")

    def _config(
        self, out, base, data, fmt, split, val_split, ids_files, steps, epochs, lr, batch_size, scst, minutes
    ) -> TrainConfig:
        """The run's TrainConfig, which checks the values; JobError for what only the app limits."""
        base = Path(base)
        load_checkpoint(base)  # CheckpointError (a ValueError) now rather than in the log later
        try:
            splits = formats.split_names(data, fmt)
        except (DatasetError, OSError):
            splits = []
        for wanted in (split, val_split):
            if wanted is not None and wanted not in splits:
                have = ", ".join(splits) or "none"
                raise JobError(f"split {wanted!r} is not under {data} (splits there: {have})")
        if (steps is None) == (epochs is None):
            raise JobError("give either steps or epochs")
        if steps is not None and not 1 <= steps <= MAX_STEPS:
            raise JobError(f"steps must be between 1 and {MAX_STEPS} (longer runs: python -m captioning train)")
        values = {"epochs": epochs or 10**6, "lr": lr, "batch_size": batch_size, "max_minutes": float(minutes)}
        if scst:
            values.update({"epochs": 0, "scst_epochs": epochs or 10**6, "scst_lr": lr, "scst_batch_size": batch_size})
        if self.cache_dir is not None:
            values["cache_dir"] = str(self.cache_dir)
        return TrainConfig(
            coco_root=str(data),
            format=fmt,
            out=str(out),
            train_split=split,
            val_split=val_split,
            train_ids=str(ids_files[IDS_FILE]) if ids_files[IDS_FILE] else None,
            val_ids=str(ids_files[VAL_IDS_FILE]) if ids_files[VAL_IDS_FILE] else None,
            init_from=str(base.resolve()),
            max_steps=steps or MAX_STEPS,
            max_validations=MAX_VALIDATIONS,
            log_every=LOG_EVERY,
            **values,
        )


def _progress(record: dict) -> bool:
    """Whether a progress record has the numbers the page shows."""
    counts = [record.get("done"), record.get("total")]
    return all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts)


def _format(data: Path, fmt: str) -> str:
    """The format a run reads `data` as: `fmt`, or the one detected for "auto"; JobError when none or several fit."""
    if fmt not in formats.FORMATS:
        raise JobError(f"format must be one of: {', '.join(formats.FORMATS)} (got {fmt!r})")
    try:
        return formats.detect(data) if fmt == "auto" else fmt
    except DatasetError as exc:
        raise JobError(str(exc)) from None


def _bounded_ids(data: Path, fmt: str, split: str, given: list[int] | None, most: int) -> list[int] | None:
    """The ids a run may read: `given` (at most `most` of them), else a seeded sample of `most` when the split has
    more (None: the whole split). JobError for more given ids than the budget allows."""
    if given is not None:
        if len(given) > most:
            raise JobError(f"{len(given):,} image ids; a fine-tune from the app takes at most {most:,}")
        return given
    try:
        if fmt == "coco":  # its ids without a stat of each of its (maybe 118k) images
            ids = CocoSplit.load(data, split, check_files=False).ids
        else:
            ids = formats.open_split(data, split, fmt).ids
    except (DatasetError, OSError):
        return None  # the split check says what is wrong
    return sorted(random.Random(0).sample(ids, most)) if len(ids) > most else None


def _with_log(data: dict) -> dict:
    """An older version's job file (no "log"): its output is the run's train.log."""
    out = data.get("out")
    return {"log": str(rundir.RunDir(out).train_log), **data} if isinstance(out, str) else data
