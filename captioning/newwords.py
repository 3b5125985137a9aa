"""Teaching a fine-tune new words: the vocabulary grows by the words of the new captions it lacks, and the
decoder by their embedding and output rows, set so that its captions are unchanged at step 0."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from captioning.model import CaptionModel
from captioning.vocab import SPECIALS, Vocabulary

# How far below the lowest old output bias a new word's bias starts: with zero weights its logit is then so far
# below the likeliest word's that no caption changes (its probability is below e^-20 of the lowest old word's
# base rate), while its weights, which Adam moves in every dimension at once, learn it within a few steps.
MARGIN = 20.0


def new_words(vocab: Vocabulary, captions: Iterable[str], threshold: int) -> list[str]:
    """The words seen at least `threshold` times in `captions` that `vocab` lacks, most frequent first."""
    built = Vocabulary.build(captions, threshold)
    return [w for w in built.itos[len(SPECIALS) :] if w not in vocab.stoi]


@torch.no_grad()
def grow(model: CaptionModel, vocab: Vocabulary, words: list[str]) -> Vocabulary:
    """Append `words` to the vocabulary (old ids unchanged) and rows for them to `model`'s decoder, in place.

    A new word's embedding is the mean of the old words' (a neutral input once it is said); its output row has
    zero weights and a bias MARGIN below the lowest old one, so the decoder's choices stay the same until
    training moves them."""
    if not words:
        return vocab
    decoder, n = model.decoder, len(words)
    old_embed, old_fc = decoder.embed, decoder.fc
    size, width = old_embed.weight.shape  # (V, E)
    embed = nn.Embedding(size + n, width, padding_idx=old_embed.padding_idx).to(old_embed.weight)
    embed.weight[:size] = old_embed.weight
    embed.weight[size:] = old_embed.weight[len(SPECIALS) :].mean(0)
    fc = nn.Linear(old_fc.in_features, size + n).to(old_fc.weight)  # (V + n, H)
    fc.weight[:size], fc.weight[size:] = old_fc.weight, 0.0
    fc.bias[:size], fc.bias[size:] = old_fc.bias, old_fc.bias.min() - MARGIN
    decoder.embed, decoder.fc = embed, fc
    model.cfg = type(model.cfg)(**{**model.cfg.to_dict(), "vocab_size": size + n})
    return Vocabulary(vocab.itos + words)
