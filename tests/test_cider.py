"""`captioning.cider`: the CIDEr-D training reward matches the COCO scorer; document frequencies load and save."""

from __future__ import annotations

import pytest
from fixtures import REFS
from pycocoevalcap.cider.cider import Cider

from captioning import cider
from captioning.cider import CiderD


def test_cider_d_matches_the_coco_scorer():
    ours = CiderD({i: [c.split() for c in caps] for i, caps in REFS.items()})
    candidates = {1: "a man riding a wave", 2: "a plate of rice and broccoli on a table", 3: "a dog on the grass"}
    _, theirs = Cider().compute_score(REFS, {i: [c] for i, c in candidates.items()})
    for (i, caption), expected in zip(candidates.items(), theirs):
        assert ours.score(i, caption.split()) == pytest.approx(expected, rel=1e-9)


def test_document_frequencies_leave_out_singletons_without_changing_a_score(tmp_path):
    refs = {1: ["a dog runs on the grass", "a brown dog running"], 2: ["a cat on a sofa", "a dog and a cat"],
            3: ["two dogs play on the grass", "dogs playing outside"]}  # fmt: skip
    full = cider.CiderD.from_captions(refs)
    df = full.df
    assert "dog" in df.counts and "brown" not in df.counts  # "brown" is in one image's references only
    df.save(tmp_path / "df.json")
    again = cider.CiderD.from_captions(refs, cider.DocumentFrequencies.load(tmp_path / "df.json"))
    for image_id in refs:
        words = cider.words_for_reward("a brown dog on the grass".split())
        assert again.score(image_id, words) == full.score(image_id, words)
