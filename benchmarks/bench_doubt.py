"""How often the doubt flag (`captioning.doubt`) is right: on COCO val and on the everyday photos.

Run: .venv/bin/python -m benchmarks.bench_doubt [--coco-root ../shared/data/coco] [--split val]
     [--everyday cache/everyday] [--checkpoint CKPT]

A caption is *wrong* when it misses its subject:
- on COCO, when the head noun of its subject ("A group of people sitting" -> "people") is in none of the
  image's reference captions (plurals included; the people words man, woman, person, ... count as one);
  a caption without a clear subject is left out. Also reported: wrong as a per-image CIDEr under 0.3.
- on the everyday photos, when it holds none of the photo's subject words (`bench_everyday`'s test).
Reported: how many captions are flagged, the share of flagged captions that are wrong (precision), the share of
wrong captions that are flagged (recall), and both for each kind of reason. Default decoding (beam 3, naming on).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

PEOPLE = {"man", "woman", "person", "people", "men", "women", "guy", "boy", "girl", "child", "children", "kid",
          "kids", "lady", "player", "persons", "skier", "surfer", "skateboarder", "snowboarder"}  # fmt: skip
KINDS = {"looks like": "encoder disagrees", "unsure of its words": "decoder hesitates", "tiny": "not a photo",
         "screenshot": "not a photo"}  # fmt: skip


def _tokens(text: str) -> set[str]:
    words = set(re.findall(r"[a-z]+", text.lower()))
    return words | {w[:-1] for w in words if w.endswith("s")} | {w[:-2] for w in words if w.endswith("es")}


def subject_wrong(words: list[str], references: list[str]) -> bool | None:
    """Whether the caption's subject noun is in none of the references; None without a clear subject."""
    from captioning.naming import subject_span

    span = subject_span(words)
    if span is None:
        return None
    noun = words[span[1] - 1]
    said = set().union(*(_tokens(r) for r in references))
    if noun in PEOPLE:
        return not (said & PEOPLE)
    return not ({noun, noun.rstrip("s")} & said)


def kinds(doubts: list[str]) -> set[str]:
    return {kind for key, kind in KINDS.items() if any(key in d for d in doubts)}


def report(title: str, rows: list[tuple[list[str], bool]]) -> None:
    """rows: (doubts, wrong) per caption."""

    def line(name: str, flagged: list[bool]) -> str:
        wrong = [w for _, w in rows]
        hits = sum(f and w for f, w in zip(flagged, wrong))
        precision = f"{hits}/{sum(flagged)} = {hits / sum(flagged):.0%}" if sum(flagged) else "-"
        recall = f"{hits}/{sum(wrong)} = {hits / sum(wrong):.0%}" if sum(wrong) else "-"
        return f"| {title} | {name} | {sum(flagged)} of {len(rows)} | {precision} | {recall} |"

    print(line("any reason", [bool(d) for d, _ in rows]))
    for kind in dict.fromkeys(KINDS.values()):
        print(line(kind, [kind in kinds(d) for d, _ in rows]))


def coco_rows(captioner, root: Path, split: str) -> tuple[list, list]:
    from captioning.data import CocoSplit, load_image
    from captioning.metrics import score_captions

    images = CocoSplit.load(root, split)
    caps = {}
    for i in images.ids:
        caps[i] = captioner.caption([load_image(images.files[i])])[0]
    scores = score_captions({i: c.text for i, c in caps.items()}, images.captions, meteor=False)
    subject, cider = [], []
    for i, cap in caps.items():
        wrong = subject_wrong(cap.words, images.captions[i])
        if wrong is not None:
            subject.append((cap.doubts, wrong))
        cider.append((cap.doubts, scores.per_image[i]["CIDEr"] < 0.3))
    return subject, cider


def everyday_rows(captioner, dest: Path) -> list:
    from benchmarks.bench_everyday import names_subject
    from benchmarks.everyday import collect, load_check_set
    from captioning.data import ImageLoadError, load_image

    collect(dest)
    rows = []
    for _, path, words in load_check_set(dest):
        try:
            cap = captioner.caption([load_image(path)])[0]
        except ImageLoadError:
            continue
        rows.append((cap.doubts, not names_subject(cap.text, words)))
    return rows


def main() -> None:
    from captioning.checkpoint import default_checkpoint
    from captioning.inference import Captioner

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coco-root", type=Path, default=Path("../shared/data/coco"))
    parser.add_argument("--split", default="val")
    parser.add_argument("--everyday", type=Path, default=Path("cache/everyday"))
    parser.add_argument("--checkpoint", type=Path, default=default_checkpoint())
    args = parser.parse_args()
    captioner = Captioner.from_checkpoint(args.checkpoint, device="cpu")
    print("| images | reason | flagged | flagged that are wrong (precision) | wrong that are flagged (recall) |")
    print("|---|---|---|---|---|")
    if (args.coco_root / "annotations").is_dir():
        subject, cider = coco_rows(captioner, args.coco_root, args.split)
        report(f"COCO {args.split}, wrong subject", subject)
        report(f"COCO {args.split}, CIDEr < 0.3", cider)
    report("everyday photos, subject missed", everyday_rows(captioner, args.everyday))


if __name__ == "__main__":
    main()
