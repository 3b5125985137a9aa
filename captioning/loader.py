"""The one image loader: keys -> image files -> preprocessed tensors, the unreadable ones skipped and counted.

The feature cache, validation, evaluation, end-to-end training and the CLI read images through it, so an
image is decoded (`data.load_image`: bounded, any format to RGB) and preprocessed the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from captioning.data import ImageLoadError, load_image

Preprocess = Callable[[Image.Image], torch.Tensor]  # a backbone's: PIL RGB -> (3, S, S)


def load_views(source: Path | str | bytes, preprocess: Preprocess, views: int = 1) -> torch.Tensor | None:
    """(views, 3, S, S): the image and, for views=2, its mirror; None when it cannot be read."""
    try:
        x = preprocess(load_image(source))  # (3, S, S)
    except ImageLoadError:
        return None
    return torch.stack([x, x.flip(-1)][:views])


@dataclass
class Batch:
    """The images of one batch that could be read, and the keys of those that could not."""

    keys: list[Hashable]
    pixels: torch.Tensor | None  # (n * views, 3, S, S), an image's views adjacent; None when none was read
    skipped: list[Hashable] = field(default_factory=list)


class _Images(Dataset):
    """Item i: (key, (views, 3, S, S) or None)."""

    def __init__(self, keys: Sequence[Hashable], files: Mapping, preprocess: Preprocess, views: int) -> None:
        self.keys, self.files, self.preprocess, self.views = keys, files, preprocess, views

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int):
        key = self.keys[i]
        return key, load_views(self.files[key], self.preprocess, self.views)


def collate(items: list[tuple[Hashable, torch.Tensor | None]]) -> Batch:
    good = [(k, x) for k, x in items if x is not None]
    pixels = torch.cat([x for _, x in good]) if good else None
    return Batch([k for k, _ in good], pixels, [k for k, x in items if x is None])


def load_batch(keys: Sequence[Hashable], files: Mapping, preprocess: Preprocess, views: int = 1) -> Batch:
    """One batch, read here and now."""
    images = _Images(keys, files, preprocess, views)
    return collate([images[i] for i in range(len(keys))])


def batches(
    keys: Sequence[Hashable],
    files: Mapping,
    preprocess: Preprocess,
    batch_size: int = 32,
    views: int = 1,
    num_workers: int = 0,
    batch_sampler: list[list[int]] | None = None,
) -> Iterator[Batch]:
    """`keys` (their files in `files`) a batch at a time, read by `num_workers` processes; `batch_sampler`
    (positions in `keys`) fixes the batches instead of `batch_size`."""
    if num_workers == 0 and batch_sampler is None:
        for start in range(0, len(keys), batch_size):
            yield load_batch(keys[start : start + batch_size], files, preprocess, views)
        return
    sampler = batch_sampler or [list(range(s, min(s + batch_size, len(keys)))) for s in range(0, len(keys), batch_size)]
    yield from DataLoader(
        _Images(keys, files, preprocess, views),
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        generator=torch.Generator(),  # leaves the global RNG alone: training must not depend on a cache hit
    )
