"""Command line: `python -m captioning COMMAND`, COMMAND one of caption, serve, export, evaluate, build-vocab, download,
karpathy-split, convert, holdout, concept-words, train, extract-features.

Every subcommand has --help. Bad arguments or inputs exit non-zero with one clear line.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from captioning.backbones import BackboneError
from captioning.batch import ALT_MAX_CHARS
from captioning.checkpoint import SHIPPED, CheckpointError, default_checkpoint
from captioning.config import DEFAULT_CACHE_DIR
from captioning.data import DatasetError, ImageLoadError, load_image
from captioning.data_cli import add_build_vocab, add_convert, add_download, add_holdout, add_karpathy_split
from captioning.download import DownloadError
from captioning.evaluate_cli import add_evaluate
from captioning.flags import (
    DATA_FLAGS,
    add_decode_arguments,
    add_train_arguments,
    decode_config,
    positive,
    read_options,
)
from captioning.formats import open_split
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


def _load_captioner(
    path: Path | None,
    device: str = "auto",
    ensemble: list[Path] | None = None,
    precision: str = "auto",
    encoder: str = "auto",
):
    from captioning.inference import Captioner

    path = path or default_checkpoint()
    if path.suffix == ".onnx":
        from captioning.export import exported_captioner

        if ensemble:
            raise CheckpointError("--ensemble takes checkpoints, not an exported model")
        return exported_captioner(path)
    if not path.is_file() and path == SHIPPED:
        raise CheckpointError(
            f"no default model at {path}; pass --checkpoint runs/NAME/best.pt, or train one with "
            "python -m captioning train"
        )
    return Captioner.from_checkpoints([path, *(ensemble or [])], device=device, precision=precision, encoder=encoder)


def _add_decoding(p: argparse.ArgumentParser) -> None:
    """The DecodeConfig flags, the model options beside them."""
    add_decode_arguments(p)
    p.add_argument(
        "--checkpoint",
        type=Path,
        help="the model: a checkpoint or an exported model.onnx (default: $CAPTIONING_CHECKPOINT, else the "
        "shipped one)",
    )
    p.add_argument(
        "--ensemble",
        type=Path,
        action="append",
        metavar="CKPT",
        help="another checkpoint whose decoder joins --checkpoint's, their word probabilities averaged at every "
        "step (repeat for more; same backbone and vocabulary)",
    )
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    _add_precision(p)


def _add_precision(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "int8"),
        default="auto",
        help="the decoder's weights on the CPU: int8 is about 3x faster; auto (default) is what the checkpoint "
        "was measured to keep (the shipped model's card says which)",
    )
    p.add_argument(
        "--encoder",
        choices=("auto", "torch", "onnxruntime"),
        default="auto",
        help="what runs the image encoder on the CPU: onnxruntime is about 2x faster (exported once into "
        "$CAPTIONING_CACHE, else ~/.cache/captioning); auto (default) is what the checkpoint says",
    )


def cmd_caption(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from captioning import batch

    decoding = decode_config(args)  # a bad setting is refused before anything is loaded
    outputs = [batch.output_for(args.out)] if args.out else []
    outputs += [batch.AltTextOutput(args.alt_text, args.alt_max)] if args.alt_text else []
    outputs += [batch.SidecarOutput()] if args.sidecar else []
    captioner = _load_captioner(args.checkpoint, args.device, args.ensemble, args.precision, args.encoder)
    images, other = batch.find_images(args.images, args.recursive)
    for path in other:
        print(f"error: {path} is not an image file or a folder", file=sys.stderr)
    if not images:
        raise DatasetError("no image files to caption")
    records = []

    def show(n: int, rows: list) -> None:
        bar.update(n)
        for name, cap in rows if not outputs else []:
            if args.json:
                records.append(batch.record(name, cap))
            else:
                print(f"{name}: {cap.text}" if len(images) > 1 else cap.text)
                if cap.doubts:  # on stderr: stdout stays the captions alone, for pipes
                    print(f"  ({cap.unsure})", file=sys.stderr)

    with tqdm(total=len(images), desc="captioning", unit="img", disable=not outputs or None) as bar:
        summary = batch.caption_files(captioner, images, outputs, decoding, args.batch_size, args.num_workers, show)
    if args.json:
        print(json.dumps(records, indent=2))
    for name in summary.unreadable:
        print(f"error: {_why_unreadable(name)}", file=sys.stderr)
    if outputs:
        done = f", {summary.skipped_done} already done" if summary.skipped_done else ""
        print(f"captioned {summary.captioned} image(s){done}, {len(summary.unreadable)} unreadable", file=sys.stderr)
    return 1 if summary.unreadable or other else 0


def _why_unreadable(name: str) -> str:
    try:
        load_image(name)
    except ImageLoadError as exc:
        return str(exc)
    return f"{name} could not be read"


def add_caption(sub) -> None:
    p = sub.add_parser(
        "caption",
        help="caption image files and folders",
        description="Caption images and folders of images in batches. Without an output the captions are printed; "
        "with --out, --alt-text or --sidecar they are written a batch at a time, and a rerun skips what is done.",
    )
    p.add_argument("images", nargs="+", type=Path, metavar="PATH", help="image files and folders")
    p.add_argument("--recursive", "-r", action="store_true", help="also the images in the folders' subfolders")
    p.add_argument(
        "--batch-size",
        type=positive,
        default=4,
        help="images encoded and decoded together (4 measured best on 2 CPU cores)",
    )
    p.add_argument("--num-workers", type=int, default=0, help="processes that read and preprocess the images")
    p.add_argument("--json", action="store_true", help="print JSON with scores and alternatives")
    p.add_argument(
        "--out", type=Path, metavar="FILE", help="write a .csv (image,caption,confidence,unsure) or a .jsonl"
    )
    p.add_argument("--sidecar", action="store_true", help="write IMAGE.txt beside each image (never over one)")
    p.add_argument("--alt-text", type=Path, metavar="FILE.csv", help="write file,alt,review,why for web pages")
    p.add_argument("--alt-max", type=positive, default=ALT_MAX_CHARS, help="alt text's most characters")
    _add_decoding(p)
    p.set_defaults(func=cmd_caption)


def cmd_concept_words(args: argparse.Namespace) -> int:
    import torch

    from captioning import concepts
    from captioning.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
    from captioning.device import resolve_device
    from captioning.features import ExtractOptions, build_cache
    from captioning.guidance import learn_concept_words
    from captioning.model import feature_kind

    ckpt = load_checkpoint(args.checkpoint)
    model, vocab = model_from_checkpoint(ckpt, with_backbone=False)  # its config and words; the cache has features
    backbone = model.cfg.backbone
    concepts.load_head(backbone)  # a clear error for a backbone without one
    split = open_split(args.coco_root, args.split, args.format, read_options(args), args.ids_file)
    kind = feature_kind(model.cfg)
    views = 2 if args.flip else 1
    options = ExtractOptions(cache_dir=args.cache_dir, device=resolve_device(args.device))
    store = build_cache(split, backbone, kind, views, options)
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
    add_train_arguments(p, only=DATA_FLAGS, fill=True)
    p.add_argument("--split", default="train")
    p.add_argument("--ids-file", type=Path)
    p.add_argument("--cache-dir", type=Path, default=Path(DEFAULT_CACHE_DIR))
    p.add_argument("--out", type=Path, help="write the checkpoint here (default: in place)")
    p.add_argument("--flip", action="store_true", help="read the cache train --flip filled (it holds both views)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_concept_words)


def cmd_serve(args: argparse.Namespace) -> int:
    from captioning.serve import serve

    captioner = _load_captioner(args.checkpoint, args.device, precision=args.precision, encoder=args.encoder)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {args.host}: anyone who can reach it can caption with this model", file=sys.stderr)
    info = {"id": Path(captioner.info.get("path", "model")).name, "backbone": captioner.model.cfg.backbone,
            "vocabulary": len(captioner.vocab), "precision": captioner.info.get("precision", "fp32"),
            "encoder": captioner.info.get("encoder", "torch")}  # fmt: skip
    serve(captioner, args.host, args.port, info)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from captioning.export import export

    files = export(args.checkpoint or default_checkpoint(), args.out)
    print("wrote " + ", ".join(str(p) for p in files.values()))
    return 0


def add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write a checkpoint as ONNX (for onnxruntime; caption and serve take it as --checkpoint)",
        description="Writes OUT (the encoder), OUT's .init.onnx and .step.onnx (the decoder's first state and one "
        "step) and its .json (config and vocabulary). Beam search stays in Python.",
    )
    p.add_argument("--checkpoint", type=Path, help="the model (default: $CAPTIONING_CHECKPOINT, else the shipped one)")
    p.add_argument("--out", type=Path, required=True, help="model.onnx")
    p.set_defaults(func=cmd_export)


def add_serve(sub) -> None:
    p = sub.add_parser("serve", help="an HTTP API: POST /caption, GET /health, /models, /docs")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--checkpoint", type=Path, help="a checkpoint or an exported model.onnx (default: the shipped model)"
    )
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    _add_precision(p)
    p.set_defaults(func=cmd_serve)


COMMANDS = (
    add_caption,
    add_serve,
    add_export,
    add_evaluate,
    add_build_vocab,
    add_download,
    add_karpathy_split,
    add_convert,
    add_holdout,
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
