"""The training loop shared by the CLI and the app: `fit(config, callbacks)`.

Trains the decoder on cached frozen-CNN features (or end to end through the CNN), validates each
epoch with BLEU-4 / CIDEr, writes `metrics.jsonl`, `last.pt` and `best.pt` atomically, resumes
exactly, stops cleanly on request, and runs under `torchrun` with DistributedDataParallel.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from captioning import distributed as dist
from captioning.checkpoint import (
    checkpoint_dict,
    load_checkpoint,
    model_from_checkpoint,
    provenance,
    save_checkpoint,
)
from captioning.config import ModelConfig
from captioning.data import CocoSplit, collate_captions, warn_skipped
from captioning.datasets import CachedImages, CachedPairs, ImagePairs, batches_for_epoch, encode_captions
from captioning.inference import resolve_device
from captioning.io import atomic_write_text
from captioning.model import CaptionModel, caption_loss, feature_kind
from captioning.runlog import RunLog
from captioning.scst import scst_loss
from captioning.trainconfig import TrainConfig
from captioning.validate import validate
from captioning.vocab import Vocabulary


@dataclass
class Callbacks:
    """Where progress goes is the caller's business: a terminal bar, a chart, a test list."""

    on_step: Callable[[dict], None] | None = None
    on_epoch: Callable[[dict], None] | None = None
    on_phase: Callable[[str, int, int], None] | None = None  # ("features train", done, total)
    should_stop: Callable[[], bool] | None = None


@dataclass
class FitResult:
    status: str  # "finished", "stopped" (on request; resumable) or "early_stopped"
    step: int
    epoch: int
    best_cider: float | None
    out_dir: Path


RESUME_OVERRIDES = (
    "epochs",
    "scst_epochs",
    "max_steps",
    "patience",
    "device",
    "num_workers",
    "log_every",
    "save_every",
)


def fit(
    cfg: TrainConfig, callbacks: Callbacks | None = None, resume: bool = False, progress: bool = False
) -> FitResult:
    """Train as `cfg` says. With `resume`, continue `cfg.out/last.pt` where it stopped."""
    cb = callbacks or Callbacks()
    out = cfg.out_dir
    resume_ckpt = None
    if resume:
        if not (out / "last.pt").is_file():
            raise FileNotFoundError(f"nothing to resume: {out / 'last.pt'} does not exist")
        resume_ckpt = load_checkpoint(out / "last.pt")
        if "train_state" not in resume_ckpt:
            raise ValueError(f"{out / 'last.pt'} has no training state to resume from")
        saved = TrainConfig.from_dict(resume_ckpt["train_state"]["config"])
        cfg = replace(saved, **{k: getattr(cfg, k) for k in RESUME_OVERRIDES})
    ctx = dist.setup(cfg.device)
    device = ctx.device if ctx.world > 1 else resolve_device(cfg.device)
    try:
        return _fit(cfg, cb, resume_ckpt, ctx, device, progress)
    finally:
        dist.teardown(ctx)


