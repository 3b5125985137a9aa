"""Caption datasets in every common layout, read into one shape: named splits of image id -> file and captions.

`open_split(path, split, fmt="auto")` gives a `CocoSplit` (the one split type the rest of the package reads)
from a COCO root, Flickr8k/30k token files, Karpathy's dataset JSON, a CSV/TSV, a folder of images with `.txt`
sidecars, Hugging Face's imagefolder layout or webdataset tar shards. A new format is one module with a
`read(path, options)` that returns rows per split, and a line in READERS.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from captioning.data import CocoSplit, DatasetError, read_ids_file
from captioning.data import available_splits as coco_splits
from captioning.formats import flickr, folder, karpathy, shards, table
from captioning.formats.common import ImageFinder, ReadOptions, Rows, to_split

__all__ = ["FORMATS", "ReadOptions", "detect", "open_split", "split_names"]

Reader = Callable[[Path, ReadOptions], tuple[Path, dict[str, Rows]]]
# format -> (does `path` look like it, its reader); COCO (CocoSplit) and shards (their images are no files) read
# themselves
READERS: dict[str, tuple[Callable[[Path], object], Reader | None]] = {
    "coco": (lambda p: p.is_dir() and bool(coco_splits(p)), None),
    "flickr": (flickr.token_file, flickr.read),
    "karpathy": (karpathy.dataset_file, karpathy.read),
    "csv": (table.table_file, table.read),
    "imagefolder": (folder.metadata_files, folder.read_imagefolder),
    "folder": (folder.has_sidecars, folder.read_sidecars),
    "webdataset": (shards.looks_like, None),
}
FORMATS = ("auto", *READERS)
GENERIC = ("csv", "folder")  # a named layout (a COCO root, a token file...) wins over a stray CSV or sidecars


def detect(path: Path) -> str:
    """The format of the dataset at `path`; DatasetError when none fits or several could (it names them)."""
    path = Path(path)
    if not path.exists():
        return "coco"  # whose reader says what is missing and how to download COCO
    fits = [name for name, (looks, _) in READERS.items() if _looks(looks, path)]
    named = [f for f in fits if f not in GENERIC]
    fits = ["coco"] if "coco" in fits else named or fits  # a COCO root with a tar beside it is still COCO
    if len(fits) == 1:
        return fits[0]
    if not fits:
        raise DatasetError(
            f"{path.name} is not a caption dataset this studio reads ({', '.join(READERS)}); see README: Your own data"
        )
    raise DatasetError(f"{path.name} could be read as {' or '.join(fits)}: say which with --format")


def _looks(looks: Callable[[Path], object], path: Path) -> bool:
    try:
        return bool(looks(path))
    except OSError:
        return False


def split_names(path: Path, fmt: str = "auto", options: ReadOptions = ReadOptions()) -> list[str]:
    """The splits the dataset at `path` has (for COCO, those with their image folder)."""
    fmt = detect(path) if fmt == "auto" else fmt
    if fmt == "coco":
        return coco_splits(Path(path))
    if fmt == "webdataset":
        return shards.split_names(Path(path), options)
    return sorted(_rows(str(Path(path).resolve()), fmt, options, _stamp(Path(path)))[1])


def open_split(
    path: Path, split: str, fmt: str = "auto", options: ReadOptions = ReadOptions(), ids_file: Path | None = None
) -> CocoSplit:
    """One split of the dataset at `path`, restricted to the ids in `ids_file` when given."""
    path = Path(path)
    fmt = detect(path) if fmt == "auto" else fmt
    if fmt not in READERS:
        raise DatasetError(f"format must be one of: {', '.join(FORMATS)} (got {fmt!r})")
    if fmt == "coco":
        return CocoSplit.load(path, split, ids_file)
    if fmt == "webdataset":
        return shards.open_split(path, split, options, ids_file)
    base, splits = _rows(str(path.resolve()), fmt, options, _stamp(path))
    if split not in splits:
        raise DatasetError(
            f"{path.name} ({fmt}) has no split {split!r} (splits: {', '.join(sorted(splits)) or 'none'})"
        )
    root = path if path.is_dir() else path.parent
    found = to_split(root, split, splits[split], ImageFinder(root, base), f"{path.name} ({fmt})")
    if ids_file is not None:
        wanted = read_ids_file(ids_file)
        unknown = [i for i in wanted if i not in found.files]
        if unknown:
            raise DatasetError(f"{len(unknown)} id(s) in {ids_file} are not in split {split}: {unknown[:5]}")
        found.ids = sorted(set(wanted))
    return found


def _stamp(path: Path) -> tuple[int, int]:
    """What a re-read depends on: the caption file's (or folder's) modification time and size."""
    info = path.stat()
    return info.st_mtime_ns, info.st_size


@functools.lru_cache(maxsize=4)
def _rows(path: str, fmt: str, options: ReadOptions, stamp: tuple[int, int]) -> tuple[Path, dict[str, Rows]]:
    """Every split's rows, read once per (dataset, format, options, modification): train and val share them."""
    try:
        return READERS[fmt][1](Path(path), options)
    except ValueError as exc:
        raise DatasetError(str(exc)) from None
    except (TypeError, AttributeError):
        raise DatasetError(f"{Path(path).name} is not a {fmt} dataset") from None
