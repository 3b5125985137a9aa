"""The YAML header Hugging Face model cards open with, made from the recorded scores, so the shipped card can be
published as it is and its numbers are the ones `evaluate` recorded (`scripts/evaluate_default.py`).

Run: python -m captioning.card captioning/shipped/README.md   (rewrites the header in place)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from captioning.io import atomic_write_text

SHIPPED = Path(__file__).resolve().parent / "shipped"
METRICS = {"BLEU-4": "bleu", "METEOR": "meteor", "ROUGE-L": "rouge", "CIDEr": "cider"}
DEFAULT_DECODING = "beam 3"  # the key of default-scores.json that DecodeConfig() produces


def header(scores_file: Path = SHIPPED / "default-scores.json") -> str:
    """The card's front matter: license, datasets, task, and model-index results of the default decoding."""
    recorded = json.loads(Path(scores_file).read_text(encoding="utf-8"))
    scores = recorded["scores"][DEFAULT_DECODING]
    split = f"{recorded['split']} ({scores['images']} images)"
    lines = [
        "---",
        "license: apache-2.0",
        "library_name: pytorch",
        "pipeline_tag: image-to-text",
        "tags: [image-captioning, show-attend-and-tell, efficientnet-lite, coco]",
        "datasets: [coco]",
        f"metrics: [{', '.join(METRICS.values())}]",
        "model-index:",
        "- name: captioning-studio-default",
        "  results:",
        "  - task: {type: image-to-text, name: Image captioning}",
        f"    dataset: {{type: coco, name: COCO 2017 captions, split: '{split}'}}",
        "    metrics:",
    ]
    lines += [f"    - {{type: {kind}, name: {name}, value: {scores[name]:.4f}}}" for name, kind in METRICS.items()]
    held = recorded.get("heldout")
    if held:  # the protocol's held-out train images: no decision used them
        where = f"{held['split']} ({held['images']} images)"
        lines += [
            "  - task: {type: image-to-text, name: Image captioning}",
            f"    dataset: {{type: coco, name: COCO 2017 captions, split: '{where}'}}",
            "    metrics:",
        ]
        lines += [f"    - {{type: {kind}, name: {name}, value: {held[name]:.4f}}}" for name, kind in METRICS.items()
                  if name in held]  # fmt: skip
    return "\n".join(lines + ["---", ""])


def with_header(card: str, head: str) -> str:
    """`card` with its front matter replaced by (or opened with) `head`."""
    if card.startswith("---\n"):
        card = card[card.index("\n---\n", 4) + len("\n---\n") :]
    return head + card.lstrip("\n")


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else SHIPPED / "README.md")
    atomic_write_text(path, with_header(path.read_text(encoding="utf-8"), header()))
