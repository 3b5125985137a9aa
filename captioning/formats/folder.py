"""A folder of images with `.txt` sidecars (one caption per line), and Hugging Face's imagefolder convention:
`metadata.jsonl` or `metadata.csv` with `file_name` and a text column, at the top or in split subfolders."""

from __future__ import annotations

from pathlib import Path

from captioning.formats.common import ReadOptions, Rows, image_files, read_text, split_rows
from captioning.formats.table import CAPTION_NAMES, SPLIT_NAMES, column, read_table
from captioning.io import read_json_line

METADATA = ("metadata.jsonl", "metadata.csv")


def metadata_files(path: Path) -> dict[str, Path]:
    """split name -> its metadata file: `train/metadata.jsonl`, `validation/metadata.csv`... or one at the top."""
    if path.is_file():
        return {"": path} if path.name in METADATA else {}
    found = {}
    for split, where in [("", path)] + [(SPLIT_NAMES[p.name.lower()], p) for p in _split_folders(path)]:
        file = next((where / n for n in METADATA if (where / n).is_file()), None)
        if file is not None:
            found[split] = file
    return found


def _split_folders(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and p.name.lower() in SPLIT_NAMES)


def has_sidecars(path: Path) -> bool:
    return path.is_dir() and any(p.with_suffix(".txt").is_file() for p in image_files(path))


def read_sidecars(path: Path, options: ReadOptions) -> tuple[Path, dict[str, Rows]]:
    rows = Rows()
    for image in image_files(path):
        sidecar = image.with_suffix(".txt")
        if sidecar.is_file():
            for line in read_text(sidecar).splitlines():
                if line.strip():
                    rows.add(image.relative_to(path).as_posix(), line)
    return path, split_rows(rows, options)


def read_imagefolder(path: Path, options: ReadOptions) -> tuple[Path, dict[str, Rows]]:
    root = path if path.is_dir() else path.parent
    out: dict[str, Rows] = {}
    for split, file in metadata_files(path).items():
        rows = _metadata_rows(file, options)
        prefix = file.parent.relative_to(root).as_posix() if file.parent != root else ""
        rows.captions = {f"{prefix}/{ref}" if prefix else ref: caps for ref, caps in rows.captions.items()}
        for name, part in (split_rows(rows, options) if split == "" else {split: rows}).items():
            merged = out.setdefault(name, Rows())
            merged.skipped += part.skipped
            for ref, caps in part.captions.items():
                merged.captions.setdefault(ref, []).extend(caps)
    return root, out


def _metadata_rows(file: Path, options: ReadOptions) -> Rows:
    rows = Rows()
    if file.suffix == ".csv":
        header, body = read_table(file, options)
        image = column(header, options.image_column or "file_name", (), "image", file.name)
        caption = column(header, options.caption_column, CAPTION_NAMES, "caption", file.name)
        for row in body:
            rows.add(row[image], row[caption]) if len(row) > max(image, caption) else rows.add("", None)
        return rows
    key = options.image_column or "file_name"
    for line in read_text(file).splitlines():
        if not line.strip():
            continue
        record = read_json_line(line)
        if not isinstance(record, dict):
            rows.add("", None)
            continue
        text = options.caption_column or next((k for k in CAPTION_NAMES if k in record), "text")
        captions = record.get(text)
        for caption in captions if isinstance(captions, list) else [captions]:
            rows.add(record.get(key), caption)
    return rows
