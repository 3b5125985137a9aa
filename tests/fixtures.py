"""A tiny generated COCO-format dataset: coloured shapes with captions that describe them."""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (240, 220, 40)}
SHAPES = ("square", "circle")
TEMPLATES = (
    "a {c} {s} on a white background.",
    "a {s} that is {c}.",
    "there is a {c} {s} in the picture.",
    "a picture of a {c} {s}.",
    "one {c} {s} on white.",
)


def draw(colour: str, shape: str, size: int = 64, jitter: int = 0) -> Image.Image:
    image = Image.new("RGB", (size + 16, size), "white")
    d = ImageDraw.Draw(image)
    box = (12 + jitter, 12, size - 8 + jitter, size - 12)
    (d.rectangle if shape == "square" else d.ellipse)(box, fill=COLOURS[colour])
    return image


def make_coco(root: Path, splits: dict[str, int] | None = None, seed: int = 0) -> Path:
    """Write `root/annotations/captions_<split>.json` and `root/<split>/*.jpg`; return root."""
    rng = random.Random(seed)
    splits = splits or {"train": 24, "val": 8}
    next_id, ann_id = 1, 1
    for split, n in splits.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for k in range(n):
            colour, shape = list(COLOURS)[k % 4], SHAPES[(k // 4) % 2]
            name = f"{next_id:012d}.jpg"
            draw(colour, shape, jitter=rng.randint(0, 4)).save(root / split / name, quality=90)
            images.append(
                {
                    "id": next_id,
                    "file_name": name,
                    "width": 80,
                    "height": 64,
                    "coco_url": f"http://images.cocodataset.org/val2017/{name}",
                    "license": 1,
                }
            )
            for t in TEMPLATES:
                anns.append({"id": ann_id, "image_id": next_id, "caption": t.format(c=colour, s=shape)})
                ann_id += 1
            next_id += 1
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        data = {
            "info": {"description": "tiny test set"},
            "licenses": [{"id": 1, "name": "test"}],
            "images": images,
            "annotations": anns,
        }
        (root / "annotations" / f"captions_{split}.json").write_text(json.dumps(data))
    return root


def repeated_ngrams(tokens: Sequence, n: int = 3) -> list[tuple]:
    """The n-grams (of token ids or words) that occur more than once in `tokens`."""
    counts = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return [g for g, c in counts.items() if c > 1]


# Five references each for three images, for the CIDEr and reward tests.
REFS = {
    1: ["a man riding a wave on top of a surfboard", "a surfer rides a large wave in the ocean",
        "a person on a surfboard riding a wave", "a man surfing on a big wave", "surfer riding a wave at the beach"],
    2: ["a plate of food with broccoli and rice", "a white plate topped with rice and vegetables",
        "a meal of rice and broccoli on a plate", "food on a plate on a wooden table", "a plate with rice and greens"],
    3: ["two dogs playing in the grass", "a couple of dogs running on a lawn",
        "two brown dogs play in a grassy field", "dogs chasing each other on the grass", "two dogs in a park"],
}  # fmt: skip
