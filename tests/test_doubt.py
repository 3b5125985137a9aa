"""Captions that deserve doubt say so, in plain words: the encoder disagrees, the decoder hesitates, the input is no
photo. The reasons reach the caption, the CLI's CSV and JSON, and the API (test_serve)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from captioning import doubt
from captioning.checkpoint import SHIPPED
from captioning.cli import main as cli_main
from captioning.concepts import imagenet_labels
from captioning.inference import Captioner

SAMPLE = Path(__file__).resolve().parent.parent / "captioning" / "sample" / "val"
LABELS = imagenet_labels()
CAT = LABELS.index("Egyptian cat")


def test_a_confident_class_the_caption_does_not_mention_is_a_doubt():
    words = "a man sitting on a table with a laptop".split()
    reason = doubt.encoder_reason(words, [("Egyptian cat", 0.59), ("tabby", 0.2)], LABELS, {})
    assert reason == "the image looks like an Egyptian cat (59%), which the caption does not mention"
    assert doubt.encoder_reason("a cat sitting on a table".split(), [("Egyptian cat", 0.59)], LABELS, {}) is None
    assert doubt.encoder_reason("two cats on a bed".split(), [("Egyptian cat", 0.59)], LABELS, {}) is None
    assert doubt.encoder_reason(words, [("Egyptian cat", 0.25)], LABELS, {}) is None  # not confident
    # a caption word the checkpoint learned for the class counts as mentioning it
    learned = {str(CAT): ["kitten"]}
    assert doubt.encoder_reason("a kitten on a table".split(), [("Egyptian cat", 0.9)], LABELS, learned) is None
    assert doubt.encoder_reason(words, [], LABELS, {}) is None  # a backbone without an ImageNet head
    # a room or a shop is where people are, which a right caption need not say
    assert doubt.encoder_reason("a group of people in a kitchen".split(), [("restaurant", 0.63)], LABELS, {}) is None


def test_a_hesitant_decoder_is_a_doubt_and_a_sure_one_is_not():
    assert doubt.decoder_reason([0.9, 0.8, 0.95]) is None
    assert doubt.decoder_reason([0.2, 0.3, 0.1]) == "the model is unsure of its words (they average 18%)"
    assert doubt.decoder_reason([]) is None
    assert doubt.summary([]) == "" and doubt.summary(["a", "b"]) == "unsure: a; b"


def _pixels(image: Image.Image, captioner: Captioner) -> torch.Tensor:
    return captioner.preprocess(image.convert("RGB"))


def _text_image() -> Image.Image:
    image = Image.new("RGB", (640, 480), "white")
    draw = ImageDraw.Draw(image)
    for row in range(12):
        draw.text((20, 20 + 36 * row), "Quarterly report: revenue grew 4% over the last quarter", fill="black")
    return image


@pytest.fixture(scope="module")
def shipped():
    return Captioner.from_checkpoint(SHIPPED, device="cpu")


def test_photos_are_photos_and_text_icons_and_tiny_images_are_not(shipped):
    photos = sorted(SAMPLE.parent.glob("*/*.jpg"))  # the embedded sample's 210 COCO photos
    assert len(photos) > 100
    assert max(doubt.palette_share(_pixels(Image.open(p), shipped)) for p in photos) < doubt.PALETTE_SHARE
    assert doubt.palette_share(_pixels(_text_image(), shipped)) > 0.85
    drawing = Image.new("RGB", (500, 400), (240, 240, 255))
    ImageDraw.Draw(drawing).ellipse((100, 100, 300, 300), fill="orange", outline="black", width=4)
    assert doubt.input_reasons(_pixels(drawing, shipped), drawing.size) == [
        "the image looks like a screenshot, text or a drawing, and the model learned from photos"
    ]
    icon = Image.new("RGB", (16, 16), "white")
    ImageDraw.Draw(icon).ellipse((3, 3, 12, 12), fill="red")
    assert doubt.input_reasons(_pixels(icon, shipped), icon.size) == [
        "the image is tiny (16x16 pixels), too small to describe"
    ]


def test_the_shipped_model_doubts_a_text_screenshot_and_a_tiny_icon(shipped):
    icon = Image.new("RGB", (16, 16), "white")
    ImageDraw.Draw(icon).rectangle((4, 4, 11, 11), fill="blue")
    text, tiny = shipped.caption([_text_image(), icon])
    assert text.unsure.startswith("unsure: ") and "screenshot" in text.unsure
    assert "tiny (16x16 pixels)" in tiny.unsure


def test_the_cli_writes_the_doubt_into_its_csv_and_json(tmp_path, capsys):
    folder = tmp_path / "shots"
    folder.mkdir()
    _text_image().save(folder / "report.png")
    out = tmp_path / "captions.csv"
    assert cli_main(["caption", str(folder), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert list(rows[0]) == ["image", "caption", "confidence", "unsure"] and "screenshot" in rows[0]["unsure"]
    capsys.readouterr()
    assert cli_main(["caption", str(folder / "report.png"), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)[0]
    assert record["unsure"].startswith("unsure: ") and any("screenshot" in d for d in record["doubts"])
