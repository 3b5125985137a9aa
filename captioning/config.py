"""Frozen configuration dataclasses, saved with every checkpoint and run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

DECODERS = ("showtell", "attention")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a captioner's modules (the vocabulary travels beside it)."""

    backbone: str = "efficientnet_lite0"
    decoder: str = "showtell"  # "showtell" (Vinyals et al.) or "attention" (Xu et al.)
    embed_size: int = 256
    hidden_size: int = 512
    attention_size: int = 512
    dropout: float = 0.5
    vocab_size: int = 0
    finetune_cnn: bool = False  # when True the backbone's weights are saved in the checkpoint

    def __post_init__(self) -> None:
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of: {', '.join(DECODERS)} (got {self.decoder!r})")
        for name in ("embed_size", "hidden_size", "attention_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive (got {getattr(self, name)})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1) (got {self.dropout})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
