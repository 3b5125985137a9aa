"""How every stage grows with the data: wall time and peak memory at three dataset sizes, side by side.

Run: .venv/bin/python -m benchmarks.bench_scale [--sizes 2000 8000 32000] [--workdir /tmp/bench-scale]
     .venv/bin/python -m benchmarks.bench_scale --catalog [--catalog-runs 300 3000]  (the model picker only)

It generates a synthetic COCO-layout dataset of N small images (5 captions each, from a grammar of about
1,500 words) plus a val split of N/8, then runs each stage in a fresh process (so its peak RSS is its own)
with the real code: split loading, vocabulary, caption encoding, the streaming feature cache (with a fast
stand-in CNN of EfficientNet-Lite0's output shape, since the real one would take hours here), validation
(greedy decoding of the val split by a Show-and-Tell decoder and COCO scoring), SCST's document frequencies
and one reward per image, and Browse's chunked scoring of the val split. It prints, per stage, the time and
peak RSS at each size, the growth from the smallest to the largest size (linear: time grows like N, memory
stays flat where nothing has to hold the data), and an extrapolation to COCO train2017's 118,287 images.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

STAGES = ("load", "vocab", "encode", "extract", "validate", "scst", "browse")
COCO_TRAIN = 118_287
NOUNS = [f"{a}{b}" for a in ("dog", "cat", "man", "car", "bus", "cup", "kite", "boat", "tree", "bird") for b in
         ("", "s", "let", "ster", "ling", "ish", "ery", "ette", "ton", "wood", "stone", "field", "ward", "ling2",
          "by", "ham", "ford", "ley", "don", "burg", "mouth", "dale", "wick", "port", "mere")]  # fmt: skip
VERBS = [f"{v}{s}" for v in ("sitting", "standing", "riding", "holding", "eating", "flying", "walking", "parked")
         for s in ("", "ly", "ward", "wise", "like", "ish")]  # fmt: skip
PLACE_SUFFIXES = ("", "side", "way", "land", "top", "front", "yard", "hill", "bank", "view", "gate", "hall")
PLACES = [f"{p}{s}" for p in ("street", "field", "table", "beach", "kitchen", "park", "road", "river", "snow", "grass")
          for s in PLACE_SUFFIXES]  # fmt: skip
ADJS = [f"{c}{s}" for c in ("red", "blue", "green", "white", "black", "small", "large", "old", "young", "wooden")
        for s in ("", "dish", "ly", "er", "est", "ness", "ful", "less", "some", "like", "ward", "ed")]  # fmt: skip


def _caption(rng: random.Random) -> str:
    return (f"a {rng.choice(ADJS)} {rng.choice(NOUNS)} {rng.choice(VERBS)} on a {rng.choice(ADJS)} "
            f"{rng.choice(PLACES)} near the {rng.choice(NOUNS)}.")  # fmt: skip


def make_dataset(root: Path, n: int, seed: int = 0) -> Path:
    """`root` with splits train (n images) and val (n // 8), tiny JPEGs in the COCO layout; kept between runs."""
    from PIL import Image

    if (root / "annotations" / "captions_val.json").is_file():
        return root
    rng, next_id = random.Random(seed), 1
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, count in (("train", n), ("val", max(n // 8, 16))):
        (root / split).mkdir(exist_ok=True)
        images, anns = [], []
        for _ in range(count):
            name = f"{next_id:012d}.jpg"
            colour = tuple(rng.randrange(256) for _ in range(3))
            Image.new("RGB", (32, 24), colour).save(root / split / name, quality=80)
            images.append({"id": next_id, "file_name": name, "width": 32, "height": 24})
            anns += [{"id": len(anns) + next_id * 10, "image_id": next_id, "caption": _caption(rng)} for _ in range(5)]
            next_id += 1
        data = {"images": images, "annotations": anns}
        (root / "annotations" / f"captions_{split}.json").write_text(json.dumps(data))
    return root


class StandIn:
    """A CNN of EfficientNet-Lite0's output shape (1280 x 7 x 7) that costs almost nothing: pooling and a fixed
    random 1x1 projection."""

    def __new__(cls):
        import torch

        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(7), torch.nn.Conv2d(3, 1280, 1), torch.nn.ReLU())


def _stage(name: str, root: Path, cache: Path) -> float:
    """Run one stage (after its set-up, untimed); returns its wall time in seconds."""
    from captioning.data import CocoSplit
    from captioning.features import ExtractOptions, build_cache
    from captioning.vocab import Vocabulary

    t = time.perf_counter()
    train = CocoSplit.load(root, "train")
    if name == "load":
        return time.perf_counter() - t
    t = time.perf_counter()
    vocab = Vocabulary.build(train.all_captions(), 5)
    if name == "vocab":
        return time.perf_counter() - t
    if name == "encode":
        from captioning.datasets import encode_captions

        t = time.perf_counter()
        encode_captions(train, vocab)
        return time.perf_counter() - t

    def cached(split):
        options = ExtractOptions(cache_dir=cache, batch_size=64, num_workers=1, progress=False, encoder=StandIn())
        return build_cache(split, "efficientnet_lite0", "pooled", 1, options)

    val = CocoSplit.load(root, "val")
    if name == "extract":
        t = time.perf_counter()
        cached(train)
        cached(val)
        return time.perf_counter() - t
    return _later_stage(name, train, val, vocab, cached)


def _later_stage(name, train, val, vocab, cached) -> float:
    import torch

    from captioning import distributed as dist

    if name == "validate":
        from captioning.config import ModelConfig
        from captioning.model import CaptionModel
        from captioning.validate import validate

        model = CaptionModel.create(ModelConfig(vocab_size=len(vocab)), pretrained=False, with_backbone=False)
        store = cached(val)
        t = time.perf_counter()
        validate(model.eval(), vocab, val, store, torch.device("cpu"), dist.DistContext(), batch_size=256)
        return time.perf_counter() - t
    if name == "scst":
        from captioning.cider import words_for_reward
        from captioning.config import TrainConfig
        from captioning.phases import SelfCriticalPhase
        from captioning.vocab import tokenize

        store = cached(train)
        for old in store.folder.glob("cider-df-*.json"):
            old.unlink()  # time the computation, not a cache hit
        t = time.perf_counter()
        phase = SelfCriticalPhase.create(
            TrainConfig.of(coco_root="x", out="x"), train, vocab, store, dist.DistContext()
        )
        for image_id in store.ids:
            phase.cider.score(image_id, words_for_reward(tokenize(train.captions[image_id][0])))
        return time.perf_counter() - t
    if name == "browse":
        from captioning.evaluate import iter_scores

        class Echo:  # a stand-in captioner: the first reference as the caption (decoding is timed in validate)
            def caption(self, images, **kw):
                return [type("C", (), {"text": "a small dog sitting on a red street."}) for _ in images]

        t = time.perf_counter()
        scores = {}
        for part, _ in iter_scores(Echo(), val, val.ids):
            scores.update(part)
        return time.perf_counter() - t
    raise ValueError(name)


def _child(args) -> None:
    seconds = _stage(args.stage, args.root, args.cache)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_mb": peak_kb / 1024}))


def _disk_per_image(cache: Path) -> float:
    files = list(cache.rglob("shard-*.npy"))
    images = sum(len(s["ids"]) for p in cache.rglob("index.json") for s in json.loads(p.read_text())["shards"])
    return sum(f.stat().st_size for f in files) / max(images, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs=3, default=[2000, 8000, 32000])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-scale"))
    parser.add_argument("--catalog", action="store_true", help="time the model picker's listing of many runs")
    parser.add_argument("--catalog-runs", type=int, nargs="+", default=[300, 3000])
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        return _child(args)
    if args.catalog:
        return catalog_bench(args.workdir, args.catalog_runs)
    results: dict[str, list[dict]] = {s: [] for s in STAGES}
    for n in args.sizes:
        t = time.perf_counter()
        root = make_dataset(args.workdir / f"coco-{n}", n)
        print(f"dataset of {n} images ready in {time.perf_counter() - t:.0f} s", flush=True)
        for stage in STAGES:
            cmd = [sys.executable, "-m", "benchmarks.bench_scale", "--stage", stage, "--root", str(root),
                   "--cache", str(args.workdir / f"cache-{n}")]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if out.returncode:
                sys.exit(f"{stage} at {n} failed:\n{out.stderr[-3000:]}")
            results[stage].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"  {stage:9s} {results[stage][-1]['seconds']:8.2f} s {results[stage][-1]['peak_mb']:8.0f} MB",
                  flush=True)  # fmt: skip
    _report(args.sizes, results, _disk_per_image(args.workdir / f"cache-{args.sizes[0]}"))


def _report(sizes: list[int], results: dict[str, list[dict]], pooled_bytes: float) -> None:
    growth = sizes[-1] / sizes[0]
    head = " / ".join(f"{n:,}" for n in sizes)
    print(f"\n| stage | time (s) at {head} | x{growth:.0f} data: time | peak RSS (MB) at {head} | "
          f"memory | time at {COCO_TRAIN:,} (extrapolated) |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for stage, rows in results.items():
        secs, mbs = [r["seconds"] for r in rows], [r["peak_mb"] for r in rows]
        extrapolated = secs[-1] * COCO_TRAIN / sizes[-1]
        times, peaks = " / ".join(f"{s:.2f}" for s in secs), " / ".join(f"{m:.0f}" for m in mbs)
        print(f"| {stage} | {times} | x{secs[-1] / max(secs[0], 1e-9):.1f} | {peaks} | x{mbs[-1] / mbs[0]:.2f} | "
              f"{extrapolated / 60:.1f} min |")  # fmt: skip
    grid = 49 * 1280 * 2  # 7x7 positions x 1280 channels in float16, plus the shard header
    print(f"\ndisk per image and view: pooled {pooled_bytes / 1024:.1f} KB (measured), grid {grid / 1024:.0f} KB; "
          f"for {COCO_TRAIN:,} images: pooled {pooled_bytes * COCO_TRAIN / 1e9:.2f} GB, grid "
          f"{grid * COCO_TRAIN / 1e9:.1f} GB per view")  # fmt: skip


def catalog_bench(workdir: Path, counts: list[int]) -> None:
    """The model picker's listing of N runs, each best.pt a hard link of the shipped checkpoint: a server's first
    page load and a rerun, beside what every page load cost before #22 (its cache of 256 missed every time past
    256 runs, so each best.pt was loaded whole: timed on 100 of them, scaled to N)."""
    from app import catalog
    from captioning.checkpoint import SHIPPED, load_checkpoint

    source = workdir / "catalog-best.pt"  # hard links need one file system
    if not source.is_file():
        workdir.mkdir(parents=True, exist_ok=True)
        shutil.copy(SHIPPED, source)
    print("| runs | before #22: each page load (s, est.) | first page load (s) | a rerun (s) |\n|---|---|---|---|")
    for n in counts:
        runs = workdir / f"catalog-{n}"
        for i in range(n):
            run = runs / f"run{i:05d}"
            if not (run / "best.pt").exists():
                run.mkdir(parents=True, exist_ok=True)
                os.link(source, run / "best.pt")
                (run / "metrics.jsonl").write_text(json.dumps({"kind": "event", "event": "finished", "step": 1}))
        sample = catalog.run_dirs(runs)[:100]
        t = time.perf_counter()
        for run in sample:
            load_checkpoint(run / "best.pt")
        before = (time.perf_counter() - t) * n / len(sample)
        times = []
        for _ in range(2):
            t = time.perf_counter()
            assert len(catalog.list_checkpoints(runs)) >= n
            times.append(time.perf_counter() - t)
        print(f"| {n:,} | {before:.1f} | {times[0]:.2f} | {times[1]:.3f} |", flush=True)


if __name__ == "__main__":
    main()
