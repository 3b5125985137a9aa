"""Scores and examples for the model card: greedy and beam 1/3/5 on a split, plus sample captions.

Run: .venv/bin/python -m scripts.evaluate_default --checkpoint captioning/shipped/default.pt \
         --coco-root ../shared/data/coco --split val --train-split train \
         [--heldout-ids runs/select/ids/train-heldout-ids.txt] [--out captioning/shipped/default-scores.json]
Prints a markdown table, diversity figures and 10 example captions with their references.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from captioning.config import DecodeConfig
from captioning.data import CocoSplit
from captioning.evaluate import evaluate
from captioning.inference import Captioner
from captioning.io import atomic_write_text
from captioning.vocab import tokenize

# (label, decoding): "beam 3" is DecodeConfig(), the app's, the CLI's and Python's default; the last two rows
# show what naming, constrained decoding and the repeat rules cost or give
RUNS = (
    ("greedy", DecodeConfig(method="greedy")),
    ("beam 1", DecodeConfig(beam_size=1)),
    ("beam 3", DecodeConfig()),
    ("beam 5", DecodeConfig(beam_size=5)),
    ("beam 3, no naming", DecodeConfig(name_novel=False)),
    ("beam 3, no constraint", DecodeConfig(constrain=0.0)),
    ("beam 3, repeats allowed", DecodeConfig(block_repeats=False)),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("captioning/shipped/default.pt"))
    parser.add_argument("--coco-root", type=Path, required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--examples", type=int, default=10)
    parser.add_argument("--out", type=Path, help="also write the scores as JSON here")
    parser.add_argument("--heldout-ids", type=Path, help="also score beam 3 on these train images (the protocol's)")
    args = parser.parse_args()
    captioner = Captioner.from_checkpoint(args.checkpoint, device="cpu")
    split = CocoSplit.load(args.coco_root, args.split)
    train_caps = {
        " ".join(tokenize(c)).rstrip(" .") for c in CocoSplit.load(args.coco_root, args.train_split).all_captions()
    }
    print("| decoding | BLEU-1 | BLEU-4 | METEOR | ROUGE-L | CIDEr | distinct | copies of a train caption |")
    print("|---|---|---|---|---|---|---|---|")
    results = {}
    for label, decoding in RUNS:
        scores, preds, notes = evaluate(captioner, split, decoding)
        norm = [" ".join(tokenize(c)).rstrip(" .") for c in preds.values()]
        distinct = len(set(norm)) / len(norm)
        copies = sum(c in train_caps for c in norm) / len(norm)
        results[label] = {
            **scores,
            "distinct": distinct,
            "copies": copies,
            "decoding": decoding.to_dict(),
            "captions": preds,
        }
        print(
            f"| {label} | {scores['BLEU-1']:.3f} | {scores['BLEU-4']:.3f} | {scores.get('METEOR', float('nan')):.3f} "
            f"| {scores['ROUGE-L']:.3f} | {scores['CIDEr']:.3f} | {distinct:.0%} | {copies:.0%} |"
        )
        for note in notes:
            print(f"note: {note}")
    print()
    best = results["beam 3"]["captions"]
    step = max(1, len(split.ids) // args.examples)
    for image_id in split.ids[::step][: args.examples]:
        refs = "; ".join(split.captions[image_id][:5])
        print(f"- **{image_id}**: {best[image_id]}  \n  references: {refs}")
    print()
    table = {k: {m: v for m, v in r.items() if m != "captions"} for k, r in results.items()}
    print(json.dumps(table))
    recorded = {"split": args.split, "checkpoint": str(args.checkpoint), "scores": table}
    if args.heldout_ids:  # the images the protocol held out of training: a score no decision has used
        held = CocoSplit.load(args.coco_root, args.train_split, ids_file=args.heldout_ids)
        scores, _, _ = evaluate(captioner, held, DecodeConfig())
        recorded["heldout"] = {"split": f"{args.train_split}, held out", "ids_file": args.heldout_ids.name, **scores}
        print(f"held-out {args.train_split} ({scores['images']} images), beam 3: CIDEr {scores['CIDEr']:.3f}")
    if args.out:
        atomic_write_text(args.out, json.dumps(recorded, indent=2))


if __name__ == "__main__":
    main()
