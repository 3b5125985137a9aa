"""Vocabulary, COCO split reading and robust image loading."""

from __future__ import annotations

import io
import json
import shutil
import warnings

import numpy as np
import pytest
from conftest import SHARED_COCO, needs_shared_coco
from PIL import Image

from captioning.data import (
    CocoSplit,
    DatasetError,
    ImageLoadError,
    SkippedImagesWarning,
    collate_captions,
    load_image,
)
from captioning.vocab import Vocabulary, tokenize


def test_vocabulary_round_trip_and_readable_decoding(tmp_path):
    captions = ["A man riding a horse.", "A man's dog isn't on the beach, running."] * 5 + ["rare word"]
    vocab = Vocabulary.build(captions, threshold=5)
    assert vocab.itos[:4] == ["<pad>", "<start>", "<end>", "<unk>"] and vocab.pad_id == 0
    assert "rare" not in vocab.stoi  # seen once, below the threshold
    vocab.save(tmp_path / "vocab.json")
    assert json.loads((tmp_path / "vocab.json").read_text())["itos"] == vocab.itos  # plain JSON, no pickle
    again = Vocabulary.load(tmp_path / "vocab.json")
    assert again == vocab
    ids = again.encode("A man's dog isn't on the beach, running.")
    assert ids[0] == vocab.start_id and ids[-1] == vocab.end_id
    assert again.decode(ids) == "A man's dog isn't on the beach, running."
    assert again.decode(again.encode("a rare horse")) == "A <unk> horse"
    assert again.decode([vocab.start_id, vocab.stoi["man"], vocab.end_id, vocab.stoi["dog"]]) == "Man"


def test_tokenize_needs_no_nltk_data():
    assert tokenize("Two dogs. Playing, outside!") == ["two", "dogs", ".", "playing", ",", "outside", "!"]


def test_split_reads_coco_layout_and_ids_file(tiny_coco, tmp_path):
    split = CocoSplit.load(tiny_coco, "train")
    assert len(split) == 24 and all(len(split.captions[i]) == 5 for i in split.ids)
    (tmp_path / "ids.txt").write_text(f"{split.ids[3]}\n{split.ids[1]}\n")
    sub = CocoSplit.load(tiny_coco, "train", tmp_path / "ids.txt")
    assert sub.ids == sorted([split.ids[1], split.ids[3]])


def test_missing_annotations_names_path_and_download_command(tmp_path):
    with pytest.raises(DatasetError) as err:
        CocoSplit.load(tmp_path, "val2017")
    assert str(tmp_path / "annotations" / "captions_val2017.json") in str(err.value)
    assert "python -m captioning download" in str(err.value)


def test_missing_images_are_skipped_with_one_counting_warning(tiny_coco, tmp_path):
    root = tmp_path / "coco"
    shutil.copytree(tiny_coco, root)
    files = sorted((root / "val").iterdir())
    for f in files[:2]:
        f.unlink()
    with pytest.warns(SkippedImagesWarning, match=r"2 image\(s\) of split val are missing") as record:
        split = CocoSplit.load(root, "val")
    assert len(record) == 1 and files[0].name in str(record[0].message)
    assert len(split) == 6


def _bytes(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "RGBA", "LA", "I;16", "1"])
def test_every_image_mode_becomes_rgb(mode):
    image = Image.new("RGB", (40, 30), (200, 100, 50)).convert(mode)
    fmt = "TIFF" if mode in ("CMYK", "I;16") else "PNG"
    out = load_image(_bytes(image, fmt))
    assert out.mode == "RGB" and out.size == (40, 30)


def test_sixteen_bit_keeps_its_brightness():
    arr = np.full((10, 10), 40000, dtype=np.uint16)  # ~61% grey
    out = load_image(_bytes(Image.fromarray(arr), "PNG"))
    assert 140 < out.getpixel((5, 5))[0] < 170


def test_transparent_pixels_become_white():
    image = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert load_image(_bytes(image, "PNG")).getpixel((1, 1)) == (255, 255, 255)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (60, 20), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    out = load_image(_bytes(image, "JPEG", exif=exif))
    assert out.size == (20, 60)


def test_bad_images_raise_clear_errors(tmp_path, monkeypatch):
    good = _bytes(Image.new("RGB", (64, 64), "blue"), "JPEG")
    with pytest.raises(ImageLoadError, match="empty"):
        load_image(b"")
    with pytest.raises(ImageLoadError, match="not an image"):
        load_image(b"%PDF-1.4 definitely not a picture")
    with pytest.raises(ImageLoadError, match="corrupt or truncated"):
        load_image(good[: len(good) // 2])
    with pytest.raises(ImageLoadError, match="does not exist"):
        load_image(tmp_path / "nope.jpg")
    truncated = tmp_path / "truncated.jpg"
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8))
    big = _bytes(noise, "JPEG")
    truncated.write_bytes(big[: len(big) * 2 // 3])  # the header is whole: PIL opens it, then fails to decode
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(real_open(*a, **k)) or opened[-1])
    with pytest.raises(ImageLoadError, match="corrupt or truncated"):
        load_image(truncated)
    assert opened and opened[0].fp is None  # the file is closed now, not left to the garbage collector
    monkeypatch.setattr(Image, "open", real_open)
    monkeypatch.setattr("captioning.data.MAX_PIXELS", 1000)
    with pytest.raises(ImageLoadError, match="too large"):
        load_image(good)


def test_collate_pads_and_sorts_longest_first():
    import torch

    batch = [(torch.zeros(3), [1, 5, 2]), (torch.ones(3), [1, 5, 6, 7, 2])]
    inputs, captions, lengths = collate_captions(batch)
    assert lengths.tolist() == [5, 3]
    assert captions.tolist() == [[1, 5, 6, 7, 2], [1, 5, 2, 0, 0]]
    assert inputs[0].sum() == 3


@needs_shared_coco
def test_real_coco_sample_reads_and_loads():
    with warnings.catch_warnings():
        warnings.simplefilter("error", SkippedImagesWarning)  # the sample is complete
        val = CocoSplit.load(SHARED_COCO, "val")
    assert len(val) == 250 and all(len(val.captions[i]) >= 5 for i in val.ids)
    grey = [i for i in val.ids[:250] if Image.open(val.files[i]).mode != "RGB"]
    for i in (grey or val.ids)[:3]:
        assert load_image(val.files[i]).mode == "RGB"
