"""The streaming feature cache: shards on disk as they are computed, kills and stops lose at most one shard,
ranks extract disjoint shards that merge into what one process would have written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO
from fixtures import make_coco

from captioning.backbones import build_backbone
from captioning.data import CocoSplit
from captioning.features import ExtractionStopped, ExtractOptions, build_cache, split_dir
from captioning.rundir import read_metrics


class Counting(torch.nn.Module):
    """A backbone that counts the images it sees; pretrained, so its features match the CLI's."""

    def __init__(self, pretrained: bool = False) -> None:
        super().__init__()
        self.net, self.images = build_backbone("efficientnet_lite0", pretrained=pretrained), 0

    def forward(self, x):
        self.images += x.size(0)
        return self.net(x)


def _cache(split, cache_dir, encoder, kind="pooled", **kw):
    options = ExtractOptions(cache_dir=cache_dir, encoder=encoder, progress=False, num_workers=0, **kw)
    return build_cache(split, "efficientnet_lite0", kind, 1, options)


def _folder(split, cache_dir, kind="pooled", views=1) -> Path:
    return split_dir(cache_dir, "efficientnet_lite0", kind, views, split)


def _extract_cli(coco, cache, *args):
    return [sys.executable, "-m", "captioning", "extract-features", "--coco-root", str(coco), "--split", "train",
            "--cache-dir", str(cache), "--num-workers", "0", "--device", "cpu", *args]  # fmt: skip


def _done_ids(folder: Path) -> set[int]:
    """Ids named by the part indexes and index.json of a cache folder, as a reader after a kill finds them."""
    ids = set()
    for path in [folder / "index.json", *folder.glob("index-*-r*.json")]:
        if path.is_file():
            ids |= {i for s in json.loads(path.read_text())["shards"] for i in s["ids"]}
    return ids


@pytest.fixture(scope="module")
def coco_400(tmp_path_factory) -> Path:
    return make_coco(tmp_path_factory.mktemp("coco400"), {"train": 400})


def test_shards_are_written_as_extraction_goes_and_memory_does_not_hold_the_split(tiny_coco, tmp_path):
    split = CocoSplit.load(tiny_coco, "train")  # 24 images
    seen = []

    def on_batch(done, total):
        seen.append((done, len(list(_folder(split, tmp_path).glob("shard-*")))))

    store = _cache(split, tmp_path, Counting(), shard_images=5, batch_size=2, on_batch=on_batch)
    index = json.loads((_folder(split, tmp_path) / "index.json").read_text())
    assert [len(s["ids"]) for s in index["shards"]] == [5, 5, 5, 5, 4]
    assert seen[-1][0] == 24 and seen[6][1] >= 2  # after 14 images two shards were already on disk
    assert store.ids == split.ids and store.get(split.ids).shape == (24, 1280)
    assert all(isinstance(s, np.memmap) for s in store.shards)  # read memory-mapped
    assert not list(_folder(split, tmp_path).glob("index-*")) and not list(_folder(split, tmp_path).glob(".*.tmp"))


def test_stop_between_batches_keeps_finished_shards_and_a_rerun_does_the_rest(tiny_coco, tmp_path):
    split = CocoSplit.load(tiny_coco, "train")
    first = Counting()
    batches = []
    with pytest.raises(ExtractionStopped):
        _cache(split, tmp_path, first, shard_images=8, batch_size=4, on_batch=lambda d, t: batches.append(d),
               should_stop=lambda: len(batches) >= 5)  # fmt: skip
    assert first.images == 20  # stopped after its fifth batch, not at the end of the split
    assert len(_done_ids(_folder(split, tmp_path))) == 16  # two whole shards kept, the third one dropped
    again = Counting()
    again.net.load_state_dict(first.net.state_dict())
    store = _cache(split, tmp_path, again, shard_images=8, batch_size=4)
    assert again.images == 8 and store.ids == split.ids
    whole = _cache(split, tmp_path / "whole", first, shard_images=8, batch_size=4)
    assert torch.equal(store.get(split.ids), whole.get(split.ids))


def test_unreadable_images_are_skipped_once_and_recorded(tiny_coco, tmp_path):
    import shutil

    root = tmp_path / "coco"
    shutil.copytree(tiny_coco, root)
    victims = sorted((root / "train").iterdir())[:5]  # a whole shard of unreadable images, and more
    for v in victims + [sorted((root / "train").iterdir())[9]]:
        v.write_bytes(b"not an image")
    split = CocoSplit.load(root, "train")
    cnn = Counting()
    with pytest.warns(UserWarning, match="6 image"):
        store = _cache(split, tmp_path / "c", cnn, shard_images=5, batch_size=5)
    assert len(store.ids) == 18 and cnn.images == 18
    with pytest.warns(UserWarning, match="6 image"):
        again = _cache(split, tmp_path / "c", cnn, shard_images=5, batch_size=5)
    assert cnn.images == 18 and torch.equal(again.get(again.ids), store.get(store.ids))


