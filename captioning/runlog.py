"""Run logs: `metrics.jsonl` (one JSON object per line) and the seed project's plain-text lines.

Step records:  {"kind": "step", "step", "epoch", "loss", "perplexity", "lr", "elapsed", "images_per_s"}
Epoch records: {"kind": "epoch", "step", "epoch", "val_loss", "val_perplexity", "BLEU-4", "CIDEr", ...}
Event records: {"kind": "event", "step", "event": "start" | "resume" | "stopped" | "finished" | ...}
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from captioning.io import atomic_write_text

SEED_LINE = re.compile(
    r"Epoch\s*\[(\d+)/(\d+)\],\s*Step\s*\[(\d+)/(\d+)\],\s*Loss:\s*([0-9.eE+-]+)"
    r"(?:,\s*Perplexity:\s*([0-9.eE+-]+))?"
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
                "kind": "step",
                "epoch": int(epoch),
                "step": (int(epoch) - first) * int(per_epoch) + int(step),
                "loss": loss_f,
                "perplexity": float(ppl) if ppl else math.exp(min(loss_f, 50.0)),
            }
        )
    return records
