"""The data commands: `build-vocab`, `download` (COCO 2017) and `karpathy-split`."""

from __future__ import annotations

import argparse
from pathlib import Path

from captioning.download import DEFAULT_BASE_URL, SPLITS, download_coco
from captioning.flags import DATA_FLAGS, add_train_arguments, positive, read_options
from captioning.formats import open_split


def cmd_build_vocab(args: argparse.Namespace) -> int:
    from captioning.vocab import Vocabulary

    split = open_split(args.coco_root, args.split, args.format, read_options(args), args.ids_file)
    vocab = Vocabulary.build(split.all_captions(), args.threshold)
    vocab.save(args.out)
    print(f"{len(vocab)} words (threshold {args.threshold}, {len(split)} images) -> {args.out}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    """Returns 1 if some images failed. With --progress-jsonl, progress and the ending also go there."""
    from captioning.download import ProgressFile

    log = ProgressFile(args.progress_jsonl) if args.progress_jsonl else None
    try:
        summary = download_coco(args.dest, args.split, args.limit, args.base_url, args.retries, on_progress=log)
    except Exception as exc:  # main prints it for a person; the file tells a watching process
        if log is not None:
            log.end("failed", str(exc))
        raise
    lines = [
        f"{summary.split} images: {summary.downloaded} downloaded, {summary.skipped} already "
        f"there, {len(summary.failed)} failed; in {summary.images_dir}, "
        f"captions in {summary.annotations}"
    ]
    if args.limit is not None and summary.listed > args.limit:
        more = f"{summary.split} lists {summary.listed:,} images, more than --limit {args.limit:,}"
        lines.append(f"{more}: a download only adds, so none was removed")
    if summary.damaged:
        lines.append(f"{len(summary.damaged)} kept file(s) were not whole images and were fetched again")
    if summary.failed:
        named = [f"{name} ({summary.reasons.get(name, 'failed')})" for name in summary.failed[:5]]
        more = f" and {len(summary.failed) - 5} more" if len(summary.failed) > 5 else ""
        lines.append(f"failed: {', '.join(named)}{more}; run again to retry them")
    print("\n".join(lines))
    if log is not None:
        counts = {"downloaded": summary.downloaded, "skipped": summary.skipped, "failed": len(summary.failed)}
        log.end("failed" if summary.failed else "finished", "; ".join(lines), **counts)
    return 1 if summary.failed else 0


def add_build_vocab(sub) -> None:
    p = sub.add_parser("build-vocab", help="build a vocabulary JSON from a split's captions")
    add_train_arguments(p, only=DATA_FLAGS, fill=True)
    p.add_argument("--split", required=True)
    p.add_argument("--ids-file", type=Path)
    p.add_argument("--threshold", type=positive, default=5, help="minimum word count (default: 5)")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_build_vocab)


def add_download(sub) -> None:
    p = sub.add_parser(
        "download",
        help="fetch COCO 2017 captions and images",
        description="Download MS COCO 2017 captions and images (needs internet).",
    )
    p.add_argument("--dest", type=Path, default=Path("data/coco"), help="target folder")
    p.add_argument("--split", choices=SPLITS, default="val2017")
    p.add_argument(
        "--limit",
        type=int,
        help="list at least N images: the lowest ids not yet there are added; a download never removes any",
    )
    p.add_argument("--base-url", default=DEFAULT_BASE_URL, help="COCO host or mirror")
    p.add_argument("--retries", type=int, default=3, help="extra tries per file")
    p.add_argument(
        "--progress-jsonl",
        type=Path,
        metavar="PATH",
        help='also write progress as JSON lines: {"event": "progress", "stage", "done", "total"}, then '
        '{"event": "finished" or "failed", "message"}',
    )
    p.set_defaults(func=cmd_download)


def cmd_karpathy_split(args: argparse.Namespace) -> int:
    from captioning.karpathy import make_splits

    reports = make_splits(args.dataset, args.coco_root)
    for r in reports:
        where = ", ".join(f"{n:,} in {folder}" for folder, n in sorted(r.by_folder.items()))
        missing = f"; {r.missing:,} not in the 2017 annotations, left out" if r.missing else ""
        print(f"{r.name}: {r.images:,} images ({where or 'none found'}){missing}")
    print(
        f"train on it with: python -m captioning train --coco-root {args.coco_root} --train-split karpathy_train "
        "--val-split karpathy_val --out runs/karpathy ...; evaluate with --split karpathy_test"
    )
    return 0


def add_karpathy_split(sub) -> None:
    p = sub.add_parser(
        "karpathy-split",
        help="make the Karpathy train/val/test splits from dataset_coco.json",
        description="Turn Karpathy's dataset_coco.json into splits karpathy_train (113,287 images with restval), "
        "karpathy_val and karpathy_test (5,000 each) over the train2017 and val2017 folders, with ids files.",
    )
    p.add_argument("--dataset", type=Path, required=True, help="Karpathy's dataset_coco.json")
    p.add_argument("--coco-root", type=Path, default=Path("data/coco"), help="holds train2017 and val2017")
    p.set_defaults(func=cmd_karpathy_split)


def cmd_convert(args: argparse.Namespace) -> int:
    from captioning.formats.convert import convert

    counts = convert(args.coco_root, args.format, read_options(args), args.to)
    for name, (images, captions) in counts.items():
        print(
            f"{name}: {images:,} images, {captions:,} captions -> {args.to / 'annotations' / f'captions_{name}.json'}"
        )
    return 0


def add_convert(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="write a dataset of any format as a COCO root",
        description="Read a dataset in any format --format knows and write it as a COCO root: "
        "annotations/captions_SPLIT.json and SPLIT/ for each of its splits.",
    )
    add_train_arguments(p, only=DATA_FLAGS, fill=True)
    p.add_argument("--to", type=Path, required=True, help="the COCO root to write (its splits must not exist yet)")
    p.set_defaults(func=cmd_convert)


def cmd_holdout(args: argparse.Namespace) -> int:
    import random

    from captioning.io import atomic_write_text

    split = open_split(args.coco_root, args.split, args.format, read_options(args))
    ids = sorted(split.ids)
    if not 0 < args.size < len(ids):
        raise ValueError(f"--size must be between 1 and {len(ids) - 1} (split {args.split} has {len(ids)} images)")
    held = sorted(random.Random(args.seed).sample(ids, args.size))
    chosen = set(held)
    files = {args.out / f"{args.split}-heldout-ids.txt": held, args.out / f"{args.split}-rest-ids.txt": ids}
    args.out.mkdir(parents=True, exist_ok=True)
    for path, listed in files.items():
        keep = listed if listed is held else [i for i in listed if i not in chosen]
        atomic_write_text(path, "".join(f"{i}\n" for i in keep))
        print(f"{len(keep):,} ids -> {path}")
    heldout, rest = files
    print(
        f"train on the rest with --train-ids {rest}; score on the held-out images with "
        f"evaluate --split {args.split} --ids-file {heldout}"
    )
    return 0


def add_holdout(sub) -> None:
    p = sub.add_parser(
        "holdout",
        help="carve a fixed, seeded held-out set of image ids from a split",
        description="Pick --size images of a split at random (seeded: the same ids every time for the same split) "
        "and write their ids and the rest's, so that a model trained on the rest can be scored on images no "
        "decision has seen: a second held-out split beside val.",
    )
    add_train_arguments(p, only=DATA_FLAGS, fill=True)
    p.add_argument("--split", default="train", help="the split to carve from (default train)")
    p.add_argument("--size", type=positive, default=300, help="held-out images (default 300)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="folder for SPLIT-heldout-ids.txt and SPLIT-rest-ids.txt")
    p.set_defaults(func=cmd_holdout)
