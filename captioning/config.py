"""Frozen configuration dataclasses, saved with every checkpoint, run and score: the one source of defaults.

Each field carries its help text (and choices) in its metadata, from which `flags` makes the command line's
flags and the app its widgets.
"""

from __future__ import annotations

import typing
from dataclasses import Field, asdict, dataclass, field, fields, replace
from typing import Any

from captioning.backbones import BACKBONES, DEFAULT_BACKBONE
from captioning.formats import FORMATS, ReadOptions
from captioning.guidance import BONUS as GUIDE_BONUS
from captioning.guidance import THRESHOLD as CONSTRAIN_THRESHOLD
from captioning.naming import THRESHOLD as NAMING_THRESHOLD

DECODERS = ("showtell", "attention")
LR_SCHEDULES = ("constant", "cosine", "step")
METHODS = ("greedy", "beam")
SCST_LR_SCHEDULES = ("constant", "cosine")
SCST_STARTS = ("best", "last")
DEVICES = ("auto", "cpu", "cuda")
SHARD_IMAGES = 1024  # images per feature-cache shard: what a kill can lose, and the most one shard holds
DEFAULT_CACHE_DIR = "cache/features"


def option(default: Any, help: str, choices: tuple | None = None, cli: bool = True, **extra: Any) -> Any:
    """A dataclass field whose metadata says how it appears on the command line."""
    return field(default=default, metadata={"help": help, "choices": choices, "cli": cli, **extra})


def check_types(config: Any, what: str = "") -> None:
    """ValueError naming the field when a value has the wrong type (e.g. a hand-edited config.json)."""
    hints = typing.get_type_hints(type(config))
    for f in fields(config):
        value, hint = getattr(config, f.name), hints[f.name]
        allowed = typing.get_args(hint) or (hint,)
        if value is None and type(None) in allowed:
            continue
        if float in allowed and isinstance(value, int) and not isinstance(value, bool):
            object.__setattr__(config, f.name, float(value))
            continue
        if not any(isinstance(value, t) and not (t is int and isinstance(value, bool)) for t in allowed if t):
            raise ValueError(f"{what}{f.name} must be {_type_name(allowed)} (got {str(value)[:100]!r})")
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            allowed_values = ", ".join(map(str, choices))
            raise ValueError(f"{what}{f.name} must be one of: {allowed_values} (got {str(value)[:100]!r})")


def _type_name(types: tuple) -> str:
    return " or ".join("None" if t is type(None) else t.__name__ for t in types)


