"""What a training run trains with, built once: `build_run(config)` gives the data, model, vocabulary,
feature stores and phases as one `Run`."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from captioning import distributed as dist
from captioning import rundir
from captioning.checkpoint import load_checkpoint, model_from_checkpoint
from captioning.config import TrainConfig
from captioning.data import CocoSplit
from captioning.features import FeatureStore, build_cache
from captioning.io import atomic_write_text
from captioning.model import CaptionModel, feature_kind
from captioning.phases import CrossEntropyPhase, SelfCriticalPhase
from captioning.vocab import Vocabulary


@dataclass
class Run:
    """Everything a run trains with, built once by `build_run`."""

    cfg: TrainConfig
    ctx: dist.DistContext
    device: torch.device
    folder: rundir.RunDir
    model: CaptionModel
    vocab: Vocabulary
    val: CocoSplit | None
    val_store: FeatureStore | None
    xe: CrossEntropyPhase
    scst: SelfCriticalPhase | None
    total_steps: int
    images: int  # in the train split
    log: rundir.RunLog | None  # rank 0 only
    last_metrics: dict = field(default_factory=dict)  # the latest validation, saved in every checkpoint

    def phase(self, epoch: int) -> CrossEntropyPhase | SelfCriticalPhase:
        return self.xe if epoch < self.cfg.epochs else self.scst


def build_run(
    cfg: TrainConfig,
    ctx: dist.DistContext,
    device: torch.device,
    resume_ckpt: dict | None,
    progress: bool = False,
    on_phase: Callable[[str, int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Run:
    """Data, model, vocabulary, feature stores and phases; rank 0 writes config.json and vocab.json.
    Raises features.ExtractionStopped when `should_stop` says so while features are extracted."""
    torch.manual_seed(cfg.seed)
    train_split = CocoSplit.load(Path(cfg.coco_root), cfg.train_split, _path(cfg.train_ids))
    val = CocoSplit.load(Path(cfg.coco_root), cfg.val_split, _path(cfg.val_ids)) if cfg.val_split else None
    model, vocab = _model_and_vocab(cfg, train_split, resume_ckpt or _init_checkpoint(cfg))
    model.to(device)
    folder = rundir.RunDir(cfg.out)
    if ctx.rank == 0:
        folder.path.mkdir(parents=True, exist_ok=True)
        config = {"train": cfg.to_dict(), "model": model.cfg.to_dict(), "world_size": ctx.world}
        atomic_write_text(folder.config, json.dumps(config, indent=2))
        vocab.save(folder.vocab)
    stores = (
        {}
        if cfg.end_to_end
        else _feature_stores(cfg, model, train_split, val, ctx, device, progress, on_phase, should_stop)
    )
    use_amp = cfg.amp and device.type == "cuda"
    xe = CrossEntropyPhase.create(cfg, train_split, vocab, model, stores.get("train"), ctx.world, use_amp)
    scst = SelfCriticalPhase.create(cfg, train_split, vocab, stores["train"], ctx) if cfg.scst_epochs else None
    xe_steps = cfg.epochs * xe.steps_per_epoch
    total = min(xe_steps + cfg.scst_epochs * (scst.steps_per_epoch if scst else 0), cfg.max_steps or 10**12)
    xe.total_steps = min(xe_steps, total)  # what the cross-entropy lr schedule spans
    if scst is not None:
        scst.first_step, scst.total_steps = xe.total_steps, total
    log = rundir.RunLog(folder.metrics) if ctx.rank == 0 else None
    return Run(cfg, ctx, device, folder, model, vocab, val, stores.get("val"), xe, scst, total, len(train_split), log)


def _init_checkpoint(cfg: TrainConfig) -> dict | None:
    return load_checkpoint(Path(cfg.init_from)) if cfg.init_from else None


def _model_and_vocab(cfg: TrainConfig, train: CocoSplit, base: dict | None) -> tuple[CaptionModel, Vocabulary]:
    """A fine-tune or resume keeps the checkpoint's model and vocabulary; a new run builds both."""
    if base is not None:
        model, vocab = model_from_checkpoint(base, with_backbone=cfg.end_to_end, source="checkpoint")
        if cfg.model.finetune_cnn and not model.cfg.finetune_cnn:
            model.cfg = replace(model.cfg, finetune_cnn=True)
            model.backbone.requires_grad_(True)
        return model, vocab
    vocab = Vocabulary.build(train.all_captions(), cfg.vocab_threshold)
    mcfg = replace(cfg.model, vocab_size=len(vocab))
    return CaptionModel.create(mcfg, pretrained=True, with_backbone=cfg.end_to_end), vocab


def _feature_stores(cfg, model, train, val, ctx, device, progress, on_phase, should_stop) -> dict[str, FeatureStore]:
    """Every rank extracts its share of whatever is not cached yet, then all read the same cache."""
    kind, stores = feature_kind(model.cfg), {}
    for name, split, views in (("train", train, 2 if cfg.flip else 1), ("val", val, 1)):
        if split is None:
            continue
        on_batch = None
        if ctx.rank == 0 and on_phase:
            on_batch = functools.partial(on_phase, f"features {name}")
        stores[name] = build_cache(
            split,
            model.cfg.backbone,
            kind,
            views=views,
            cache_dir=Path(cfg.cache_dir),
            device=device,
            num_workers=cfg.num_workers,
            progress=progress and ctx.rank == 0,
            on_batch=on_batch,
            should_stop=should_stop,
            ctx=ctx,
        )
    return stores


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None
