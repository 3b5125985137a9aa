"""Tests for captioning.metrics: COCO caption scores through pycocoevalcap.

METEOR's Java start-up (~10 s) happens once, in the module-scoped `mixed` fixture.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from captioning import metrics
from captioning.metrics import (
    METRIC_NAMES,
    CaptionScores,
    java_available,
    score_captions,
)

needs_java = pytest.mark.skipif(not java_available(), reason="needs Java (PTB, METEOR)")

SCENES = [
    ("brown dog", "running", "on the beach"),
    ("black cat", "sleeping", "on a laptop"),
    ("young man", "riding a skateboard", "down a street"),
    ("woman", "holding an umbrella", "in the rain"),
    ("little girl", "eating a slice of pizza", "at a table"),
    ("red bus", "driving", "past a tall building"),
    ("giraffe", "eating leaves", "near a tree"),
    ("surfer", "riding a wave", "in the ocean"),
    ("baseball player", "swinging a bat", "on a field"),
    ("white horse", "grazing", "in a green pasture"),
    ("small bird", "perched", "on a wooden fence"),
    ("skier", "going down", "a snowy hill"),
    ("man", "flying a kite", "in a park"),
    ("elephant", "walking", "through tall grass"),
    ("boy", "playing frisbee", "on the lawn"),
    ("train", "pulling into", "a station"),
    ("chef", "cooking food", "in a kitchen"),
    ("teddy bear", "sitting", "on a bed"),
    ("motorcycle", "parked", "beside a curb"),
    ("tennis player", "hitting a ball", "on a court"),
]
# Capitals, punctuation and contractions, so tokenization matters as it does on COCO.
TEMPLATES = [
    "A {s} {a} {p}.",
    "The {s} is {a} {p}.",
    "a {s} that's {a} {p}",
    "There is a {s}, {a} {p}!",
    "A photo of the {s} {a} {p} (outdoors).",
]
REFERENCES = {i: [t.format(s=s, a=a, p=p) for t in TEMPLATES] for i, (s, a, p) in enumerate(SCENES)}
GOOD = {i: refs[0] for i, refs in REFERENCES.items()}  # exactly one of the references
BAD = {i: GOOD[(i + 10) % len(GOOD)] for i in GOOD}  # another image's caption
GOOD_IDS, BAD_IDS = range(10), range(10, 20)
MIXED = {i: GOOD[i] if i in GOOD_IDS else BAD[i] for i in GOOD}


def meteor_children() -> list[str]:
    """Command lines of this process's child processes that run METEOR."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ")
        except (OSError, IndexError, ValueError):  # the process ended meanwhile
            continue
        if parent == os.getpid() and b"meteor" in cmdline.lower():
            found.append(cmdline.decode(errors="replace"))
    return found


@pytest.fixture(scope="module")
def mixed() -> CaptionScores:
    """All metrics, METEOR included, for 10 right and 10 wrong captions."""
    if not java_available():
        pytest.skip("needs Java (PTB, METEOR)")
    return score_captions(MIXED, REFERENCES)


@pytest.fixture(scope="module")
def good() -> CaptionScores:
    return score_captions(GOOD, REFERENCES, meteor=False)


@needs_java
def test_every_metric_is_reported_for_every_image(mixed: CaptionScores) -> None:
    assert list(mixed.corpus) == list(METRIC_NAMES)
    assert mixed.notes == []
    assert mixed.images == 20
    assert set(mixed.per_image) == set(REFERENCES)
    assert all(list(s) == list(METRIC_NAMES) for s in mixed.per_image.values())


@needs_java
def test_matching_caption_beats_unrelated_caption_on_every_metric(
    mixed: CaptionScores,
) -> None:
    for name in METRIC_NAMES:
        worst_good = min(mixed.per_image[i][name] for i in GOOD_IDS)
        best_bad = max(mixed.per_image[i][name] for i in BAD_IDS)
        assert worst_good > best_bad, name


def test_matching_captions_beat_unrelated_ones_on_the_corpus(
    good: CaptionScores,
) -> None:
    bad = score_captions(BAD, REFERENCES, meteor=False)
    for name in good.corpus:
        assert good.corpus[name] > bad.corpus[name], name


@needs_java
def test_scores_are_fractions_not_percentages(mixed: CaptionScores, good: CaptionScores) -> None:
    for scores in [mixed.corpus, *mixed.per_image.values()]:
        for name in METRIC_NAMES[:-1]:  # all but CIDEr lie in [0, 1]
            assert 0.0 <= scores[name] <= 1.0, name
        assert 0.0 <= scores["CIDEr"] <= 10.0
    assert good.corpus["BLEU-4"] == pytest.approx(1.0)
    assert 1.0 < good.corpus["CIDEr"] < 10.0


@needs_java
def test_corpus_cider_and_rouge_are_means_of_per_image_scores(
    mixed: CaptionScores,
) -> None:
    for name in ["CIDEr", "ROUGE-L"]:
        per_image = [s[name] for s in mixed.per_image.values()]
        assert mixed.corpus[name] == pytest.approx(sum(per_image) / len(per_image))


@needs_java
def test_no_meteor_process_is_left_running(mixed: CaptionScores) -> None:
    assert "METEOR" in mixed.corpus
    assert meteor_children() == []


