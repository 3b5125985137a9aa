"""`python -m captioning train` and `extract-features`: flags generated from TrainConfig, then fit()."""

from __future__ import annotations

import argparse
import signal
import threading

from captioning.config import add_arguments, config_from_args


def cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from captioning import distributed, rundir
    from captioning.train import RESUME_OVERRIDES, Callbacks, fit, resume_config

    cfg = config_from_args(args)
    if args.resume:  # the run's own settings, but for what was asked for again
        cfg = resume_config(cfg.out, **{k: getattr(args, k) for k in RESUME_OVERRIDES if getattr(args, k) is not None})
    rank0 = distributed.setup(cfg.device).rank == 0  # under torchrun only rank 0 draws a bar
    stop = threading.Event()

    def on_signal(signum, frame):
        if stop.is_set():  # a second Ctrl-C: give up at once
            raise KeyboardInterrupt
        stop.set()
        print("\nstopping: saving a resumable checkpoint (Ctrl-C again to abort)...", flush=True)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
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


def cmd_extract(args: argparse.Namespace) -> int:
    from captioning.data import CocoSplit
    from captioning.device import resolve_device
    from captioning.features import build_cache
    from captioning.model import DECODER_CLASSES

    split = CocoSplit.load(args.coco_root, args.split, args.ids_file)
    kind = DECODER_CLASSES[args.decoder].feature_kind
    store = build_cache(
        split,
        args.backbone,
        kind,
        views=2 if args.flip else 1,
        cache_dir=args.cache_dir,
        device=resolve_device(args.device),
        batch_size=args.batch_size,
        num_workers=args.num_workers,
    )
    print(f"{len(store.ids)} images of {args.split} cached ({args.backbone}, {kind}) under {args.cache_dir}")
    return 0


def add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train or fine-tune a captioner",
        description="Train on cached frozen-CNN features; under torchrun, with DDP.",
    )
    add_arguments(p)
    p.add_argument("--resume", action="store_true", help="continue OUT/last.pt where it stopped")
    p.set_defaults(func=cmd_train)


def add_extract_features(sub) -> None:
    p = sub.add_parser("extract-features", help="fill the frozen-feature cache for a split")
    p.add_argument("--split", required=True)
    p.add_argument("--ids-file", help="file of image ids restricting the split")
    add_arguments(
        p, only=("coco_root", "backbone", "decoder", "flip", "cache_dir", "device", "num_workers"), defaults=True
    )
    p.add_argument("--batch-size", type=int, default=32, help="images per CNN batch (default: 32)")
    p.set_defaults(func=cmd_extract)
