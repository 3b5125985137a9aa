"""What a training run trains with and where it stands: `build_run(config)` gives the model, vocabulary, data
and phases as one `Run`, built once; `TrainState`, `Optimiser` and `BestStart` change as it trains."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch

from captioning import distributed as dist
from captioning import newwords, rundir
from captioning.checkpoint import load_checkpoint, model_from_checkpoint
from captioning.config import TrainConfig, check_types
from captioning.data import CocoSplit
from captioning.features import ExtractOptions, FeatureStore, build_cache
from captioning.formats import open_split
from captioning.io import atomic_write_text, read_json
from captioning.model import CaptionModel, feature_kind
from captioning.phases import CrossEntropyPhase, Phase, SelfCriticalPhase
from captioning.vocab import Vocabulary

# What a resumed run may change; everything else comes from its saved config.
RESUME_OVERRIDES = (
    "epochs",
    "scst_epochs",
    "max_steps",
    "patience",
    "max_validations",
    "max_minutes",
    "device",
    "num_workers",
    "log_every",
    "save_every",
)


@dataclass
class Callbacks:
    """Where progress goes is the caller's business: a terminal bar, a chart, a test list."""

    on_step: Callable[[dict], None] | None = None
    on_epoch: Callable[[dict], None] | None = None
    on_phase: Callable[[str, int, int], None] | None = None  # ("features train", done, total)
    should_stop: Callable[[], bool] | None = None


@dataclass(frozen=True)
class RunData:
    """What the run reads besides its phases' data: the validation split and its features."""

    images: int  # in the train split
    val: CocoSplit | None
    val_store: FeatureStore | None  # None end to end


@dataclass(frozen=True)
class Phases:
    """Cross-entropy epochs [0, xe_epochs), then self-critical ones; `total_steps` optimizer steps in all."""

    xe: CrossEntropyPhase
    scst: SelfCriticalPhase | None
    xe_epochs: int
    total_steps: int

    def at(self, epoch: int) -> Phase | None:
        return self.xe if epoch < self.xe_epochs else self.scst


@dataclass(frozen=True)
class Run:
    """Everything a run trains with, built once by `build_run`."""

    cfg: TrainConfig
    ctx: dist.DistContext
    device: torch.device
    folder: rundir.RunDir
    log: rundir.RunLog | None  # rank 0 only
    stages: rundir.StageLog  # progress of extraction and validation: to the log (rank 0) and `on_phase`
    model: CaptionModel
    vocab: Vocabulary
    data: RunData
    phases: Phases


@dataclass
class TrainState:
    """Where a run is; saved in `last.pt` so a resume continues exactly."""

    step: int = 0  # optimizer steps so far
    epoch: int = 0  # epochs completed
    batch: int = 0  # batches of the current epoch done (a place in its order, skipped batches included)
    best_cider: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0  # epochs since the best one (early stopping)
    elapsed: float = 0.0  # training seconds, across resumes
    validated: bool = False  # whether the epoch end at this step was validated and saved (a resume re-validates)

    @classmethod
    def from_dict(cls, data: dict) -> TrainState:
        state = cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})
        check_types(state, "the training state's ")
        return state


@dataclass
class Optimiser:
    """Adam over the trainable parameters, with the AMP scaler and the (DDP-wrapped) module to call."""

    params: list[torch.nn.Parameter]
    trainable: torch.nn.Module
    adam: torch.optim.Adam
    scaler: torch.amp.GradScaler

    @classmethod
    def create(cls, run: Run) -> Optimiser:
        params = [p for p in run.model.parameters() if p.requires_grad]
        trainable = dist.wrap(run.model if run.cfg.end_to_end else run.model.decoder, run.ctx)
        scaler = torch.amp.GradScaler("cuda", enabled=run.phases.xe.use_amp)
        return cls(params, trainable, torch.optim.Adam(params, lr=run.cfg.lr), scaler)

    def step(self, loss: torch.Tensor, lr: float, grad_clip: float) -> None:
        self.adam.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.adam)
        torch.nn.utils.clip_grad_norm_(self.params, grad_clip)
        for group in self.adam.param_groups:
            group["lr"] = lr
        self.scaler.step(self.adam)
        self.scaler.update()

    def restart(self, lr: float) -> None:
        """Fresh Adam moments (SCST's gradients are nothing like the cross-entropy's)."""
        self.adam = torch.optim.Adam(self.params, lr=lr)


