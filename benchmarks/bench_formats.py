"""Reading speed and peak memory of every caption format at growing sizes, beside the COCO reader on the same
captions in the same run.

Run: .venv/bin/python -m benchmarks.bench_formats [--sizes 10000 100000] [--workdir /tmp/bench-formats]

For each size N (captions; 5 per image, so N/5 images of a few hundred bytes each) it writes one dataset per
format from the same images and captions, then reads each one's train split in a fresh process (so its peak
RSS is its own), COCO first and the others after it, round-robin over 3 repeats (the median is reported). It
prints seconds and peak RSS per format and size, and the growth from the smallest size to the largest: reading
is linear when time grows like N.

Then webdataset streaming: sets of 1,000-sample shards, growing in the number of shards, each read in a fresh
process through its index and then image by image (as feature extraction reads them): the peak RSS after the
index and after reading every image, so what streaming adds is seen apart from the index, which grows with the
samples like every format's.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

FORMATS = ("coco", "flickr", "karpathy", "csv", "folder", "imagefolder", "webdataset")
SHARD_SAMPLES = 1_000


def write(root: Path, n_captions: int) -> dict[str, Path]:
    """The same images and captions in every format; format -> the path a reader is handed."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 60, 30)).save(buf, "JPEG")  # readers only check that the files are there
    images = [f"{k:07d}.jpg" for k in range(n_captions // 5)]
    caps = {name: [f"a photo number {k} of a thing {j}" for j in range(5)] for k, name in enumerate(images)}
    (root / "images").mkdir(parents=True)
    for name in images:
        (root / "images" / name).write_bytes(buf.getvalue())
    (root / "annotations").mkdir()
    (root / "train").symlink_to("images")
    coco = {"images": [{"id": k + 1, "file_name": n} for k, n in enumerate(images)],
            "annotations": [{"id": 5 * k + j + 1, "image_id": k + 1, "caption": c}
                            for k, n in enumerate(images) for j, c in enumerate(caps[n])]}  # fmt: skip
    (root / "annotations" / "captions_train.json").write_text(json.dumps(coco))
    (root / "Flickr8k.token.txt").write_text("".join(f"{n}#{j}\t{c}\n" for n in images for j, c in enumerate(caps[n])))
    records = [{"filename": n, "split": "train", "sentences": [{"raw": c} for c in caps[n]]} for n in images]
    (root / "dataset_x.json").write_text(json.dumps({"images": records, "dataset": "x"}))
    with open(root / "captions.csv", "w", newline="") as f:
        csv.writer(f).writerows([("image", "caption")] + [(f"images/{n}", c) for n in images for c in caps[n]])
    (root / "images" / "metadata.jsonl").write_text(
        "".join(json.dumps({"file_name": n, "text": c}) + "\n" for n in images for c in caps[n])
    )
    write_shards(root / "shards", [(n, buf.getvalue(), caps[n]) for n in images])
    (root / "sidecars").mkdir()
    for n in images:
        (root / "sidecars" / n).write_bytes(buf.getvalue())
        (root / "sidecars" / n).with_suffix(".txt").write_text("\n".join(caps[n]) + "\n")
    return {"coco": root, "flickr": root / "Flickr8k.token.txt", "karpathy": root / "dataset_x.json",
            "csv": root / "captions.csv", "folder": root / "sidecars", "imagefolder": root / "images",
            "webdataset": root / "shards"}  # fmt: skip


def write_shards(folder: Path, samples: list[tuple[str, bytes, list[str]]]) -> None:
    """img2dataset's layout: SHARD_SAMPLES samples a shard, NNNNNNNNN.jpg + .txt (a caption a line)."""
    import tarfile

    folder.mkdir(parents=True)
    for s in range(0, len(samples), SHARD_SAMPLES):
        with tarfile.open(folder / f"{s // SHARD_SAMPLES:05d}.tar", "w") as tar:
            for k, (_, image, caps) in enumerate(samples[s : s + SHARD_SAMPLES]):
                for suffix, data in ((".jpg", image), (".txt", "\n".join(caps).encode())):
                    member = tarfile.TarInfo(f"{s + k:09d}{suffix}")
                    member.size = len(data)
                    tar.addfile(member, io.BytesIO(data))


def stream_once(path: Path) -> tuple[float, float, float]:
    """(seconds, peak RSS in MB after the index, after reading every image) in a fresh process."""
    code = (
        "import resource, sys, time, warnings; warnings.simplefilter('ignore');"
        "from captioning.formats import ReadOptions, open_split; t = time.perf_counter();"
        "peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024;"
        f"s = open_split({str(path)!r}, 'train', 'webdataset', ReadOptions(val_fraction=0.0)); index = peak();"
        "n = sum(len(s.files[i].read_bytes()) for i in s.ids);"
        "print(time.perf_counter() - t, index, peak())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), float(out[1]), float(out[2])


def streaming(workdir: Path, shard_counts: list[int], repeats: int) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 60, 30)).save(buf, "JPEG")
    rows = {}
    for count in shard_counts:
        folder = workdir / f"shards{count}-{time.time_ns()}"
        samples = [(f"{k}", buf.getvalue(), [f"a photo number {k}"]) for k in range(count * SHARD_SAMPLES)]
        write_shards(folder, samples)
        rows[count] = [stream_once(folder) for _ in range(repeats)]
    print(f"\nwebdataset streaming ({SHARD_SAMPLES:,} samples a shard, median of {repeats})")
    print(f"{'shards':>8s}{'samples':>10s}{'seconds':>10s}{'RSS after index':>18s}{'after every image':>20s}")
    for count, runs in rows.items():
        t, index, peak = (statistics.median(r[j] for r in runs) for j in range(3))
        print(f"{count:>8d}{count * SHARD_SAMPLES:>10,d}{t:>10.2f}{index:>15.0f} MB{peak:>17.0f} MB")


def read_once(fmt: str, path: Path) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of reading the train split in a fresh process."""
    code = (
        "import resource, sys, time, warnings; warnings.simplefilter('ignore');"
        "from captioning.formats import ReadOptions, open_split; t = time.perf_counter();"
        f"s = open_split({str(path)!r}, 'train', {fmt!r}, ReadOptions(val_fraction=0.0)); "
        "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, len(s))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), float(out[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-formats"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shards", type=int, nargs="+", default=[4, 16, 64], help="shard counts for streaming")
    args = parser.parse_args()
    results: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for size in args.sizes:
        paths = write(args.workdir / f"n{size}-{time.time_ns()}", size)
        for _ in range(args.repeats):  # round-robin: every format, COCO first, in each repeat
            for fmt in FORMATS:
                results.setdefault((fmt, size), []).append(read_once(fmt, paths[fmt]))
    print(f"{'format':12s}" + "".join(f"{f'{s:,} captions':>26s}" for s in args.sizes) + "   time growth")
    for fmt in FORMATS:
        cells, times = "", []
        for size in args.sizes:
            t = statistics.median(r[0] for r in results[(fmt, size)])
            rss = statistics.median(r[1] for r in results[(fmt, size)])
            times.append(t)
            cells += f"{t:>12.2f} s {rss:>8.0f} MB  "
        growth = times[-1] / times[0] if times[0] else float("nan")
        print(f"{fmt:12s}{cells}  x{growth:.1f} for x{args.sizes[-1] / args.sizes[0]:.0f} the captions")
    base = subprocess.run([sys.executable, "-c", "import resource, captioning.formats; "
                           "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    print(f"(a reader's process holds {float(base):.0f} MB before it reads: the package and torch)")
    streaming(args.workdir, args.shards, args.repeats)


if __name__ == "__main__":
    main()
