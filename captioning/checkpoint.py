"""Self-describing checkpoints: one plain dict of tensors and plain data, `weights_only` loadable."""

from __future__ import annotations

import datetime as dt
import os
import pickle
import subprocess
from pathlib import Path
from typing import Any

import torch

from captioning.config import ModelConfig
from captioning.io import atomic_write
from captioning.model import CaptionModel
from captioning.vocab import Vocabulary

FORMAT = "captioning-checkpoint"
FORMAT_VERSION = 1
SHIPPED = Path(__file__).resolve().parent / "shipped" / "default.pt"  # package data: found wherever it is installed


def default_checkpoint() -> Path:
    """The default model: `$CAPTIONING_CHECKPOINT` when set, else the shipped one inside the package."""
    return Path(os.environ.get("CAPTIONING_CHECKPOINT") or SHIPPED)


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint; the message says why."""


def git_commit(cwd: Path | None = None) -> str | None:
    """The current git commit of the source tree, when it is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd or Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(**fields: Any) -> dict[str, Any]:
    """Where a model came from: the caller's fields plus date and git commit."""
    return {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "git_commit": git_commit(), **fields}


def checkpoint_dict(
    model: CaptionModel,
    vocab: Vocabulary,
    *,
    metrics: dict | None = None,
    provenance: dict | None = None,
    train_state: dict | None = None,
) -> dict[str, Any]:
    cfg = model.cfg
    backbone_state = None
    if cfg.finetune_cnn and model.backbone is not None:
        backbone_state = {k: v.detach().cpu() for k, v in model.backbone.state_dict().items()}
    ckpt = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": cfg.to_dict(),
        "vocab": vocab.to_dict(),
        "decoder_state": {k: v.detach().cpu() for k, v in model.decoder.state_dict().items()},
        "backbone": {"name": cfg.backbone, "source": model.spec.source, "state": backbone_state},
        "metrics": metrics or {},
        "provenance": provenance or {},
    }
    if train_state is not None:
        ckpt["train_state"] = train_state
    return ckpt


def save_checkpoint(path: Path, ckpt: dict[str, Any]) -> None:
    """Write atomically: a crash mid-write leaves the previous file intact."""
    atomic_write(Path(path), lambda p: torch.save(ckpt, p))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint with `weights_only=True`; CheckpointError on anything wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc):
            raise CheckpointError(
                f"refusing to load {path}: it holds pickled Python objects, which could run code; "
                "a captioning checkpoint holds only tensors and plain data"
            ) from None
        raise CheckpointError(f"{path} is not a checkpoint file (corrupt or another format)") from None
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a captioning checkpoint (no '{FORMAT}' marker)")
    version = ckpt.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {version}, newer than this code reads ({FORMAT_VERSION}); "
            "update the captioning package"
        )
    for key in ("model_config", "vocab", "decoder_state"):
        if not isinstance(ckpt.get(key), dict):
            raise CheckpointError(f"{path} is missing '{key}' (or it is not a mapping)")
    for key in ("metrics", "provenance", "backbone"):
        if not isinstance(ckpt.get(key) or {}, dict):
            raise CheckpointError(f"{path} has a malformed '{key}'")
    words = ckpt.get("concept_words") or {}
    well_formed = isinstance(words, dict) and all(
        isinstance(k, str) and isinstance(v, list) and all(isinstance(w, str) for w in v) for k, v in words.items()
    )
    if not well_formed:
        raise CheckpointError(f"{path} has a malformed 'concept_words' (class index -> list of words)")
    return ckpt


def model_from_checkpoint(
    ckpt: dict[str, Any],
    *,
    with_backbone: bool = True,
    pretrained: bool = True,
    source: str = "checkpoint",
) -> tuple[CaptionModel, Vocabulary]:
    """Rebuild the model and vocabulary a checkpoint describes, weights loaded, in eval mode."""
    try:
        vocab = Vocabulary.from_dict(ckpt["vocab"])
        cfg = ModelConfig.from_dict(ckpt["model_config"])
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{source}: bad config or vocabulary ({exc})") from None
    if cfg.vocab_size != len(vocab):
        raise CheckpointError(f"{source}: the model expects {cfg.vocab_size} words but its vocabulary has {len(vocab)}")
    backbone_state = (ckpt.get("backbone") or {}).get("state")
    model = CaptionModel.create(cfg, pretrained=pretrained and backbone_state is None, with_backbone=with_backbone)
    try:
        model.decoder.load_state_dict(ckpt["decoder_state"])
        if with_backbone and backbone_state is not None:
            model.backbone.load_state_dict(backbone_state)
    except (RuntimeError, TypeError, ValueError, AttributeError, KeyError) as exc:
        first = str(exc).splitlines()[1:2] or [str(exc)]
        raise CheckpointError(f"{source}: weights do not match its config ({first[0].strip()[:200]})") from None
    return model.eval(), vocab
