"""CSV or TSV, one row per caption (several rows per image): columns named by `--image-column` and
`--caption-column` (after open_clip's `--csv-img-key` / `--csv-caption-key`), else the usual names."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from captioning.data import DatasetError
from captioning.formats.common import ReadOptions, Rows, read_text, split_rows

IMAGE_NAMES = ("image", "file_name", "filename", "filepath", "image_path", "path", "file", "img")
CAPTION_NAMES = ("caption", "text", "title", "sentence", "comment", "description")
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "dev": "val", "test": "test"}


def table_file(path: Path) -> Path | None:
    if path.is_file():
        return path if path.suffix.lower() in (".csv", ".tsv") else None
    found = [p for p in sorted(path.iterdir()) if p.suffix.lower() in (".csv", ".tsv") and p.name != "metadata.csv"]
    return found[0] if len(found) == 1 else None


def column(header: list[str], asked: str | None, usual: tuple[str, ...], what: str, file: str) -> int:
    """The index of the column `asked` for (or the first of the usual names); DatasetError naming the columns."""
    lowered = [h.strip().lower() for h in header]
    wanted = [asked.lower()] if asked else list(usual)
    for name in wanted:
        if name in lowered:
            return lowered.index(name)
    flag = f"--{what}-column"
    have = ", ".join(h[:40] for h in header[:20]) or "none"
    raise DatasetError(f"{file} has no {what} column {asked or '(' + ', '.join(usual[:4]) + ', ...)'}; its columns: "
                       f"{have} (name it with {flag})")  # fmt: skip


def read_table(file: Path, options: ReadOptions) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of a CSV (a TSV by its name or its first line), quoted commas and CRLF line ends included."""
    text = read_text(file)
    first = text.split("\n", 1)[0]
    delimiter = "\t" if file.suffix.lower() == ".tsv" or first.count("\t") > first.count(",") else ","
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
    except csv.Error as exc:
        raise DatasetError(f"{file.name} is not a readable CSV ({exc})") from None
    if not rows:
        raise DatasetError(f"{file.name} is empty")
    return rows[0], rows[1:]


def read(path: Path, options: ReadOptions) -> tuple[Path, dict[str, Rows]]:
    file = table_file(path)
    header, body = read_table(file, options)
    image = column(header, options.image_column, IMAGE_NAMES, "image", file.name)
    caption = column(header, options.caption_column, CAPTION_NAMES, "caption", file.name)
    lowered = [h.strip().lower() for h in header]
    split = lowered.index("split") if "split" in lowered else None
    rows, by_split = Rows(), {}
    for row in body:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(image, caption):
            rows.skipped += 1
            continue
        name = SPLIT_NAMES.get(row[split].strip().lower()) if split is not None and split < len(row) else None
        (by_split.setdefault(name, Rows()) if name else rows).add(row[image], row[caption])
    if by_split:
        by_split.setdefault("train", Rows()).skipped += rows.skipped + len(rows.captions)
        return file.parent, by_split
    return file.parent, split_rows(rows, options)
