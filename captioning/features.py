"""Frozen-feature cache: run the frozen CNN once per (backbone, preprocessing, image, view).

Layout: CACHE/<backbone>-<preprocess hash>-<pooled|grid>-v<views>/<split id>/
  index.json      {"meta": {...}, "shards": [{"file": ..., "ids": [...]}], "skipped": {id: why}}
  shard-*.npy     (n, views, C) float32 for pooled, (n, views, N, C) float16 for grid; read memory-mapped

Extraction streams: each shard of at most SHARD_IMAGES images is written to disk (memory-mapped, so memory
does not grow with the split) and renamed into place when complete, and its extractor's part index
(`index-*-r<rank>.json`) is rewritten atomically after it. Once every extractor is done, the part indexes
are merged into index.json. A kill therefore loses at most the shard being written; the next run merges
what was finished, removes half-written files and extracts only what is missing. Under torchrun each rank
extracts its own shards (whole shards, so batches, and thus features, are the same as one process's). A
lock keeps two extractors off one folder; the stop flag is honoured between batches.

A change of backbone, weights or preprocessing changes the key, so stale features are never read.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from captioning import distributed as dist
from captioning.backbones import build_backbone, get_spec
from captioning.config import DEFAULT_CACHE_DIR, SHARD_IMAGES
from captioning.data import CocoSplit, warn_skipped
from captioning.io import atomic_write, atomic_write_text, file_lock, read_json
from captioning.loader import batches
from captioning.model import grid_to_features


class ExtractionStopped(Exception):
    """Extraction stopped on request; what was finished is kept and a rerun continues from there."""


def cache_key(backbone: str, kind: str, views: int) -> str:
    spec = get_spec(backbone)
    return f"{backbone}-{spec.preprocess.key()}-{kind}-v{views}"


def split_dir(cache_dir: Path, backbone: str, kind: str, views: int, split: CocoSplit) -> Path:
    root = str(Path(split.root).resolve())
    tag = hashlib.sha1(f"{root}|{split.split}".encode()).hexdigest()[:8]
    return Path(cache_dir) / cache_key(backbone, kind, views) / f"{split.split}-{tag}"


@dataclass
class FeatureStore:
    """Cached features of one split, memory-mapped; `get(ids, views)` gathers a batch."""

    ids: list[int]
    kind: str
    views: int
    shards: list[np.ndarray]
    where: dict[int, tuple[int, int]]  # image id -> (shard, row)
    folder: Path | None = None  # where it lives: what is derived from the same split can be cached beside it

    def get(self, image_ids: list[int], views: list[int] | None = None) -> torch.Tensor:
        """(B, C) or (B, N, C) float32, view 0 unless `views` picks one per image."""
        rows = []
        for n, image_id in enumerate(image_ids):
            shard, row = self.where[image_id]
            rows.append(np.asarray(self.shards[shard][row, views[n] if views else 0]))
        return torch.from_numpy(np.stack(rows)).float()


@dataclass(frozen=True)
class ExtractOptions:
    """How `build_cache` extracts: where the cache is, on what device, and who hears of progress or asks to stop."""

    cache_dir: Path | str = DEFAULT_CACHE_DIR
    device: str | torch.device = "cpu"
    batch_size: int = 32
    num_workers: int = 2
    progress: bool = True  # a tqdm bar
    encoder: torch.nn.Module | None = None  # the frozen CNN; built from the backbone when None (tests count)
    on_batch: Callable[[int, int], None] | None = None  # (images done, images to do) by this rank
    should_stop: Callable[[], bool] | None = None
    ctx: dist.DistContext | None = None  # under torchrun, every rank calls build_cache and extracts its share
    shard_images: int = SHARD_IMAGES  # the most a kill can lose


def build_cache(
    split: CocoSplit, backbone: str, kind: str, views: int = 1, options: ExtractOptions | None = None
) -> FeatureStore:
    """Extract whatever features of `split` are not cached yet, then open the cache.

    Every rank of `options.ctx` calls it; each extracts its share. Raises ExtractionStopped (on every rank)
    when `options.should_stop` said so on any rank; the finished shards are kept.

    Args:
        kind: "pooled" (B, C) or "grid" (B, N, C), as the decoder needs.
        views: 1 (the image) or 2 (the image and its horizontal flip, for augmentation).
    """
    opt = options or ExtractOptions()
    if kind not in ("pooled", "grid") or views not in (1, 2):
        raise ValueError("kind must be pooled or grid, views 1 or 2")
    if opt.shard_images < 1:
        raise ValueError("shard_images must be at least 1")
    ctx = opt.ctx or dist.DistContext()
    folder = split_dir(opt.cache_dir, backbone, kind, views, split)
    meta = {
        "backbone": backbone,
        "source": get_spec(backbone).source,
        "preprocess": get_spec(backbone).preprocess.key(),
        "kind": kind,
        "views": views,
        "root": str(Path(split.root).resolve()),
        "split": split.split,
    }
    with _rank0_lock(folder, ctx):
        if ctx.rank == 0:
            _settle(folder, meta)
        dist.barrier(ctx)
        index = _read_index(folder, meta)
        have = {i for s in index["shards"] for i in s["ids"]}
        todo = [i for i in split.ids if i not in have and str(i) not in index["skipped"]]
        mine = _share(todo, split, opt.shard_images, ctx)
        job = _Extraction(folder, meta, f"{len(index['shards']):04d}-r{ctx.rank}", split, backbone, views)
        stopped = bool(mine) and job.run(mine, opt)
        stopped = dist.any_true(stopped, ctx)
        if ctx.rank == 0:
            _settle(folder, meta)
        dist.barrier(ctx)
    if stopped:
        raise ExtractionStopped(f"feature extraction of {split.split} stopped; a rerun continues it")
    index = _read_index(folder, meta)
    skipped = {i for i in split.ids if str(i) in index["skipped"]}
    warn_skipped(f"split {split.split}", [split.files[i].name for i in split.ids if i in skipped], "could not be read")
    return open_store(folder, index, [i for i in split.ids if i not in skipped])


def _share(todo: list[int], split: CocoSplit, size: int, ctx: dist.DistContext) -> list[list[int]]:
    """This rank's chunks of at most `size` ids: every rank's `size`-th, or, where the images are in tar shards,
    the chunks of every world-th shard (each rank reads whole shards of its own, front to back)."""
    groups: dict[object, list[int]] = {}
    for i in todo:
        groups.setdefault(getattr(split.files[i], "shard", None), []).append(i)
    if None in groups:  # image files
        return [todo[k : k + size] for k in range(0, len(todo), size)][ctx.rank :: ctx.world]
    return [ids[k : k + size] for ids in list(groups.values())[ctx.rank :: ctx.world] for k in range(0, len(ids), size)]


def _rank0_lock(folder: Path, ctx: dist.DistContext):
    if ctx.rank != 0:
        return contextlib.nullcontext()
    return file_lock(folder / ".lock", f"waiting for another process that is extracting features into {folder}")


def _read_index(folder: Path, meta: dict) -> dict:
    """index.json when it is for `meta` and its shards are all there, else an empty index."""
    index = _read_json(folder / "index.json")
    try:
        if index["meta"] == meta and all((folder / s["file"]).is_file() for s in index["shards"]):
            index["skipped"] = dict(index["skipped"])
            return index
    except (KeyError, TypeError):
        pass
    return {"meta": meta, "shards": [], "skipped": {}}


def _read_json(path: Path):
    try:
        return read_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _settle(folder: Path, meta: dict) -> None:
    """Merge the part indexes of finished shards into index.json, then remove the part indexes, half-written
    files and shards no index names (a kill between a shard's rename and its index). Holder of the lock only."""
    index = _read_index(folder, meta)
    parts = sorted(folder.glob("index-*-r*.json"))
    known = {s["file"] for s in index["shards"]}
    for path in parts:
        part = _read_json(path)
        if not isinstance(part, dict) or part.get("meta") != meta:
            continue
        for shard in part.get("shards", []):
            if shard["file"] not in known and (folder / shard["file"]).is_file():
                index["shards"].append(shard)
                known.add(shard["file"])
        index["skipped"].update(part.get("skipped", {}))
    if parts or not (folder / "index.json").is_file():
        atomic_write_text(folder / "index.json", json.dumps(index))
    for path in parts:
        path.unlink(missing_ok=True)
    for path in folder.glob("shard-*.npy"):
        if path.name not in known:
            path.unlink(missing_ok=True)
    for path in folder.glob(".*.tmp"):
        path.unlink(missing_ok=True)


class _Extraction:
    """One extractor's shards: each written to disk as it is computed, then named in its part index."""

    def __init__(self, folder: Path, meta: dict, tag: str, split: CocoSplit, backbone: str, views: int) -> None:
        self.folder, self.tag, self.split, self.backbone, self.views = folder, tag, split, backbone, views
        self.dtype = np.float16 if meta["kind"] == "grid" else np.float32
        self.kind = meta["kind"]
        self.part = {"meta": meta, "shards": [], "skipped": {}}

    @torch.inference_mode()
    def run(self, chunks: list[list[int]], opt: ExtractOptions) -> bool:
        """Extract every chunk of ids into a shard of its own; True when stopped on request."""
        from tqdm import tqdm

        device, batch_size = torch.device(opt.device), opt.batch_size
        net = (opt.encoder or build_backbone(self.backbone, pretrained=True)).to(device).eval()
        flat = [i for chunk in chunks for i in chunk]
        batch_list, at = [], 0  # batches never cross a shard, so every shard sees the same batches on any rerun
        for chunk in chunks:
            batch_list += [
                list(range(at + j, at + min(j + batch_size, len(chunk)))) for j in range(0, len(chunk), batch_size)
            ]
            at += len(chunk)
        preprocess = get_spec(self.backbone).preprocess
        loader = batches(flat, self.split.files, preprocess, views=self.views, num_workers=opt.num_workers,
                         batch_sampler=batch_list)  # fmt: skip
        self.batches, self.done, self.total = iter(loader), 0, len(flat)
        with tqdm(total=len(flat), desc=f"features {self.split.split}", unit="img", disable=not opt.progress) as bar:
            for k, chunk in enumerate(chunks):
                name = f"shard-{self.tag}-{k:04d}.npy"
                try:
                    atomic_write(
                        self.folder / name,
                        functools.partial(
                            self._fill,
                            chunk=chunk,
                            net=net,
                            device=device,
                            bar=bar,
                            on_batch=opt.on_batch,
                            stop=opt.should_stop,
                        ),
                    )
                except ExtractionStopped:
                    return True
                self.part["shards"].append({"file": name, "ids": self.ids})
                self.part["skipped"].update(self.skipped)
                atomic_write_text(self.folder / f"index-{self.tag}.json", json.dumps(self.part))
        return False

    def _fill(self, path: Path, *, chunk: list[int], net, device, bar, on_batch, stop) -> None:
        """Write the features of `chunk` into `path` batch by batch; the part index learns of them after."""
        array, ids, skipped = None, [], {}
        self.ids, self.skipped = ids, skipped
        while len(ids) + len(skipped) < len(chunk):
            if stop and stop():
                raise ExtractionStopped
            batch = next(self.batches)
            skipped.update({str(i): "unreadable" for i in batch.skipped})
            good = batch.keys
            if good:
                feats = grid_to_features(net(batch.pixels.to(device)), self.kind)  # (n*views, C) or (n*views, N, C)
                feats = feats.reshape(len(good), self.views, *feats.shape[1:]).cpu().numpy().astype(self.dtype)
                if array is None:  # rows for every image of the chunk; an unreadable one leaves a row unused
                    array = np.lib.format.open_memmap(path, "w+", self.dtype, (len(chunk), *feats.shape[1:]))
                array[len(ids) : len(ids) + len(good)] = feats
                ids += good
            n = len(good) + len(batch.skipped)
            self.done += n
            bar.update(n)
            if on_batch:
                on_batch(self.done, self.total)
        if array is None:  # nothing readable: a placeholder row, so every shard can be memory-mapped
            array = np.lib.format.open_memmap(path, "w+", self.dtype, (1, self.views, 1))
        array.flush()


def open_store(folder: Path, index: dict, ids: list[int]) -> FeatureStore:
    shards, where = [], {}
    for n, shard in enumerate(index["shards"]):
        shards.append(np.load(folder / shard["file"], mmap_mode="r"))
        where.update({i: (n, row) for row, i in enumerate(shard["ids"])})
    ids = [i for i in ids if i in where]
    return FeatureStore(ids, index["meta"]["kind"], index["meta"]["views"], shards, where, folder)
