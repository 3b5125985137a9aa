"""Model, loss and decoding: the behaviour greedy/beam users rely on."""

from __future__ import annotations

import pytest
import torch
from fixtures import repeated_ngrams

from captioning.backbones import BackboneError, build_backbone, get_spec
from captioning.config import DecodeConfig, ModelConfig
from captioning.decoding import beam_search, greedy
from captioning.model import CaptionModel, caption_loss
from captioning.vocab import Vocabulary


def _cfg(**values) -> DecodeConfig:
    """The decoding under test: repeats allowed unless a test blocks them, so each rule is seen alone."""
    return DecodeConfig(**{"block_repeats": False, **values})


WORDS = ["a", "red", "blue", "square", "circle", "on", "white", "."]


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return Vocabulary(["<pad>", "<start>", "<end>", "<unk>", *WORDS])


def _model(vocab, decoder="showtell", seed=0) -> CaptionModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(decoder=decoder, vocab_size=len(vocab), embed_size=32, hidden_size=48, attention_size=24)
    return CaptionModel(cfg).eval()


def _feats(decoder: str, batch: int = 3) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(batch, 1280) if decoder == "showtell" else torch.randn(batch, 49, 1280)


def test_unknown_backbone_lists_every_valid_name():
    with pytest.raises(BackboneError) as err:
        get_spec("vgg16")
    for name in ("efficientnet_lite0", "efficientnet_lite2", "resnet18", "resnet50", "resnet152"):
        assert name in str(err.value)


def test_resnet_weights_offline_give_a_clear_error(monkeypatch):
    import torchvision

    def offline(weights=None):
        raise RuntimeError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torchvision.models, "resnet50", offline)
    with pytest.raises(BackboneError) as err:
        build_backbone("resnet50", pretrained=True)
    assert str(torch.hub.get_dir()) in str(err.value) and "efficientnet_lite0" in str(err.value)


def test_every_backbone_declares_its_preprocessing_and_output_size():
    for name in ("efficientnet_lite0", "resnet18"):
        spec = get_spec(name)
        net = build_backbone(name, pretrained=False)
        x = spec.preprocess(__import__("PIL.Image").Image.new("RGB", (300, 200), "gray")).unsqueeze(0)
        assert x.shape == (1, 3, spec.preprocess.size, spec.preprocess.size)
        assert net(x).shape[1] == spec.channels


@pytest.mark.parametrize("decoder", ["showtell", "attention"])
def test_loss_ignores_padding(vocab, decoder):
    model = _model(vocab, decoder)
    feats = _feats(decoder, 2)
    caps = torch.tensor([[1, 4, 5, 7, 2], [1, 4, 6, 2, 0]])
    lengths = torch.tensor([5, 4])
    loss = caption_loss(model(feats, caps, lengths)[0], caps)
    padded = torch.cat([caps, torch.zeros(2, 3, dtype=torch.long)], 1)  # three more pad columns
    assert torch.allclose(caption_loss(model(feats, padded, lengths)[0], padded), loss, atol=1e-6)


def test_attention_shapes_and_weights_sum_to_one(vocab):
    model = _model(vocab, "attention")
    caps = torch.tensor([[1, 4, 5, 7, 2], [1, 4, 6, 2, 0]])
    logits, alphas = model(_feats("attention", 2), caps, torch.tensor([5, 4]))
    assert logits.shape == (2, 4, len(vocab)) and alphas.shape == (2, 4, 49)
    inside = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]).float()  # the second caption ends a step earlier
    assert torch.allclose(alphas.sum(-1), inside, atol=1e-5)
    hyp = greedy(model.decoder, _feats("attention", 1), vocab, _cfg(max_len=5))[0]
    assert len(hyp.attention) == len(hyp.ids) and all(abs(float(a.sum()) - 1) < 1e-5 for a in hyp.attention)


