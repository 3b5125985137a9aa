"""`captioning export` (captioning/export.py): the ONNX model captions like the checkpoint it came from."""

from __future__ import annotations

import json

import pytest
import torch

from app.catalog import examples
from captioning.checkpoint import SHIPPED, CheckpointError
from captioning.cli import main
from captioning.data import load_image
from captioning.export import exported_captioner
from captioning.inference import Captioner

FEATURE_TOLERANCE = 1e-3  # onnxruntime's fused kernels sum in another order than PyTorch's
LOGPROB_TOLERANCE = 1e-4


@pytest.mark.slow
def test_the_exported_shipped_model_gives_the_same_captions_on_the_examples(tmp_path, capsys):
    assert main(["export", "--checkpoint", str(SHIPPED), "--out", str(tmp_path / "model.onnx")]) == 0
    # the export is the fp32 network: compare it with the checkpoint run all in PyTorch fp32 (the shipped model's own
    # int8 decoder is a measured approximation of it, see bench_inference --quality)
    ours = Captioner.from_checkpoint(SHIPPED, device="cpu", precision="fp32", encoder="torch")
    theirs = exported_captioner(tmp_path / "model.onnx")
    images = [load_image(e.path) for e in examples()]
    assert len(images) == 8
    assert [c.text for c in theirs.caption(images)] == [c.text for c in ours.caption(images)]
    feats = ours.features(images[:2])
    assert (theirs.features(images[:2]) - feats).abs().max() < FEATURE_TOLERANCE
    tokens = torch.tensor([ours.vocab.start_id] * 2)
    a, _, alpha_a = ours.decoder.step(tokens, ours.decoder.init_state(feats))
    b, _, alpha_b = theirs.decoder.step(tokens, theirs.decoder.init_state(feats))
    assert (a - b).abs().max() < LOGPROB_TOLERANCE and (alpha_a - alpha_b).abs().max() < LOGPROB_TOLERANCE
    capsys.readouterr()
    photo = str(examples()[0].path)
    assert main(["caption", photo, "--checkpoint", str(tmp_path / "model.onnx"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["caption"] == ours.caption([images[0]])[0].text


def test_a_damaged_or_partial_export_is_one_line(tmp_path, capsys):
    (tmp_path / "model.onnx").write_bytes(b"not onnx")
    with pytest.raises(CheckpointError, match="missing model.init.onnx, model.step.onnx, model.json"):
        exported_captioner(tmp_path / "model.onnx")
    for name in ("model.init.onnx", "model.step.onnx"):
        (tmp_path / name).write_bytes(b"not onnx")
    (tmp_path / "model.json").write_text("{}")
    assert main(["caption", str(tmp_path / "x.jpg"), "--checkpoint", str(tmp_path / "model.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is not a readable export" in err and err.count("\n") == 1
