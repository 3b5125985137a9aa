"""The decoder in int8 on the CPU: asked for, or as the checkpoint says it was measured to keep."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO
from PIL import Image

from captioning.checkpoint import load_checkpoint
from captioning.inference import Captioner


def _quantized(module: torch.nn.Module) -> bool:
    return any("quantized" in type(m).__module__ for m in module.modules())


def test_int8_quantizes_the_decoder_and_still_captions(tiny_checkpoint, tiny_attention_checkpoint):
    image = Image.new("RGB", (96, 96), (200, 30, 30))
    for checkpoint in (tiny_checkpoint, tiny_attention_checkpoint):
        fp32 = Captioner.from_checkpoint(checkpoint, device="cpu")
        int8 = Captioner.from_checkpoint(checkpoint, device="cpu", precision="int8")
        assert not _quantized(fp32.decoder) and _quantized(int8.decoder)
        assert (fp32.info["precision"], int8.info["precision"]) == ("fp32", "int8")
        caption = int8.caption([image])[0]
        assert caption.words and len(caption.word_probs) == len(caption.words)
    both = Captioner.from_checkpoints([tiny_checkpoint, tiny_attention_checkpoint], device="cpu", precision="int8")
    assert _quantized(both.decoder) and both.caption([image])[0].words
    with pytest.raises(ValueError, match="precision must be one of"):
        Captioner.from_checkpoint(tiny_checkpoint, device="cpu", precision="int4")


def test_auto_follows_what_the_checkpoint_says_and_a_flag_overrides_it(tiny_checkpoint, tmp_path):
    marked = tmp_path / "int8.pt"
    torch.save({**load_checkpoint(tiny_checkpoint), "inference": {"decoder": "int8"}}, marked)
    assert _quantized(Captioner.from_checkpoint(marked, device="cpu").decoder)
    assert not _quantized(Captioner.from_checkpoint(marked, device="cpu", precision="fp32").decoder)
    assert not _quantized(Captioner.from_checkpoint(tiny_checkpoint, device="cpu").decoder)  # unmarked: fp32

    photo = tmp_path / "photo.png"
    Image.new("RGB", (64, 64), (20, 120, 220)).save(photo)

    def run(*args):
        return subprocess.run([sys.executable, "-m", "captioning", "caption", str(photo), "--checkpoint", str(marked),
                               "--json", *args], cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip

    assert json.loads(run().stdout)[0]["caption"] and json.loads(run("--precision", "fp32").stdout)[0]["caption"]
    bad = run("--precision", "half")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr and "Traceback" not in bad.stderr


def test_the_onnxruntime_encoder_matches_torch_and_is_exported_once_into_the_cache(
    tiny_attention_checkpoint, tmp_path, monkeypatch
):
    monkeypatch.setenv("CAPTIONING_CACHE", str(tmp_path / "cache"))
    image = Image.new("RGB", (96, 96), (200, 30, 30))
    torch_side = Captioner.from_checkpoint(tiny_attention_checkpoint, device="cpu", encoder="torch")
    ort_side = Captioner.from_checkpoint(tiny_attention_checkpoint, device="cpu", encoder="onnxruntime")
    assert (torch_side.info["encoder"], ort_side.info["encoder"]) == ("torch", "onnxruntime")
    pixels = torch_side.preprocess(image).unsqueeze(0)
    with torch.inference_mode():
        assert torch.allclose(torch_side.encode(pixels), ort_side.encode(pixels), atol=1e-4)
    assert ort_side.caption([image])[0].words == torch_side.caption([image])[0].words
    exported = list((tmp_path / "cache" / "onnx").glob("*.onnx"))
    assert len(exported) == 1
    stamp = exported[0].stat().st_mtime_ns
    Captioner.from_checkpoint(tiny_attention_checkpoint, device="cpu", encoder="onnxruntime")
    assert exported[0].stat().st_mtime_ns == stamp  # read back, not exported again
    exported[0].write_bytes(b"not an onnx graph")  # a damaged cache file is made again, not a lasting fallback
    again = Captioner.from_checkpoint(tiny_attention_checkpoint, device="cpu", encoder="onnxruntime")
    assert again.info["encoder"] == "onnxruntime" and exported[0].stat().st_size > 1000

    marked = tmp_path / "marked.pt"
    torch.save({**load_checkpoint(tiny_attention_checkpoint), "inference": {"encoder": "onnxruntime"}}, marked)
    assert Captioner.from_checkpoint(marked, device="cpu").info["encoder"] == "onnxruntime"  # auto follows it
    assert Captioner.from_checkpoint(marked, device="cpu", encoder="torch").info["encoder"] == "torch"

    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder would be")
    monkeypatch.setenv("CAPTIONING_CACHE", str(blocked))
    with pytest.warns(UserWarning, match="onnxruntime encoder is not available"):
        fallback = Captioner.from_checkpoint(marked, device="cpu")
    assert fallback.info["encoder"] == "torch" and fallback.caption([image])[0].words
    with pytest.raises(ValueError, match="encoder must be one of"):
        Captioner.from_checkpoint(marked, device="cpu", encoder="tensorrt")
