"""Comparing runs fairly on Training logs: what each run's own validation scores were measured on, and scoring
several models on the same images with intervals and paired differences (`captioning.bootstrap`)."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from captioning import bootstrap
from captioning.config import DecodeConfig
from captioning.data import CocoSplit
from captioning.evaluate import caption_split
from captioning.inference import Captioner
from captioning.metrics import CaptionScores, score_captions

MAX_IMAGES = 250  # a visitor's comparison: at most this many images a model, at most MAX_MODELS models
MAX_MODELS = 4
SAME_IMAGES_HELP = (
    "Each model captions the same images with the same decoding; each score has its 95% bootstrap interval over "
    "the images, and the difference from the first model is paired: the same draws of images for both, so it is "
    "shown (the interval excludes 0) more often than the two separate intervals suggest."
)


def measured_on(records: list[dict]) -> str | None:
    """How a run's last validation score was measured ("250 images, beam"), None without one."""
    scored = [r for r in records if r.get("kind") == "epoch" and "CIDEr" in r]
    if not scored:
        return None
    last = scored[-1]
    images, method = last.get("images"), last.get("method")
    parts = [f"{images} images" if isinstance(images, int) and not isinstance(images, bool) else "images unrecorded"]
    parts += [method[:20]] if isinstance(method, str) else []
    return ", ".join(parts)


def different_measures(runs: dict[str, list[dict]]) -> str | None:
    """A sentence when the runs' validation scores were measured on different image counts or decodings (they do
    not compare), None when they agree or there is at most one."""
    measures = {name: m for name, records in runs.items() if (m := measured_on(records))}
    if len(set(measures.values())) < 2:
        return None
    each = "; ".join(f"{name}: {m}" for name, m in measures.items())
    return (
        f"These validation scores were measured differently ({each}), so they do not compare. Score the runs on "
        "the same images below."
    )


def score_models(
    models: dict[str, Captioner],
    split: CocoSplit,
    ids: list[int],
    decoding: DecodeConfig,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, CaptionScores]:
    """Caption `ids` with every model (same decoding) and score each on the images all of them captioned."""
    captions = {}
    for name, model in models.items():
        report = (lambda done, total, name=name: on_progress(name, done, total)) if on_progress else None
        captions[name] = caption_split(model, split, ids, decoding, on_batch=report)
    shared = [i for i in ids if all(i in c for c in captions.values())]
    if not shared:
        raise ValueError("no image of the split could be read and captioned")
    references = {i: split.captions[i] for i in shared}
    return {name: score_captions({i: c[i] for i in shared}, references, meteor=False) for name, c in captions.items()}


def comparison_frame(scored: dict[str, CaptionScores], resamples: int = bootstrap.RESAMPLES) -> pd.DataFrame:
    """A row per model: CIDEr and BLEU-4 with their intervals; from the second row on, the paired difference in
    CIDEr from the first model, how often it is higher over the draws, and what that means."""
    names = list(scored)
    first = scored[names[0]]
    rows = []
    for name in names:
        found = bootstrap.intervals(scored[name], resamples)
        row = {
            "model": name,
            "images": scored[name].images,
            "CIDEr [95% interval]": found["CIDEr"].text(),
            "BLEU-4 [95% interval]": found["BLEU-4"].text(),
        }
        if name == names[0]:
            row |= {f"CIDEr minus {names[0]}": "", "higher in": "", "verdict": "the reference"}
        else:
            d = bootstrap.compare(first, scored[name], resamples)["CIDEr"]
            verdict = ("better" if d.delta.value > 0 else "worse") if d.shown else "no difference shown"
            row |= {
                f"CIDEr minus {names[0]}": d.delta.text(),
                "higher in": f"{100 * d.b_better:.0f}% of draws",
                "verdict": verdict,
            }
        rows.append(row)
    return pd.DataFrame(rows)
