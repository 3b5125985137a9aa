"""How sure a score is: bootstrap intervals over images, and paired comparisons of two models on the same images.

A corpus score on 250 images moves by several CIDEr points when other images are drawn; a difference between two
models only means something when it holds across such draws. Both are measured by resampling the images with
replacement (`RESAMPLES` draws, seeded, so a rerun prints the same numbers) and recomputing each metric on every
draw from per-image statistics that the metric implementations themselves produced (`metrics.score_captions`):

- CIDEr, ROUGE-L and METEOR are means of their per-image scores. CIDEr's document frequencies stay those of the
  scored reference set (or `--cider-df`'s split) on every draw, as when one scores a different sample.
- BLEU is a corpus statistic, not a mean: each draw sums the images' clipped n-gram matches, n-gram counts and
  lengths (pycocoevalcap's own counts) and applies BLEU's formula to the sums, so the full-sample value is exactly
  COCO's corpus BLEU.

A paired comparison applies the same draws to both models, so what the two share (hard images, easy ones) cancels:
the interval of the difference B - A is far narrower than the two separate intervals suggest.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from captioning.metrics import CaptionScores

RESAMPLES = 1000  # draws: the interval ends move by well under 0.005 CIDEr between seeds at this count
LEVEL = 0.95
SEED = 0
_CHUNK = 100  # draws held in memory at once: 100 x images weights (a few MB on full COCO val)


@dataclass(frozen=True)
class Interval:
    value: float  # the full-sample statistic
    low: float
    high: float

    def text(self, digits: int = 3) -> str:
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


@dataclass(frozen=True)
class Difference:
    """B - A on the same images."""

    delta: Interval
    b_better: float  # share of draws in which B scores higher
    images_b_higher: int  # images whose own score is higher with B (where the metric has per-image scores)
    images_a_higher: int
    images: int

    @property
    def shown(self) -> bool:
        """Whether the interval excludes zero: a difference the images support."""
        return self.delta.low > 0 or self.delta.high < 0


def corpus_bleu(counts: np.ndarray) -> np.ndarray:
    """BLEU-1..4 from summed counts (..., 10): testlen, reflen, guessed 1..4-grams, correct 1..4-grams; the same
    arithmetic as pycocoevalcap's BleuScorer, including its smoothing constants and brevity penalty."""
    tiny, small = 1e-15, 1e-9
    testlen, reflen = counts[..., 0], counts[..., 1]
    guess, correct = counts[..., 2:6], counts[..., 6:10]
    logs = np.cumsum(np.log((correct + tiny) / (guess + small)), axis=-1)
    bleu = np.exp(logs / np.arange(1, 5))
    ratio = (testlen + tiny) / (reflen + small)
    penalty = np.where(ratio < 1, np.exp(1 - 1 / np.minimum(ratio, 1)), 1.0)
    return bleu * penalty[..., None]


def _draws(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Weights (draws, n): how often each image is drawn, `_CHUNK` draws at a time."""
    rng = np.random.default_rng(seed)
    for start in range(0, resamples, _CHUNK):
        yield rng.multinomial(n, np.full(n, 1 / n), size=min(_CHUNK, resamples - start)).astype(np.float64)


def _statistic(scores: CaptionScores, ids: list[int], name: str, weights: np.ndarray) -> np.ndarray:
    """The metric `name` on each draw (weights (draws, n) over `ids`)."""
    if name.startswith("BLEU-"):
        counts = np.array([scores.bleu_counts[i] for i in ids], dtype=np.float64)
        return corpus_bleu(weights @ counts)[:, int(name[-1]) - 1]
    values = np.array([scores.per_image[i][name] for i in ids], dtype=np.float64)
    return weights @ values / len(ids)


def _bounds(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def intervals(
    scores: CaptionScores, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = SEED
) -> dict[str, Interval]:
    """Each corpus metric of `scores` with its bootstrap interval over the scored images."""
    ids = list(scores.per_image)
    names = list(scores.corpus)
    if not ids:
        return {}
    stats = {name: [] for name in names}
    for weights in _draws(len(ids), resamples, seed):
        for name in names:
            stats[name].append(_statistic(scores, ids, name, weights))
    return {name: Interval(scores.corpus[name], *_bounds(np.concatenate(stats[name]), level)) for name in names}


def compare(
    a: CaptionScores, b: CaptionScores, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = SEED
) -> dict[str, Difference]:
    """Paired bootstrap of B - A for each metric both have, over the images both scored."""
    ids = [i for i in a.per_image if i in b.per_image]
    if not ids:
        raise ValueError("the two models have no scored image in common")
    names = [n for n in a.corpus if n in b.corpus]
    deltas = {name: [] for name in names}
    for weights in _draws(len(ids), resamples, seed):
        for name in names:
            deltas[name].append(_statistic(b, ids, name, weights) - _statistic(a, ids, name, weights))
    full = np.ones((1, len(ids)))
    out = {}
    for name in names:
        drawn = np.concatenate(deltas[name])
        point = float((_statistic(b, ids, name, full) - _statistic(a, ids, name, full))[0])
        per_a = np.array([a.per_image[i][name] for i in ids])
        per_b = np.array([b.per_image[i][name] for i in ids])
        out[name] = Difference(
            Interval(point, *_bounds(drawn, level)),
            float(np.mean(drawn > 0)),
            int(np.sum(per_b > per_a + 1e-12)),
            int(np.sum(per_a > per_b + 1e-12)),
            len(ids),
        )
    return out
