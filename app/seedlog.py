"""Training logs: read a seed-style text log (`Epoch [1/3], Step [100/3236], Loss: 2.9812, Perplexity: 19.7101`)
into the step records the charts draw."""

from __future__ import annotations

import math
import re

from captioning import rundir

MAX_SEED_LOG = 50_000_000  # bytes of an uploaded text log that are read

SEED_LINE = re.compile(
    r"Epoch\s*\[(\d+)/(\d+)\],\s*Step\s*\[(\d+)/(\d+)\],\s*Loss:\s*([0-9.eE+-]+)"
    r"(?:,\s*Perplexity:\s*([0-9.eE+-]+))?"
)


def parse_seed_log(text: str) -> rundir.LogRead:
    """Step records from the seed's log lines.

    The global step counts across epochs as (epoch - first epoch) * steps_per_epoch + step, so
    logs that number epochs from 0 or from 1 both read right. A line whose numbers do not parse
    ("Loss: -", "Loss: 2.98.12", an infinite perplexity) is skipped and counted.
    """
    out = rundir.LogRead()
    matches = [m.groups() for m in SEED_LINE.finditer(text[:MAX_SEED_LOG])]
    first = min((int(m[0]) for m in matches), default=0)
    for epoch, _, step, per_epoch, loss, ppl in matches:
        try:
            loss_f = float(loss)
            ppl_f = float(ppl) if ppl else math.exp(min(loss_f, 50.0))
        except (ValueError, OverflowError):
            loss_f = ppl_f = math.nan
        if not (math.isfinite(loss_f) and math.isfinite(ppl_f)):  # unplottable, on a log scale above all
            out.skipped += 1
            continue
        record = {"kind": rundir.STEP, "epoch": int(epoch), "loss": loss_f, "perplexity": ppl_f}
        out.records.append({**record, "step": (int(epoch) - first) * int(per_epoch) + int(step)})
    return out
