"""Bootstrap intervals and paired comparisons (`captioning.bootstrap`) on sets whose answer is known."""

import math

import numpy as np
import pytest

from captioning import bootstrap
from captioning.metrics import CaptionScores, score_captions

SUBJECTS = ["dog", "cat", "horse", "bus", "man", "pizza"]
REFERENCES = {
    i: [f"a {s} on the beach", f"a brown {s} near the sand", f"the {s} is close to the water"]
    for i, s in enumerate(SUBJECTS[k % 6] for k in range(120))
}


def scores_of(values: list[float]) -> CaptionScores:
    """Scores whose only metric is a per-image CIDEr (a mean metric), with the given values."""
    per_image = {i: {"CIDEr": v} for i, v in enumerate(values)}
    return CaptionScores({"CIDEr": float(np.mean(values))}, per_image, images=len(values))


def test_the_interval_of_a_mean_matches_the_normal_approximation():
    # 400 images scoring 0 or 1 half the time: the mean is 0.5 and its 95% interval +- 1.96 * sqrt(0.25 / 400)
    found = bootstrap.intervals(scores_of([0.0, 1.0] * 200))["CIDEr"]
    half = 1.96 * math.sqrt(0.25 / 400)
    assert found.value == 0.5 and found.low < 0.5 < found.high
    assert (found.high - found.low) / 2 == pytest.approx(half, rel=0.15)
    # a constant score has nothing to doubt; more images, a narrower interval
    assert bootstrap.intervals(scores_of([0.7] * 50))["CIDEr"].text() == "0.700 [0.700, 0.700]"
    wide = bootstrap.intervals(scores_of([0.0, 1.0] * 25))["CIDEr"]
    assert wide.high - wide.low > 2 * (found.high - found.low)


def test_the_same_seed_gives_the_same_interval_and_another_seed_nearly_the_same():
    values = list(np.random.default_rng(3).gamma(2.0, 0.4, size=300))
    first, again = (bootstrap.intervals(scores_of(values))["CIDEr"] for _ in range(2))
    other = bootstrap.intervals(scores_of(values), seed=1)["CIDEr"]
    assert first == again
    assert abs(other.low - first.low) < 0.02 and abs(other.high - first.high) < 0.02


def test_bleu_is_resampled_as_a_corpus_statistic_whose_full_sample_is_cocos():
    guesses = ["a dog on the beach", "a cat on a sofa", "a horse near the water", "a bus on the street"]
    predictions = {i: guesses[i % 4] for i in REFERENCES}
    scores = score_captions(predictions, REFERENCES, meteor=False)
    summed = np.array(list(scores.bleu_counts.values())).sum(axis=0)
    assert list(bootstrap.corpus_bleu(summed)) == pytest.approx([scores.corpus[f"BLEU-{n}"] for n in range(1, 5)])
    found = bootstrap.intervals(scores)
    assert set(found) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr"}
    for name, interval in found.items():
        assert interval.value == scores.corpus[name] and interval.low < interval.value < interval.high, name


def test_a_model_compared_with_itself_differs_by_zero():
    scores = scores_of(list(np.random.default_rng(0).uniform(0, 2, size=100)))
    same = bootstrap.compare(scores, scores)["CIDEr"]
    assert (same.delta.value, same.delta.low, same.delta.high) == (0.0, 0.0, 0.0)
    assert not same.shown and same.b_better == 0.0 and same.images_b_higher == same.images_a_higher == 0


def test_a_paired_difference_is_shown_where_separate_intervals_overlap():
    rng = np.random.default_rng(1)
    a_values = rng.uniform(0, 2, size=150)  # images differ a lot in difficulty...
    b_values = a_values + 0.05 + rng.normal(0, 0.02, size=150)  # ...and B is a little better on nearly every one
    a, b = scores_of(list(a_values)), scores_of(list(b_values))
    ia, ib = bootstrap.intervals(a)["CIDEr"], bootstrap.intervals(b)["CIDEr"]
    assert ib.low < ia.high  # apart, the two intervals overlap: they cannot tell
    found = bootstrap.compare(a, b)["CIDEr"]
    assert found.shown and found.delta.low > 0 and found.delta.value == pytest.approx(0.05, abs=0.01)
    assert found.b_better == 1.0 and found.images_b_higher > 140
    worse = bootstrap.compare(b, a)["CIDEr"]
    assert worse.shown and worse.delta.high < 0 and worse.b_better == 0.0


def test_comparing_models_scored_on_different_images_uses_the_shared_ones_or_refuses():
    a = scores_of([1.0] * 10)
    b = CaptionScores({"CIDEr": 1.0}, {i: {"CIDEr": 1.0} for i in range(5, 20)}, images=15)
    assert bootstrap.compare(a, b)["CIDEr"].images == 5
    with pytest.raises(ValueError, match="no scored image in common"):
        bootstrap.compare(a, CaptionScores({"CIDEr": 1.0}, {99: {"CIDEr": 1.0}}))
