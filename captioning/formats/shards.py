"""webdataset tar shards as img2dataset writes them (`00000.tar` holding `000000001.jpg` + `.txt`, optional `.json`),
read without unpacking: a scan of each shard's headers finds every image's place, and an image is read from
there when it is needed (`ShardMember.read_bytes`).

Standard library only, not the `webdataset` package: the scan below reads headers and caption members, never
seeks into image data, and bounds every header it reads. `tarfile` reads a pax header's whole declared body into
memory, and webdataset's default decoders unpickle `.pyd`/`.pickle` members, which a caption set from the web
must not be able to make us do. Splits: `train/`, `val/`... subfolders of shards where the set has them, else a
seeded held-out fraction by sample name. Under torchrun each rank extracts whole shards of its own
(`features.build_cache`).
"""

from __future__ import annotations

import functools
import json
import warnings
from pathlib import Path
from typing import NamedTuple

from captioning.data import CocoSplit, DatasetError, SkippedImagesWarning, read_ids_file
from captioning.formats.common import IMAGE_SUFFIXES, ReadOptions, Rows, split_rows, stable_id
from captioning.formats.table import SPLIT_NAMES

BLOCK = 512
MAX_IMAGE_BYTES = 50_000_000  # one image member; larger ones are skipped and counted
MAX_TEXT_BYTES = 65_536  # a caption (.txt/.json) member, a pax or GNU long-name header
MAX_SHARDS = 100_000  # CC3M is 576 shards, LAION-400M about 41,000


class ShardMember(NamedTuple):
    """An image inside a shard: where its bytes are. Loaders read it like a file (`name`, `read_bytes`)."""

    shard: str
    offset: int
    size: int
    key: str

    @property
    def name(self) -> str:
        return f"{Path(self.shard).name}:{self.key}"

    @property
    def suffix(self) -> str:
        return Path(self.key).suffix

    def read_bytes(self) -> bytes:
        with open(self.shard, "rb") as f:
            f.seek(self.offset)
            data = f.read(self.size)
        if len(data) != self.size:
            raise OSError(f"{self.name} is cut short")
        return data


class ShardError(ValueError):
    """A shard that cannot be read further; what was read before stays."""


def shard_files(path: Path) -> list[Path]:
    """The shards of a `.tar` file or of a folder (its `.tar` files, not recursive)."""
    path = Path(path)
    if path.is_file():
        return [path] if path.suffix == ".tar" else []
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if p.suffix == ".tar" and p.is_file())[: MAX_SHARDS + 1]


def looks_like(path: Path) -> bool:
    return bool(shard_files(path) or _split_folders(path))


def _split_folders(path: Path) -> dict[str, Path]:
    if not Path(path).is_dir():
        return {}
    return {SPLIT_NAMES[p.name.lower()]: p for p in sorted(Path(path).iterdir())
            if p.is_dir() and p.name.lower() in SPLIT_NAMES and shard_files(p)}  # fmt: skip