@dataclass
class BestStart:
    """SCST's start from the best cross-entropy epoch (`scst_start` "best"; later epochs overfit: val CIDEr
    falls). The decoder's weights are kept at each improving cross-entropy epoch, read back from best.pt on a
    resume, and loaded when SCST begins. SCST runs on cached features, so the decoder is all it trains."""

    cfg: TrainConfig
    weights: dict | None = None  # the best cross-entropy epoch's decoder weights

    def pending(self, state: TrainState) -> bool:
        """Whether SCST, not yet begun at `state`, starts from a better cross-entropy epoch than the last."""
        cfg, best = self.cfg, state.best_epoch
        not_begun = state.epoch < cfg.epochs or (state.epoch == cfg.epochs and state.batch == 0)
        return cfg.scst_start == "best" and not_begun and best is not None and best < cfg.epochs

    def remember(self, model: CaptionModel, state: TrainState) -> None:
        """`state.epoch` is the new best: keep its decoder weights if it is a cross-entropy epoch."""
        if self.cfg.scst_start == "best" and state.epoch <= self.cfg.epochs:
            self.weights = {k: v.detach().clone() for k, v in model.decoder.state_dict().items()}

    def resume(self, state: TrainState, best: Path) -> None:
        """A resume before SCST began: the best epoch's weights are those of `best` (best.pt)."""
        if self.pending(state) and best.is_file():
            self.weights = load_checkpoint(best)["decoder_state"]

    def begin(self, model: CaptionModel, state: TrainState) -> bool:
        """SCST begins: load the best epoch's weights if it starts from them; True when it did."""
        loaded = self.pending(state) and self.weights is not None
        if loaded:
            model.decoder.load_state_dict(self.weights)
        self.weights = None
        return loaded


def build_run(
    cfg: TrainConfig,
    ctx: dist.DistContext,
    device: torch.device,
    resume_ckpt: dict | None,
    cb: Callbacks,
    progress: bool,
) -> Run:
    """Data, model, vocabulary, feature stores and phases; rank 0 writes config.json and vocab.json.
    Raises features.ExtractionStopped when `cb.should_stop` says so while features are extracted."""
    torch.manual_seed(cfg.seed)
    source, fmt, options = Path(cfg.coco_root), cfg.format, cfg.read_options()
    train_split = open_split(source, cfg.train_split, fmt, options, _path(cfg.train_ids))
    val = open_split(source, cfg.val_split, fmt, options, _path(cfg.val_ids)) if cfg.val_split else None
    init = None if resume_ckpt is not None else _init_checkpoint(cfg)  # a resume needs (and reads) no base
    model, vocab = _model_and_vocab(cfg, train_split, resume_ckpt, init)
    model.to(device)
    folder = rundir.RunDir(cfg.out)
    if ctx.rank == 0:
        folder.path.mkdir(parents=True, exist_ok=True)
        config = {"train": cfg.to_dict(), "model": model.cfg.to_dict(), "world_size": ctx.world}
        atomic_write_text(folder.config, json.dumps(config, indent=2))
        vocab.save(folder.vocab)
    log = rundir.RunLog(folder.metrics) if ctx.rank == 0 else None
    stages = rundir.StageLog(log, cb.on_phase if ctx.rank == 0 else None)
    stores = {}
    if not cfg.end_to_end:
        options = ExtractOptions(
            cache_dir=Path(cfg.cache_dir),
            device=device,
            num_workers=cfg.num_workers,
            progress=progress and ctx.rank == 0,
            should_stop=cb.should_stop,
            ctx=ctx,
        )
        stores = _feature_stores(cfg, model, {"train": train_split, "val": val}, options, stages)
    use_amp = cfg.amp and device.type == "cuda"
    xe = CrossEntropyPhase.create(cfg, train_split, vocab, model, stores.get("train"), ctx.world, use_amp)
    scst = SelfCriticalPhase.create(cfg, train_split, vocab, stores["train"], ctx) if cfg.scst_epochs else None
    xe_steps = cfg.epochs * xe.steps_per_epoch
    total = min(xe_steps + cfg.scst_epochs * (scst.steps_per_epoch if scst else 0), cfg.max_steps or 10**12)
    xe.total_steps = min(xe_steps, total)  # what the cross-entropy lr schedule spans
    if scst is not None:
        scst.first_step, scst.total_steps = xe.total_steps, total
    data = RunData(len(train_split), val, stores.get("val"))
    return Run(cfg, ctx, device, folder, log, stages, model, vocab, data, Phases(xe, scst, cfg.epochs, total))


