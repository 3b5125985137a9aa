"""Flickr8k / Flickr30k token files: `name.jpg#0<TAB>caption` (`Flickr8k.token.txt`, `results_20130124.token`),
with Flickr8k's split lists (`Flickr_8k.trainImages.txt`, `...devImages.txt`, `...testImages.txt`) when present."""

from __future__ import annotations

import re
from pathlib import Path

from captioning.formats.common import ReadOptions, Rows, read_text, split_rows

TOKEN_FILES = ("Flickr8k.token.txt", "results_20130124.token", "captions.token", "Flickr30k.token.txt")
SPLIT_LISTS = {"train": "trainImages", "val": "devImages", "test": "testImages"}
_LINE = re.compile(r"^([^\t#]+)#\d+\t(.*)$")  # "name.jpg#0<TAB>caption"; the Kaggle CSV form is a CSV


def token_file(path: Path) -> Path | None:
    """The token file `path` is or holds."""
    if path.is_file():
        return path if path.name.endswith((".token", ".token.txt")) or _sniff(path) else None
    found = [path / n for n in TOKEN_FILES if (path / n).is_file()] + sorted(path.glob("*.token"))
    return found[0] if found else None


def _sniff(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4096).decode("utf-8-sig", "replace").splitlines()
    except OSError:
        return False
    lines = [line for line in head[:-1] if line.strip()] or head  # the last line read may be cut off
    return bool(lines) and all(_LINE.match(line) for line in lines)


def read(path: Path, options: ReadOptions) -> tuple[Path, dict[str, Rows]]:
    """(the folder image names are relative to, rows per split)."""
    tokens = token_file(path)
    rows = Rows()
    for line in read_text(tokens).splitlines():
        if not line.strip():
            continue
        match = _LINE.match(line)
        rows.add(match.group(1), match.group(2)) if match else rows.add("", None)
    lists = {name: sorted(tokens.parent.glob(f"*{stem}.txt")) for name, stem in SPLIT_LISTS.items()}
    if not any(lists.values()):
        return tokens.parent, split_rows(rows, options)
    out = {}
    for name, files in lists.items():
        if files:
            wanted = set(read_text(files[0]).split())
            out[name] = Rows({ref: caps for ref, caps in rows.captions.items() if ref in wanted})
    out.setdefault("train", Rows()).skipped = rows.skipped
    return tokens.parent, {k: v for k, v in out.items() if v.captions}
