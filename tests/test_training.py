"""Training: loss goes down, the feature cache, exact resume, clean stops, logs and checkpoints."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch
from conftest import REPO, SHARED_COCO, needs_shared_coco

from captioning import backbones, features
from captioning.backbones import build_backbone
from captioning.checkpoint import load_checkpoint
from captioning.config import TrainConfig
from captioning.data import CocoSplit, SkippedImagesWarning, load_image
from captioning.features import ExtractOptions, build_cache
from captioning.inference import Captioner
from captioning.rundir import read_metrics
from captioning.train import Callbacks, fit


def _cfg(coco, tmp_path, **kw) -> TrainConfig:
    base = dict(
        coco_root=str(coco),
        out=str(tmp_path / "run"),
        epochs=3,
        batch_size=16,
        vocab_threshold=1,
        cache_dir=str(tmp_path / "cache"),
        num_workers=0,
        log_every=1,
        seed=0,
    )
    return TrainConfig.of(**{**base, **kw})


class CountingCNN(torch.nn.Module):
    """Wraps a backbone and counts the images it sees."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.net, self.images = build_backbone(name, pretrained=False), 0

    def forward(self, x):
        self.images += x.size(0)
        return self.net(x)


def _options(cache_dir, encoder) -> ExtractOptions:
    return ExtractOptions(cache_dir=cache_dir, encoder=encoder, progress=False, num_workers=0)


def test_loss_goes_down_and_logs_are_written(tiny_run):
    records = read_metrics(tiny_run / "metrics.jsonl")
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert len(steps) >= 30
    assert sum(r["loss"] for r in steps[-5:]) / 5 < 0.5 * sum(r["loss"] for r in steps[:5]) / 5
    assert set(steps[0]) >= {"step", "epoch", "loss", "perplexity", "lr", "elapsed", "images_per_s"}
    assert [r["step"] for r in steps] == sorted(r["step"] for r in steps)
    assert len(epochs) == 6 and all({"val_loss", "BLEU-4", "CIDEr"} <= set(r) for r in epochs)
    assert epochs[-1]["CIDEr"] > epochs[0]["CIDEr"]
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["train"]["batch_size"] == 16 and config["model"]["hidden_size"] == 512
    best = load_checkpoint(tiny_run / "best.pt")
    assert best["metrics"]["val"]["CIDEr"] == max(r["CIDEr"] for r in epochs)
    assert "train_state" in load_checkpoint(tiny_run / "last.pt")


def test_cache_is_built_once_reused_and_invalidated_by_backbone(tiny_coco, tmp_path, monkeypatch):
    split = CocoSplit.load(tiny_coco, "train")
    cnn = CountingCNN("efficientnet_lite0")
    store = build_cache(split, "efficientnet_lite0", "pooled", 1, _options(tmp_path, cnn))
    assert cnn.images == 24 and store.get(split.ids[:2]).shape == (2, 1280)
    build_cache(split, "efficientnet_lite0", "pooled", 1, _options(tmp_path, cnn))
    assert cnn.images == 24  # the second run read the cache
    other = CountingCNN("resnet18")
    store = build_cache(split, "resnet18", "pooled", 1, _options(tmp_path, other))
    assert other.images == 24 and store.get(split.ids[:1]).shape == (1, 512)
    # a change of preprocessing (here: the input size) is a new cache too
    spec = backbones.get_spec("efficientnet_lite0")
    monkeypatch.setitem(
        backbones.BACKBONES, "efficientnet_lite0", replace(spec, preprocess=replace(spec.preprocess, size=192))
    )
    build_cache(split, "efficientnet_lite0", "pooled", 1, _options(tmp_path, cnn))
    assert cnn.images == 48


def test_fit_reuses_the_cache_across_runs(tiny_coco, tmp_path, monkeypatch):
    made = []
    real = features.build_backbone
    monkeypatch.setattr(features, "build_backbone", lambda *a, **k: made.append(a) or real(*a, **k))
    fit(_cfg(tiny_coco, tmp_path, epochs=1, out=str(tmp_path / "a")))
    assert len(made) == 2  # train and val extracted once
    fit(_cfg(tiny_coco, tmp_path, epochs=1, out=str(tmp_path / "b")))
    assert len(made) == 2  # nothing recomputed