def members(shard: Path):
    """(name, data offset, size) of each regular file in `shard`, from its headers alone. ShardError where the
    archive is damaged, cut short, or holds a header beyond the bounds."""
    with open(shard, "rb") as f:
        end = f.seek(0, 2)
        offset, long_name = 0, None
        while offset + BLOCK <= end:
            f.seek(offset)
            block = f.read(BLOCK)
            if block == bytes(BLOCK):
                return
            if _checksum(block) != _octal(block[148:156]):
                raise ShardError(f"a damaged header at byte {offset}")
            size, kind = _size(block), block[156:157]
            data, offset = offset + BLOCK, offset + BLOCK + -(-size // BLOCK) * BLOCK
            if offset > end:
                raise ShardError("it is cut short")
            name = _name(block)
            if kind in (b"L", b"x"):
                if size > MAX_TEXT_BYTES:
                    raise ShardError(f"a {size:,}-byte header at byte {data - BLOCK}")
                body = f.read(size)
                long_name = body.rstrip(b"\0") if kind == b"L" else _pax_path(body)
                continue
            if long_name is not None:
                name, long_name = long_name, None
            if kind in (b"0", b"\0", b"7"):
                yield name.decode("utf-8", "replace"), data, size


def _octal(field: bytes) -> int:
    text = field.rstrip(b"\0 ").strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        return -1


def _size(block: bytes) -> int:
    if block[124] & 0x80:  # GNU base-256 for members over 8 GB
        return int.from_bytes(block[125:136], "big")
    size = _octal(block[124:136])
    if size < 0:
        raise ShardError("a header with an unreadable size")
    return size


def _checksum(block: bytes) -> int:
    return sum(block[:148]) + 8 * 32 + sum(block[156:])


def _name(block: bytes) -> bytes:
    name = block[:100].split(b"\0")[0]
    if block[257:262] == b"ustar" and block[345]:
        name = block[345:500].split(b"\0")[0] + b"/" + name
    return name


def _pax_path(body: bytes) -> bytes | None:
    for record in body.split(b"\n"):
        _, _, item = record.partition(b" ")
        key, _, value = item.partition(b"=")
        if key == b"path":
            return value
    return None


def _read_text(shard: Path, offset: int, size: int) -> str | None:
    if size > MAX_TEXT_BYTES:
        return None
    with open(shard, "rb") as f:
        f.seek(offset)
        try:
            return f.read(size).decode("utf-8-sig")
        except UnicodeDecodeError:
            return None


def scan(shard: Path) -> tuple[dict[str, ShardMember], Rows, int]:
    """One shard's images (sample key -> member), their captions by sample key, and the damaged or oversized
    samples skipped. A sample is the members sharing a name up to the first dot of the file name, as webdataset
    groups them; its captions are the `.txt` lines, else the `.json`'s "caption"."""
    images, texts, skipped = {}, {}, 0
    try:
        for name, offset, size in members(shard):
            folder, _, file = name.rpartition("/")
            stem, dot, ext = file.partition(".")
            key, ext = (f"{folder}/{stem}" if folder else stem), f"{dot}{ext}".lower()
            if ext in IMAGE_SUFFIXES:
                if size > MAX_IMAGE_BYTES or key in images:
                    skipped += 1
                    continue
                images[key] = ShardMember(str(shard), offset, size, name)
            elif ext in (".txt", ".json"):
                texts.setdefault(key, {})[ext] = (offset, size)
    except ShardError as exc:
        warnings.warn(f"{shard.name}: {exc}; the samples after it were skipped", SkippedImagesWarning, stacklevel=2)
        skipped += 1
    rows = Rows()
    for key, found in texts.items():
        if key not in images:
            rows.skipped += 1
            continue
        for caption in _captions(shard, found):
            rows.add(key, caption)
    return images, rows, skipped + len(images.keys() - rows.captions.keys())


def _captions(shard: Path, found: dict) -> list:
    if ".txt" in found:
        text = _read_text(shard, *found[".txt"])
        return [line for line in text.splitlines() if line.strip()] if text is not None else [None]
    text = _read_text(shard, *found[".json"])
    try:
        caption = json.loads(text).get("caption") if text is not None else None
    except (ValueError, AttributeError, RecursionError):
        caption = None
    return [caption]


def _stamp(path: Path) -> tuple:
    """What a re-read depends on: every shard's size and modification time."""
    shards = [p for folder in (_split_folders(path) or {"": path}).values() for p in shard_files(folder)]
    return tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in shards)


@functools.lru_cache(maxsize=2)
def _read(path: str, options: ReadOptions, stamp: tuple) -> dict[str, tuple[dict[str, ShardMember], Rows]]:
    root = Path(path)
    folders = _split_folders(root)
    if len(stamp) > MAX_SHARDS:
        raise DatasetError(f"{root.name} holds more than {MAX_SHARDS:,} shards")
    out = {}
    for split, folder in (folders or {"": root}).items():
        images, rows = {}, Rows()
        for shard in shard_files(folder):
            found, part, skipped = scan(shard)
            prefix = shard.relative_to(root if root.is_dir() else root.parent).as_posix()
            images.update({f"{prefix}/{k}": m for k, m in found.items()})
            rows.captions.update({f"{prefix}/{k}": c for k, c in part.captions.items()})
            rows.skipped += part.skipped + skipped
        for name, part in (split_rows(rows, options) if split == "" else {split: rows}).items():
            out[name] = (images, part)
    return out


def split_names(path: Path, options: ReadOptions = ReadOptions()) -> list[str]:
    return sorted(_read(str(Path(path).resolve()), options, _stamp(Path(path))))


def open_split(path: Path, split: str, options: ReadOptions = ReadOptions(), ids_file: Path | None = None) -> CocoSplit:
    """One split of the shards at `path`: ids from each sample's shard and key, files are `ShardMember`s in shard
    order (so a reader goes through each shard front to back)."""
    path = Path(path)
    splits = _read(str(path.resolve()), options, _stamp(path))
    if split not in splits:
        raise DatasetError(f"{path.name} (webdataset) has no split {split!r} (splits: {', '.join(splits) or 'none'})")
    images, rows = splits[split]
    if rows.skipped:
        warnings.warn(f"{path.name} (webdataset, {split}): {rows.skipped} sample(s) without an image or a caption "
                      "skipped", SkippedImagesWarning, stacklevel=2)  # fmt: skip
    files = {stable_id(ref): images[ref] for ref in rows.captions}
    captions = {stable_id(ref): caps for ref, caps in rows.captions.items()}
    if not files:
        raise DatasetError(f"split {split} of {path.name} (webdataset) has no images with captions")
    ids = sorted(files, key=lambda i: (files[i].shard, files[i].offset))
    if ids_file is not None:
        wanted = set(read_ids_file(ids_file))
        unknown = wanted - files.keys()
        if unknown:
            raise DatasetError(f"{len(unknown)} id(s) in {ids_file} are not in split {split}: {sorted(unknown)[:5]}")
        ids = [i for i in ids if i in wanted]
    root = path if path.is_dir() else path.parent
    return CocoSplit(root, split, ids, files, captions)
