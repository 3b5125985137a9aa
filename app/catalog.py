"""What the app can offer: the shipped model, every run's best checkpoint, every run's log, the COCO roots.

Locations come from the environment so a test or a deployment can point elsewhere:
CAPTIONING_CHECKPOINT (the default model), CAPTIONING_RUNS_DIR (run directories, default `runs/`),
CAPTIONING_DATA_DIR (where COCO roots live, default `data/`), COCO_ROOT (one more root), and the embedded
sample. The app reads data from these roots only: a browser can pick among them, never type a server path.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path

from captioning import rundir
from captioning.checkpoint import CheckpointError, default_checkpoint, load_checkpoint
from captioning.data import SAMPLE_ROOT
from captioning.io import read_json

PROJECT_ROOT = Path(__file__).resolve().parent.parent  # the app runs from its checkout
GET_A_MODEL = (
    "Train one with `python -m captioning train --coco-root data/coco --out runs/first` "
    "(get data first with `python -m captioning download --dest data/coco --split val2017 --limit 500`), "
    "or set `CAPTIONING_CHECKPOINT` to a checkpoint."
)


@dataclass(frozen=True)
class ModelEntry:
    """A checkpoint the app can caption with."""

    label: str
    path: Path
    run: str | None  # None for the shipped default
    cider: float | None


@dataclass(frozen=True)
class RunEntry:
    """A training log the app can plot."""

    name: str
    metrics: Path
    status: str  # "finished", "stopped", "early_stopped", "running" (or interrupted), "unknown"


def default_log(checkpoint: Path | None = None) -> Path:
    """The shipped model's training log, beside it: `default.pt` -> `default-metrics.jsonl`."""
    checkpoint = checkpoint or default_checkpoint()
    return checkpoint.with_name(f"{checkpoint.stem}-metrics.jsonl")


def data_dir() -> Path:
    """Where COCO roots live: $CAPTIONING_DATA_DIR or `data/` in the project."""
    return Path(os.environ.get("CAPTIONING_DATA_DIR") or PROJECT_ROOT / "data")


def _is_root(path: Path) -> bool:
    return path.is_dir() and any((path / "annotations").glob("captions_*.json"))


def coco_roots() -> list[Path]:
    """The COCO roots the app may read: $COCO_ROOT, then every root in the data folder (itself or a
    folder directly inside it, e.g. data/coco), then the embedded sample (the default when there is no other)."""
    found = []
    if os.environ.get("COCO_ROOT"):
        found.append(Path(os.environ["COCO_ROOT"]))
    data = data_dir()
    found += [data] + (sorted(p for p in data.iterdir() if not p.name.startswith(".")) if data.is_dir() else [])
    found.append(sample_root())
    roots: list[Path] = []
    for path in found:
        if _is_root(path) and path.resolve() not in {r.resolve() for r in roots}:
            roots.append(path)
    return roots


def sample_root() -> Path:
    """The embedded COCO sample, shipped inside the package ($CAPTIONING_SAMPLE_DIR overrides it, for tests)."""
    return Path(os.environ.get("CAPTIONING_SAMPLE_DIR") or SAMPLE_ROOT)


def is_sample(root: Path | str) -> bool:
    try:
        return Path(root).resolve() == sample_root().resolve()
    except OSError:
        return False


def root_label(root: Path | str) -> str:
    """How the Dataset box names a root: the embedded sample by name, others by path."""
    return "Embedded COCO sample (150 train, 60 val)" if is_sample(root) else str(root)


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
    """Run directories under `runs`, newest first (hidden names are skipped)."""
    runs = Path(runs or runs_dir())
    if not runs.is_dir():
        return []
    dirs = [d for d in runs.iterdir() if d.is_dir() and not d.name.startswith(".")]
    return sorted(dirs, key=lambda d: d.stat().st_mtime, reverse=True)


def _val_score(path: Path) -> tuple[float | None, str | None]:
    """(validation CIDEr, the decoding it was measured with: "greedy" or "beam"), None where unrecorded."""
    try:
        return _read_val_score(str(path), path.stat().st_mtime_ns)
    except OSError:
        return None, None


@functools.lru_cache(maxsize=256)
def _read_val_score(path: str, mtime_ns: int) -> tuple[float | None, str | None]:  # a rewritten file is re-read
    try:
        ckpt = load_checkpoint(Path(path))
    except CheckpointError:
        return None, None
    val = ckpt.get("metrics", {}).get("val")
    val = val if isinstance(val, dict) else {}
    value, method = val.get("CIDEr"), val.get("method")
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return (float(value) if number else None), (method[:20] if isinstance(method, str) else None)


def list_checkpoints(runs: Path | None = None) -> list[ModelEntry]:
    """The shipped default (when present) and every run with a `best.pt`, newest run first."""
    entries = []
    default = default_checkpoint()
    if default.is_file():
        cider, method = _val_score(default)
        entries.append(ModelEntry(_label("Shipped model", cider, method), default, None, cider))
    for run in map(rundir.RunDir, run_dirs(runs)):
        if run.best.is_file():
            cider, method = _val_score(run.best)
            status = run.status()
            label = _label(run.name, cider, method) + ("" if status in (rundir.FINISHED, "unknown") else f" [{status}]")
            entries.append(ModelEntry(label, run.best, run.name, cider))
    return entries


def list_runs(runs: Path | None = None) -> list[RunEntry]:
    """The shipped model's log (when present) and every run with a `metrics.jsonl`, newest first."""
    entries = []
    log = default_log()
    if log.is_file():
        entries.append(RunEntry("shipped model", log, rundir.run_status(log)))
    for run in map(rundir.RunDir, run_dirs(runs)):
        if run.metrics.is_file():
            entries.append(RunEntry(run.name, run.metrics, run.status()))
    return entries


def _label(name: str, cider: float | None, method: str | None = None) -> str:
    """ "run (val CIDEr 0.706, greedy)": the decoding matters, since Home decodes with beam 3 by default."""
    if cider is None:
        return name
    return f"{name} (val CIDEr {cider:.3f}, {method})" if method else f"{name} (val CIDEr {cider:.3f})"
