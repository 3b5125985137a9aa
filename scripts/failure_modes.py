"""The model card's failure-mode counts, recounted: people words, echoes with and without the decoding rules,
distinct captions and the most repeated ones, over a split at the default decoding.

Run: .venv/bin/python -m scripts.failure_modes --coco-root ../shared/data/coco [--split val] [--checkpoint CKPT]
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from captioning.checkpoint import default_checkpoint
from captioning.config import DecodeConfig
from captioning.evaluate import caption_split
from captioning.formats import open_split
from captioning.inference import Captioner
from captioning.repeats import FUNCTION_WORDS
from captioning.vocab import tokenize


def echoes(caption: str) -> bool:
    """Whether a content word comes twice ("a truck with a truck")."""
    words = [w for w in tokenize(caption) if w.isalpha() and w not in FUNCTION_WORDS]
    return len(words) != len(set(words))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coco-root", type=Path, required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--checkpoint", type=Path, default=default_checkpoint())
    args = parser.parse_args()
    captioner = Captioner.from_checkpoint(args.checkpoint, device="cpu")
    split = open_split(args.coco_root, args.split)
    default = caption_split(captioner, split, split.ids, DecodeConfig())
    unblocked = caption_split(captioner, split, split.ids, DecodeConfig(block_repeats=False))
    n = len(default)
    words = Counter(w for c in default.values() for w in set(tokenize(c)))
    common = Counter(c.lower().rstrip(" .") for c in default.values()).most_common(3)
    print(f"{n} captions of {args.split}, default decoding (beam 3):")
    print(f"- people: {words['man']} say 'man', {words['woman']} 'woman', {words['people']} 'people'")
    print(f"- a content word twice: {sum(map(echoes, default.values()))} (repeats allowed: "
          f"{sum(map(echoes, unblocked.values()))})")  # fmt: skip
    print(f"- distinct: {len(set(default.values()))} ({100 * len(set(default.values())) / n:.0f}%)")
    print("- most repeated: " + "; ".join(f"'{c}' {k} times" for c, k in common))


if __name__ == "__main__":
    main()
