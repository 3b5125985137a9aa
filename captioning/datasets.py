"""Training datasets (cached features or images, each paired with one caption) and the epoch order."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from captioning.backbones import Preprocess
from captioning.data import CocoSplit
from captioning.features import FeatureStore
from captioning.loader import load_views
from captioning.vocab import Vocabulary

MAX_CAPTION_TOKENS = 32  # <start> + 30 words + <end>: a few COCO captions run on far longer


def encode_captions(split: CocoSplit, vocab: Vocabulary, ids: list[int] | None = None) -> list[tuple[int, list[int]]]:
    """(image id, caption ids) for every caption of `ids` (default: every image of the split)."""
    pairs = []
    for image_id in ids if ids is not None else split.ids:
        for caption in split.captions[image_id]:
            tokens = vocab.encode(caption)
            if len(tokens) > MAX_CAPTION_TOKENS:
                tokens = tokens[: MAX_CAPTION_TOKENS - 1] + [vocab.end_id]
            pairs.append((image_id, tokens))
    return pairs


class CachedPairs(Dataset):
    """(features, caption ids); with a flipped view cached, even epochs of an item use one view,
    odd epochs the other."""

    def __init__(self, pairs: list[tuple[int, list[int]]], store: FeatureStore, seed: int = 0) -> None:
        self.pairs, self.store, self.seed, self.epoch = pairs, store, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        image_id, caption = self.pairs[i]
        view = (i + self.epoch + self.seed) % self.store.views
        return self.store.get([image_id], [view])[0], caption


class CachedImages(Dataset):
    """(features, image id) of every cached image, for self-critical training; views alternate
    by epoch as in `CachedPairs`."""

    def __init__(self, store: FeatureStore, seed: int = 0) -> None:
        self.store, self.seed, self.epoch = store, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.store.ids)

    def __getitem__(self, i: int):
        image_id = self.store.ids[i]
        view = (i + self.epoch + self.seed) % self.store.views
        return self.store.get([image_id], [view])[0], image_id


class ImagePairs(Dataset):
    """(preprocessed image, caption ids) for end-to-end training; an unreadable image gives
    (None, file name) so the batch can drop it and the epoch can report it."""

    def __init__(self, pairs, split: CocoSplit, preprocess: Preprocess, flip: bool, seed: int = 0) -> None:
        self.pairs, self.split, self.preprocess = pairs, split, preprocess
        self.flip, self.seed, self.epoch = flip, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        image_id, caption = self.pairs[i]
        views = load_views(self.split.files[image_id], self.preprocess, views=2 if self.flip else 1)
        if views is None:
            return None, self.split.files[image_id].name
        return views[(i + self.epoch + self.seed) % len(views)], caption  # (3, S, S)


def batches_for_epoch(n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """This rank's batches of one epoch: a permutation fixed by (seed, epoch), so a resumed run
    sees the same order; padded so every rank gets the same number of batches."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    per_rank = -(-n // world)
    order += order[: per_rank * world - n]
    mine = order[rank::world]
    return [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]
