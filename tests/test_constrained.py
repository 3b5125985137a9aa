"""Constrained beam search: every caption holds one of its image's target words, whatever the model prefers."""

from __future__ import annotations

import pytest
import torch

from captioning.config import DecodeConfig, ModelConfig
from captioning.constrained import constrained_beam_search
from captioning.decoding import beam_search, decode
from captioning.model import CaptionModel
from captioning.vocab import Vocabulary

WORDS = ["a", "red", "blue", "square", "circle", "on", "white", "cat", "dog", "."]
VOCAB = Vocabulary(["<pad>", "<start>", "<end>", "<unk>", *WORDS])


def _model(decoder: str, seed: int) -> CaptionModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(decoder=decoder, vocab_size=len(VOCAB), embed_size=32, hidden_size=48, attention_size=24)
    return CaptionModel(cfg).eval()


def _feats(decoder: str, batch: int, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(batch, 1280) if decoder == "showtell" else torch.randn(batch, 49, 1280)


@pytest.mark.parametrize("decoder", ["showtell", "attention"])
@pytest.mark.parametrize("method, beams", [("beam", 3), ("beam", 1), ("greedy", 1)])
def test_every_caption_holds_a_target_it_can_say(decoder, method, beams):
    ids = VOCAB.stoi
    for seed in range(4):  # random models: what they prefer is arbitrary, the constraint is not
        model = _model(decoder, seed)
        targets = [[ids["cat"]], [ids["dog"], ids["cat"]], [ids["white"]], [ids["square"]]]
        cfg = DecodeConfig(method=method, beam_size=beams, max_len=8)
        with torch.no_grad():
            found = constrained_beam_search(model.decoder, _feats(decoder, 4, seed), VOCAB, cfg, targets)
        for hyps, wanted in zip(found, targets, strict=True):
            assert hyps and len(hyps) <= beams
            for h in hyps:
                assert set(h.ids) & set(wanted), (seed, h.text, wanted)
                assert h.ids[-1] == VOCAB.end_id and len(h.word_probs) == len(h.ids)
                assert h.logprob == pytest.approx(sum(torch.tensor(h.word_probs).log().tolist()), abs=1e-4)
            assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)


def test_images_without_a_target_get_exactly_the_plain_beam_search():
    model = _model("showtell", 0)
    feats = _feats("showtell", 3, 5)
    cfg = DecodeConfig(beam_size=3, max_len=8)
    with torch.no_grad():
        plain = beam_search(model.decoder, feats, VOCAB, cfg)
        mixed = decode(model.decoder, feats, VOCAB, cfg, constraint=[[], [VOCAB.stoi["cat"]], []])
        unconstrained = decode(model.decoder, feats, VOCAB, cfg, constraint=[[], [], []])
    assert [h.text for h in mixed[0]] == [h.text for h in plain[0]]
    assert [h.text for h in mixed[2]] == [h.text for h in plain[2]]
    assert "cat" in mixed[1][0].text.split()
    assert [[h.text for h in g] for g in unconstrained] == [[h.text for h in g] for g in plain]


def test_constrain_must_be_a_probability():
    with pytest.raises(ValueError, match="constrain is a probability threshold"):
        DecodeConfig(constrain=1.5)