def test_resume_equals_an_uninterrupted_run(tiny_coco, tmp_path):
    whole = _cfg(
        tiny_coco, tmp_path, decoder="attention", out=str(tmp_path / "whole"), epochs=2, flip=True, attention_size=64
    )
    losses_whole = []
    fit(whole, Callbacks(on_step=lambda r: losses_whole.append(r["loss"])))

    parts = replace(whole, out=str(tmp_path / "parts"))
    losses_parts: list[float] = []
    result = fit(
        parts, Callbacks(on_step=lambda r: losses_parts.append(r["loss"]), should_stop=lambda: len(losses_parts) == 3)
    )
    assert result.status == "stopped" and result.step == 3  # mid-epoch: 12 steps an epoch
    fit(parts, Callbacks(on_step=lambda r: losses_parts.append(r["loss"])), resume=True)
    assert losses_parts == pytest.approx(losses_whole, abs=1e-6)
    a = load_checkpoint(tmp_path / "whole" / "last.pt")["decoder_state"]
    b = load_checkpoint(tmp_path / "parts" / "last.pt")["decoder_state"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    steps = [r["step"] for r in read_metrics(tmp_path / "parts" / "metrics.jsonl") if r["kind"] == "step"]
    assert steps == sorted(set(steps))  # the resumed curve continues the interrupted one


def test_corrupt_training_image_is_skipped_and_reported(tiny_coco, tmp_path):
    root = tmp_path / "coco"
    shutil.copytree(tiny_coco, root)
    victim = sorted((root / "train").iterdir())[5]
    victim.write_bytes(victim.read_bytes()[:200])
    with pytest.warns(SkippedImagesWarning, match=victim.name):
        result = fit(_cfg(root, tmp_path, epochs=1))
    assert result.status == "finished"


def test_early_stopping_and_fine_tune_keep_the_vocabulary(tiny_checkpoint, tiny_coco, tmp_path):
    base = load_checkpoint(tiny_checkpoint)
    result = fit(_cfg(tiny_coco, tmp_path, epochs=8, lr=1e-9, patience=1, init_from=str(tiny_checkpoint)))
    assert result.status == "early_stopped" and result.epoch < 8
    tuned = load_checkpoint(tmp_path / "run" / "best.pt")
    assert tuned["vocab"] == base["vocab"] and tuned["provenance"]["init_from"] == str(tiny_checkpoint)


@pytest.mark.slow
def test_sigterm_saves_a_resumable_checkpoint_and_exits_zero(tiny_coco, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "captioning",
            "train",
            "--coco-root",
            str(tiny_coco),
            "--out",
            str(out),
            "--epochs",
            "200",
            "--batch-size",
            "4",
            "--vocab-threshold",
            "1",
            "--cache-dir",
            str(tmp_path / "c"),
            "--log-every",
            "1",
            "--num-workers",
            "0",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not any(r["kind"] == "step" for r in read_metrics(out / "metrics.jsonl")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    assert "resume with" in output
    last = load_checkpoint(out / "last.pt")
    assert last["train_state"]["step"] >= 1
    assert read_metrics(out / "metrics.jsonl")[-1]["event"] == "stopped"


def _torchrun_train(coco, out, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m captioning train` as two CPU processes under torchrun (gloo)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "captioning",
               "train", "--coco-root", str(coco), "--out", str(out), "--vocab-threshold", "1", "--log-every", "1",
               "--num-workers", "0", "--device", "cpu", *args]  # fmt: skip
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_torchrun_two_processes_write_one_set_of_logs(tiny_coco, tmp_path):
    out = tmp_path / "ddp"
    result = _torchrun_train(tiny_coco, out, "--epochs", "2", "--scst-epochs", "1", "--scst-batch-size", "4",
                             "--batch-size", "8", "--cache-dir", str(tmp_path / "c"))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    records = read_metrics(out / "metrics.jsonl")
    steps = [r["step"] for r in records if r["kind"] == "step"]
    # 120 captions / 2 ranks / batch 8 = 8 steps an epoch, 2 epochs; then 24 images / 2 ranks / 4 = 3 SCST steps
    assert steps == list(range(1, 20))
    assert [r["phase"] for r in records if r["kind"] == "step" and "reward" in r] == ["scst"] * 3
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    events = [r["event"] for r in records if r["kind"] == "event" and r["event"] != "progress"]
    assert events[0] == "start" and events[-1] == "finished" and set(events[1:-1]) <= {"scst_start"}
    image = load_image(sorted((tiny_coco / "val").iterdir())[0])
    caption = Captioner.from_checkpoint(out / "best.pt", device="cpu").caption([image])[0]
    assert len(caption.words) >= 2


@pytest.mark.slow
def test_torchrun_end_to_end_ranks_skip_an_unreadable_batch_together(tiny_coco, tmp_path):
    # one image per step: the truncated image's 5 captions make empty batches on one rank while the other
    # rank has a good image; unless both skip that step, their gradient syncs pair up wrong and the run hangs
    root = tmp_path / "coco"
    shutil.copytree(tiny_coco, root)
    victim = sorted((root / "train").iterdir())[5]
    victim.write_bytes(victim.read_bytes()[:200])
    out = tmp_path / "e2e"
    result = _torchrun_train(root, out, "--end-to-end", "--epochs", "1", "--batch-size", "1", "--no-val", timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert victim.name in result.stderr  # reported, not silently dropped
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "step"]
    assert 55 <= len(steps) < 60 and steps == list(range(1, len(steps) + 1))  # 60 per rank, less 1-5 skipped


@pytest.mark.slow
@needs_shared_coco
def test_short_real_run_on_the_coco_sample(tmp_path):
    train_ids = CocoSplit.load(SHARED_COCO, "train").ids[:400]
    val_ids = CocoSplit.load(SHARED_COCO, "val").ids[:100]
    (tmp_path / "train.txt").write_text("\n".join(map(str, train_ids)))
    (tmp_path / "val.txt").write_text("\n".join(map(str, val_ids)))
    cfg = TrainConfig.of(coco_root=str(SHARED_COCO), out=str(tmp_path / "run"), train_ids=str(tmp_path / "train.txt"),
                      val_ids=str(tmp_path / "val.txt"), epochs=2, batch_size=20, vocab_threshold=3,
                      cache_dir=str(tmp_path / "cache"), log_every=10, seed=0)  # fmt: skip
    epochs = []
    result = fit(cfg, Callbacks(on_epoch=epochs.append))
    steps = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "step"]
    assert result.step == 200 and result.status == "finished"  # 2,000 captions / 20 = 100 steps an epoch
    assert steps[-1]["loss"] < steps[0]["loss"] - 1.0  # 5.0 -> 3.7 in 200 steps
    assert epochs[-1]["val_loss"] < epochs[0]["val_loss"] and epochs[-1]["CIDEr"] > epochs[0]["CIDEr"]
    val = CocoSplit.load(SHARED_COCO, "val")
    caption = Captioner.from_checkpoint(tmp_path / "run" / "best.pt").caption([load_image(val.files[val_ids[0]])])
    assert len(caption[0].words) >= 3


def test_a_budget_bounds_validations_saves_and_time_and_the_log_says_each_stage(tiny_coco, tmp_path, monkeypatch):
    """A visitor's 1-image, 200-epoch fine-tune runs 3 validations (not 200) with a few saves; a spent time
    budget ends the run cleanly with its epoch validated and best.pt saved; extraction and validation log their
    progress for the Fine-tune page."""
    from captioning import train

    saves = []
    real_save = train.save_checkpoint
    monkeypatch.setattr(train, "save_checkpoint", lambda path, ckpt: saves.append(path.name) or real_save(path, ckpt))
    one = tmp_path / "one.txt"
    one.write_text(str(CocoSplit.load(tiny_coco, "train").ids[0]))
    cfg = _cfg(tiny_coco, tmp_path, train_ids=str(one), epochs=200, max_validations=3, save_every=10_000)
    result = fit(cfg)
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert result.status == "finished" and result.step == 200  # one step an epoch
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [67, 134, 200]  # every 67th, and the last
    assert saves.count("last.pt") == 3 and 1 <= saves.count("best.pt") <= 3
    stages = {(r["stage"], r["done"] == r["total"]) for r in records if r.get("event") == "progress"}
    assert {("features train", True), ("features val", True), ("validation", True)} <= stages

    saves.clear()
    timed = _cfg(tiny_coco, tmp_path, out=str(tmp_path / "timed"), epochs=1000, max_minutes=0.001)
    result = fit(timed)  # a budget of 0.06 s: spent after the first step
    records = read_metrics(tmp_path / "timed" / "metrics.jsonl")
    assert result.status == "finished" and result.step < 20
    assert len([r for r in records if r["kind"] == "epoch"]) == 1 and (tmp_path / "timed" / "best.pt").is_file()


def test_a_resumed_fine_tune_needs_its_last_pt_not_its_base(tiny_checkpoint, tiny_coco, tmp_path):
    """A resume continues from last.pt alone: the base checkpoint it was started from may be gone by then."""
    base = tmp_path / "base.pt"
    shutil.copy(tiny_checkpoint, base)
    cfg = _cfg(tiny_coco, tmp_path, init_from=str(base), epochs=2)
    steps: list[dict] = []
    stopped = fit(cfg, Callbacks(on_step=steps.append, should_stop=lambda: bool(steps)))  # after its first step
    assert stopped.status == "stopped" and (tmp_path / "run" / "last.pt").is_file()
    base.unlink()
    result = fit(cfg, resume=True)
    assert result.status == "finished" and result.step > stopped.step
