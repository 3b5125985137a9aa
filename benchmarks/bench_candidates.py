"""Decoding candidates against the default decoding (no constraint, constrained beam search at other thresholds,
test-time flip): COCO scores with paired intervals, and the everyday photos whose subject the caption names.

Run: .venv/bin/python -m benchmarks.bench_candidates [--coco-root ../shared/data/coco] [--split val]
     [--ids-file F] [--everyday cache/everyday] [--checkpoint CKPT] [--thresholds 0.3 0.4 0.6]

Each candidate's captions are scored on the same images as the default's, and the difference in CIDEr gets its
paired 95% bootstrap interval (`captioning.bootstrap`). Decoding is the default (beam 3, naming on, repeats
blocked, constrained at 0.5) with one change: `constrain=0` (off) or another THRESHOLD, or `flip`.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path


def main() -> None:
    from benchmarks.bench_everyday import names_subject
    from benchmarks.everyday import collect, load_check_set
    from captioning import bootstrap
    from captioning.checkpoint import default_checkpoint
    from captioning.config import DecodeConfig
    from captioning.data import load_image
    from captioning.evaluate import caption_split
    from captioning.formats import open_split
    from captioning.inference import Captioner
    from captioning.metrics import score_captions

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coco-root", type=Path, default=Path("../shared/data/coco"))
    parser.add_argument("--split", default="val")
    parser.add_argument("--ids-file", type=Path)
    parser.add_argument("--everyday", type=Path, default=Path("cache/everyday"))
    parser.add_argument("--checkpoint", type=Path, default=default_checkpoint())
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.3, 0.4, 0.6])
    args = parser.parse_args()

    captioner = Captioner.from_checkpoint(args.checkpoint, device="cpu")
    split = open_split(args.coco_root, args.split, ids_file=args.ids_file)
    base = DecodeConfig()
    decodings = {"default": base, "no constraint": replace(base, constrain=0.0)}
    decodings |= {f"constrain {t}": replace(base, constrain=t) for t in args.thresholds if t != base.constrain}
    decodings["flip"] = replace(base, flip=True)
    captions = {name: caption_split(captioner, split, split.ids, d) for name, d in decodings.items()}
    scored = {name: score_captions(c, split.captions, meteor=False) for name, c in captions.items()}
    print(f"{len(captions['default'])} images of {args.split}; B - A with its paired 95% interval (1,000 draws)")
    print("| decoding | CIDEr [95%] | BLEU-4 [95%] | CIDEr minus default [95%] | changed captions |")
    print("|---|---|---|---|---|")
    for name, scores in scored.items():
        found = bootstrap.intervals(scores)
        delta = "" if name == "default" else bootstrap.compare(scored["default"], scores)["CIDEr"].delta.text()
        changed = sum(captions[name][i] != captions["default"][i] for i in captions["default"])
        print(f"| {name} | {found['CIDEr'].text()} | {found['BLEU-4'].text()} | {delta} | {changed} |")

    collect(args.everyday)
    photos = load_check_set(args.everyday)
    images = [load_image(path) for _, path, _ in photos]
    print(f"\n{len(photos)} everyday photos: captions that name the subject")
    for name, decoding in decodings.items():
        caps = captioner.caption(images, decoding)
        hits = sum(names_subject(c.text, words) for c, (_, _, words) in zip(caps, photos, strict=True))
        tags = sum(
            any(names_subject(label, words) for label, _ in c.tags)
            for c, (_, _, words) in zip(caps, photos, strict=True)
        )
        print(f"{name}: {hits} of {len(photos)} (the encoder's top-5 labels: {tags})")


if __name__ == "__main__":
    main()
