"""`python -m captioning train` and `extract-features`: argparse onto TrainConfig and fit()."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from captioning.backbones import BACKBONES
from captioning.config import DECODERS
from captioning.trainconfig import LR_SCHEDULES, SCST_LR_SCHEDULES, SCST_STARTS, VAL_METHODS, TrainConfig


def cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from captioning import distributed
    from captioning.train import Callbacks, fit

    values = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__ and v is not None}
    values["coco_root"], values["out"] = str(args.coco_root), str(args.out)
    for key in ("train_ids", "val_ids", "init_from", "cache_dir"):
        if values.get(key) is not None:
            values[key] = str(values[key])
    if args.no_val:
        values["val_split"] = None
    cfg = TrainConfig(**values)
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

    result = fit(
        cfg, Callbacks(on_step=on_step, on_epoch=on_epoch, should_stop=stop.is_set), resume=args.resume, progress=rank0
    )
    if bar is not None:
        bar.close()
    if rank0:
        best = f", best val CIDEr {result.best_cider:.3f}" if result.best_cider is not None else ""
        print(f"{result.status} at step {result.step} (epoch {result.epoch}){best}; files in {result.out_dir}")
        if result.status == "stopped":
            print(f"resume with: python -m captioning train --coco-root {cfg.coco_root} --out {cfg.out} --resume")
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    from captioning.data import CocoSplit
    from captioning.features import build_cache
    from captioning.inference import resolve_device
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


def add_train_parsers(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train or fine-tune a captioner",
        description="Train on cached frozen-CNN features; under torchrun, with DDP.",
    )
    p.add_argument("--coco-root", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="run directory, e.g. runs/NAME")
    p.add_argument("--train-split", default="train")
    p.add_argument("--val-split", default="val")
    p.add_argument("--no-val", action="store_true", help="no validation split")
    p.add_argument("--train-ids", type=Path, help="file of image ids restricting the train split")
    p.add_argument("--val-ids", type=Path)
    p.add_argument("--epochs", type=int, help="cross-entropy epochs (0 with --scst-epochs: SCST only)")
    p.add_argument("--scst-epochs", type=int, help="self-critical (CIDEr-D reward) epochs after the cross-entropy ones")
    p.add_argument("--scst-lr", type=float, help="learning rate of the self-critical epochs (default 5e-5)")
    p.add_argument("--scst-samples", type=int, help="captions sampled per image in SCST (default 5)")
    p.add_argument("--scst-batch-size", type=int, help="images per SCST step (default 16)")
    p.add_argument("--scst-max-len", type=int, help="longest sampled caption in words (default 16)")
    p.add_argument("--scst-lr-schedule", choices=SCST_LR_SCHEDULES, help="constant (default) or cosine to 0")
    p.add_argument(
        "--scst-start",
        choices=SCST_STARTS,
        help="SCST starts from the best cross-entropy epoch on val CIDEr (default) or the last one",
    )
    p.add_argument("--max-steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES)
    p.add_argument("--lr-step-epochs", type=int)
    p.add_argument("--lr-gamma", type=float)
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--grad-clip", type=float)
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--attention-reg", type=float, help="doubly stochastic attention weight (default 1)")
    p.add_argument("--backbone", choices=list(BACKBONES))
    p.add_argument("--decoder", choices=DECODERS)
    p.add_argument("--embed-size", type=int)
    p.add_argument("--hidden-size", type=int)
    p.add_argument("--attention-size", type=int)
    p.add_argument("--dropout", type=float)
    p.add_argument("--vocab-threshold", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--init-from", type=Path, help="fine-tune from a checkpoint, keeping its vocabulary")
    p.add_argument("--resume", action="store_true", help="continue OUT/last.pt where it stopped")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--amp", action="store_true", default=None, help="mixed precision on CUDA")
    p.add_argument("--flip", action="store_true", default=None, help="also train on horizontally flipped views")
    p.add_argument("--end-to-end", action="store_true", default=None, help="no feature cache: run the CNN each step")
    p.add_argument("--finetune-cnn", action="store_true", default=None, help="train the CNN too (needs --end-to-end)")
    p.add_argument("--cache-dir", type=Path)
    p.add_argument("--num-workers", type=int)
    p.add_argument("--val-method", choices=VAL_METHODS)
    p.add_argument("--val-beam-size", type=int)
    p.add_argument("--val-limit", type=int)
    p.add_argument("--patience", type=int, help="early stop after N epochs without a better val CIDEr")
    p.add_argument("--log-every", type=int)
    p.add_argument("--save-every", type=int)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("extract-features", help="fill the frozen-feature cache for a split")
    p.add_argument("--coco-root", type=Path, required=True)
    p.add_argument("--split", required=True)
    p.add_argument("--ids-file", type=Path)
    p.add_argument("--backbone", choices=list(BACKBONES), default="efficientnet_lite0")
    p.add_argument("--decoder", choices=DECODERS, default="showtell", help="decides pooled or grid features")
    p.add_argument("--flip", action="store_true", help="cache the flipped view too")
    p.add_argument("--cache-dir", type=Path, default=Path("cache/features"))
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=2)
    p.set_defaults(func=cmd_extract)