@pytest.mark.slow
def test_sigkill_half_way_loses_at_most_one_shard_and_the_features_match_bit_for_bit(coco_400, tmp_path):
    cache = tmp_path / "cache"
    split = CocoSplit.load(coco_400, "train")
    folder = _folder(split, cache, "grid")
    args = ("--decoder", "attention", "--shard-images", "40", "--batch-size", "8")
    proc = subprocess.Popen(_extract_cli(coco_400, cache, *args), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while len(_done_ids(folder)) < 160 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = _done_ids(folder)
    assert 160 <= len(done) < 400, "the kill came too late to test anything"
    cnn = Counting(pretrained=True)
    store = _cache(split, cache, cnn, kind="grid", shard_images=40, batch_size=8)
    assert cnn.images == 400 - len(done)  # only the missing images: the shard being written, and the rest
    assert not list(folder.glob(".*.tmp")) and not list(folder.glob("index-*"))  # half-written files are gone
    named = {s["file"] for s in json.loads((folder / "index.json").read_text())["shards"]}
    assert {p.name for p in folder.glob("shard-*.npy")} == named
    whole = _cache(split, tmp_path / "whole", cnn, kind="grid", shard_images=40, batch_size=8)
    assert torch.equal(store.get(split.ids), whole.get(split.ids))


@pytest.mark.slow
def test_sigterm_during_extraction_in_train_stops_at_the_next_batch(coco_400, tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "run"
    split = CocoSplit.load(coco_400, "train")
    folder = _folder(split, cache)
    command = [sys.executable, "-m", "captioning", "train", "--coco-root", str(coco_400), "--out", str(out),
               "--no-val", "--cache-dir", str(cache), "--num-workers", "0", "--device", "cpu",
               "--vocab-threshold", "1"]  # fmt: skip
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    # at the default 1,024 images a shard the split is one shard: signal once its first batch is on disk
    while proc.poll() is None and time.monotonic() < deadline:
        if any(p.stat().st_size for p in folder.glob(".shard-*.tmp")) if folder.is_dir() else False:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, output[-2000:]
    assert not _done_ids(folder), "the split was extracted to the end: the stop was not honoured"
    events = [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "event"]
    assert events[-1]["event"] == "stopped" and events[-1]["during"] == "features"
    assert "resume with" in output


def test_sigterm_during_extraction_stops_within_a_batch(coco_400, tmp_path):
    cache = tmp_path / "cache"
    split = CocoSplit.load(coco_400, "train")
    folder = _folder(split, cache)
    proc = subprocess.Popen(_extract_cli(coco_400, cache, "--shard-images", "16", "--batch-size", "4"), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while len(_done_ids(folder)) < 32 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    at_signal = len(_done_ids(folder))
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0 and "run the same command again" in output, output[-2000:]
    kept = len(json.loads((folder / "index.json").read_text())["shards"])
    assert at_signal >= 32 and kept * 16 <= at_signal + 16  # at most the shard in progress finished after it


@pytest.mark.slow
def test_two_torchrun_ranks_extract_disjoint_shards_that_equal_one_process(tiny_coco, tmp_path):
    split = CocoSplit.load(tiny_coco, "train")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "captioning",
               "extract-features", "--coco-root", str(tiny_coco), "--split", "train", "--cache-dir",
               str(tmp_path / "ddp"), "--num-workers", "0", "--device", "cpu", "--shard-images", "5",
               "--batch-size", "5"]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    shards = json.loads((_folder(split, tmp_path / "ddp") / "index.json").read_text())["shards"]
    by_rank = {r: [i for s in shards if f"-r{r}-" in s["file"] for i in s["ids"]] for r in (0, 1)}
    assert by_rank[0] and by_rank[1] and not set(by_rank[0]) & set(by_rank[1])
    assert sorted(by_rank[0] + by_rank[1]) == sorted(split.ids)
    ddp = _cache(split, tmp_path / "ddp", None, shard_images=5)  # opens the merged cache, extracts nothing
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as torchrun runs each rank (OMP_NUM_THREADS=1): the same sums in the same order
    try:
        one = _cache(split, tmp_path / "one", build_backbone("efficientnet_lite0", pretrained=True), shard_images=5,
                     batch_size=5)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(ddp.get(split.ids), one.get(split.ids))


def test_a_cache_folder_is_locked_while_extracting(tiny_coco, tmp_path):
    from captioning.io import file_lock

    split = CocoSplit.load(tiny_coco, "train")
    folder = _folder(split, tmp_path)
    script = (f"import fcntl, os, sys; fd = os.open({str(folder / '.lock')!r}, os.O_RDWR); "
              "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)")  # fmt: skip
    holding = []

    def probe(done, total):
        if not holding:
            holding.append(subprocess.run([sys.executable, "-c", script], capture_output=True).returncode)

    _cache(split, tmp_path, Counting(), on_batch=probe)
    assert holding == [1]  # another process could not take the lock during extraction
    with file_lock(folder / ".lock"):
        pass  # and it is free afterwards
    assert subprocess.run([sys.executable, "-c", script]).returncode == 0