def _from_known(cls: type, data: Any, **fixed: Any) -> Any:
    """`cls` from the keys of `data` it knows; unknown keys (from newer or older versions) are ignored."""
    if not isinstance(data, dict):
        raise ValueError(f"a {cls.__name__} must be a JSON object (got {type(data).__name__})")
    known = {f.name for f in fields(cls)} - set(fixed)
    return cls(**{k: v for k, v in data.items() if k in known}, **fixed)


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a captioner's modules (the vocabulary travels beside it)."""

    backbone: str = option(DEFAULT_BACKBONE, "frozen ImageNet CNN", choices=tuple(BACKBONES))
    decoder: str = option(
        "showtell", "showtell (Vinyals et al.: pooled features) or attention (Xu et al.: a 7x7 grid)", DECODERS
    )
    embed_size: int = option(256, "word and image embedding width")
    hidden_size: int = option(512, "LSTM hidden width")
    attention_size: int = option(512, "attention layer width (attention decoder)")
    dropout: float = option(0.5, "dropout on embeddings and LSTM outputs")
    vocab_size: int = option(0, "words in the vocabulary (set from it)", cli=False)
    finetune_cnn: bool = option(False, "train the CNN too (needs --end-to-end); its weights go into checkpoints")
    concepts: str = option(
        "none",
        "ImageNet concepts (the frozen CNN's own class probabilities) as decoder input: none; init (a learned "
        "projection of them joins the image in the decoder's initial state); or step (the projection is an extra "
        "LSTM input at every word); EfficientNet-Lite backbones only",
        choices=("none", "init", "step"),
    )

    def __post_init__(self) -> None:
        check_types(self)
        for name in ("embed_size", "hidden_size", "attention_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive (got {getattr(self, name)})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1) (got {self.dropout})")
        from captioning.concepts import HEADED

        if self.concepts != "none" and self.backbone not in HEADED:
            raise ValueError(
                f"concepts need a backbone with an ImageNet head in the registry ({', '.join(HEADED)}); "
                f"{self.backbone} has none"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return _from_known(cls, data)


@dataclass(frozen=True)
class DecodeConfig:
    """How captions are decoded. Its defaults are the only defaults: Python, the CLI, the app and the API caption
    an image the same way, and every recorded score records the DecodeConfig that produced it."""

    method: str = option("beam", "decoding: greedy (the likeliest word at each step) or beam search", METHODS)
    beam_size: int = option(3, "beams for --method beam")
    max_len: int = option(20, "most words in a caption")
    length_penalty: float = option(1.0, "beams are ranked by log-probability / length ** this")
    block_repeats: bool = option(
        True,
        "block echoes: the same three words twice ('a cell phone on a cell phone') or a phrase's head again "
        "('a cat on a table with a table')",
        off_flag="--allow-repeats",
    )
    name_novel: bool = option(
        True,
        f"when the encoder is sure (>= {NAMING_THRESHOLD}) of an ImageNet class whose name the vocabulary lacks "
        "(lion, bee, castle), make it the caption's subject",
        validation=False,
    )
    guide: float = option(
        0.0,
        "guided decoding: when the encoder is confident of an ImageNet class, add BONUS to the log-probability "
        f"of the words learned for it (bare flag: {GUIDE_BONUS}; needs a checkpoint with concept words)",
        const=GUIDE_BONUS,
        metavar="BONUS",
        validation=False,
    )
    flip: bool = option(
        False,
        "test-time flip: average the decoder's word probabilities over the image and its mirror (twice the time)",
        validation=False,
    )
    constrain: float = option(
        CONSTRAIN_THRESHOLD,
        "constrained beam search: when the encoder is at least THRESHOLD sure of something the vocabulary can say "
        "(its ImageNet classes pooled by name, the dog breeds as dog), the caption must contain the word (dog, dogs) "
        "or one the checkpoint learned for the class (orange: fruit); 0 turns it off",
        const=CONSTRAIN_THRESHOLD,
        metavar="THRESHOLD",
        off_flag="--no-constrain",
        validation=False,
    )

    def __post_init__(self) -> None:
        check_types(self, "decoding ")
        for name in ("beam_size", "max_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1 (got {getattr(self, name)})")
        if not 0 <= self.constrain <= 1:
            raise ValueError(f"constrain is a probability threshold, 0 (off) to 1 (got {self.constrain})")
        if self.guide < 0 or self.length_penalty < 0:
            raise ValueError(f"guide and length_penalty cannot be negative (got {self.guide}, {self.length_penalty})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DecodeConfig:
        return _from_known(cls, data)


# Validation scores the decoder alone (no naming, no guidance), greedily: a third of beam search's time per epoch.
VAL_DECODING = DecodeConfig(method="greedy", name_novel=False, constrain=0.0)
VAL_PREFIX = "val_"  # the validation decoding's fields, flat in config.json and on the command line


@dataclass(frozen=True)
class TrainConfig:
    """A training run, written to `config.json` at its start and into every `last.pt`.

    The model it trains is `model` (ignored when `init_from` or a resume gives a checkpoint, whose model is
    kept). Saved flat, as `to_dict` shows: the model's fields sit beside the training ones, and the validation
    decoding's with a `val_` prefix (`val_method`, `val_beam_size`, ...).
    """

    coco_root: str = option(
        None,
        "the dataset (--data is the same flag): a COCO root (annotations/captions_SPLIT.json and SPLIT/), or a "
        "caption file or folder of any --format",
        required=True,
        aliases=("--data",),
        metavar="PATH",
    )
    format: str = option("auto", "the dataset's format (auto: detected where unambiguous)", choices=FORMATS)
    image_column: str | None = option(None, "CSV/TSV/metadata column naming the image (default: the usual names)")
    caption_column: str | None = option(None, "CSV/TSV/metadata column holding the caption (default: the usual names)")
    val_fraction: float = option(0.1, "held out as split val where the format has no splits (stable per image)")
    out: str = option(None, "run directory, e.g. runs/NAME", required=True)
    train_split: str = option("train", "split to train on")
    val_split: str | None = option(
        "val", "split to validate on after each epoch", none_flag="--no-val", none_help="no validation split"
    )
    train_ids: str | None = option(None, "file of image ids restricting the train split")
    val_ids: str | None = option(None, "file of image ids restricting the val split")
    model: ModelConfig = field(default_factory=ModelConfig)
    vocab_threshold: int = option(5, "words seen fewer times become <unk>")
    init_from: str | None = option(
        None, "fine-tune from a checkpoint: its model and vocabulary, grown by the new captions' words it lacks"
    )
    keep_vocab: bool = option(False, "with --init-from: keep the base model's vocabulary (learn no new words)")
    # optimisation: Adam on cross-entropy (Show and Tell)
    epochs: int = option(5, "cross-entropy epochs (0 with --scst-epochs: SCST only)")
    max_steps: int | None = option(None, "stop after this many optimizer steps in all")
    batch_size: int = option(64, "captions per cross-entropy step")
    lr: float = option(1e-3, "learning rate of the cross-entropy epochs")
    lr_schedule: str = option("constant", "cross-entropy learning-rate schedule", LR_SCHEDULES)
    lr_step_epochs: int = option(3, "for the step schedule: multiply the lr by --lr-gamma every this many epochs")
    lr_gamma: float = option(0.5, "the step schedule's factor")
    warmup_steps: int = option(0, "linear learning-rate warm-up steps")
    grad_clip: float = option(5.0, "clip the gradient norm to this")
    label_smoothing: float = option(0.0, "cross-entropy label smoothing")
    attention_reg: float = option(1.0, "Xu et al.'s doubly stochastic attention weight (attention decoder)")
    seed: int = option(0, "random seed: a run repeats exactly at the same thread count")
    # self-critical sequence training after the cross-entropy epochs (cached features only)
    scst_epochs: int = option(0, "self-critical (CIDEr-D reward) epochs after the cross-entropy ones")
    scst_lr: float = option(5e-5, "learning rate of the self-critical epochs")
    scst_samples: int = option(5, "captions sampled per image; each one's baseline is the others' mean reward")
    scst_batch_size: int = option(16, "images per self-critical step")
    scst_max_len: int = option(16, "longest sampled caption in words")
    scst_lr_schedule: str = option("constant", "constant, or cosine from --scst-lr down to 0", SCST_LR_SCHEDULES)
    scst_start: str = option(
        "best", "SCST starts from the best cross-entropy epoch on val CIDEr, or the last", SCST_STARTS
    )
    # data
    flip: bool = option(False, "also train on horizontally flipped views (cached too)")
    end_to_end: bool = option(False, "no feature cache: run the CNN every step")
    cache_dir: str = option(DEFAULT_CACHE_DIR, "where frozen-CNN features are cached")
    num_workers: int = option(2, "image-loading worker processes")
    # validation and logging
    val_decoding: DecodeConfig = field(default=VAL_DECODING)
    val_limit: int | None = option(None, "validate on the first N images only")
    patience: int | None = option(None, "early stop after N epochs without a better val CIDEr")
    max_validations: int | None = option(
        None, "validate (and save) at most this many times: every k-th epoch and the last one"
    )
    max_minutes: float | None = option(
        None, "a time budget: after this many minutes the epoch under way ends early and is validated and saved"
    )
    log_every: int = option(10, "steps between loss records")
    save_every: int = option(500, "steps between resumable last.pt saves")
    device: str = option("auto", "auto (cuda if available), cpu or cuda", DEVICES)
    amp: bool = option(False, "mixed precision on CUDA")

    def __post_init__(self) -> None:
        if self.coco_root is None or self.out is None:
            raise ValueError("a training run needs coco_root and out")
        check_types(self)
        self._check_ranges()

    def _check_ranges(self) -> None:
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
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1) (got {self.val_fraction})")
        for name in ("max_validations", "max_minutes"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive (got {getattr(self, name)})")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be at least 1 (got {self.max_steps})")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive (got {self.lr})")
        if self.val_decoding.name_novel or self.val_decoding.guide or self.val_decoding.constrain:
            raise ValueError("validation scores the decoder alone: its decoding cannot name, guide or constrain")
        if self.model.finetune_cnn and not self.end_to_end:
            raise ValueError("finetune_cnn needs end_to_end (cached features come from a frozen CNN)")

    def to_dict(self) -> dict[str, Any]:
        """Flat: the training fields, the model's (without vocab_size, which the vocabulary sets), then the
        validation decoding's with the `val_` prefix."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("model", "val_decoding")}
        data.update({k: v for k, v in self.model.to_dict().items() if k != "vocab_size"})
        data.update({VAL_PREFIX + f.name: getattr(self.val_decoding, f.name) for f in validation_fields()})
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """The inverse of `to_dict`; also takes a nested "model" object. Unknown keys are ignored."""
        if not isinstance(data, dict):
            raise ValueError(f"a TrainConfig must be a JSON object (got {type(data).__name__})")
        model = data.get("model") if isinstance(data.get("model"), dict) else data
        return _from_known(cls, data, model=ModelConfig.from_dict(model), val_decoding=_val_decoding(data))

    @classmethod
    def of(cls, **values: Any) -> TrainConfig:
        """From flat keyword arguments, as the CLI and config.json spell them (model and `val_` fields among them)."""
        names = {f.name for f in fields(ModelConfig)}
        decoding = {VAL_PREFIX + f.name for f in validation_fields()}
        model = {k: v for k, v in values.items() if k in names}
        rest = {k: v for k, v in values.items() if k not in names and k not in decoding}
        return cls(model=ModelConfig(**model), val_decoding=_val_decoding(values), **rest)

    def read_options(self) -> ReadOptions:
        """How its dataset is read where the format leaves a choice."""
        return ReadOptions(self.image_column, self.caption_column, self.val_fraction)

    def to_argv(self) -> list[str]:
        """The `python -m captioning train` flags that rebuild this config (defaults left out)."""
        from captioning.flags import to_argv

        return to_argv(self)


def validation_fields() -> list[Field]:
    """The DecodeConfig fields validation uses (it scores the decoder alone: no naming, no guidance)."""
    return [f for f in fields(DecodeConfig) if f.metadata.get("validation", True)]


def _val_decoding(values: dict[str, Any]) -> DecodeConfig:
    """The validation DecodeConfig from flat `val_` keys (old config.json files have val_method and
    val_beam_size), VAL_DECODING for the rest."""
    given = {f.name: values[VAL_PREFIX + f.name] for f in validation_fields() if VAL_PREFIX + f.name in values}
    return replace(VAL_DECODING, **given)
