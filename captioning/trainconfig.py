"""Training configuration: one frozen dataclass, written to `config.json` at the start of a run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

LR_SCHEDULES = ("constant", "cosine", "step")
VAL_METHODS = ("greedy", "beam")
SCST_LR_SCHEDULES = ("constant", "cosine")
SCST_STARTS = ("best", "last")


@dataclass(frozen=True)
class TrainConfig:
    coco_root: str
    out: str
    train_split: str = "train"
    val_split: str | None = "val"
    train_ids: str | None = None
    val_ids: str | None = None
    # model (ignored when init_from / resume give a checkpoint: its model is kept)
    backbone: str = "efficientnet_lite0"
    decoder: str = "showtell"
    embed_size: int = 256
    hidden_size: int = 512
    attention_size: int = 512
    dropout: float = 0.5
    vocab_threshold: int = 5
    init_from: str | None = None
    # optimisation: Adam on cross-entropy, as the seed
    epochs: int = 5
    max_steps: int | None = None
    batch_size: int = 64
    lr: float = 1e-3
    lr_schedule: str = "constant"
    lr_step_epochs: int = 3  # for "step": multiply the lr by lr_gamma every this many epochs
    lr_gamma: float = 0.5
    warmup_steps: int = 0
    grad_clip: float = 5.0
    label_smoothing: float = 0.0
    attention_reg: float = 1.0  # Xu et al.'s doubly stochastic attention term (attention decoder)
    seed: int = 0
    # self-critical sequence training after the cross-entropy epochs (cached features only)
    scst_epochs: int = 0
    scst_lr: float = 5e-5
    scst_samples: int = 5  # captions drawn per image; each one's baseline is the others' mean reward
    scst_batch_size: int = 16  # images per step
    scst_max_len: int = 16
    scst_lr_schedule: str = "constant"  # or "cosine": from scst_lr down to 0 over the SCST epochs
    scst_start: str = "best"  # SCST starts from the best cross-entropy epoch on val CIDEr, or from the "last"
    # data
    flip: bool = False  # cache a horizontally flipped view and train on both
    end_to_end: bool = False  # no cache: run the CNN every step (and train it, with finetune_cnn)
    finetune_cnn: bool = False
    cache_dir: str = "cache/features"
    num_workers: int = 2
    # validation and logging
    val_method: str = "greedy"
    val_beam_size: int = 3
    val_limit: int | None = None
    patience: int | None = None  # stop after this many epochs without a better val CIDEr
    log_every: int = 10
    save_every: int = 500
    device: str = "auto"
    amp: bool = False

    def __post_init__(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of: {', '.join(LR_SCHEDULES)} (got {self.lr_schedule!r})")
        if self.scst_lr_schedule not in SCST_LR_SCHEDULES:
            raise ValueError(
                f"scst_lr_schedule must be one of: {', '.join(SCST_LR_SCHEDULES)} (got {self.scst_lr_schedule!r})"
            )
        if self.scst_start not in SCST_STARTS:
            raise ValueError(f"scst_start must be one of: {', '.join(SCST_STARTS)} (got {self.scst_start!r})")
        if self.val_method not in VAL_METHODS:
            raise ValueError(f"val_method must be one of: {', '.join(VAL_METHODS)} (got {self.val_method!r})")
        for name in ("batch_size", "log_every", "save_every", "vocab_threshold", "scst_batch_size", "scst_max_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1 (got {getattr(self, name)})")
        if self.epochs < 0 or self.scst_epochs < 0 or self.epochs + self.scst_epochs < 1:
            raise ValueError(
                f"epochs and scst_epochs cannot be negative and must add up to at least 1 "
                f"(got {self.epochs} and {self.scst_epochs})"
            )
        if self.scst_epochs:
            if self.end_to_end:
                raise ValueError("scst_epochs needs cached features: it cannot run with end_to_end")
            if self.scst_samples < 2:
                raise ValueError(
                    "scst_samples must be at least 2: each sample's baseline is the others' mean "
                    f"(got {self.scst_samples})"
                )
            if self.scst_lr <= 0:
                raise ValueError(f"scst_lr must be positive (got {self.scst_lr})")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be at least 1 (got {self.max_steps})")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive (got {self.lr})")
        if self.finetune_cnn and not self.end_to_end:
            raise ValueError("finetune_cnn needs end_to_end (cached features come from a frozen CNN)")

    @property
    def out_dir(self) -> Path:
        return Path(self.out)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
