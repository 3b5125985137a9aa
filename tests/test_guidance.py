"""Guided decoding: a class-to-words map learned from captions, and decoding that names a confident class."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import REPO

from captioning.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, save_checkpoint
from captioning.config import DecodeConfig
from captioning.data import CocoSplit
from captioning.decoding import decode
from captioning.features import ExtractOptions, build_cache
from captioning.guidance import guide_bonus, learn_concept_words
from captioning.vocab import Vocabulary

GREEDY = DecodeConfig(method="greedy")


def test_the_map_holds_the_words_a_class_stands_for_and_not_function_words():
    captions = [["a cup of coffee on a table"]] * 10 + [["a dog on the grass"]] * 10 + [["a cat on a bed"]] * 40
    vocab = Vocabulary.build([c for caps in captions for c in caps], 1)
    probs = torch.zeros(60, 1000)
    probs[:10, 967] = 0.9  # espresso: the coffee images
    probs[10:20, 207] = 0.8  # golden retriever: the dog images
    probs[40:, 281] = 0.05  # tabby: too little mass over the split to learn from
    probs[:, 0] = 1 - probs.sum(1)
    words = learn_concept_words(probs, captions, vocab)
    assert set(words["967"]) >= {"coffee", "cup"} and not set(words["967"]) & {"a", "of", "on"}
    assert "dog" in words["207"] and "281" not in words
    bonus, targets = guide_bonus(probs[[0, 15, 45]], words, vocab)  # a coffee, a dog and a cat image
    assert targets[0] and targets[1] and targets[2] == []  # the tabby image is not confident
    assert float(bonus[0, vocab.stoi["coffee"]]) > 0 and float(bonus[2].abs().sum()) == 0


def _tiny(tiny_checkpoint, tiny_coco, tiny_cache_dir):
    model, vocab = model_from_checkpoint(load_checkpoint(tiny_checkpoint), with_backbone=False)
    split = CocoSplit.load(tiny_coco, "val")
    store = build_cache(
        split,
        "efficientnet_lite0",
        "pooled",
        1,
        ExtractOptions(cache_dir=tiny_cache_dir, progress=False, num_workers=0),
    )
    return model.decoder.eval(), vocab, store.get(split.ids[:3])


def test_guidance_makes_the_caption_say_a_target_word_once(tiny_checkpoint, tiny_coco, tiny_cache_dir):
    decoder, vocab, feats = _tiny(tiny_checkpoint, tiny_coco, tiny_cache_dir)
    plain = [h[0].ids for h in decode(decoder, feats, vocab, GREEDY)]
    target = next(
        w for w in ("circle", "square", "blue", "red", "green", "yellow") if all(vocab.stoi[w] not in p for p in plain)
    )
    bonus = torch.zeros(3, len(vocab))
    bonus[:, vocab.stoi[target]] = 8.0
    guide = (bonus, [[vocab.stoi[target]]] * 3)
    for method in ("greedy", "beam"):
        guided = decode(decoder, feats, vocab, DecodeConfig(method=method), guide)
        assert all(h[0].ids.count(vocab.stoi[target]) == 1 for h in guided), [h[0].text for h in guided]
        assert all(abs(sum(h[0].word_probs)) > 0 for h in guided)
    greedy = [h[0].ids for h in decode(decoder, feats, vocab, GREEDY, guide)]
    assert greedy == [h[0].ids for h in decode(decoder, feats, vocab, DecodeConfig(beam_size=1), guide)]
    unguided = (torch.zeros(3, len(vocab)), [[]] * 3)
    assert [h[0].ids for h in decode(decoder, feats, vocab, GREEDY, unguided)] == plain


def test_caption_guide_needs_concept_words_and_a_malformed_map_is_refused(tiny_checkpoint, tiny_coco, tmp_path):
    image = sorted((tiny_coco / "val").iterdir())[0]

    def run(ckpt):
        command = [sys.executable, "-m", "captioning", "caption", str(image), "--guide", "--checkpoint", str(ckpt)]
        return subprocess.run(command, cwd=REPO, capture_output=True, text=True)

    result = run(tiny_checkpoint)
    assert result.returncode == 2 and "concept words" in result.stderr and "Traceback" not in result.stderr
    ckpt = load_checkpoint(tiny_checkpoint)
    save_checkpoint(tmp_path / "with.pt", {**ckpt, "concept_words": {str(i): ["circle"] for i in range(1000)}})
    result = run(tmp_path / "with.pt")
    assert result.returncode == 0, result.stderr
    save_checkpoint(tmp_path / "bad.pt", {**ckpt, "concept_words": {"5": "circle"}})
    with pytest.raises(CheckpointError, match="concept_words"):
        load_checkpoint(tmp_path / "bad.pt")


def test_the_head_rule_blocks_a_phrase_head_after_a_function_word_but_not_a_modifier():
    from captioning import repeats

    vocab = Vocabulary.build(["a row of motorcycles parked on a street", "a tennis racket on a tennis court"], 1)
    logp = torch.zeros(2, len(vocab))
    history = [
        [vocab.stoi[w] for w in "a row of motorcycles parked on a".split()],
        [vocab.stoi[w] for w in "a tennis racket on a".split()],
    ]
    out = repeats.block_repeats(logp, history, repeats.word_classes(vocab))
    assert out[0, vocab.stoi["motorcycles"]] == float("-inf")  # the head of "motorcycles parked"
    assert out[1, vocab.stoi["tennis"]] == 0.0  # a modifier may come back: "a tennis court"
    assert out[1, vocab.stoi["racket"]] == float("-inf")
