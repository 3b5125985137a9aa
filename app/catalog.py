"""What the app can offer: the shipped model, every run's best checkpoint, every run's log, the datasets.

Locations come from the environment so a test or a deployment can point elsewhere:
CAPTIONING_CHECKPOINT (the default model), CAPTIONING_RUNS_DIR (run directories, default `runs/`),
CAPTIONING_DATA_DIR (where datasets of any format live, default `data/`), COCO_ROOT (one more dataset), and the
embedded sample. The app reads data from these only: a browser can pick among them, never type a server path.
A page load stats each run's files and reads only what changed (scores from checkpoints' plain data, never their
weights); Fine-tune keeps its newest KEEP_APP_RUNS runs (`prune_app_runs`).
"""

from __future__ import annotations

import math
import os
import shutil
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from captioning import formats, rundir
from captioning.checkpoint import CheckpointError, default_checkpoint, read_metrics
from captioning.data import SAMPLE_ROOT
from captioning.formats.common import IMAGE_SUFFIXES
from captioning.io import read_json

PROJECT_ROOT = Path(__file__).resolve().parent.parent  # the app runs from its checkout
GET_A_MODEL = (
    "Train one with `python -m captioning train --coco-root data/coco --out runs/first` "
    "(get data first with `python -m captioning download --dest data/coco --split val2017 --limit 500`), "
    "or set `CAPTIONING_CHECKPOINT` to a checkpoint."
)
# Runs the Fine-tune page keeps: each holds best.pt and last.pt (~90 MB for the default model), so at most ~2 GB.
# Older ones that ended are deleted when a new one starts; command-line runs are never touched.
KEEP_APP_RUNS = 20
SAMPLE_LABEL = "Embedded COCO sample (150 train, 60 val)"
SCAN_LIMIT = 20_000  # directory entries a dataset listing looks at for sidecar captions under one folder


@dataclass(frozen=True)
class ModelEntry:
    """A checkpoint the app can caption with."""

    label: str  # the name (and a run's status): short enough for the sidebar's box
    path: Path
    run: str | None  # None for the shipped default
    cider: float | None
    score: str = ""  # "val CIDEr 0.828 (250 images, beam)": what the score was measured on, "" where unrecorded


@dataclass(frozen=True)
class RunEntry:
    """A training log the app can plot."""

    name: str
    metrics: Path
    status: str  # "finished", "stopped", "early_stopped", "running" (or interrupted), "unknown"
    checkpoint: Path | None = None  # where its best.pt is (the shipped model's file), whether or not it is there yet


def default_log(checkpoint: Path | None = None) -> Path:
    """The shipped model's training log, beside it: `default.pt` -> `default-metrics.jsonl`."""
    checkpoint = checkpoint or default_checkpoint()
    return checkpoint.with_name(f"{checkpoint.stem}-metrics.jsonl")


def data_dir() -> Path:
    """Where datasets live: $CAPTIONING_DATA_DIR or `data/` in the project."""
    return Path(os.environ.get("CAPTIONING_DATA_DIR") or PROJECT_ROOT / "data")


@dataclass(frozen=True)
class DatasetEntry:
    """A caption dataset the app may read: a folder or a caption file, and its format (`captioning.formats`)."""

    path: Path
    format: str
    label: str


def datasets() -> list[DatasetEntry]:
    """The datasets the app may read, whatever their format: $COCO_ROOT, the data folder itself and each entry
    directly inside it (a folder or a caption file), then the embedded sample. What no format fits, or several
    could, is left out quietly: a folder of other files is no dataset. A path's format is remembered while its
    `listing_stamp` stays, so a rerun lists and stats, and reads nothing."""
    data = data_dir()
    try:
        inside = sorted(
            p for p in data.iterdir() if not p.name.startswith(".") and p.suffix.lower() not in IMAGE_SUFFIXES
        )
    except OSError:
        inside = []
    places = [*([Path(os.environ["COCO_ROOT"])] if os.environ.get("COCO_ROOT") else []), data, *inside, sample_root()]
    found = [(path, fmt) for path in places if (fmt := _formats(path)) is not None]
    _formats.sweep({str(path) for path in places})
    inner = {fmt for path, fmt in found if path.parent == data and fmt != "coco"}
    seen, out = set(), []
    for path, fmt in found:  # the data folder read through an entry's caption file or sidecars is that entry
        if path.resolve() not in seen and not (path == data and fmt in inner):
            seen.add(path.resolve())
            out.append((path, fmt))
    names = [path.name for path, _ in out]
    return [DatasetEntry(p, fmt, _label_of(p, fmt, names.count(p.name) > 1)) for p, fmt in out]


def dataset_paths() -> list[Path]:
    """Where `datasets()` are: all that a fine-tune may read."""
    return [entry.path for entry in datasets()]


def _label_of(path: Path, fmt: str, clash: bool) -> str:
    """ "flickr8k (flickr)"; the whole path where two datasets share a name; the sample by its name."""
    return SAMPLE_LABEL if is_sample(path) else f"{path if clash else path.name} ({fmt})"


