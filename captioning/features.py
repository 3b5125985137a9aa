"""Frozen-feature cache: run the frozen CNN once per (backbone, preprocessing, image, view).

Layout: CACHE/<backbone>-<preprocess hash>-<pooled|grid>-v<views>/<split id>/
  index.json        {"meta": {...}, "shards": [{"file": ..., "ids": [...]}], "skipped": {...}}
  shard-NNNN.npy    (n, views, C) float32 for pooled, (n, views, N, C) float16 for grid
A later run that needs more images extracts only the missing ones into a new shard. A change of
backbone, weights or preprocessing changes the key, so stale features are never read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from captioning.backbones import build_backbone, get_spec
from captioning.config import DEFAULT_CACHE_DIR
from captioning.data import CocoSplit, ImageLoadError, load_image, warn_skipped
from captioning.io import atomic_write, atomic_write_text
from captioning.model import grid_to_features


def cache_key(backbone: str, kind: str, views: int) -> str:
    spec = get_spec(backbone)
    return f"{backbone}-{spec.preprocess.key()}-{kind}-v{views}"


def split_dir(cache_dir: Path, backbone: str, kind: str, views: int, split: CocoSplit) -> Path:
    root = str(Path(split.root).resolve())
    tag = hashlib.sha1(f"{root}|{split.split}".encode()).hexdigest()[:8]
    return Path(cache_dir) / cache_key(backbone, kind, views) / f"{split.split}-{tag}"


class _Images(Dataset):
    """Preprocessed images and their flipped views; unreadable images give None."""

    def __init__(self, split: CocoSplit, ids: list[int], backbone: str, views: int) -> None:
        self.split, self.ids, self.views = split, ids, views
        self.preprocess = get_spec(backbone).preprocess

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        image_id = self.ids[i]
        try:
            x = self.preprocess(load_image(self.split.files[image_id]))  # (3, S, S)
        except ImageLoadError:
            return image_id, None
        views = [x, x.flip(-1)][: self.views]
        return image_id, torch.stack(views)  # (views, 3, S, S)


def _collate(items):
    return [i for i, _ in items], [x for _, x in items]


@dataclass
class FeatureStore:
    """Cached features of one split, memory-mapped; `get(ids, views)` gathers a batch."""

    ids: list[int]
    kind: str
    views: int
    shards: list[np.ndarray]
    where: dict[int, tuple[int, int]]  # image id -> (shard, row)

    def get(self, image_ids: list[int], views: list[int] | None = None) -> torch.Tensor:
        """(B, C) or (B, N, C) float32, view 0 unless `views` picks one per image."""
        rows = []
        for n, image_id in enumerate(image_ids):
            shard, row = self.where[image_id]
            rows.append(np.asarray(self.shards[shard][row, views[n] if views else 0]))
        return torch.from_numpy(np.stack(rows)).float()


def build_cache(
    split: CocoSplit,
    backbone: str,
    kind: str,
    *,
    views: int = 1,
    cache_dir: Path | str = DEFAULT_CACHE_DIR,
    device: str | torch.device = "cpu",
    batch_size: int = 32,
    num_workers: int = 2,
    progress: bool = True,
    encoder: torch.nn.Module | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> FeatureStore:
    """Extract whatever features of `split` are not cached yet, then open the cache.

    Args:
        kind: "pooled" (B, C) or "grid" (B, N, C), as the decoder needs.
        views: 1 (the image) or 2 (the image and its horizontal flip, for augmentation).
        encoder: the frozen CNN to use; built from `backbone` when None (tests pass a counting one).
    """
    if kind not in ("pooled", "grid") or views not in (1, 2):
        raise ValueError("kind must be pooled or grid, views 1 or 2")
    folder = split_dir(cache_dir, backbone, kind, views, split)
    index = _read_index(folder)
    meta = {
        "backbone": backbone,
        "source": get_spec(backbone).source,
        "preprocess": get_spec(backbone).preprocess.key(),
        "kind": kind,
        "views": views,
        "root": str(Path(split.root).resolve()),
        "split": split.split,
    }
    if index.get("meta") != meta:
        index = {"meta": meta, "shards": [], "skipped": {}}
    have = {i for s in index["shards"] for i in s["ids"]}
    todo = [i for i in split.ids if i not in have and str(i) not in index["skipped"]]
    if todo:
        _extract(
            folder,
            index,
            split,
            todo,
            backbone,
            kind,
            views,
            device,
            batch_size,
            num_workers,
            progress,
            encoder,
            on_batch,
        )
    skipped = [i for i in split.ids if str(i) in index["skipped"]]
    warn_skipped(f"split {split.split}", [split.files[i].name for i in skipped], "could not be read")
    return open_store(folder, index, [i for i in split.ids if i not in set(skipped)])


def _read_index(folder: Path) -> dict:
    try:
        index = json.loads((folder / "index.json").read_text())
        if all((folder / s["file"]).is_file() for s in index["shards"]):
            return index
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return {}


@torch.inference_mode()
def _extract(
    folder, index, split, todo, backbone, kind, views, device, batch_size, num_workers, progress, encoder, on_batch
) -> None:
    from tqdm import tqdm

    device = torch.device(device)
    net = (encoder or build_backbone(backbone, pretrained=True)).to(device).eval()
    loader = DataLoader(
        _Images(split, todo, backbone, views),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
        generator=torch.Generator(),  # leaves the global RNG alone: training must not depend on a cache hit
    )
    dtype = np.float16 if kind == "grid" else np.float32
    out_ids, chunks, done = [], [], 0
    with tqdm(total=len(todo), desc=f"features {split.split} ({backbone})", unit="img", disable=not progress) as bar:
        for ids, xs in loader:
            good = [(i, x) for i, x in zip(ids, xs) if x is not None]
            for i, x in zip(ids, xs):
                if x is None:
                    index["skipped"][str(i)] = "unreadable"
            if good:
                batch = torch.cat([x for _, x in good]).to(device)  # (n*views, 3, S, S)
                feats = grid_to_features(net(batch), kind)  # (n*views, C) or (n*views, N, C)
                feats = feats.reshape(len(good), views, *feats.shape[1:]).cpu().numpy().astype(dtype)
                out_ids += [i for i, _ in good]
                chunks.append(feats)
            done += len(ids)
            bar.update(len(ids))
            if on_batch:
                on_batch(done, len(todo))
    if chunks:
        name = f"shard-{len(index['shards']):04d}.npy"
        array = np.concatenate(chunks)
        atomic_write(folder / name, lambda p: _save_npy(p, array))
        index["shards"].append({"file": name, "ids": out_ids})
    atomic_write_text(folder / "index.json", json.dumps(index))


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object, so numpy does not append ".npy" to the temp name
        np.save(f, array)


def open_store(folder: Path, index: dict, ids: list[int]) -> FeatureStore:
    shards, where = [], {}
    for n, shard in enumerate(index["shards"]):
        shards.append(np.load(folder / shard["file"], mmap_mode="r"))
        where.update({i: (n, row) for row, i in enumerate(shard["ids"])})
    ids = [i for i in ids if i in where]
    return FeatureStore(ids, index["meta"]["kind"], index["meta"]["views"], shards, where)
