"""Constrained beam search: every caption holds one of its image's target words, whatever the model prefers."""

from __future__ import annotations

import pytest
import torch

from captioning import concepts
from captioning.config import DecodeConfig, ModelConfig
from captioning.constrained import constrained_beam_search, targets
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
    assert not mixed[0][0].constrained and mixed[1][0].constrained == (VOCAB.stoi["cat"] not in plain[1][0].ids)
    said = plain[2][0].ids[1]  # a word the plain best caption already says: it stays as it was, not marked
    kept = decode(model.decoder, feats, VOCAB, cfg, constraint=[[], [], [said]])
    assert [h.text for h in kept[2]] == [h.text for h in plain[2]] and not kept[2][0].constrained
    assert [[h.text for h in g] for g in unconstrained] == [[h.text for h in g] for g in plain]


def test_constrain_must_be_a_probability():
    with pytest.raises(ValueError, match="constrain is a probability threshold"):
        DecodeConfig(constrain=1.5)


# What the caption must say: the encoder's classes pooled by what a caption calls them.
LABELS = concepts.imagenet_labels()
SAYS = Vocabulary(["<pad>", "<start>", "<end>", "<unk>", *"a the dog dogs cat cats bridge fruit orange .".split()])


def _probs(**by_label: float) -> torch.Tensor:
    """(1, 1000) class probabilities: the given labels' (underscores for spaces), 0 for the rest."""
    row = torch.zeros(1, len(LABELS))
    for name, p in by_label.items():
        row[0, LABELS.index(name.replace("_", " "))] = p
    return row


def test_dog_breeds_pool_into_a_dog_the_vocabulary_can_say():
    # No breed reaches 0.5, but the encoder is 0.6 sure of a dog: the caption must say dog or dogs.
    (found,) = targets(_probs(Pekinese=0.3, pug=0.2, Leonberg=0.1), LABELS, SAYS, 0.5)
    assert found is not None and found.noun == "dog" and found.prob == pytest.approx(0.6, abs=1e-4)
    assert found.words == ("dog", "dogs") and [SAYS.itos[i] for i in found.ids] == ["dog", "dogs"]
    assert targets(_probs(Pekinese=0.3, pug=0.1), LABELS, SAYS, 0.5) == [None]  # 0.4: not sure enough


def test_a_classes_last_word_is_its_noun_and_learned_words_stand_in_only_for_a_noun_it_cannot_say():
    (bridge,) = targets(_probs(suspension_bridge=0.57, pier=0.25), LABELS, SAYS, 0.5)
    assert bridge.words == ("bridge",)  # no "bridges" in this vocabulary
    learned = {str(LABELS.index("orange")): ["fruit", "a"], str(LABELS.index("trolleybus")): ["cat", "unknown"]}
    (orange,) = targets(_probs(orange=0.53, lemon=0.37), LABELS, SAYS, 0.5, learned)
    assert orange.words == ("orange",)  # "orange" can be said: no stand-in
    (trolley,) = targets(_probs(trolleybus=0.6), LABELS, SAYS, 0.5, learned)
    assert trolley.noun == "trolleybus" and trolley.words == ("cat", "cats")  # words the vocabulary lacks dropped


def test_what_naming_will_name_is_not_constrained_to_a_stand_in():
    learned = {str(LABELS.index("tripod")): ["dog"]}  # a poor learned word for a class the vocabulary cannot name
    assert targets(_probs(tripod=0.77), LABELS, SAYS, 0.5, learned) == [None]  # naming says "tripod" instead
    (stand_in,) = targets(_probs(tripod=0.77), LABELS, SAYS, 0.5, learned, name_novel=False)
    assert stand_in.words == ("dog", "dogs")
    (unsure,) = targets(_probs(tripod=0.6), LABELS, SAYS, 0.5, learned)  # under naming's 0.7: the learned word
    assert unsure.words == ("dog", "dogs")
    assert targets(_probs(lion=0.9), LABELS, SAYS, 0.5) == [None]  # nothing to say it with


def test_the_threshold_is_a_probability_and_zero_turns_it_off_on_the_command_line():
    from captioning.cli import build_parser

    args = build_parser().parse_args(["caption", "x.jpg"])
    assert args.constrain == DecodeConfig().constrain > 0
    assert build_parser().parse_args(["caption", "--no-constrain", "x.jpg"]).constrain == 0.0
    assert build_parser().parse_args(["caption", "x.jpg", "--constrain"]).constrain == DecodeConfig().constrain
    assert build_parser().parse_args(["caption", "--constrain", "0.3", "x.jpg"]).constrain == 0.3
