"""Command line: `python -m captioning {caption,evaluate,build-vocab,download,train,extract-features}`.

Every subcommand has --help. Bad arguments or inputs exit non-zero with one clear line.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from captioning.backbones import BackboneError
from captioning.checkpoint import CheckpointError
from captioning.config import DEFAULT_CACHE_DIR
from captioning.data import CocoSplit, DatasetError, ImageLoadError, load_image
from captioning.decoding import METHODS
from captioning.download import DEFAULT_BASE_URL, SPLITS, DownloadError, download_coco
from captioning.guidance import BONUS as GUIDE_BONUS
from captioning.inference import DEFAULT_CHECKPOINT
from captioning.naming import THRESHOLD as NAMING_THRESHOLD
from captioning.train_cli import add_extract_features, add_train

USER_ERRORS = (
    DatasetError,
    CheckpointError,
    BackboneError,
    ImageLoadError,
    DownloadError,
    ValueError,
    FileNotFoundError,
)


def _load_captioner(path: Path, device: str = "auto", ensemble: list[Path] | None = None):
    from captioning.inference import Captioner

    if not Path(path).is_file() and Path(path) == DEFAULT_CHECKPOINT:
        raise CheckpointError(
            f"no default model at {path}; pass --checkpoint runs/NAME/best.pt, or train one with "
            "python -m captioning train"
        )
    return Captioner.from_checkpoints([path, *(ensemble or [])], device=device)


def _add_decoding(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=METHODS, default="beam", help="decoding (default: beam)")
    p.add_argument("--beam-size", type=int, default=3, help="beams for --method beam (default: 3)")
    p.add_argument("--max-len", type=int, default=20, help="most words in a caption (default: 20)")
    p.add_argument(
        "--allow-repeats",
        action="store_true",
        help="let a caption echo itself (blocked by default: the same three words twice, 'a cell phone on a cell "
        "phone', or a phrase's head again, 'a cat on a table with a table')",
    )
    p.add_argument(
        "--guide",
        type=float,
        nargs="?",
        const=GUIDE_BONUS,
        default=0.0,
        metavar="BONUS",
        help="guided decoding: when the encoder is confident of an ImageNet class, add BONUS (default "
        f"{GUIDE_BONUS}) to the log-probability of the words learned for it (needs a checkpoint with concept words)",
    )
    p.add_argument(
        "--ensemble",
        type=Path,
        action="append",
        metavar="CKPT",
        help="another checkpoint whose decoder joins --checkpoint's, their word probabilities averaged at every "
        "step (repeat for more; same backbone and vocabulary)",
    )
    p.add_argument(
        "--name-novel",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"when the encoder is sure (>= {NAMING_THRESHOLD}) of an ImageNet class whose name the vocabulary "
        "lacks (lion, bee, castle), make it the caption's subject (default: on)",
    )
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")


def cmd_caption(args: argparse.Namespace) -> int:
    captioner = _load_captioner(args.checkpoint, args.device, args.ensemble)
    results, failed = [], 0
    for path in args.images:
        try:
            image = load_image(path)
        except ImageLoadError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        cap = captioner.caption(
            [image],
            args.method,
            args.beam_size,
            args.max_len,
            block_repeats=not args.allow_repeats,
            guide=args.guide,
            name_novel=args.name_novel,
        )[0]
        if args.json:
            results.append(
                {
                    "image": str(path),
                    "caption": cap.text,
                    "score": cap.score,
                    "logprob": cap.logprob,
                    "words": [{"word": w, "prob": p} for w, p in zip(cap.words, cap.word_probs)],
                    "alternatives": [{"caption": h.text, "score": h.score} for h in cap.alternatives],
                    "tags": [{"label": label, "prob": p} for label, p in cap.tags],  # the encoder's ImageNet top 5
                    "named": {"label": cap.named[0], "prob": cap.named[1]} if cap.named else None,
                }
            )
        else:
            print(f"{path}: {cap.text}" if len(args.images) > 1 else cap.text)
    if args.json:
        print(json.dumps(results, indent=2))
    return 1 if failed else 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from captioning.evaluate import evaluate

    captioner = _load_captioner(args.checkpoint, args.device, args.ensemble)
    split = CocoSplit.load(args.coco_root, args.split, args.ids_file)
    n = min(len(split), args.limit) if args.limit else len(split)
    with tqdm(total=n, desc=f"captioning {args.split}", unit="img", disable=args.json or None) as bar:
        scores, _, notes = evaluate(
            captioner,
            split,
            args.method,
            args.beam_size,
            args.max_len,
            args.limit,
            meteor=False if args.no_meteor else None,
            on_batch=lambda done, total: bar.update(done - bar.n),
            block_repeats=not args.allow_repeats,
            guide=args.guide,
            name_novel=args.name_novel,
        )
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(scores))
    else:
        for k, v in scores.items():
            print(f"{k:8s} {v:.4f}" if k != "images" else f"{k:8s} {v}")
    return 0


def cmd_build_vocab(args: argparse.Namespace) -> int:
    from captioning.vocab import Vocabulary

    split = CocoSplit.load(args.coco_root, args.split, args.ids_file, check_files=False)
    vocab = Vocabulary.build(split.all_captions(), args.threshold)
    vocab.save(args.out)
    print(f"{len(vocab)} words (threshold {args.threshold}, {len(split)} images) -> {args.out}")
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value})")
    return value


def cmd_download(args: argparse.Namespace) -> int:
    """Returns 1 if some images failed."""
    summary = download_coco(args.dest, args.split, args.limit, args.base_url, args.retries)
    print(
        f"{summary.split} images: {summary.downloaded} downloaded, {summary.skipped} already "
        f"there, {len(summary.failed)} failed; in {summary.images_dir}, "
        f"captions in {summary.annotations}"
    )
    if not summary.failed:
        return 0
    shown = ", ".join(summary.failed[:5])
    more = f" and {len(summary.failed) - 5} more" if len(summary.failed) > 5 else ""
    print(f"failed: {shown}{more} (run again to retry them)")
    return 1


def add_caption(sub) -> None:
    p = sub.add_parser("caption", help="caption image files")
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument("--json", action="store_true", help="print JSON with scores and alternatives")
    _add_decoding(p)
    p.set_defaults(func=cmd_caption)


def add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="COCO metrics of a checkpoint on a split")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument("--coco-root", type=Path, required=True)
    p.add_argument("--split", required=True)
    p.add_argument("--ids-file", type=Path)
    p.add_argument("--limit", type=_positive, help="only the first N images")
    p.add_argument("--json", action="store_true", help="print one JSON object of scores")
    p.add_argument("--no-meteor", action="store_true", help="skip METEOR (saves ~7 s of Java)")
    _add_decoding(p)
    p.set_defaults(func=cmd_evaluate)


def add_build_vocab(sub) -> None:
    p = sub.add_parser("build-vocab", help="build a vocabulary JSON from a split's captions")
    p.add_argument("--coco-root", type=Path, required=True)
    p.add_argument("--split", required=True)
    p.add_argument("--ids-file", type=Path)
    p.add_argument("--threshold", type=_positive, default=5, help="minimum word count (default: 5)")
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
    p.add_argument("--limit", type=int, help="only the first N images by id")
    p.add_argument("--base-url", default=DEFAULT_BASE_URL, help="COCO host or mirror")
    p.add_argument("--retries", type=int, default=3, help="extra tries per file")
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


def cmd_concept_words(args: argparse.Namespace) -> int:
    import torch

    from captioning import concepts
    from captioning.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
    from captioning.device import resolve_device
    from captioning.features import build_cache
    from captioning.guidance import learn_concept_words
    from captioning.model import feature_kind

    ckpt = load_checkpoint(args.checkpoint)
    model, vocab = model_from_checkpoint(ckpt, with_backbone=False)  # its config and words; the cache has features
    backbone = model.cfg.backbone
    concepts.load_head(backbone)  # a clear error for a backbone without one
    split = CocoSplit.load(args.coco_root, args.split, args.ids_file)
    kind = feature_kind(model.cfg)
    views = 2 if args.flip else 1
    store = build_cache(
        split, backbone, kind, views=views, cache_dir=args.cache_dir, device=resolve_device(args.device)
    )
    probs = []
    for start in range(0, len(store.ids), 256):
        feats = store.get(store.ids[start : start + 256])
        probs.append(concepts.class_probabilities(feats, backbone))
    labels = concepts.imagenet_labels()
    words = learn_concept_words(torch.cat(probs), [split.captions[i] for i in store.ids], vocab)
    save_checkpoint(args.out or args.checkpoint, {**ckpt, "concept_words": words})
    shown = sorted(words.items(), key=lambda kv: -len(kv[1]))[:12]
    for c, ws in shown:
        print(f"{labels[int(c)]}: {', '.join(ws)}")
    print(f"{len(words)} ImageNet classes mapped to caption words, saved in {args.out or args.checkpoint}")
    return 0


def add_concept_words(sub) -> None:
    p = sub.add_parser(
        "concept-words",
        help="learn which caption words each ImageNet class stands for (for --guide)",
        description="From a training split's cached features and captions, learn for each ImageNet class the "
        "caption words most associated with its probability, and store the map in the checkpoint.",
    )
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--coco-root", type=Path, required=True)
    p.add_argument("--split", default="train")
    p.add_argument("--ids-file", type=Path)
    p.add_argument("--cache-dir", type=Path, default=Path(DEFAULT_CACHE_DIR))
    p.add_argument("--out", type=Path, help="write the checkpoint here (default: in place)")
    p.add_argument("--flip", action="store_true", help="read the cache train --flip filled (it holds both views)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_concept_words)


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


COMMANDS = (
    add_caption,
    add_evaluate,
    add_build_vocab,
    add_download,
    add_karpathy_split,
    add_concept_words,
    add_train,
    add_extract_features,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m captioning", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.simplefilter("default")
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
