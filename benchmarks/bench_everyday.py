"""Does the caption name the subject of everyday photos outside COCO? The check set of `everyday.py`, captioned
by a model, beside what its frozen encoder's own ImageNet head says about the same input.

Run: .venv/bin/python -m benchmarks.bench_everyday [--checkpoint CKPT] [--dest cache/everyday] [--guide BONUS]
     [--ensemble CKPT ...] [--no-name-novel]

A caption counts as naming the subject when it holds one of the photo's subject words (plurals included); the
encoder's top-5 ImageNet labels are scored the same way, which bounds what guiding the decoder by the
encoder's concepts could gain. Prints a row per photo and the totals.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from benchmarks.everyday import collect, load_check_set


def names_subject(text: str, words: list[str]) -> bool:
    tokens = set(re.findall(r"[a-z]+", text.lower()))
    return any(w in tokens or f"{w}s" in tokens or f"{w}es" in tokens for w in words)


def main() -> None:
    from captioning.checkpoint import default_checkpoint
    from captioning.data import ImageLoadError, load_image
    from captioning.flags import add_decode_arguments, decode_config
    from captioning.inference import Captioner

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=default_checkpoint())
    parser.add_argument("--dest", type=Path, default=Path("cache/everyday"))
    parser.add_argument("--ensemble", type=Path, action="append", help="another checkpoint to ensemble with")
    add_decode_arguments(parser)  # the CLI's decoding flags, with its defaults
    args = parser.parse_args()
    collect(args.dest)
    captioner = Captioner.from_checkpoints([args.checkpoint, *(args.ensemble or [])], device="cpu")
    hits = tag_hits = n = 0
    print("| photo | caption (beam 3) | encoder top-5 | caption names it | a tag names it |")
    print("|---|---|---|---|---|")
    for name, path, words in load_check_set(args.dest):
        try:
            image = load_image(path)
        except ImageLoadError as exc:
            print(f"| {name} | (unreadable: {exc}) | | | |")
            continue
        cap = captioner.caption([image], decode_config(args))[0]
        tags = ", ".join(f"{label} {p:.2f}" for label, p in cap.tags)
        hit, tag_hit = names_subject(cap.text, words), any(names_subject(t, words) for t, _ in cap.tags)
        hits, tag_hits, n = hits + hit, tag_hits + tag_hit, n + 1
        print(f"| {name} | {cap.text} | {tags} | {'yes' if hit else 'no'} | {'yes' if tag_hit else 'no'} |")
    print(f"\n{n} photos: the caption names the subject in {hits} ({100 * hits / max(n, 1):.0f}%), "
          f"the encoder's top-5 labels in {tag_hits} ({100 * tag_hits / max(n, 1):.0f}%)")  # fmt: skip


if __name__ == "__main__":
    main()
