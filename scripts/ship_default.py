"""Make one of the selection protocol's runs the shipped default model (#26): its best.pt with the class->word
map learned from the same training images it trained on (never the held-out ones: the run's --train-ids), the
decoder precision the protocol measured, and its training log beside it.

Run: .venv/bin/python -m scripts.ship_default --run runs/select/lite0-seed0 [--precision int8] [--encoder onnxruntime]
         [--out captioning/shipped]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from captioning.checkpoint import load_checkpoint, save_checkpoint
from captioning.cli import main as cli

SHIPPED = Path(__file__).resolve().parent.parent / "captioning" / "shipped"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished run folder (best.pt, config.json, log)")
    parser.add_argument("--precision", choices=("fp32", "int8"), default="fp32", help="the decoder's, on the CPU")
    parser.add_argument("--encoder", choices=("torch", "onnxruntime"), default="torch", help="what runs it on the CPU")
    parser.add_argument("--out", type=Path, default=SHIPPED)
    args = parser.parse_args(argv)

    train = json.loads((args.run / "config.json").read_text())["train"]  # the data, ids and cache it trained on
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / "default.pt"
    words = ["concept-words", "--checkpoint", str(args.run / "best.pt"), "--coco-root", train["coco_root"],
             "--format", train.get("format") or "auto", "--cache-dir", train["cache_dir"],
             "--out", str(target)]  # fmt: skip
    words += ["--ids-file", train["train_ids"]] if train.get("train_ids") else []
    words += ["--flip"] if train.get("flip") else []
    if cli(words) != 0:
        raise SystemExit("could not learn the concept words")
    ckpt = load_checkpoint(target)
    ckpt["inference"] = {"decoder": args.precision, "encoder": args.encoder}  # what "auto" uses on the CPU
    ckpt.pop("train_state", None)
    save_checkpoint(target, ckpt)
    shutil.copyfile(args.run / "metrics.jsonl", args.out / "default-metrics.jsonl")
    how = f"decoder {args.precision}, encoder {args.encoder} on the CPU"
    print(f"{target}: {args.run.name}, {how}; its log in default-metrics.jsonl")


if __name__ == "__main__":
    main()
