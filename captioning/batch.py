"""Caption many images: files and folders in, batches through the model, results to a CSV, JSON lines, `.txt`
sidecars or an alt-text CSV. Every output is appended a batch at a time and synced, so a killed run loses at
most one batch, and a rerun with the same output skips the images it already holds.

Run: python -m captioning caption photos/ --recursive --out captions.csv
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from captioning.config import DecodeConfig
from captioning.data import IMAGE_TYPES
from captioning.io import atomic_write_text
from captioning.loader import batches

ALT_MAX_CHARS = 125  # screen readers' usual advice for alt text


@dataclass
class Summary:
    captioned: int = 0
    skipped_done: int = 0  # already in the output (a resumed run)
    unreadable: list[str] = field(default_factory=list)
    not_images: list[str] = field(default_factory=list)  # paths that are neither an image file nor a folder


def find_images(paths: Iterable[Path], recursive: bool = False) -> tuple[list[Path], list[str]]:
    """The image files among `paths` and in its folders (their subfolders too when `recursive`), in a stable
    order; and the paths that were neither."""
    found, other = [], []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            pattern = path.rglob("*") if recursive else path.iterdir()
            found += sorted(p for p in pattern if p.suffix.lower().lstrip(".") in IMAGE_TYPES and p.is_file())
        elif path.is_file():
            found.append(path)
        else:
            other.append(str(path))
    seen = set()
    return [p for p in found if not (p in seen or seen.add(p))], other


def confidence(cap) -> float:
    """The geometric mean of the caption's word probabilities (0-1)."""
    probs = [max(p, 1e-12) for p in cap.word_probs] or [1e-12]
    return math.exp(sum(math.log(p) for p in probs) / len(probs))


class Output:
    """One output file, appended a batch at a time; `done` names the images a previous run wrote."""

    suffix = ""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.done = self._read_done() if self.path.exists() else set()

    def _read_done(self) -> set[str]:
        text = self.path.read_text(encoding="utf-8")
        if text and not text.endswith("\n"):  # a kill mid-line: that line is dropped and its image redone
            text = text[: text.rfind("\n") + 1]
            atomic_write_text(self.path, text)
        return self._keys(text)

    def write(self, rows: list[tuple[str, object]]) -> None:
        new = not self.path.exists() or self.path.stat().st_size == 0
        with open(self.path, "a", encoding="utf-8", newline="") as f:
            f.write(self._format(rows, new))
            f.flush()
            os.fsync(f.fileno())


class CsvOutput(Output):
    HEADER = ("image", "caption", "confidence", "unsure")

    def _keys(self, text: str) -> set[str]:
        return {row[0] for row in list(csv.reader(io.StringIO(text)))[1:] if row}

    def _row(self, name: str, cap) -> list:
        return [name, cap.text, f"{confidence(cap):.3f}", cap.unsure]

    def _format(self, rows, new: bool) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        if new:
            writer.writerow(self.HEADER)
        writer.writerows(self._row(name, cap) for name, cap in rows)
        return out.getvalue()


class AltTextOutput(CsvOutput):
    """`file,alt,review,why`: alt text cut to a length, "yes" where a person should check it, and why (`doubt`)."""

    HEADER = ("file", "alt", "review", "why")

    def __init__(self, path: Path, max_chars: int = ALT_MAX_CHARS) -> None:
        super().__init__(path)
        self.max_chars = max_chars

    def _row(self, name: str, cap) -> list:
        text = cap.text if len(cap.text) <= self.max_chars else cap.text[: self.max_chars - 3].rstrip() + "..."
        return [name, text, "yes" if cap.doubts else "", cap.unsure]


class JsonlOutput(Output):
    def _keys(self, text: str) -> set[str]:
        keys = set()
        for line in text.splitlines():
            try:
                keys.add(json.loads(line)["image"])
            except (ValueError, KeyError, TypeError):
                continue
        return keys

    def _format(self, rows, new: bool) -> str:
        return "".join(json.dumps(record(name, cap)) + "\n" for name, cap in rows)


def record(name: str, cap) -> dict:
    """An image's caption with what explains it, as `caption --json` and the JSON-lines output give it."""
    return {
        "image": name,
        "caption": cap.text,
        "confidence": round(confidence(cap), 4),
        "score": cap.score,
        "logprob": cap.logprob,
        "words": [{"word": w, "prob": p} for w, p in zip(cap.words, cap.word_probs)],
        "alternatives": [{"caption": h.text, "score": h.score} for h in cap.alternatives],
        "tags": [{"label": label, "prob": p} for label, p in cap.tags],  # the encoder's ImageNet top 5
        "named": {"label": cap.named[0], "prob": cap.named[1]} if cap.named else None,
        "required": {"noun": r.noun, "prob": r.prob, "words": list(r.words)} if (r := cap.required) else None,
        "unsure": cap.unsure,  # "" when the model has no reason to doubt the caption
        "doubts": cap.doubts,
    }


class SidecarOutput:
    """A `.txt` beside each image; an existing one is never overwritten (it may be a dataset's own caption)."""

    def __init__(self) -> None:
        self.done: set[str] = set()

    def skip(self, path: Path) -> bool:
        return path.with_suffix(".txt").exists()

    def write(self, rows: list[tuple[str, object]]) -> None:
        for name, cap in rows:
            atomic_write_text(Path(name).with_suffix(".txt"), cap.text + "\n")


def output_for(path: Path) -> Output:
    if path.suffix.lower() == ".csv":
        return CsvOutput(path)
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return JsonlOutput(path)
    raise ValueError(f"--out must end in .csv or .jsonl (got {path.name})")


def caption_files(
    captioner,
    images: list[Path],
    outputs: list,
    decoding: DecodeConfig = DecodeConfig(),
    batch_size: int = 16,
    num_workers: int = 0,
    on_batch: Callable[[int, list[tuple[str, object]]], None] | None = None,
) -> Summary:
    """Caption `images` a batch at a time (read by `num_workers` processes, encoded and decoded together) into
    every output; those every output already holds are skipped. `on_batch(images handled, rows)` after each."""
    summary = Summary()
    todo = [p for p in images if not all(_has(out, p) for out in outputs)] if outputs else list(images)
    summary.skipped_done = len(images) - len(todo)
    for batch in batches(todo, {p: p for p in todo}, captioner.preprocess, batch_size, num_workers=num_workers):
        rows = []
        if batch.pixels is not None:
            caps = captioner.caption_features(captioner.encode(batch.pixels), decoding, batch.pixels)
            rows = [(str(p), cap) for p, cap in zip(batch.keys, caps, strict=True)]
        for out in outputs:
            out.write([(name, cap) for name, cap in rows if not _has(out, Path(name))])
        summary.captioned += len(rows)
        summary.unreadable += [str(p) for p in batch.skipped]
        if on_batch:
            on_batch(len(rows) + len(batch.skipped), rows)
    return summary


def _has(out, path: Path) -> bool:
    return out.skip(path) if isinstance(out, SidecarOutput) else str(path) in out.done
