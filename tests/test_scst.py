"""Self-critical training: the CIDEr-D reward, sampling, the policy-gradient step, and SCST in fit()."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from fixtures import REFS

from captioning.checkpoint import load_checkpoint, model_from_checkpoint
from captioning.cider import END, CiderD, words_for_reward
from captioning.config import ModelConfig, TrainConfig
from captioning.decoding import sample
from captioning.model import CaptionModel
from captioning.rundir import read_metrics
from captioning.scst import scst_loss
from captioning.train import Callbacks, fit
from captioning.vocab import Vocabulary, tokenize


def test_reward_prefers_the_right_image_and_a_finished_sentence():
    cider = CiderD.from_captions(REFS)

    def reward(image_id, caption):
        return cider.score(image_id, words_for_reward(tokenize(caption)))

    right = reward(1, "A man riding a wave on a surfboard.")
    assert right > 1.0 > 0.1 > reward(2, "A man riding a wave on a surfboard.")
    assert reward(1, "A man riding a") < reward(1, "A man riding a wave")
    assert words_for_reward(["a", "dog", ",", "running", "."]) == ["a", "dog", "running", END]


def _model(decoder: str) -> tuple[CaptionModel, Vocabulary]:
    vocab = Vocabulary(["<pad>", "<start>", "<end>", "<unk>", "a", "dog", "cat", "runs", "sleeps"])
    cfg = ModelConfig("efficientnet_lite0", decoder, 16, 32, 16, 0.0, len(vocab))
    torch.manual_seed(0)
    return CaptionModel(cfg), vocab


@pytest.mark.parametrize("decoder", ["showtell", "attention"])
def test_sample_draws_k_captions_per_image_with_gradients(decoder):
    model, vocab = _model(decoder)
    feats = torch.randn(3, 1280) if decoder == "showtell" else torch.randn(3, 49, 1280)
    ids, logps = model.decoder(feats, sample={"vocab": vocab, "k": 4, "max_len": 6})
    assert ids.shape == logps.shape and ids.size(0) == 12 and ids.size(1) <= 7
    for row, lp in zip(ids.tolist(), logps.tolist()):
        n = row.index(vocab.end_id) + 1 if vocab.end_id in row else len(row)
        assert all(i not in (vocab.pad_id, vocab.start_id) for i in row[:n])  # never drawn
        assert all(i == vocab.pad_id for i in row[n:]) and all(x == 0 for x in lp[n:])
        assert all(x < 0 for x in lp[: n - 1])
    logps.sum().backward()
    assert model.decoder.fc.weight.grad.abs().sum() > 0


def test_policy_gradient_step_makes_better_captions_likelier():
    """One SCST step raises the log-probability of the samples that beat their siblings."""
    model, vocab = _model("showtell")
    feats = torch.randn(2, 1280)
    refs = {10: ["a dog runs"] * 5, 11: ["a cat sleeps"] * 5}
    cider = CiderD.from_captions(refs)
    torch.manual_seed(1)
    ids, _ = sample(model.decoder, feats, vocab, k=8, max_len=4)
    rewards = torch.tensor([cider.score([10, 11][n // 8], words_for_reward(vocab.decode(r).lower().split()))
                            for n, r in enumerate(ids.tolist())])  # fmt: skip

    def seq_logp():
        with torch.no_grad():
            lps = []
            for n, row in enumerate(ids.tolist()):
                n_words = row.index(vocab.end_id) + 1 if vocab.end_id in row else len(row)
                caption = torch.tensor([[vocab.start_id, *row[:n_words]]])
                logits, _ = model.decoder(feats[n // 8 : n // 8 + 1], caption, torch.tensor([n_words + 1]))
                lps.append(float(logits.log_softmax(-1)[0].gather(1, caption[0, 1:, None]).sum()))
            return torch.tensor(lps)

    before = seq_logp()
    optimizer = torch.optim.SGD(model.decoder.parameters(), lr=0.5)
    torch.manual_seed(1)  # the same samples as above
    loss, reward = scst_loss(model.decoder, feats, [10, 11], vocab, cider, k=8, max_len=4)
    assert reward == pytest.approx(float(rewards.mean()), rel=1e-6)
    loss.backward()
    optimizer.step()
    change = seq_logp() - before
    assert rewards.max() > rewards.min()
    best, worst = int(rewards.argmax()), int(rewards.argmin())
    assert change[best] > change[worst]


def test_scst_needs_two_samples_and_cached_features():
    base = dict(coco_root=".", out="runs/x")
    with pytest.raises(ValueError, match="scst_samples"):
        TrainConfig.of(**base, scst_epochs=1, scst_samples=1)
    with pytest.raises(ValueError, match="end_to_end"):
        TrainConfig.of(**base, scst_epochs=1, end_to_end=True)
    with pytest.raises(ValueError, match="add up to at least 1"):
        TrainConfig.of(**base, epochs=0)
    assert TrainConfig.of(**base, epochs=0, scst_epochs=2).scst_epochs == 2  # SCST-only fine-tuning


def _cfg(coco, tmp_path, **kw) -> TrainConfig:
    base = dict(coco_root=str(coco), out=str(tmp_path / "run"), batch_size=16, vocab_threshold=1, decoder="attention",
                attention_size=32, embed_size=32, hidden_size=64, cache_dir=str(tmp_path / "cache"), num_workers=0,
                log_every=1, seed=0, flip=True, epochs=1, scst_epochs=2, scst_batch_size=6, scst_lr=1e-3)  # fmt: skip
    return TrainConfig.of(**{**base, **kw})


def test_fit_runs_self_critical_epochs_after_cross_entropy_and_resumes_exactly(tiny_coco, tmp_path):
    whole = _cfg(tiny_coco, tmp_path, out=str(tmp_path / "whole"), scst_lr_schedule="cosine")
    seen: list[dict] = []
    result = fit(whole, Callbacks(on_step=seen.append))
    assert result.status == "finished" and result.epoch == 3
    records = read_metrics(tmp_path / "whole" / "metrics.jsonl")
    steps = [r for r in records if r["kind"] == "step"]
    xe = [r for r in steps if "loss" in r]
    scst = [r for r in steps if r.get("phase") == "scst"]
    assert len(xe) == 8 and len(scst) == 8  # 120 captions / 16; then 24 images / 6 per step, 2 epochs
    assert [r["step"] for r in steps] == list(range(1, 17))
    assert all(0 <= r["reward"] for r in scst)
    lrs = [r["lr"] for r in scst]  # the SCST schedule restarts at scst_lr and anneals to 0 over its 8 steps
    assert lrs[0] == pytest.approx(1e-3) and lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.05e-3
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2, 3]  # validated after each phase epoch
    assert load_checkpoint(tmp_path / "whole" / "best.pt")["provenance"]["epochs"] >= 1

    parts = replace(whole, out=str(tmp_path / "parts"))
    seen_parts: list[dict] = []
    stop = fit(parts, Callbacks(on_step=seen_parts.append, should_stop=lambda: len(seen_parts) == 11))
    assert stop.status == "stopped" and stop.step == 11  # inside the first SCST epoch
    fit(parts, Callbacks(on_step=seen_parts.append), resume=True)
    assert [r.get("reward", r.get("loss")) for r in seen_parts] == pytest.approx(
        [r.get("reward", r.get("loss")) for r in seen], abs=1e-6
    )
    a = load_checkpoint(tmp_path / "whole" / "last.pt")["decoder_state"]
    b = load_checkpoint(tmp_path / "parts" / "last.pt")["decoder_state"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_scst_fine_tunes_an_existing_model(tiny_checkpoint, tiny_coco, tmp_path):
    cfg = _cfg(tiny_coco, tmp_path, decoder="showtell", flip=False, epochs=0, scst_epochs=1,
               init_from=str(tiny_checkpoint), scst_lr=1e-4)  # fmt: skip
    result = fit(cfg)
    assert result.status == "finished" and result.step == 4
    lrs = [r["lr"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "step"]
    assert lrs == [1e-4] * 4  # constant unless asked
    model, vocab = model_from_checkpoint(load_checkpoint(tmp_path / "run" / "best.pt"), with_backbone=False)
    assert vocab == model_from_checkpoint(load_checkpoint(tiny_checkpoint), with_backbone=False)[1]


def _scripted_validation(monkeypatch, ciders: list[float]) -> None:
    """Val CIDEr per epoch as given, so which cross-entropy epoch is best is known in advance."""
    scores = iter(ciders)

    def validate(*args, **kwargs):
        return {"val_loss": 1.0, "val_perplexity": 2.7, "method": "greedy", "images": 6, "CIDEr": next(scores)}

    monkeypatch.setattr("captioning.train.validate", validate)


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("interrupted", [False, True])
def test_scst_starts_from_the_best_cross_entropy_epoch(tiny_coco, tmp_path, monkeypatch, interrupted):
    # cross-entropy epochs score 0.5, 0.9, 0.3: the SCST epoch (0.1) must start from epoch 2's weights. Its lr is
    # so small that the model it leaves is still epoch 2's: the best checkpoint's weights, within Adam's tiny steps.
    _scripted_validation(monkeypatch, [0.5, 0.9, 0.3, 0.1])
    cfg = _cfg(tiny_coco, tmp_path, epochs=3, scst_epochs=1, scst_lr=1e-9)
    if interrupted:  # stopped inside epoch 3 and resumed: the best weights come back from best.pt
        seen: list[dict] = []
        assert fit(cfg, Callbacks(on_step=seen.append, should_stop=lambda: len(seen) == 20)).status == "stopped"
        assert fit(cfg, resume=True).status == "finished"
    else:
        assert fit(cfg).status == "finished"
    run = tmp_path / "run"
    best = load_checkpoint(run / "best.pt")
    assert best["provenance"]["epochs"] == 2
    assert _max_diff(load_checkpoint(run / "last.pt")["decoder_state"], best["decoder_state"]) < 1e-6
    starts = [r for r in read_metrics(run / "metrics.jsonl") if r.get("event") == "scst_start"]
    assert [(r["from_epoch"], r["best_cider"]) for r in starts] == [(2, 0.9)]


def test_scst_can_start_from_the_last_cross_entropy_epoch(tiny_coco, tmp_path, monkeypatch):
    _scripted_validation(monkeypatch, [0.5, 0.9, 0.3, 0.1])
    fit(_cfg(tiny_coco, tmp_path, epochs=3, scst_epochs=1, scst_lr=1e-9, scst_start="last"))
    run = tmp_path / "run"
    # epoch 3 trained on at lr 1e-3 after the best checkpoint, so the final model is visibly not epoch 2's
    assert (
        _max_diff(load_checkpoint(run / "last.pt")["decoder_state"], load_checkpoint(run / "best.pt")["decoder_state"])
        > 1e-4
    )
    assert not [r for r in read_metrics(run / "metrics.jsonl") if r.get("event") == "scst_start"]
    with pytest.raises(ValueError, match="scst_start"):
        _cfg(tiny_coco, tmp_path, scst_start="first")