def test_prediction_without_references_names_the_image() -> None:
    with pytest.raises(ValueError, match="17"):
        score_captions({0: "a dog", 17: "a cat"}, {0: ["a dog runs"], 17: []})
    with pytest.raises(ValueError, match="99"):
        score_captions({99: "a cat"}, REFERENCES)


def test_empty_prediction_scores_zero_without_crashing() -> None:
    scores = score_captions({0: ""}, REFERENCES, meteor=False)
    assert scores.corpus["BLEU-1"] == pytest.approx(0.0, abs=1e-6)
    assert scores.corpus["CIDEr"] == 0.0


def test_without_java_meteor_is_skipped_with_a_note(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no java on it
    assert not java_available()
    scores = score_captions(GOOD, REFERENCES)
    assert list(scores.corpus) == [n for n in METRIC_NAMES if n != "METEOR"]
    assert all("METEOR" not in s for s in scores.per_image.values())
    assert any("METEOR skipped" in n and "Java" in n for n in scores.notes)
    assert any("tokenized by a Python" in n for n in scores.notes)
    assert scores.corpus["CIDEr"] > 1.0


@needs_java
def test_python_tokenizer_gives_the_java_scores(
    monkeypatch: pytest.MonkeyPatch, good: CaptionScores, mixed: CaptionScores
) -> None:
    monkeypatch.setattr(metrics, "java_available", lambda: False)
    for predictions, with_java in [(GOOD, good), (MIXED, mixed)]:
        without = score_captions(predictions, REFERENCES, meteor=False)
        for name, value in without.corpus.items():
            assert value == pytest.approx(with_java.corpus[name], rel=1e-9), name


TRICKY = {
    1: ["A man's dog, running (fast) on the beach.", "", 'Two black-and-white cats don\'t sit; "quietly" -- at 3.5!'],
    2: ["The kids' toys & a U.S. flag... isn't it? 10,000 e-mails/day", "Caf\u00e9 na\u00efve \u2014 \u00fcber"],
}


@needs_java
def test_java_tokenizer_matches_pycocoevalcap_and_keeps_quiet(capfd: pytest.CaptureFixture[str]) -> None:
    notes: list[str] = []
    ours = metrics._tokenize(TRICKY, java=True, notes=notes)
    assert notes == [] and capfd.readouterr().err == ""  # no "PTBTokenizer tokenized N tokens" per call
    official = PTBTokenizer().tokenize({k: [{"caption": c} for c in caps] for k, caps in TRICKY.items()})
    assert ours == official
    assert ours[1][0] == "a man 's dog running -lrb- fast -rrb- on the beach" and ours[1][1] == ""


@needs_java
def test_a_failing_java_tokenizer_falls_back_with_a_note(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(metrics, "_PTB_JAR", tmp_path / "missing.jar")
    notes: list[str] = []
    tokens = metrics._tokenize({1: ["A dog, on the beach."]}, java=True, notes=notes)
    assert tokens == {1: ["a dog on the beach"]}
    assert len(notes) == 1 and notes[0].startswith("The PTB tokenizer failed (exit status 1")


@needs_java
def test_meteor_false_skips_it_silently(good: CaptionScores) -> None:
    assert "METEOR" not in good.corpus
    assert good.notes == []


@needs_java
def test_meteor_failure_is_noted_and_other_metrics_survive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def crash_then_score(self: Meteor, gts: dict, res: dict) -> tuple:
        self.meteor_p.kill()  # as if Java died mid-run
        self.meteor_p.wait()
        return Meteor.compute_score(self, gts, res)

    monkeypatch.setattr(metrics._Meteor, "compute_score", crash_then_score)
    scores = score_captions(GOOD, REFERENCES)
    assert "METEOR" not in scores.corpus
    assert any(n.startswith("METEOR failed") for n in scores.notes)
    assert {"BLEU-4", "ROUGE-L", "CIDEr"} <= set(scores.corpus)
    assert meteor_children() == []


def test_single_image_gets_its_whole_split_cider_from_idf_references(
    good: CaptionScores,
) -> None:
    alone = score_captions({3: GOOD[3]}, REFERENCES, meteor=False)
    assert alone.corpus["CIDEr"] == 0.0  # one image: every n-gram has idf log(1/1)
    page = {i: GOOD[i] for i in (3, 4, 5)}
    paged = score_captions(page, REFERENCES, meteor=False, idf_references=REFERENCES)
    for i in page:
        assert paged.per_image[i]["CIDEr"] > 1.0
        assert paged.per_image[i]["CIDEr"] == pytest.approx(good.per_image[i]["CIDEr"])


def test_idf_references_equal_to_references_change_nothing(good: CaptionScores) -> None:
    again = score_captions(GOOD, REFERENCES, meteor=False, idf_references=REFERENCES)
    assert again.corpus == pytest.approx(good.corpus)
    assert again.per_image[7] == pytest.approx(good.per_image[7])


def test_image_outside_idf_references_still_scores() -> None:
    others = {i: refs for i, refs in REFERENCES.items() if i != 0}
    scores = score_captions({0: GOOD[0]}, REFERENCES, meteor=False, idf_references=others)
    assert math.isfinite(scores.corpus["CIDEr"])
    assert scores.corpus["CIDEr"] > 1.0