def test_frozen_cnn_is_unchanged_by_a_training_step(vocab):
    cfg = ModelConfig(backbone="resnet18", vocab_size=len(vocab), embed_size=16, hidden_size=16)
    model = CaptionModel(cfg, build_backbone("resnet18", pretrained=False)).train()
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    assert not model.backbone.training  # BatchNorm stays in eval mode while the decoder trains
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1)
    caps = torch.tensor([[1, 4, 5, 2]])
    for _ in range(2):
        logits, _ = model(torch.randn(1, 3, 64, 64), caps, torch.tensor([4]), from_images=True)
        opt.zero_grad()
        caption_loss(logits, caps).backward()
        opt.step()
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN running stats
    assert not torch.equal(model.decoder.fc.weight, _model(vocab).decoder.fc.weight)


@pytest.mark.parametrize("decoder", ["showtell", "attention"])
def test_beam_one_equals_greedy(vocab, decoder):
    model = _model(vocab, decoder)
    feats = _feats(decoder, 4)
    g = greedy(model.decoder, feats, vocab, _cfg(max_len=12))
    b = beam_search(model.decoder, feats, vocab, _cfg(beam_size=1, max_len=12))
    assert [h.ids for h in g] == [hs[0].ids for hs in b]
    assert [round(h.logprob, 4) for h in g] == [round(hs[0].logprob, 4) for hs in b]


@pytest.mark.parametrize("decoder", ["showtell", "attention"])
def test_beam_returns_k_hypotheses_best_first(vocab, decoder):
    model = _model(vocab, decoder)
    results = beam_search(model.decoder, _feats(decoder, 3), vocab, _cfg(beam_size=4, max_len=10))
    for hyps in results:
        assert len(hyps) == 4
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.ids) for h in hyps}) == 4  # distinct captions
        for h in hyps:
            assert len(h.word_probs) == len(h.ids) and all(0 < p <= 1 for p in h.word_probs)
            assert abs(sum(torch.tensor(h.word_probs).log().tolist()) - h.logprob) < 1e-4
            assert len([i for i in h.ids if i != vocab.end_id]) <= 10


def test_beam_is_batched_like_single_images(vocab):
    model = _model(vocab, "attention")
    feats = _feats("attention", 3)
    together = beam_search(model.decoder, feats, vocab, _cfg(beam_size=3, max_len=8))
    alone = [beam_search(model.decoder, feats[i : i + 1], vocab, _cfg(beam_size=3, max_len=8))[0] for i in range(3)]
    assert [[h.ids for h in hs] for hs in together] == [[h.ids for h in hs] for hs in alone]


def test_beam_finds_at_least_greedy_score(vocab):
    model = _model(vocab, "showtell", seed=3)
    feats = _feats("showtell", 6)
    g = greedy(model.decoder, feats, vocab, _cfg(max_len=15))
    b = beam_search(model.decoder, feats, vocab, _cfg(beam_size=5, max_len=15))
    assert all(hs[0].score >= gh.score - 1e-6 for gh, hs in zip(g, b))


class _ChainDecoder(torch.nn.Module):
    """A decoder that always wants the next word of a fixed chain; `fallback` its next choice(s)."""

    def __init__(self, vocab: Vocabulary, chain: dict[str, str], fallback: dict[str, str]) -> None:
        super().__init__()
        self.vocab, self.chain, self.fallback = vocab, chain, fallback

    def init_state(self, feats):
        return {"dummy": feats.new_zeros(feats.size(0), 1)}

    def step(self, tokens, state):
        logp = torch.full((tokens.size(0), len(self.vocab)), -20.0)
        for r, t in enumerate(tokens.tolist()):
            word = self.vocab.itos[t]
            logp[r, self.vocab.stoi[self.chain.get(word, "<end>")]] = -0.1
            later = self.fallback.get(word, ())
            for rank, other in enumerate((later,) if isinstance(later, str) else later):
                logp[r, self.vocab.stoi[other]] = -3.0 - rank
        return logp, state, None


def test_blocking_repeats_stops_a_phrase_echo():
    vocab = Vocabulary(["<pad>", "<start>", "<end>", "<unk>", "a", "man", "on", "cell", "phone", "bench"])
    # left to itself it says "a man on a cell phone on a cell phone on a cell phone ..."
    decoder = _ChainDecoder(
        vocab,
        {"<start>": "a", "a": "cell", "cell": "phone", "phone": "on", "on": "a", "bench": "<end>"},
        {"on": "bench", "phone": "<end>"},
    )
    feats = torch.zeros(2, 4)
    plain = greedy(decoder, feats, vocab, _cfg(max_len=9))[0].text
    assert plain.lower().startswith("a cell phone on a cell phone on a")
    blocked = greedy(decoder, feats, vocab, _cfg(max_len=9, block_repeats=True))[0]
    assert blocked.text.lower().startswith("a cell phone on a cell") and not repeated_ngrams(blocked.ids)
    best = beam_search(decoder, feats, vocab, _cfg(beam_size=3, max_len=9, block_repeats=True))[0][0]
    assert best.text.lower().rstrip(".") == "a cell phone on bench"  # the beam avoids the dead end


