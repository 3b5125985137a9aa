"""The two phases of training: cross-entropy (teacher forcing), then optionally self-critical (CIDEr-D reward).

Each phase owns its data, batch size, loss and learning-rate schedule; `train.Trainer` runs whichever
phase an epoch belongs to, the same way.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field

import torch

from captioning import distributed as dist
from captioning.cider import CiderD, DocumentFrequencies, RewardReferences
from captioning.config import TrainConfig
from captioning.data import CocoSplit, collate_captions
from captioning.datasets import CachedImages, CachedPairs, ImagePairs, encode_captions
from captioning.features import FeatureStore
from captioning.model import CaptionModel, caption_loss
from captioning.scst import scst_loss
from captioning.vocab import Vocabulary


@dataclass
class CrossEntropyPhase:
    """Teacher-forced cross-entropy on (cached features or image, caption) pairs: epochs [0, cfg.epochs)."""

    cfg: TrainConfig
    data: CachedPairs | ImagePairs
    steps_per_epoch: int
    use_amp: bool = False
    total_steps: int = 0  # what the lr schedule spans (set once both phases are known)
    bad_images: list[str] = field(default_factory=list)  # unreadable files met this epoch (end to end)
    name = "cross-entropy"

    @classmethod
    def create(
        cls,
        cfg: TrainConfig,
        train: CocoSplit,
        vocab: Vocabulary,
        model: CaptionModel,
        store: FeatureStore | None,
        world: int,
        use_amp: bool,
    ) -> CrossEntropyPhase:
        pairs = encode_captions(train, vocab, store.ids if store is not None else None)
        if cfg.end_to_end:
            data = ImagePairs(pairs, train, model.spec.preprocess, cfg.flip, cfg.seed)
        else:
            data = CachedPairs(pairs, store, cfg.seed)
        return cls(cfg, data, math.ceil(math.ceil(len(data) / world) / cfg.batch_size), use_amp)

    @property
    def batch_size(self) -> int:
        return self.cfg.batch_size

    @property
    def num_workers(self) -> int:
        return self.cfg.num_workers if self.cfg.end_to_end else 0  # cached features are a memory-mapped read

    def collate(self, items):
        """Pad and sort the batch; None when every image in it was unreadable."""
        good = []
        for item in items:
            if item[0] is None:
                self.bad_images.append(item[1])
            else:
                good.append(item)
        return collate_captions(good) if good else None

    def skip(self, batch, ctx: dist.DistContext) -> bool:
        # end to end, ranks skip together, or DDP pairs one rank's gradients with another's next step
        return dist.any_true(batch is None, ctx) if self.cfg.end_to_end else batch is None

    def loss(self, trainable: torch.nn.Module, batch, device: torch.device) -> tuple[torch.Tensor, None, int]:
        """(loss, no reward, images in the batch)."""
        cfg = self.cfg
        inputs, captions, lengths = batch
        inputs, captions = inputs.to(device), captions.to(device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=self.use_amp):
            extra = {"from_images": True} if cfg.end_to_end else {}
            logits, alphas = trainable(inputs, captions, lengths, **extra)  # (B, T-1, V), (B, T-1, N) | None
            loss = caption_loss(
                logits.float(),
                captions,
                None if alphas is None else alphas.float(),
                cfg.label_smoothing,
                cfg.attention_reg,
            )
        return loss, None, inputs.size(0)

    def log_fields(self, loss: float, reward: float | None, ctx: dist.DistContext) -> dict:
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}

    def lr_at(self, step: int) -> float:
        cfg = self.cfg
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "cosine":
            return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(step / max(self.total_steps, 1), 1.0)))
        if cfg.lr_schedule == "step":
            return cfg.lr * cfg.lr_gamma ** (step // (cfg.lr_step_epochs * self.steps_per_epoch))
        return cfg.lr


@dataclass
class SelfCriticalPhase:
    """Self-critical sequence training on cached features: epochs [cfg.epochs, cfg.epochs + cfg.scst_epochs).

    It starts from the best cross-entropy epoch's weights (`scst_start` "best": `trainrun.BestStart`), with
    fresh Adam moments at `scst_lr`.
    """

    cfg: TrainConfig
    data: CachedImages
    cider: CiderD
    vocab: Vocabulary
    steps_per_epoch: int
    first_step: int = 0  # the step the phase starts at, where its lr schedule begins
    total_steps: int = 0  # the run's last step
    name = "self-critical"

    @classmethod
    def create(
        cls, cfg: TrainConfig, train: CocoSplit, vocab: Vocabulary, store: FeatureStore, ctx: dist.DistContext
    ) -> SelfCriticalPhase:
        data = CachedImages(store, cfg.seed)
        captions = {i: train.captions[i] for i in store.ids}
        cider = CiderD.from_captions(captions, _document_frequencies(captions, store, ctx))  # every rank scores
        return cls(cfg, data, cider, vocab, math.ceil(math.ceil(len(data) / ctx.world) / cfg.scst_batch_size))

    @property
    def batch_size(self) -> int:
        return self.cfg.scst_batch_size

    num_workers = 0

    @staticmethod
    def collate(items):
        return torch.stack([x for x, _ in items]), [i for _, i in items]

    @staticmethod
    def skip(batch, ctx: dist.DistContext) -> bool:
        return False

    def loss(self, trainable: torch.nn.Module, batch, device: torch.device) -> tuple[torch.Tensor, float, int]:
        """(policy-gradient loss, mean reward of the samples, images in the batch)."""
        inputs, image_ids = batch
        inputs = inputs.to(device)
        loss, reward = scst_loss(
            trainable, inputs, image_ids, self.vocab, self.cider, self.cfg.scst_samples, self.cfg.scst_max_len
        )
        return loss, reward, inputs.size(0)

    def log_fields(self, loss: float, reward: float | None, ctx: dist.DistContext) -> dict:
        # a policy-gradient loss hovers around 0: the reward is the curve to watch
        return {"phase": "scst", "scst_loss": loss, "reward": dist.mean(torch.tensor(reward, device=ctx.device), ctx)}

    def lr_at(self, step: int) -> float:
        """Counted from the phase's first step: constant, or cosine down to 0 at its end."""
        cfg, step, total = self.cfg, step - self.first_step, self.total_steps - self.first_step
        if cfg.scst_lr_schedule == "cosine":
            return cfg.scst_lr * 0.5 * (1 + math.cos(math.pi * min(step / max(total, 1), 1.0)))
        return cfg.scst_lr


Phase = CrossEntropyPhase | SelfCriticalPhase


def _document_frequencies(captions: dict[int, list[str]], store: FeatureStore, ctx: dist.DistContext):
    """The reward's document frequencies over these captions: computed once (by rank 0) and kept beside the
    split's features, keyed by a digest of the captions, so a rerun and the other ranks read them."""
    digest = hashlib.sha1()
    for image_id, caps in captions.items():
        digest.update(f"{image_id}\t{json.dumps(caps)}\n".encode())
    path = store.folder / f"cider-df-{digest.hexdigest()[:16]}.json" if store.folder else None
    if path is None:
        return None
    if ctx.rank == 0 and not path.is_file():
        DocumentFrequencies.compute(RewardReferences(captions).values()).save(path)
    dist.barrier(ctx)
    try:
        return DocumentFrequencies.load(path)
    except (OSError, ValueError, KeyError, TypeError):  # unreadable: compute it here
        return None
