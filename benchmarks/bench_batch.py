"""Folder captioning: images/s through the batch path (`caption FOLDER`) against one call per image, side by side.

Run: .venv/bin/python -m benchmarks.bench_batch [--images 200] [--batch-size 4] [--chunk 20]

The images (the embedded sample's, repeated to --images) are cut into chunks; each chunk goes through both paths,
one after the other, alternating which goes first, so a noisy machine slows both alike. Default decoding.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

from captioning.batch import caption_files
from captioning.config import DecodeConfig
from captioning.data import SAMPLE_ROOT, load_image
from captioning.inference import Captioner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--chunk", type=int, default=20)
    parser.add_argument("--checkpoint", type=Path)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    files = sorted((SAMPLE_ROOT / "train").glob("*.jpg")) + sorted((SAMPLE_ROOT / "val").glob("*.jpg"))
    files = (files * (args.images // len(files) + 1))[: args.images]
    captioner = Captioner.from_checkpoint(args.checkpoint, device="cpu")
    decoding = DecodeConfig()
    captioner.caption([load_image(files[0])], decoding)  # warm-up
    spent = {"folder path": 0.0, "one call per image": 0.0}
    for k, start in enumerate(range(0, len(files), args.chunk)):
        chunk = files[start : start + args.chunk]
        runs = [
            ("folder path", lambda c=chunk: caption_files(captioner, c, [], decoding, args.batch_size)),
            ("one call per image", lambda c=chunk: [captioner.caption([load_image(p)], decoding) for p in c]),
        ]
        for name, run in runs if k % 2 == 0 else runs[::-1]:
            t = time.perf_counter()
            run()
            spent[name] += time.perf_counter() - t
    print(f"{len(files)} images, batch {args.batch_size}, default decoding, chunks of {args.chunk} interleaved")
    for name, seconds in spent.items():
        print(f"{name:20s} {len(files) / seconds:7.1f} images/s  ({seconds:.1f} s)")
    print(f"speed-up: x{spent['one call per image'] / spent['folder path']:.2f}")


if __name__ == "__main__":
    main()
