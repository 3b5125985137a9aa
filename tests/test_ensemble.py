"""Ensembles: several decoders over one encoder pass, their word probabilities averaged at every step."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from conftest import REPO

from captioning.checkpoint import load_checkpoint, model_from_checkpoint
from captioning.config import DecodeConfig
from captioning.data import SAMPLE_ROOT, CocoSplit, load_image
from captioning.ensemble import EnsembleDecoder
from captioning.inference import Captioner


def _images(n: int = 2):
    split = CocoSplit.load(SAMPLE_ROOT, "val")
    return [load_image(split.files[i]) for i in split.ids[:n]]


def test_a_model_ensembled_with_itself_captions_exactly_as_alone(tiny_checkpoint):
    alone = Captioner.from_checkpoint(tiny_checkpoint, device="cpu")
    twice = Captioner.from_checkpoints([tiny_checkpoint, tiny_checkpoint], device="cpu")
    assert isinstance(twice.decoder, EnsembleDecoder) and twice.info["members"] == [str(tiny_checkpoint)] * 2
    for method in ("greedy", "beam"):
        for a, b in zip(
            alone.caption(_images(), DecodeConfig(method=method)),
            twice.caption(_images(), DecodeConfig(method=method)),
            strict=True,
        ):
            assert a.text == b.text
            assert a.word_probs == pytest.approx(b.word_probs, abs=1e-5)


def test_mixed_members_average_their_probabilities_and_the_grid_is_encoded_once(
    tiny_checkpoint, tiny_attention_checkpoint
):
    showtell, vocab = model_from_checkpoint(load_checkpoint(tiny_checkpoint), with_backbone=False)
    attention, _ = model_from_checkpoint(load_checkpoint(tiny_attention_checkpoint), with_backbone=False)
    ensemble = EnsembleDecoder([showtell.decoder, attention.decoder]).eval()
    assert ensemble.feature_kind == "grid"
    grid = torch.rand(2, 49, 1280)
    tokens = torch.full((2,), vocab.start_id)
    with torch.no_grad():
        mean, state, alpha = ensemble.step(tokens, ensemble.init_state(grid))
        a = showtell.decoder.step(tokens, showtell.decoder.init_state(grid.mean(dim=1)))[0]
        b = attention.decoder.step(tokens, attention.decoder.init_state(grid))[0]
    assert torch.allclose(mean, ((a.exp() + b.exp()) / 2).log(), atol=1e-5)
    assert torch.allclose(mean.exp().sum(dim=1), torch.ones(2), atol=1e-4)
    assert alpha.shape == (2, 49) and {k.split(".")[0] for k in state} == {"0", "1"}

    captioner = Captioner.from_checkpoints([tiny_checkpoint, tiny_attention_checkpoint], device="cpu")
    caps = captioner.caption(_images())
    assert all(c.words and c.attention is not None and len(c.attention) == len(c.words) for c in caps)
    assert math.isfinite(caps[0].logprob)


def test_the_cli_ensembles_and_refuses_members_that_do_not_match(tiny_checkpoint, tiny_attention_checkpoint, tmp_path):
    photo = tmp_path / "photo.jpg"
    _images(1)[0].save(photo)

    def run(*args):
        return subprocess.run([sys.executable, "-m", "captioning", "caption", str(photo), *args], cwd=REPO,
                              capture_output=True, text=True, timeout=300)  # fmt: skip

    ok = run("--checkpoint", str(tiny_checkpoint), "--ensemble", str(tiny_attention_checkpoint), "--json")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert json.loads(ok.stdout)[0]["caption"]
    other_words = tmp_path / "other.pt"
    ckpt = load_checkpoint(tiny_checkpoint)
    itos = list(ckpt["vocab"]["itos"])
    itos[-1], itos[-2] = itos[-2], itos[-1]  # same size, other word ids
    torch.save({**ckpt, "vocab": {"itos": itos}}, other_words)
    bad = run("--checkpoint", str(tiny_checkpoint), "--ensemble", str(other_words))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "another vocabulary" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    other_encoder = tmp_path / "lite2.pt"  # the same decoder said to read EfficientNet-Lite2 (also 1280 channels)
    torch.save({**ckpt, "model_config": {**ckpt["model_config"], "backbone": "efficientnet_lite2"}}, other_encoder)
    bad = run("--checkpoint", str(tiny_checkpoint), "--ensemble", str(other_encoder))
    assert bad.returncode == 2 and "must share the encoder" in bad.stderr and "Traceback" not in bad.stderr


def test_test_time_flip_averages_an_image_and_its_mirror(tiny_checkpoint, tiny_attention_checkpoint):
    from PIL import Image, ImageOps

    from captioning.evaluate import caption_split

    for checkpoint in (tiny_checkpoint, tiny_attention_checkpoint):
        captioner = Captioner.from_checkpoint(checkpoint, device="cpu")
        symmetric = Image.new("RGB", (96, 96), "white")  # its mirror is itself: flipping changes nothing
        symmetric.paste((200, 30, 30), (24, 24, 72, 72))
        for method in ("greedy", "beam"):
            alone, flipped = (
                captioner.caption([symmetric], DecodeConfig(method=method, flip=flip))[0] for flip in (False, True)
            )
            assert flipped.text == alone.text and flipped.word_probs == pytest.approx(alone.word_probs, abs=1e-5)
        # an asymmetric photo: the flip's probabilities are the mean of the image's and the mirror's first words
        photo = _images(1)[0]
        mirror = ImageOps.mirror(photo)
        greedy = DecodeConfig(method="greedy")
        own, other = (captioner.caption([im], greedy)[0] for im in (photo, mirror))
        both = captioner.caption([photo], DecodeConfig(method="greedy", flip=True))[0]
        if own.words[0] == other.words[0] == both.words[0]:
            assert both.word_probs[0] == pytest.approx((own.word_probs[0] + other.word_probs[0]) / 2, abs=1e-4)
        with pytest.raises(ValueError, match="needs the images' pixels"):
            captioner.caption_features(captioner.features([photo]), DecodeConfig(flip=True))
    split = CocoSplit.load(SAMPLE_ROOT, "val")  # evaluation passes the pixels along
    assert len(caption_split(captioner, split, split.ids[:2], DecodeConfig(method="greedy", flip=True))) == 2
