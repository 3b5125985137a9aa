"""Per-epoch validation: teacher-forced loss and BLEU / CIDEr of decoded captions."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from captioning import distributed as dist
from captioning.config import DecodeConfig
from captioning.data import CocoSplit, collate_captions
from captioning.datasets import encode_captions
from captioning.decoding import decode
from captioning.features import FeatureStore
from captioning.loader import load_batch
from captioning.metrics import score_captions
from captioning.model import CaptionModel, caption_loss
from captioning.vocab import Vocabulary


def _features(model: CaptionModel, split: CocoSplit, store: FeatureStore | None, ids: list[int], device):
    """(kept ids, features) from the cache, or from the images through the model's CNN."""
    if store is not None:
        ids = [i for i in ids if i in store.where]
        return ids, store.get(ids).to(device)
    batch = load_batch(ids, split.files, model.spec.preprocess)
    if not batch.keys:
        return [], None
    return batch.keys, model.encode(batch.pixels.to(device))


@torch.no_grad()
def validate(
    model: CaptionModel,
    vocab: Vocabulary,
    split: CocoSplit,
    store: FeatureStore | None,
    device,
    ctx: dist.DistContext,
    decoding: DecodeConfig,
    limit: int | None = None,
    batch_size: int = 64,
    on_batch: Callable[[int, int], None] | None = None,
) -> dict:
    """Validation loss, perplexity, BLEU-1..4, ROUGE-L and CIDEr, reduced over ranks; `on_batch(done, total)`
    after each batch (this rank's images, times the ranks)."""
    ids = split.ids[:limit] if limit else split.ids
    mine = ids[ctx.rank :: ctx.world]
    loss_sum = torch.zeros(2)  # (summed loss * tokens, tokens)
    preds: dict[int, str] = {}
    for start in range(0, len(mine), batch_size):
        kept, feats = _features(model, split, store, mine[start : start + batch_size], device)
        if not kept:
            continue
        row = {i: n for n, i in enumerate(kept)}
        pairs = encode_captions(split, vocab, kept)
        captions = collate_captions([(torch.tensor(row[i]), c) for i, c in pairs])
        order, caps, lengths = captions
        logits, alphas = model.decoder(feats[order], caps.to(device), lengths)
        tokens = int((caps[:, 1:] != 0).sum())
        loss_sum += torch.tensor([float(caption_loss(logits, caps.to(device))) * tokens, tokens])
        best = [hyps[0].text for hyps in decode(model.decoder, feats, vocab, decoding)]
        preds.update(zip(kept, best))
        if on_batch:
            on_batch(min((start + batch_size) * ctx.world, len(ids)), len(ids))
    loss_sum = dist.sum_tensor(loss_sum.to(ctx.device), ctx).cpu()
    preds = dist.gather_dict(preds, ctx)
    val_loss = float(loss_sum[0] / max(float(loss_sum[1]), 1.0))
    result = None
    if ctx.rank == 0:  # one rank scores; the others get its numbers (early stopping must agree)
        scores = score_captions(preds, {i: split.captions[i] for i in preds}, meteor=False)
        result = {
            "val_loss": val_loss,
            "val_perplexity": math.exp(min(val_loss, 50.0)),
            "method": decoding.method,
            "decoding": decoding.to_dict(),
            "images": len(preds),
        }
        result.update({k: v for k, v in scores.corpus.items() if k != "METEOR"})
    return dist.broadcast(result, ctx)
