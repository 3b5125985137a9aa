"""`python -m captioning train` and `extract-features`: flags generated from TrainConfig, then fit()."""

from __future__ import annotations

import argparse
import signal
import threading

from captioning.config import SHARD_IMAGES
from captioning.flags import DATA_FLAGS, add_train_arguments, positive, read_options, train_config


def cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from captioning import distributed, rundir
    from captioning.train import Callbacks, fit
    from captioning.trainrun import RESUME_OVERRIDES, resume_config

    cfg = train_config(args)
    if args.resume:  # the run's own settings, but for what was asked for again
        cfg = resume_config(cfg.out, **{k: getattr(args, k) for k in RESUME_OVERRIDES if getattr(args, k) is not None})
    rank0 = distributed.setup(cfg.device).rank == 0  # under torchrun only rank 0 draws a bar
    stop = _stop_on_signals("saving a resumable checkpoint")
    bar = None

    def on_step(record: dict) -> None:
        nonlocal bar
        if not rank0:
            return
        if bar is None:
            bar = tqdm(total=record["total_steps"], initial=record["step"] - 1, desc="train", unit="step")
        bar.update(record["step"] - bar.n)
        if "reward" in record:  # self-critical phase
            bar.set_postfix(reward=f"{record['reward']:.3f}", lr=f"{record['lr']:.1e}")
        else:
            bar.set_postfix(loss=f"{record['loss']:.3f}", ppl=f"{record['perplexity']:.1f}", lr=f"{record['lr']:.1e}")

    def on_epoch(record: dict) -> None:
        if rank0:
            tqdm.write(
                f"epoch {record['epoch']}: val loss {record['val_loss']:.3f}  "
                f"BLEU-4 {record['BLEU-4']:.3f}  CIDEr {record['CIDEr']:.3f}"
            )

    callbacks = Callbacks(on_step=on_step, on_epoch=on_epoch, should_stop=stop.is_set)
    result = fit(cfg, callbacks, resume=args.resume, progress=rank0)
    if bar is not None:
        bar.close()
    if rank0:
        best = f", best val CIDEr {result.best_cider:.3f}" if result.best_cider is not None else ""
        print(f"{result.status} at step {result.step} (epoch {result.epoch}){best}; files in {result.out_dir}")
        if result.status == rundir.STOPPED:
            print(f"resume with: {rundir.resume_command(cfg.coco_root, cfg.out)}")
    return 0


def _stop_on_signals(doing: str) -> threading.Event:
    """An event set by the first Ctrl-C or SIGTERM (the work stops cleanly); a second Ctrl-C aborts."""
    stop = threading.Event()

    def on_signal(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print(f"\nstopping: {doing} (Ctrl-C again to abort)...", flush=True)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    return stop


def cmd_extract(args: argparse.Namespace) -> int:
    from captioning import distributed
    from captioning.device import resolve_device
    from captioning.features import ExtractionStopped, ExtractOptions, build_cache
    from captioning.formats import open_split
    from captioning.model import DECODER_CLASSES

    split = open_split(args.coco_root, args.split, args.format, read_options(args), args.ids_file)
    kind = DECODER_CLASSES[args.decoder].feature_kind
    ctx = distributed.setup(args.device)  # under torchrun every rank extracts its own shards
    stop = _stop_on_signals("keeping the finished shards")
    try:
        options = ExtractOptions(
            cache_dir=args.cache_dir,
            device=ctx.device if ctx.world > 1 else resolve_device(args.device),
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            progress=ctx.rank == 0,
            should_stop=stop.is_set,
            ctx=ctx,
            shard_images=args.shard_images,
        )
        store = build_cache(split, args.backbone, kind, 2 if args.flip else 1, options)
    except ExtractionStopped as exc:
        print(f"{exc}: run the same command again", flush=True)
        return 0
    finally:
        distributed.teardown(ctx)
    if ctx.rank == 0:
        print(f"{len(store.ids)} images of {args.split} cached ({args.backbone}, {kind}) under {args.cache_dir}")
    return 0


def add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train or fine-tune a captioner",
        description="Train on cached frozen-CNN features; under torchrun, with DDP.",
    )
    add_train_arguments(p)
    p.add_argument("--resume", action="store_true", help="continue OUT/last.pt where it stopped")
    p.set_defaults(func=cmd_train)


def add_extract_features(sub) -> None:
    p = sub.add_parser("extract-features", help="fill the frozen-feature cache for a split")
    p.add_argument("--split", required=True)
    p.add_argument("--ids-file", help="file of image ids restricting the split")
    add_train_arguments(
        p, only=(*DATA_FLAGS, "backbone", "decoder", "flip", "cache_dir", "device", "num_workers"), fill=True
    )
    p.add_argument("--batch-size", type=positive, default=32, help="images per CNN batch (default: 32)")
    p.add_argument(
        "--shard-images",
        type=positive,
        default=SHARD_IMAGES,
        help=f"images per shard, the most a kill can lose (default: {SHARD_IMAGES})",
    )
    p.set_defaults(func=cmd_extract)