def listing_stamp(path: Path) -> tuple:
    """What a dataset's detection depends on: a file's (mtime, size); a folder's mtime and those of the folders
    directly inside it (a metadata file arriving in `train/`). OSError where there is nothing."""
    info = path.stat()
    if not stat.S_ISDIR(info.st_mode):
        return info.st_mtime_ns, info.st_size
    inner = []
    with os.scandir(path) as entries:
        for entry in entries:
            try:
                if entry.is_dir():
                    inner.append((entry.name, entry.stat().st_mtime_ns))
            except OSError:  # gone since it was listed
                continue
    return info.st_mtime_ns, tuple(sorted(inner))


def _detect(path: Path) -> str | None:
    """`formats.detect`'s answer (None where it raises: no format fits, or several could), but a folder with
    `annotations/captions_*.json` is COCO whatever else lies beside it (a `.tar`, a CSV), and the one recursive
    check, sidecar captions anywhere under a folder, is bounded by `_has_sidecars`: a listing must not walk COCO."""
    if path.is_dir() and any((path / "annotations").glob("captions_*.json")):
        return "coco"  # without its image folder yet too: the split picker says what is missing
    fits = []
    for name in sorted(formats.READERS, key=lambda n: n in formats.GENERIC):  # named layouts first: they win
        if name in formats.GENERIC and any(f not in formats.GENERIC for f in fits):
            break
        try:
            if _has_sidecars(path) if name == "folder" else formats.READERS[name][0](path):
                fits.append(name)
        except (OSError, ValueError):
            continue
    return fits[0] if len(fits) == 1 else None


def _has_sidecars(folder: Path) -> bool:
    """Whether an image under `folder` has a `.txt` beside it, among the first SCAN_LIMIT entries walked."""
    budget, todo = SCAN_LIMIT, [folder] if folder.is_dir() else []
    while todo and budget > 0:
        names, inner = set(), []
        try:
            with os.scandir(todo.pop(0)) as entries:
                for entry in entries:
                    names.add(entry.name)
                    if entry.is_dir(follow_symlinks=False):
                        inner.append(entry.path)
                    budget -= 1
                    if budget <= 0:
                        break
        except OSError:
            continue
        if any(Path(n).suffix.lower() in IMAGE_SUFFIXES and f"{Path(n).stem}.txt" in names for n in names):
            return True
        todo += sorted(inner)
    return False


def sample_root() -> Path:
    """The embedded COCO sample, shipped inside the package ($CAPTIONING_SAMPLE_DIR overrides it, for tests)."""
    return Path(os.environ.get("CAPTIONING_SAMPLE_DIR") or SAMPLE_ROOT)


def is_sample(root: Path | str) -> bool:
    try:
        return Path(root).resolve() == sample_root().resolve()
    except OSError:
        return False


@dataclass(frozen=True)
class Example:
    """An image of the embedded sample's val split that Home offers to caption, with its references."""

    image_id: int
    path: Path
    references: tuple[str, ...]


def examples() -> list[Example]:
    """Home's example images: those `examples.json` of the sample names (else its first 8 val images)."""
    from captioning.data import CocoSplit, DatasetError

    root = sample_root()
    try:
        split = CocoSplit.load(root, "val")
    except (DatasetError, OSError):
        return []
    try:
        wanted = read_json((root / "examples.json").read_text(encoding="utf-8"))["val"]
        ids = [i for i in wanted if i in split.files]
    except (OSError, ValueError, KeyError, TypeError):
        ids = split.ids[:8]
    return [Example(i, split.files[i], tuple(split.captions[i])) for i in ids]


def runs_dir() -> Path:
    """Where runs live: $CAPTIONING_RUNS_DIR or `runs/` in the project."""
    return Path(os.environ.get("CAPTIONING_RUNS_DIR") or PROJECT_ROOT / "runs")


def run_dirs(runs: Path | None = None) -> list[Path]:
    """Run directories under `runs`, newest first (hidden names are skipped); one stat each."""
    found = []
    try:
        with os.scandir(Path(runs or runs_dir())) as entries:
            for entry in entries:
                try:
                    if not entry.name.startswith(".") and entry.is_dir():
                        found.append((entry.stat().st_mtime, Path(entry.path)))
                except OSError:  # gone since it was listed
                    continue
    except OSError:
        return []
    return [path for _, path in sorted(found, key=lambda item: item[0], reverse=True)]


def _file_stamp(path: Path) -> tuple[int, int] | None:
    """A regular file's (mtime, size); None for anything else."""
    info = path.stat()
    return (info.st_mtime_ns, info.st_size) if stat.S_ISREG(info.st_mode) else None


