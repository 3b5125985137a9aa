"""Karpathy's `dataset_coco.json` / `dataset_flickr8k.json` / `dataset_flickr30k.json`: one record per image,
`filepath/filename` under the JSON's folder, its split (`restval` counts as train) and its sentences."""

from __future__ import annotations

from pathlib import Path

from captioning.formats.common import ReadOptions, Rows, read_text
from captioning.io import read_json

SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}


def dataset_file(path: Path) -> Path | None:
    if path.is_file():
        return path if path.suffix == ".json" and _sniff(path) else None
    found = sorted(path.glob("dataset_*.json"))
    return found[0] if found else None


def _sniff(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return b'"sentences"' in head or (b'"images"' in head and b'"dataset"' in head and b'"annotations"' not in head)


def read(path: Path, options: ReadOptions) -> tuple[Path, dict[str, Rows]]:
    file = dataset_file(path)
    try:
        data = read_json(read_text(file))
    except ValueError as exc:
        raise ValueError(f"{file.name} is not a Karpathy dataset file ({str(exc)[:100]})") from None
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise ValueError(f"{file.name} is not a Karpathy dataset file (no 'images' list)")
    out: dict[str, Rows] = {name: Rows() for name in ("train", "val", "test")}
    seen: set[str] = set()
    for record in images:
        ok = isinstance(record, dict) and isinstance(record.get("filename"), str) and record.get("split") in SPLITS
        sentences = record.get("sentences") if ok else None
        ref = "/".join(p for p in (record.get("filepath"), record.get("filename")) if isinstance(p, str)) if ok else ""
        if not ok or not isinstance(sentences, list) or ref in seen:  # a duplicate name is malformed too
            out["train"].skipped += 1
            continue
        seen.add(ref)
        for sentence in sentences:
            out[SPLITS[record["split"]]].add(ref, sentence.get("raw") if isinstance(sentence, dict) else None)
    return file.parent, {k: v for k, v in out.items() if v.captions or k == "train"}
