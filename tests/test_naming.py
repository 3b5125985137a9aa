"""Naming a subject the vocabulary lacks: a confident ImageNet class ("lion") becomes the caption's subject."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from app_fixtures import open_page, point_app
from conftest import REPO

from captioning import naming
from captioning.concepts import imagenet_labels
from captioning.data import SAMPLE_ROOT, CocoSplit, load_image

LABELS = imagenet_labels()
LION, MINIBUS, PARACHUTE, TABBY = (LABELS.index(n) for n in ("lion", "minibus", "parachute", "tabby"))


def _probs(top: int, p: float) -> list[float]:
    probs = [(1 - p) / 999] * 1000
    probs[top] = p
    return probs


@pytest.mark.parametrize(
    ("caption", "subject"),
    [
        ("a group of people sitting on a table .", "a group of people"),
        ("a woman is sitting on a cell phone .", "a woman"),
        ("a large clock tower on a city street .", "a large clock tower"),
        ("a close up of a cat on a bed .", "a close up of a cat"),
        ("two dogs playing in the grass .", "two dogs"),
        ("people walking down a street .", None),  # no determiner: no clear subject
    ],
)
def test_the_subject_is_the_first_noun_phrase(caption, subject):
    words = caption.split()
    span = naming.subject_span(words)
    assert (" ".join(words[span[0] : span[1]]) if span else None) == subject


def test_a_confident_class_the_vocabulary_lacks_replaces_the_subject():
    words = "a group of people sitting on a table .".split()
    known = frozenset(words) | {"cat", "cats", "bus", "kite"}
    found = naming.novel_subject(words, _probs(LION, 0.89), LABELS, known)
    assert found is not None and found.words == ("a", "lion") and found.label == "lion"
    assert " ".join(naming.apply(words, found, *found.words)) == "a lion sitting on a table ."
    assert naming.novel_subject(words, _probs(LION, 0.3), LABELS, known) is None  # not confident
    unicycle = naming.novel_subject(words, _probs(LABELS.index("unicycle"), 0.9), LABELS, known)
    assert unicycle.words == ("a", "unicycle")  # "a", not "an", before a "you" sound
    assert naming.novel_subject(words, _probs(TABBY, 0.9), LABELS, known | {"tabby"}) is None  # the decoder knows it
    said_bus = "a group of people standing on a bus .".split()
    assert naming.novel_subject(said_bus, _probs(MINIBUS, 0.8), LABELS, known) is None  # "minibus" ends in "bus"
    kite = "a man flying a kite in a field .".split()
    assert naming.novel_subject(kite, _probs(PARACHUTE, 0.8), LABELS, known) is not None
    related = {str(PARACHUTE): ["kite", "sky"]}  # learned from train: a parachute class means a kite caption
    assert naming.novel_subject(kite, _probs(PARACHUTE, 0.8), LABELS, known, related) is None
    kites = "people flying kites on a beach .".split()
    assert naming.novel_subject(["a", *kites], _probs(PARACHUTE, 0.8), LABELS, known, related) is None  # plural


def test_class_nouns_are_single_words_of_letters():
    nouns = naming.class_nouns(LABELS)
    assert nouns[LABELS.index("fox squirrel")] == "squirrel" and nouns[LION] == "lion"
    assert nouns[LABELS.index("Pekinese")] == nouns[LABELS.index("Chihuahua")] == "dog"
    assert nouns[LABELS.index("hen-of-the-woods")] == ""


def test_captioner_names_the_subject_and_keeps_words_probabilities_and_attention_aligned(tiny_checkpoint):
    from captioning.inference import Caption, Captioner

    captioner = Captioner.from_checkpoint(tiny_checkpoint, device="cpu")
    words = "a group of people sitting on a table .".split()
    maps = [torch.full((7, 7), float(i)) for i in range(len(words))]
    cap = Caption("A group of people sitting on a table.", words, [0.5] * len(words), -3.0, -0.4, attention=maps)
    named = captioner._name_novel(cap, _probs(LION, 0.9))
    assert named.text == "A lion sitting on a table." and named.named == ("lion", pytest.approx(0.9))
    assert named.words == ["a", "lion", "sitting", "on", "a", "table", "."]
    assert named.word_probs == [0.5, pytest.approx(0.9), 0.5, 0.5, 0.5, 0.5, 0.5]
    assert [float(m[0, 0]) for m in named.attention] == [0, 3, 4, 5, 6, 7, 8]  # the noun keeps the head's map
    assert captioner._name_novel(cap, _probs(LION, 0.2)) is cap


def test_home_offers_the_option_and_the_cli_reports_the_named_class(tiny_checkpoint, monkeypatch, tmp_path):
    point_app(monkeypatch, tmp_path, checkpoint=tiny_checkpoint)
    at = open_page("home")
    box = next(c for c in at.checkbox if c.label == "Name what the vocabulary lacks")
    assert box.value is True and not at.exception
    path = tmp_path / "photo.jpg"
    split = CocoSplit.load(SAMPLE_ROOT, "val")
    load_image(split.files[split.ids[1]]).save(path)
    result = subprocess.run([sys.executable, "-m", "captioning", "caption", str(path), "--json", "--name-novel"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    row = json.loads(result.stdout)[0]
    assert "named" in row and (row["named"] is None or row["named"]["label"] in LABELS)
