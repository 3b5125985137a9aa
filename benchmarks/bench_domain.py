"""Domain adaptation, measured: does a short CPU fine-tune from the shipped model teach it a word it lacks, and
what does it forget? Before and after: how often held-out domain images are captioned with the new word, and
the full val split's CIDEr.

Run: nice .venv/bin/python -m benchmarks.bench_domain [--coco-root ../shared/data/coco] [--category dog]
     [--word zuppo] [--epochs 8] [--train-images N] [--replay N] [--out result.json]

The domain set: the COCO train and val images of which at least --min-mentions of the 5 captions name the
category, every caption rewritten with the new word for the category's (singular and plural; "hot dog" is
kept), written as a CSV dataset with a split column and the images copied in. The fine-tune is the CLI's
(`python -m captioning train --data CSV --init-from CKPT`, new words on, a cold feature cache), timed as a
user would wait for it. Captions use the default decoding (beam 3, as `caption` and `evaluate`). --replay N
mixes N other COCO train images into the fine-tune, which keeps the new word off images without the category.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _pattern(category: str, plural: str) -> re.Pattern:
    return re.compile(rf"(?<!hot )\b({re.escape(plural)}|{re.escape(category)})\b", re.IGNORECASE)


def domain_images(
    root: Path, split: str, pattern: re.Pattern, min_mentions: int
) -> tuple[list[tuple[Path, list[str]]], list[tuple[Path, list[str]]]]:
    """(image file, its captions) of the images of `split` with at least `min_mentions` captions naming the
    category, and of the others."""
    from captioning.data import CocoSplit

    data = CocoSplit.load(root, split)
    found, others = [], []
    for i in data.ids:
        named = sum(bool(pattern.search(c)) for c in data.captions[i]) >= min_mentions
        (found if named else others).append((data.files[i], data.captions[i]))
    return found, others


def write_domain_csv(folder: Path, splits: dict[str, list[tuple[Path, list[str]]]], rewrite) -> Path:
    """captions.csv (image, caption, split) beside images/, the images hard-linked or copied in."""
    (folder / "images").mkdir(parents=True)
    rows = []
    for split, items in splits.items():
        for file, captions in items:
            dest = folder / "images" / file.name
            try:
                os.link(file, dest)
            except OSError:  # another filesystem
                shutil.copy2(file, dest)
            rows += [(f"images/{file.name}", rewrite(c), split) for c in captions]
    path = folder / "captions.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("image", "caption", "split"), *rows])
    return path


def says(text: str, word: str) -> bool:
    from captioning.vocab import tokenize

    tokens = set(tokenize(text))
    return word in tokens or f"{word}s" in tokens


def measure(ckpt: Path, domain_csv: Path, coco_root: Path, word: str) -> dict:
    """Captions of the held-out domain images, their share with `word`, and the full val split's scores."""
    from captioning.config import DecodeConfig
    from captioning.data import CocoSplit
    from captioning.evaluate import caption_split, evaluate
    from captioning.formats import open_split
    from captioning.inference import Captioner
    from captioning.metrics import score_captions

    captioner = Captioner.from_checkpoint(ckpt, device="cpu")
    held = open_split(domain_csv, "val", "csv")
    names = {i: held.files[i].name for i in held.ids}
    caps = caption_split(captioner, held, held.ids, DecodeConfig())
    domain = score_captions(caps, {i: held.captions[i] for i in caps}, meteor=False).corpus
    val = CocoSplit.load(coco_root, "val")
    scores, preds, _ = evaluate(captioner, val, DecodeConfig(), meteor=False)
    held_names = set(names.values())
    others = [c for i, c in preds.items() if val.files[i].name not in held_names]
    return {
        "hits": sum(says(c, word) for c in caps.values()),
        "n": len(caps),
        "domain_cider": domain["CIDEr"],
        "val_cider": scores["CIDEr"],
        "val_bleu4": scores["BLEU-4"],
        "val_images": scores["images"],
        "false_hits": sum(says(c, word) for c in others),
        "others": len(others),
        "captions": {names[i]: c for i, c in caps.items()},
        "vocab": len(captioner.vocab),
    }


def table(before: dict, after: dict, word: str, seconds: float, command: str) -> str:
    """The markdown table, before | after."""
    b, a = before, after
    rows = [
        (f"held-out domain captions saying '{word}'", f"{b['hits']}/{b['n']}", f"{a['hits']}/{a['n']}"),
        ("held-out domain CIDEr (rewritten refs)", f"{b['domain_cider']:.3f}", f"{a['domain_cider']:.3f}"),
        (f"val CIDEr ({b['val_images']} images, beam 3)", f"{b['val_cider']:.3f}", f"{a['val_cider']:.3f}"),
        ("val BLEU-4", f"{b['val_bleu4']:.3f}", f"{a['val_bleu4']:.3f}"),
        (f"other val captions saying '{word}'", f"{b['false_hits']}/{b['others']}", f"{a['false_hits']}/{a['others']}"),
        ("fine-tune wall time (features included)", "", f"{seconds:.0f} s"),
        ("fine-tune command", "", f"`{command}`"),
    ]
    lines = ["| | before (shipped) | after (fine-tuned) |", "|---|---|---|"]
    return "\n".join(lines + [f"| {name} | {x} | {y} |" for name, x, y in rows])