class _ByStat:
    """What `read` made of a file, kept while its `stamp` (a regular file's (mtime, size)) stays: a rerun stats
    unchanged files and reads none. It keeps at most about twice as many files as the latest listing named (see
    `sweep`)."""

    def __init__(self, read: Callable[[Path], Any], stamp: Callable[[Path], Any] = _file_stamp) -> None:
        self.read, self.stamp, self.kept = read, stamp, {}

    def __call__(self, path: Path) -> Any:
        """`read(path)`, or what it gave while the file is unchanged; None when there is no such file."""
        try:
            key = self.stamp(path)
        except OSError:
            return None
        if key is None:
            return None
        kept = self.kept.get(str(path))
        if kept is not None and kept[0] == key:
            return kept[1]
        value = self.read(path)
        self.kept[str(path)] = (key, value)
        return value

    def sweep(self, listed: set[str]) -> None:
        """Forget files no longer listed, once they outnumber those listed (deleted runs' entries go then)."""
        if len(self.kept) > 2 * len(listed) + 64:
            self.kept = {k: v for k, v in self.kept.items() if k in listed}


def _read_val_score(path: Path) -> tuple[float | None, str | None, int | None]:
    """(validation CIDEr, the decoding it was measured with: "greedy" or "beam", how many images), None where
    unrecorded."""
    try:
        val = read_metrics(path).get("val")
    except CheckpointError:
        return None, None, None
    val = val if isinstance(val, dict) else {}
    value, method, images = val.get("CIDEr"), val.get("method"), val.get("images")
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    counted = isinstance(images, int) and not isinstance(images, bool) and images > 0
    return (float(value) if number else None), (method[:20] if isinstance(method, str) else None), (
        images if counted else None)  # fmt: skip


_scores = _ByStat(_read_val_score)  # best.pt -> (CIDEr, method, images)
_statuses = _ByStat(lambda path: rundir.run_status(path))  # metrics.jsonl -> how its log ends
_formats = _ByStat(_detect, listing_stamp)  # dataset path -> its format, or None


def _status(run: rundir.RunDir) -> str | None:
    """RunDir.status, the log read only when it changed; None without a log."""
    status = _statuses(run.metrics)
    return rundir.INTERRUPTED if status == rundir.RUNNING and not run.locked() else status


def _listing(runs: Path | None) -> list[rundir.RunDir]:
    """The runs, newest first; the caches forget what is no longer among them."""
    found = list(map(rundir.RunDir, run_dirs(runs)))
    _scores.sweep({str(run.best) for run in found} | {str(default_checkpoint())})
    _statuses.sweep({str(run.metrics) for run in found})
    return found


def list_checkpoints(runs: Path | None = None) -> list[ModelEntry]:
    """The shipped default (when present) and every run with a `best.pt`, newest run first."""
    entries = []
    default = default_checkpoint()
    score = _scores(default)
    if score is not None:
        entries.append(ModelEntry("Shipped model", default, None, score[0], score_text(*score)))
    for run in _listing(runs):
        score = _scores(run.best)
        if score is not None:
            status = _status(run) or rundir.UNKNOWN
            label = run.name + ("" if status in (rundir.FINISHED, "unknown") else f" [{status}]")
            entries.append(ModelEntry(label, run.best, run.name, score[0], score_text(*score)))
    return entries


def list_runs(runs: Path | None = None) -> list[RunEntry]:
    """The shipped model's log (when present) and every run with a `metrics.jsonl`, newest first."""
    entries = []
    log = default_log()
    if log.is_file():
        entries.append(RunEntry("shipped model", log, rundir.run_status(log), default_checkpoint()))
    for run in _listing(runs):
        status = _status(run)
        if status is not None:
            entries.append(RunEntry(run.name, run.metrics, status, run.best))  # stat only when chosen: 1,000s of runs
    return entries


def score_text(cider: float | None, method: str | None = None, images: int | None = None) -> str:
    """ "val CIDEr 0.706 (60 images, greedy)": the images and the decoding, since scores on different images or
    decodings do not compare (Home decodes with beam 3 by default); "" without a score."""
    if cider is None:
        return ""
    how = ", ".join(x for x in (f"{images} images" if images else "", method or "") if x)
    return f"val CIDEr {cider:.3f}" + (f" ({how})" if how else "")


def is_app_run(run: rundir.RunDir) -> bool:
    """Whether the Fine-tune page started this run: only the app writes the trainer's output to `train.log`."""
    return run.train_log.is_file()


def prune_app_runs(runs_dir: Path, keep: int = KEEP_APP_RUNS, protect: Iterable[Path] = ()) -> list[str]:
    """Delete the app-started runs past the newest `keep` that ended (finished, stopped, early-stopped) and that no
    trainer holds; never a command-line run, a running, failed or interrupted one, nor one holding the default
    model or a path in `protect` (the base a new job starts from). Returns the names removed."""
    if keep < 0:
        raise ValueError(f"keep must be 0 or more (got {keep})")
    spared = [Path(p).resolve() for p in (default_checkpoint(), *protect)]
    app_runs = [run for run in map(rundir.RunDir, run_dirs(runs_dir)) if not run.path.is_symlink() and is_app_run(run)]
    removed = []
    for run in app_runs[keep:]:
        if run.status() not in rundir.ENDINGS or any(p.is_relative_to(run.path.resolve()) for p in spared):
            continue
        try:
            with rundir.RunLock(run):  # a `--resume` starting now is refused rather than losing its folder
                shutil.rmtree(run.path)
        except (rundir.RunLockedError, OSError):
            continue
        removed.append(run.name)
    return removed
