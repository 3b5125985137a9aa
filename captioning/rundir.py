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

import json
import math
import re
import shlex
from pathlib import Path

from captioning.io import atomic_write_text

CONFIG, VOCAB, METRICS, LAST, BEST, TRAIN_LOG = (
    "config.json",
    "vocab.json",
    "metrics.jsonl",
    "last.pt",
    "best.pt",
    "train.log",
)
STEP, EPOCH, EVENT = "step", "epoch", "event"  # record kinds
START, RESUME, SCST_START = "start", "resume", "scst_start"
FINISHED, STOPPED, EARLY_STOPPED = "finished", "stopped", "early_stopped"
ENDINGS = (FINISHED, STOPPED, EARLY_STOPPED)  # the events a run's log ends with
EVENTS = (START, RESUME, SCST_START, *ENDINGS)

SEED_LINE = re.compile(
    r"Epoch\s*\[(\d+)/(\d+)\],\s*Step\s*\[(\d+)/(\d+)\],\s*Loss:\s*([0-9.eE+-]+)"
    r"(?:,\s*Perplexity:\s*([0-9.eE+-]+))?"
)


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

    def status(self) -> str:
        """How the run's log ends (see `run_status`)."""
        return run_status(self.metrics)


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

    def truncate_after(self, step: int) -> None:
        """Drop records past `step` (logged after the checkpoint a resumed run starts from)."""
        records = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in records))


def read_metrics(path: Path) -> list[dict]:
    """Records of a metrics.jsonl; a half-written last line (a live run) is ignored."""
    records = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def run_status(metrics: Path) -> str:
    """How a run's log ends: an ending event's name, "running" when none yet, "unknown" without a log."""
    events = [r.get("event") for r in read_metrics(metrics) if r.get("kind") == EVENT]
    if not events:
        return "unknown"
    return events[-1] if events[-1] in ENDINGS else "running"


def parse_seed_log(text: str) -> list[dict]:
    """Step records from lines like `Epoch [1/3], Step [100/3236], Loss: 2.9812, Perplexity: 19.7101`.

    The global step counts across epochs as (epoch - first epoch) * steps_per_epoch + step, so
    logs that number epochs from 0 or from 1 both read right.
    """
    matches = [m.groups() for m in SEED_LINE.finditer(text)]
    first = min((int(m[0]) for m in matches), default=0)
    records = []
    for epoch, _, step, per_epoch, loss, ppl in matches:
        loss_f = float(loss)
        records.append(
            {
                "kind": STEP,
                "epoch": int(epoch),
                "step": (int(epoch) - first) * int(per_epoch) + int(step),
                "loss": loss_f,
                "perplexity": float(ppl) if ppl else math.exp(min(loss_f, 50.0)),
            }
        )
    return records