def test_blocking_repeats_stops_a_head_echo_but_keeps_a_repeated_modifier():
    words = ["a", "cat", "sitting", "on", "table", "with", "tennis", "racket", "court", "laptop"]
    vocab = Vocabulary(["<pad>", "<start>", "<end>", "<unk>", *words])
    # "a cat sitting on a table with a cat": "cat" heads its phrase (a participle follows), so it may not
    # come back after "a"; "table" (followed by "with") neither; the second choice is taken instead
    echo = _ChainDecoder(
        vocab,
        {"<start>": "a", "a": "cat", "cat": "sitting", "sitting": "on", "on": "a", "table": "with", "with": "a"},
        {"a": ("table", "laptop")},
    )
    feats = torch.zeros(1, 4)
    plain = greedy(echo, feats, vocab, _cfg(max_len=12))[0].text.lower()
    assert plain.startswith("a cat sitting on a cat sitting on")  # the model alone loops
    blocked = greedy(echo, feats, vocab, _cfg(max_len=12, block_repeats=True))[0].text.lower()
    assert blocked.rstrip(".") == "a cat sitting on a table with a laptop", blocked
    for hyp in beam_search(echo, feats, vocab, _cfg(beam_size=3, max_len=12, block_repeats=True))[0]:
        said = hyp.text.lower().rstrip(".").split()
        assert said.count("cat") <= 1 and said.count("table") <= 1, said
    # "tennis" before "racket" is a modifier, not a head: "a tennis racket on a tennis court" is allowed
    court = _ChainDecoder(
        vocab,
        {"<start>": "a", "a": "tennis", "tennis": "racket", "racket": "on", "on": "a"},
        {"tennis": "court", "court": "<end>"},
    )
    blocked = greedy(court, feats, vocab, _cfg(max_len=8, block_repeats=True))[0].text.lower().rstrip(".")
    assert blocked == "a tennis racket on a tennis court", blocked


@pytest.mark.parametrize("decoder", ["showtell", "attention"])
def test_blocked_captions_never_repeat_three_words(vocab, decoder):
    model = _model(vocab, decoder, seed=5)
    feats = _feats(decoder, 6)
    plain = [h.ids for h in greedy(model.decoder, feats, vocab, _cfg(max_len=15))]
    assert any(repeated_ngrams(ids) for ids in plain)  # an untrained model babbles in loops
    for hyps in (
        [[h] for h in greedy(model.decoder, feats, vocab, _cfg(max_len=15, block_repeats=True))],
        beam_search(model.decoder, feats, vocab, _cfg(beam_size=3, max_len=15, block_repeats=True)),
    ):
        assert all(not repeated_ngrams(h.ids) for hs in hyps for h in hs)


@pytest.mark.parametrize("decoder", ["showtell", "attention"])
def test_decoding_never_says_unknown_even_when_the_model_prefers_it(vocab, decoder):
    model = _model(vocab, decoder)
    with torch.no_grad():
        model.decoder.fc.bias[vocab.unk_id] = 50.0  # <unk> is by far the likeliest word at every step
    feats = _feats(decoder)
    for method in ("greedy", "beam"):
        for hyp in [h for hyps in _decode(model, feats, vocab, method) for h in hyps]:
            assert vocab.unk_id not in hyp.ids and "<unk>" not in hyp.text and hyp.ids[-1] == vocab.end_id


def _decode(model, feats, vocab, method):
    cfg = _cfg(method=method, beam_size=3)
    if method == "greedy":
        return [[h] for h in greedy(model.decoder, feats, vocab, cfg)]
    return beam_search(model.decoder, feats, vocab, cfg)
