"""A run folder (`runs/NAME/`): its file names, its log `metrics.jsonl`, how a run ends and how to resume it.

  config.json    {"train": TrainConfig.to_dict(), "model": ModelConfig.to_dict(), "world_size": N}
  vocab.json     the vocabulary
  metrics.jsonl  one JSON object a line:
    {"kind": "step", "step", "epoch", "loss", "perplexity", "lr", "elapsed", "images_per_s", "total_steps"}
        (self-critical steps: "phase": "scst", "scst_loss", "reward" instead of loss and perplexity)
    {"kind": "epoch", "step", "epoch", "val_loss", "val_perplexity", "BLEU-1".."BLEU-4", "ROUGE-L", "CIDEr", ...}
    {"kind": "event", "event": one of EVENTS, "step", "epoch", ...}
  last.pt        the latest checkpoint, with the training state a resume continues from
  best.pt        the checkpoint of the best validation CIDEr
  train.log      the trainer's terminal output, when the app started it
The seed project's plain-text logs (`Epoch [1/3], Step [100/3236], Loss: 2.9812, ...`) read as step records.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from captioning import distributed as dist
from captioning.io import atomic_write_text, read_json_line

CONFIG, VOCAB, METRICS, LAST, BEST = "config.json", "vocab.json", "metrics.jsonl", "last.pt", "best.pt"
TRAIN_LOG, LOCK = "train.log", ".lock"  # the app's copy of the trainer's output; held while a trainer runs
STEP, EPOCH, EVENT = "step", "epoch", "event"  # record kinds
START, RESUME, SCST_START, PROGRESS = "start", "resume", "scst_start", "progress"
FINISHED, STOPPED, EARLY_STOPPED = "finished", "stopped", "early_stopped"
ENDINGS = (FINISHED, STOPPED, EARLY_STOPPED)  # the events a run's log ends with
EVENTS = (START, RESUME, SCST_START, PROGRESS, *ENDINGS)
RUNNING, INTERRUPTED, UNKNOWN = "running", "interrupted", "unknown"  # statuses of a log with no ending
RUN_FILES = (CONFIG, METRICS, LAST, BEST)  # a folder holding any of these holds a run
SCORES = ("val_loss", "val_perplexity", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")


class RunDir:
    """The paths of one run folder."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    config = property(lambda self: self.path / CONFIG)
    vocab = property(lambda self: self.path / VOCAB)
    metrics = property(lambda self: self.path / METRICS)
    last = property(lambda self: self.path / LAST)
    best = property(lambda self: self.path / BEST)
    train_log = property(lambda self: self.path / TRAIN_LOG)

    @property
    def name(self) -> str:
        return self.path.name

    lock_file = property(lambda self: self.path / LOCK)

    def status(self) -> str:
        """How the run's log ends (see `run_status`), "interrupted" when no ending was logged and no trainer
        holds the run's lock (it was killed)."""
        status = run_status(self.metrics)
        return INTERRUPTED if status == RUNNING and not self.locked() else status

    def holds_run(self) -> bool:
        """Whether a run was started here (an empty folder, or only the app's train.log, does not count)."""
        return any((self.path / name).exists() for name in RUN_FILES)

    def locked(self) -> bool:
        """Whether a trainer holds this run's lock now."""
        try:
            fd = os.open(self.lock_file, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)  # closing releases a lock we took
        return False


class RunFolderError(ValueError):
    """A run folder that cannot be trained into now; the message says why and what to do."""


class RunLockedError(RunFolderError):
    """Another process is training this run."""


class RunLock:
    """An exclusive lock on a run folder for as long as a trainer writes it; the OS drops it when the process
    dies, however it dies."""

    def __init__(self, folder: RunDir) -> None:
        self.folder, self.fd = folder, None

    def __enter__(self) -> RunLock:
        self.folder.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RunLockedError(
                f"{self.folder.path} is being trained by another process; wait for it or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        for stale in self.folder.path.glob(".*.tmp"):  # half-written files of a trainer that was killed
            stale.unlink(missing_ok=True)
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def resume_command(coco_root: str | Path, out: str | Path) -> str:
    """The shell command that continues a stopped run."""
    return shlex.join(
        ["python", "-m", "captioning", "train", "--coco-root", str(coco_root), "--out", str(out), "--resume"]
    )


class RunLog:
    """Appends records to `metrics.jsonl`; each line is flushed so a reader sees it at once."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    def event(self, name: str, step: int, epoch: int, **fields) -> None:
        """An event record: the run started, resumed, switched phase or ended."""
        self.write({"kind": EVENT, "event": name, "step": step, "epoch": epoch, **fields})

    def truncate_after(self, step: int, validated: bool = True) -> None:
        """Drop records past `step` (logged after the checkpoint a resumed run starts from), and, when that
        checkpoint's epoch was not validated, the validation record a killed run may have logged at `step`."""
        at = lambda r: r.get("step", 0)  # noqa: E731
        keep = lambda r: at(r) < step or (at(r) == step and (validated or r["kind"] != EPOCH))  # noqa: E731
        records = [r for r in read_log(self.path).records if keep(r)]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in records))