def _fit(cfg, cb, resume_ckpt, ctx, device, progress) -> FitResult:
    out = cfg.out_dir
    torch.manual_seed(cfg.seed)
    train = CocoSplit.load(Path(cfg.coco_root), cfg.train_split, _path(cfg.train_ids))
    val = CocoSplit.load(Path(cfg.coco_root), cfg.val_split, _path(cfg.val_ids)) if cfg.val_split else None

    base = resume_ckpt or (load_checkpoint(Path(cfg.init_from)) if cfg.init_from else None)
    if base is not None:  # fine-tune or resume: the checkpoint's model and vocabulary are kept
        model, vocab = model_from_checkpoint(base, with_backbone=cfg.end_to_end, source="checkpoint")
        if cfg.finetune_cnn and not model.cfg.finetune_cnn:
            model.cfg = replace(model.cfg, finetune_cnn=True)
            model.backbone.requires_grad_(True)
    else:
        vocab = Vocabulary.build(train.all_captions(), cfg.vocab_threshold)
        mcfg = ModelConfig(
            cfg.backbone,
            cfg.decoder,
            cfg.embed_size,
            cfg.hidden_size,
            cfg.attention_size,
            cfg.dropout,
            len(vocab),
            cfg.finetune_cnn,
        )
        model = CaptionModel.create(mcfg, pretrained=True, with_backbone=cfg.end_to_end)
    model.to(device)
    kind = feature_kind(model.cfg)

    if ctx.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            out / "config.json",
            json.dumps({"train": cfg.to_dict(), "model": model.cfg.to_dict(), "world_size": ctx.world}, indent=2),
        )
        vocab.save(out / "vocab.json")

    stores = {}
    if not cfg.end_to_end:  # rank 0 extracts, the others wait and then read the same cache
        for name, split, views in (("train", train, 2 if cfg.flip else 1), ("val", val, 1)):
            if split is None:
                continue
            if ctx.rank == 0:
                stores[name] = _cache(split, model.cfg.backbone, kind, views, cfg, device, progress, cb, name)
            dist.barrier(ctx)
            if ctx.rank != 0:
                stores[name] = _cache(split, model.cfg.backbone, kind, views, cfg, device, False, None, name)

    pairs = encode_captions(train, vocab, stores["train"].ids if "train" in stores else None)
    dataset = (
        CachedPairs(pairs, stores["train"], cfg.seed)
        if not cfg.end_to_end
        else ImagePairs(pairs, train, model.spec.preprocess, cfg.flip, cfg.seed)
    )
    images, cider = None, None
    if cfg.scst_epochs:  # every rank scores its own samples, so every rank needs the references
        from captioning.scst import CiderD

        images = CachedImages(stores["train"], cfg.seed)
        cider = CiderD.from_captions({i: train.captions[i] for i in stores["train"].ids})
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    trainable = dist.wrap(model if cfg.end_to_end else model.decoder, ctx)
    xe_per_epoch = math.ceil(math.ceil(len(dataset) / ctx.world) / cfg.batch_size)
    scst_per_epoch = math.ceil(math.ceil(len(images) / ctx.world) / cfg.scst_batch_size) if images else 0
    xe_steps = cfg.epochs * xe_per_epoch
    total_steps = min(xe_steps + cfg.scst_epochs * scst_per_epoch, cfg.max_steps or 10**12)
    xe_total = min(xe_steps, total_steps)  # what the cross-entropy lr schedule spans

    torch.manual_seed(cfg.seed + 1)  # dropout draws start the same whether or not the cache was just built
    state = {"step": 0, "epoch": 0, "batch": 0, "best_cider": None, "best_epoch": None, "bad_epochs": 0, "elapsed": 0.0}
    log = RunLog(out / "metrics.jsonl") if ctx.rank == 0 else None
    best_weights = None  # the best cross-entropy epoch's weights, where SCST starts from (scst_start "best")
    if resume_ckpt is not None:
        ts = resume_ckpt["train_state"]
        state.update({k: ts[k] for k in state if k in ts})
        if _scst_restarts_from_best(cfg, state) and (out / "best.pt").is_file():
            best_weights = load_checkpoint(out / "best.pt")["decoder_state"]
        optimizer.load_state_dict(ts["optimizer"])
        if ts.get("scaler"):
            scaler.load_state_dict(ts["scaler"])
        torch.set_rng_state(ts["rng_cpu"])
        if log:
            log.truncate_after(state["step"])
            log.write({"kind": "event", "event": "resume", "step": state["step"], "epoch": state["epoch"]})
    elif log:
        log.write(
            {
                "kind": "event",
                "event": "start",
                "step": 0,
                "epoch": 0,
                "steps_per_epoch": xe_per_epoch,
                "scst_steps_per_epoch": scst_per_epoch,
                "total_steps": total_steps,
                "images": len(train),
                "captions": len(pairs),
                "vocab": len(vocab),
                "world_size": ctx.world,
            }
        )

    def save(name: str, metrics: dict | None = None) -> None:
        if ctx.rank != 0:
            return
        ts = {
            **state,
            "config": cfg.to_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if use_amp else None,
            "rng_cpu": torch.get_rng_state(),
        }
        prov = provenance(
            coco_root=str(cfg.coco_root),
            train_split=cfg.train_split,
            val_split=cfg.val_split,
            steps=state["step"],
            epochs=state["epoch"],
            init_from=cfg.init_from,
            world_size=ctx.world,
        )
        ckpt = checkpoint_dict(
            model, vocab, metrics=metrics, provenance=prov, train_state=ts if name == "last.pt" else None
        )
        save_checkpoint(out / name, ckpt)

    last_metrics: dict = resume_ckpt.get("metrics", {}) if resume_ckpt else {}
    status, t0 = "finished", time.time() - state["elapsed"]
    bad_images: list[str] = []
    while state["epoch"] < cfg.epochs + cfg.scst_epochs and state["step"] < total_steps:
        model.train()
        scst = state["epoch"] >= cfg.epochs  # cross-entropy first, then self-critical epochs
        if scst and state["epoch"] == cfg.epochs and state["batch"] == 0:
            if _scst_restarts_from_best(cfg, state) and best_weights is not None:
                # later cross-entropy epochs overfit (val CIDEr falls): reward-train the best one instead
                model.decoder.load_state_dict(best_weights)
                if log:
                    log.write(
                        {
                            "kind": "event",
                            "event": "scst_start",
                            "step": state["step"],
                            "epoch": state["epoch"],
                            "from_epoch": state["best_epoch"],
                            "best_cider": state["best_cider"],
                        }
                    )
            best_weights = None
            # fresh Adam moments: the reward's gradients are nothing like the cross-entropy's
            optimizer = torch.optim.Adam(params, lr=cfg.scst_lr)
        data, steps_per_epoch = (images, scst_per_epoch) if scst else (dataset, xe_per_epoch)
        data.set_epoch(state["epoch"])
        batch_size = cfg.scst_batch_size if scst else cfg.batch_size
        batches = batches_for_epoch(len(data), batch_size, cfg.seed, state["epoch"], ctx.rank, ctx.world)
        loader = DataLoader(
            data,
            batch_sampler=batches[state["batch"] :],
            collate_fn=_collate_images if scst else _collate_skip(bad_images),
            num_workers=cfg.num_workers if cfg.end_to_end else 0,
            generator=torch.Generator().manual_seed(cfg.seed + state["epoch"]),  # not the global RNG (dropout's)
        )
        stopped = False
        for batch in loader:
            skip = batch is None  # every image of this batch was unreadable
            if cfg.end_to_end:  # ranks skip together, or DDP pairs one rank's gradients with another's next step
                skip = dist.any_true(skip, ctx)
            if skip:
                state["batch"] += 1  # a place in the epoch, not an optimizer step
                continue
            t_step = time.time()
            reward = None
            if scst:
                inputs, image_ids = batch
                inputs = inputs.to(device)
                loss, reward = scst_loss(trainable, inputs, image_ids, vocab, cider, cfg.scst_samples, cfg.scst_max_len)
            else:
                inputs, captions, lengths = batch
                inputs, captions = inputs.to(device), captions.to(device)
                with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                    extra = {"from_images": True} if cfg.end_to_end else {}
                    logits, alphas = trainable(inputs, captions, lengths, **extra)
                    loss = caption_loss(
                        logits.float(),
                        captions,
                        None if alphas is None else alphas.float(),
                        cfg.label_smoothing,
                        cfg.attention_reg,
                    )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            if scst:
                lr = _scst_lr_at(cfg, state["step"] - xe_total, total_steps - xe_total)
            else:
                lr = _lr_at(cfg, state["step"], xe_total, xe_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            scaler.step(optimizer)
            scaler.update()
            state["step"] += 1
            state["batch"] += 1
            if state["step"] % cfg.log_every == 0 or state["step"] == total_steps:
                loss_value = dist.mean(loss.detach(), ctx)
                record = {
                    "kind": "step",
                    "step": state["step"],
                    "epoch": state["epoch"] + state["batch"] / steps_per_epoch,
                }
                if scst:  # a policy-gradient loss hovers around 0: the reward is the curve to watch
                    mean_reward = dist.mean(torch.tensor(reward, device=ctx.device), ctx)
                    record.update({"phase": "scst", "scst_loss": loss_value, "reward": mean_reward})
                else:
                    record.update({"loss": loss_value, "perplexity": math.exp(min(loss_value, 50.0))})
                record.update(
                    {
                        "lr": lr,
                        "elapsed": round(time.time() - t0, 3),
                        "images_per_s": round(inputs.size(0) * ctx.world / max(time.time() - t_step, 1e-6), 1),
                        "total_steps": total_steps,
                    }
                )
                if log:
                    log.write(record)
                if cb.on_step:
                    cb.on_step(record)
            state["elapsed"] = time.time() - t0
            if state["step"] % cfg.save_every == 0:
                save("last.pt", last_metrics)
            if dist.any_true(bool(cb.should_stop and cb.should_stop()), ctx):
                stopped = True
                break
            if state["step"] >= total_steps:
                break
        warn_skipped(f"split {cfg.train_split}", sorted(set(bad_images)), "could not be read")
        bad_images.clear()
        if stopped:
            save("last.pt", last_metrics)
            status = "stopped"
            if log:
                log.write({"kind": "event", "event": "stopped", "step": state["step"], "epoch": state["epoch"]})
            break
        epoch_done = state["batch"] >= steps_per_epoch
        if epoch_done:
            state["epoch"] += 1
            state["batch"] = 0
        record = _validate(cfg, model, vocab, val, stores.get("val"), device, ctx, state)
        if record is not None:
            last_metrics = {"val": record}
            if log:
                log.write(record)
            if cb.on_epoch:
                cb.on_epoch(record)
        improved = record is None or state["best_cider"] is None or record["CIDEr"] > state["best_cider"]
        if improved:
            state["best_cider"] = record["CIDEr"] if record else None
            state["best_epoch"] = state["epoch"]
            state["bad_epochs"] = 0
            if cfg.scst_epochs and state["epoch"] <= cfg.epochs:
                best_weights = _weights_of(model)
        else:
            state["bad_epochs"] += 1
        save("last.pt", last_metrics)
        if improved:
            save("best.pt", last_metrics)
        if cfg.patience is not None and state["bad_epochs"] >= cfg.patience:
            status = "early_stopped"
            break
    if log:
        log.write(
            {
                "kind": "event",
                "event": status,
                "step": state["step"],
                "epoch": state["epoch"],
                "best_cider": state["best_cider"],
                "elapsed": round(time.time() - t0, 3),
            }
        )
    return FitResult(status, state["step"], state["epoch"], state["best_cider"], out)


def _validate(cfg, model, vocab, val, store, device, ctx, state) -> dict | None:
    if val is None:
        return None
    model.eval()
    try:
        metrics = validate(
            model, vocab, val, store, device, ctx, cfg.val_method, cfg.val_beam_size, cfg.val_limit, cfg.batch_size
        )
    finally:
        model.train()
    return {"kind": "epoch", "step": state["step"], "epoch": state["epoch"], **metrics}


def _cache(split, backbone, kind, views, cfg, device, progress, cb, name):
    from captioning.features import build_cache

    on_batch = (lambda done, total: cb.on_phase(f"features {name}", done, total)) if cb and cb.on_phase else None
    return build_cache(
        split,
        backbone,
        kind,
        views=views,
        cache_dir=Path(cfg.cache_dir),
        device=device,
        num_workers=cfg.num_workers,
        progress=progress,
        on_batch=on_batch,
    )


def _collate_images(items):
    return torch.stack([x for x, _ in items]), [i for _, i in items]


def _collate_skip(bad: list[str]):
    def collate(items):
        good = []
        for item in items:
            if item[0] is None:
                bad.append(item[1])
            else:
                good.append(item)
        return collate_captions(good) if good else None

    return collate


def _scst_restarts_from_best(cfg: TrainConfig, state: dict) -> bool:
    """Whether the SCST phase, not yet begun, starts from a better cross-entropy epoch than the last."""
    not_begun = state["epoch"] < cfg.epochs or (state["epoch"] == cfg.epochs and state["batch"] == 0)
    best = state["best_epoch"]
    return bool(cfg.scst_epochs and cfg.scst_start == "best" and not_begun and best is not None and best < cfg.epochs)


def _weights_of(model) -> dict:
    # SCST runs on cached features, so the decoder is all there is to train
    return {k: v.detach().clone() for k, v in model.decoder.state_dict().items()}


def _lr_at(cfg: TrainConfig, step: int, total: int, per_epoch: int) -> float:
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(step / max(total, 1), 1.0)))
    if cfg.lr_schedule == "step":
        return cfg.lr * cfg.lr_gamma ** (step // (cfg.lr_step_epochs * per_epoch))
    return cfg.lr


def _scst_lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    """SCST's own schedule, counted from its first step: constant, or cosine down to 0 at its end."""
    if cfg.scst_lr_schedule == "cosine":
        return cfg.scst_lr * 0.5 * (1 + math.cos(math.pi * min(step / max(total, 1), 1.0)))
    return cfg.scst_lr


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None