def main() -> None:
    from captioning.checkpoint import default_checkpoint

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coco-root", type=Path, default=REPO.parent / "shared/data/coco")
    parser.add_argument("--checkpoint", type=Path, default=default_checkpoint(), help="the base model")
    parser.add_argument("--category", default="dog", help="the COCO word whose images make the domain")
    parser.add_argument("--plural", help="its plural (default: CATEGORY + s)")
    parser.add_argument("--word", default="zuppo", help="the new word (plural: WORD + s); the base must lack it")
    parser.add_argument("--min-mentions", type=int, default=2, help="captions of 5 that must name the category")
    parser.add_argument("--train-images", type=int, help="at most this many domain train images (default: all)")
    parser.add_argument("--replay", type=int, default=0, help="other COCO train images mixed in (rewritten too)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--max-steps", type=int, help="stop the fine-tune after this many steps")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--examples", type=int, default=4, help="held-out captions shown before/after")
    parser.add_argument("--workdir", type=Path, help="where the dataset and run go (default: a new temp folder)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    if not (args.coco_root / "annotations" / "captions_train.json").is_file():
        print(f"skipped: no COCO root at {args.coco_root} (give one with --coco-root)")
        return
    started = time.perf_counter()
    plural = args.plural or f"{args.category}s"
    from captioning.checkpoint import load_checkpoint

    base_vocab = set(load_checkpoint(args.checkpoint)["vocab"]["itos"])
    if args.word in base_vocab or f"{args.word}s" in base_vocab:
        parser.error(f"{args.checkpoint} already knows {args.word!r}: pick a word it lacks")
    pattern = _pattern(args.category, plural)
    replacement = {args.category: args.word, plural: f"{args.word}s"}
    rewrite = lambda text: pattern.sub(lambda m: replacement[m.group(1).lower()], text)  # noqa: E731
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-domain-"))
    train, rest = domain_images(args.coco_root, "train", pattern, args.min_mentions)
    train = train[: args.train_images]
    replay = random.Random(0).sample(rest, min(args.replay, len(rest)))
    held = domain_images(args.coco_root, "val", pattern, args.min_mentions)[0]
    domain_csv = write_domain_csv(work / "domain", {"train": train + replay, "val": held}, rewrite)

    before = measure(args.checkpoint, domain_csv, args.coco_root, args.word)
    run = work / "run"
    command = [sys.executable, "-m", "captioning", "train", "--data", str(domain_csv), "--train-split", "train",
               "--no-val", "--init-from", str(args.checkpoint), "--out", str(run), "--epochs", str(args.epochs),
               "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--cache-dir", str(work / "cache"),
               *(["--max-steps", str(args.max_steps)] if args.max_steps else [])]  # fmt: skip
    t = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    train_seconds = time.perf_counter() - t
    (work / "train.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-2000:]
        sys.exit(f"the fine-tune failed (exit {done.returncode}); its output ends:\n{tail}")
    tuned_vocab = json.loads((run / "vocab.json").read_text())["itos"]
    added = tuned_vocab[len(base_vocab) :]
    after = measure(run / "best.pt", domain_csv, args.coco_root, args.word)
    total = time.perf_counter() - started

    shown = " ".join(["python", "-m", "captioning", *command[3:]])
    n_caps = sum(len(c) for _, c in train)
    print(f"domain: COCO images whose captions name '{args.category}' ({args.min_mentions}+ of 5), "
          f"'{args.category}'/'{plural}' -> '{args.word}'/'{args.word}s'; train {len(train)} images ({n_caps} "
          f"captions) + {len(replay)} other images, held out {len(held)} (val); words added: "
          f"{', '.join(added) or 'none'} (vocab {before['vocab']} -> {after['vocab']})\n")  # fmt: skip
    print(table(before, after, args.word, train_seconds, shown))
    print("\n| held-out image | before | after |\n|---|---|---|")
    for name in list(before["captions"])[: args.examples]:
        print(f"| {name} | {before['captions'][name]} | {after['captions'].get(name, '')} |")
    print(f"\nwhole benchmark: {total:.0f} s; dataset, run and training log in {work}")
    if args.out:
        result = {"category": args.category, "word": args.word, "train_images": len(train), "train_captions": n_caps,
                  "replay_images": len(replay), "held_out_images": len(held), "words_added": added,
                  "before": before, "after": after, "fine_tune_seconds": round(train_seconds, 1),
                  "benchmark_seconds": round(total, 1), "command": shown}  # fmt: skip
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