class StageLog:
    """Progress of a run's long stages ("features train", "validation") as progress events, at most one per
    `every` of a stage, so a watcher (the Fine-tune page) can say what the run is doing; `forward` gets every
    call too (the caller's own `on_phase`)."""

    def __init__(self, log: RunLog | None, forward=None, every: float = 0.05) -> None:
        self.log, self.forward, self.every, self.last = log, forward, every, {}
        self.step = self.epoch = 0  # where training stands, for the records

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.forward:
            self.forward(stage, done, total)
        last = self.last.get(stage)
        if self.log is None or (last is not None and done < total and done - last < self.every * total):
            return
        self.last[stage] = done
        self.log.event(PROGRESS, self.step, self.epoch, stage=stage, done=done, total=total)


@dataclass
class LogRead:
    """The usable records of a log, and how many lines were skipped as malformed."""

    records: list[dict] = field(default_factory=list)
    skipped: int = 0


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def valid_record(record) -> bool:
    """Whether a parsed line has the fields its kind promises, of the right types (numbers may be NaN)."""
    if not isinstance(record, dict) or not (_number(record.get("step")) or record.get("kind") == EVENT):
        return False
    kind = record.get("kind")
    if kind == STEP:
        return _number(record.get("loss")) or _number(record.get("reward"))
    if kind == EPOCH:
        return _number(record.get("epoch")) and all(_number(record[k]) for k in SCORES if k in record)
    return kind == EVENT and isinstance(record.get("event"), str) and _number(record.get("step", 0))


def read_log(path: Path) -> LogRead:
    """Records of a metrics.jsonl; lines that are not valid records (a half-written last line of a live run,
    or a hand-edited one) are skipped and counted."""
    out = LogRead()
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    continue
                record = read_json_line(line)
                if valid_record(record):
                    out.records.append(record)
                else:
                    out.skipped += 1
    except OSError:
        pass
    return out


def read_metrics(path: Path) -> list[dict]:
    """The valid records of a metrics.jsonl (see `read_log`)."""
    return read_log(path).records


def run_status(metrics: Path) -> str:
    """How a run's log ends: an ending event's name, "running" when none yet, "unknown" without a log.

    Reads only the log's last and first STATUS_WINDOW bytes (a run of 100k steps has a log of tens of MB),
    and only when the file's size or modification time changed since the last call."""
    try:
        info = Path(metrics).stat()
    except OSError:
        return UNKNOWN
    return _status(str(metrics), info.st_size, info.st_mtime_ns)


STATUS_WINDOW = 65_536


@functools.lru_cache(maxsize=1024)
def _status(path: str, size: int, mtime_ns: int) -> str:
    tail = _events(path, max(0, size - STATUS_WINDOW), skip_partial=size > STATUS_WINDOW)
    if tail:
        return tail[-1] if tail[-1] in ENDINGS else RUNNING
    # no event near the end: steps logged after the start, or no events at all
    return RUNNING if size > STATUS_WINDOW and _events(path, 0) else UNKNOWN


def _events(path: str, offset: int, skip_partial: bool = False) -> list[str]:
    """The event names in STATUS_WINDOW bytes of a log from `offset` (a first line cut in half is skipped)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            lines = f.read(STATUS_WINDOW).split(b"\n")
    except OSError:
        return []
    names = []
    for line in lines[1:] if skip_partial else lines:
        if b'"event"' not in line:
            continue
        record = read_json_line(line)
        if valid_record(record) and record["kind"] == EVENT:
            names.append(record["event"])
    return names


@contextlib.contextmanager
def own_folder(folder: RunDir, ctx: dist.DistContext, resume: bool):
    """Hold the run folder's lock (rank 0) while training; refuse a folder that another trainer holds, or one
    that holds a run already when this is not a resume. Every rank gets the same answer."""
    lock, problem = RunLock(folder), None
    if ctx.rank == 0:
        try:
            lock.__enter__()
        except RunLockedError as exc:
            problem = str(exc)
        if problem is None and not resume and folder.holds_run():
            problem = (
                f"{folder.path} already holds a run; continue it with --resume (same --out), or choose "
                "another --out (or delete that folder first)"
            )
    problem = dist.broadcast(problem, ctx)
    try:
        if problem:
            raise RunFolderError(problem)
        yield
    finally:
        lock.__exit__()