def resume_point(folder: rundir.RunDir) -> tuple[dict | None, TrainConfig]:
    """(last.pt, its config), or (None, config.json's) for a run that was killed before its first checkpoint."""
    if folder.last.is_file() or not folder.config.is_file():
        ckpt = _resume_checkpoint(folder)
        return ckpt, TrainConfig.from_dict(ckpt["train_state"]["config"])
    try:
        return None, TrainConfig.from_dict(read_json(folder.config.read_text(encoding="utf-8"))["train"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise rundir.RunFolderError(f"{folder.config} cannot be read ({str(exc)[:200]}); nothing to resume") from None


def _resume_checkpoint(folder: rundir.RunDir) -> dict:
    if not folder.last.is_file():
        raise FileNotFoundError(f"nothing to resume: {folder.last} does not exist")
    ckpt = load_checkpoint(folder.last)
    if "train_state" not in ckpt:
        raise ValueError(f"{folder.last} has no training state to resume from")
    return ckpt


def _init_checkpoint(cfg: TrainConfig) -> dict | None:
    return load_checkpoint(Path(cfg.init_from)) if cfg.init_from else None


def _model_and_vocab(
    cfg: TrainConfig, train: CocoSplit, resume: dict | None, init: dict | None
) -> tuple[CaptionModel, Vocabulary]:
    """A resume keeps its checkpoint's model and vocabulary; a fine-tune keeps its base's and, unless
    `keep_vocab`, learns the words of its captions the base lacks (`newwords`); a new run builds both."""
    base = resume or init
    if base is not None:
        model, vocab = model_from_checkpoint(base, with_backbone=cfg.end_to_end, source="checkpoint")
        if cfg.model.finetune_cnn and not model.cfg.finetune_cnn:
            model.cfg = replace(model.cfg, finetune_cnn=True)
            model.backbone.requires_grad_(True)
        if resume is None and not cfg.keep_vocab:
            vocab = newwords.grow(model, vocab, newwords.new_words(vocab, train.all_captions(), cfg.vocab_threshold))
        return model, vocab
    vocab = Vocabulary.build(train.all_captions(), cfg.vocab_threshold)
    mcfg = replace(cfg.model, vocab_size=len(vocab))
    return CaptionModel.create(mcfg, pretrained=True, with_backbone=cfg.end_to_end), vocab


def _feature_stores(
    cfg: TrainConfig,
    model: CaptionModel,
    splits: dict[str, CocoSplit | None],
    options: ExtractOptions,
    on_phase: Callable[[str, int, int], None] | None,
) -> dict[str, FeatureStore]:
    """Every rank extracts its share of whatever is not cached yet, then all read the same cache; rank 0
    reports its progress to `on_phase` ("features train", done, total)."""
    stores = {}
    for name, split in splits.items():
        if split is None:
            continue
        views = 2 if cfg.flip and name == "train" else 1
        on_batch = functools.partial(on_phase, f"features {name}") if on_phase and options.ctx.rank == 0 else None
        split_options = replace(options, on_batch=on_batch)
        stores[name] = build_cache(split, model.cfg.backbone, feature_kind(model.cfg), views, split_options)
    return stores


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def validation_interval(cfg: TrainConfig, phases: Phases) -> int:
    """Epochs between validations: 1, or as many as keep the epochs the run spans within `max_validations`."""
    if cfg.max_validations is None:
        return 1
    xe_steps = min(phases.total_steps, cfg.epochs * phases.xe.steps_per_epoch)
    epochs = math.ceil(xe_steps / max(phases.xe.steps_per_epoch, 1))
    if phases.scst is not None:
        epochs += min(cfg.scst_epochs, math.ceil((phases.total_steps - xe_steps) / max(phases.scst.steps_per_epoch, 1)))
    return max(1, math.ceil(epochs / cfg.max_validations))


def resume_config(out: str | Path, **overrides) -> TrainConfig:
    """The saved config of the run in `out`, with RESUME_OVERRIDES fields changed by `overrides`."""
    unknown = set(overrides) - set(RESUME_OVERRIDES)
    if unknown:
        raise ValueError(f"a resumed run can change only {', '.join(RESUME_OVERRIDES)} (not {', '.join(unknown)})")
    return replace(resume_point(rundir.RunDir(out))[1], **overrides)
