"""Time per epoch: training from the frozen-feature cache vs recomputing the CNN every step (the seed).

Run: .venv/bin/python -m benchmarks.bench_training [--coco-root ../shared/data/coco] [--images 200]
Both paths train the same model on the same images and captions for one full epoch, in one run.
Without a COCO root it uses a generated dataset. The cache is built first and its cost is printed
separately: it is paid once per backbone and reused by every later run and fine-tune.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from captioning.config import TrainConfig
from captioning.train import fit


def _ids_file(root: Path, split: str, n: int, folder: Path) -> Path:
    from captioning.data import CocoSplit

    ids = CocoSplit.load(root, split).ids[:n]
    path = folder / "ids.txt"
    path.write_text("\n".join(map(str, ids)))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coco-root", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/coco")
    parser.add_argument("--split", default="train")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--decoder", default="showtell", choices=["showtell", "attention"])
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-training-"))
    root = args.coco_root
    if not (root / "annotations" / f"captions_{args.split}.json").is_file():
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from fixtures import make_coco

        root = make_coco(tmp / "coco", {args.split: args.images})
        print(f"no COCO at {args.coco_root}: using {args.images} generated images")
    ids = _ids_file(root, args.split, args.images, tmp)
    common = dict(
        coco_root=str(root),
        train_split=args.split,
        val_split=None,
        train_ids=str(ids),
        epochs=1,
        batch_size=args.batch_size,
        decoder=args.decoder,
        cache_dir=str(tmp / "cache"),
        log_every=10**6,
        num_workers=2,
        seed=0,
    )
    t = time.perf_counter()
    from captioning.data import CocoSplit
    from captioning.features import ExtractOptions, build_cache
    from captioning.model import DECODER_CLASSES

    build_cache(
        CocoSplit.load(root, args.split, ids),
        "efficientnet_lite0",
        DECODER_CLASSES[args.decoder].feature_kind,
        options=ExtractOptions(cache_dir=tmp / "cache", progress=False),
    )
    extract = time.perf_counter() - t
    timings = {}
    for name, extra in (("cached features", {}), ("CNN every step (seed)", {"end_to_end": True})):
        t = time.perf_counter()
        fit(TrainConfig.of(out=str(tmp / name.split()[0]), **common, **extra))
        timings[name] = time.perf_counter() - t
    captions = sum(
        len(CocoSplit.load(root, args.split, ids).captions[i]) for i in CocoSplit.load(root, args.split, ids).ids
    )
    print(f"{args.images} images, {captions} captions, batch {args.batch_size}, {args.decoder}, efficientnet_lite0")
    print(f"one-off feature extraction: {extract:7.1f} s")
    for name, seconds in timings.items():
        print(f"epoch, {name:24s} {seconds:7.1f} s")
    print(f"speed-up per epoch: {timings['CNN every step (seed)'] / timings['cached features']:.1f}x")


if __name__ == "__main__":
    main()
