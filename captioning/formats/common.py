"""What every caption-format reader shares: stable image ids, safe image lookup, bounded text reading, and the
step from (image, caption) rows to a split."""

from __future__ import annotations

import hashlib
import stat
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from captioning.data import CocoSplit, DatasetError, SkippedImagesWarning, warn_skipped

MAX_CAPTION_FILE = 1_000_000_000  # bytes of one caption file (Karpathy's dataset_coco.json is about 150 MB)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# Where a caption file's bare image names are looked up, after its own folder (the official and Kaggle layouts)
IMAGE_FOLDERS = ("Images", "images", "Flicker8k_Dataset", "flickr30k_images")


@dataclass(frozen=True)
class ReadOptions:
    """How a dataset is read where its format leaves a choice."""

    image_column: str | None = None  # CSV/TSV/metadata column of the image (None: the usual names)
    caption_column: str | None = None  # and of the caption
    val_fraction: float = 0.1  # held out as `val` where the format has no splits (by a hash of the name: stable)
    seed: int = 0


def stable_id(name: str) -> int:
    """An image's id from its path in the dataset: the same on every read, whatever else the dataset holds."""
    return int.from_bytes(hashlib.sha1(name.encode("utf-8")).digest()[:6], "big")  # 48 bits: exact in JSON


def _draw(name: str, options: ReadOptions) -> float:
    """A seeded hash of an image's name in [0, 1): below val_fraction it is held out (adding images moves none)."""
    return int.from_bytes(hashlib.sha1(f"{options.seed}:{name}".encode()).digest()[:8], "big") / 2**64


def read_text(path: Path) -> str:
    """A caption file's text (UTF-8, a BOM dropped); DatasetError for a special, huge or non-UTF-8 file."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_CAPTION_FILE:
            raise DatasetError(f"{path.name} is not a regular file of at most {MAX_CAPTION_FILE:,} bytes")
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path.name} is not UTF-8 text (byte {exc.start} cannot be read)") from None
    except OSError as exc:
        raise DatasetError(f"{path.name} cannot be read ({type(exc).__name__})") from None


class ImageFinder:
    """Image references of a caption file -> files inside the dataset's folder, never outside it."""

    def __init__(self, root: Path, base: Path | None = None) -> None:
        self.root = Path(root).resolve()
        self.base = Path(base or root).resolve()  # the caption file's folder

    def find(self, ref: str) -> Path | None:
        """The file `ref` names, or None: bare names in the caption file's folder, then in IMAGE_FOLDERS; a path
        with folders relative to the caption file's folder. Absolute paths and escapes (`..`, links out) are
        None."""
        ref = ref.strip().replace("\\", "/")
        if not ref or ref.startswith("/") or "\0" in ref or ":" in ref.split("/")[0]:
            return None
        places = [self.base / ref] if "/" in ref else [self.base / ref, *(self.base / d / ref for d in IMAGE_FOLDERS)]
        for place in places:
            try:
                path = place.resolve()
            except (OSError, RuntimeError):
                continue
            if path.is_relative_to(self.root) and path.is_file():
                return path
        return None


@dataclass
class Rows:
    """(image reference, caption) rows of one split as a reader collects them, and what it skipped."""

    captions: dict[str, list[str]] = field(default_factory=dict)  # image reference -> its captions
    skipped: int = 0  # malformed rows

    def add(self, ref: str, caption: object) -> None:
        if isinstance(ref, str) and ref.strip() and isinstance(caption, str) and caption.strip():
            self.captions.setdefault(ref.strip(), []).append(" ".join(caption.split()))
        else:
            self.skipped += 1


def to_split(root: Path, name: str, rows: Rows, finder: ImageFinder, source: str) -> CocoSplit:
    """A split of the images `rows` names that are in the dataset's folder; the rest counted in one warning."""
    files, captions, missing = {}, {}, []
    for ref, caps in rows.captions.items():
        path = finder.find(ref)
        if path is None:
            missing.append(Path(ref).name)
            continue
        image_id = stable_id(path.relative_to(finder.root).as_posix())
        files[image_id] = path
        captions.setdefault(image_id, []).extend(caps)
    if rows.skipped:
        warnings.warn(f"{source} ({name}): {rows.skipped} malformed row(s) skipped", SkippedImagesWarning, stacklevel=2)
    warn_skipped(f"{source} ({name})", missing, "are missing or outside the dataset's folder")
    if not files:
        raise DatasetError(f"split {name} of {source} has no images with captions in its folder")
    return CocoSplit(Path(root), name, sorted(files), files, captions)


def split_rows(rows: Rows, options: ReadOptions) -> dict[str, Rows]:
    """`train` and a held-out `val` (ReadOptions.val_fraction) for a format without splits of its own."""
    out = {"train": Rows(skipped=rows.skipped), "val": Rows()}
    draws = {ref: _draw(ref, options) for ref in rows.captions}
    lowest = min(draws, key=draws.get) if len(draws) > 1 and options.val_fraction > 0 else None
    for ref, caps in rows.captions.items():  # a small set still holds out its lowest draw
        out["val" if draws[ref] < options.val_fraction or ref == lowest else "train"].captions[ref] = caps
    return {k: v for k, v in out.items() if v.captions}


def image_files(folder: Path) -> Iterable[Path]:
    """The image files under `folder`, recursively, in a stable order (links that leave it are skipped)."""
    root = folder.resolve()
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and path.resolve().is_relative_to(root):
            yield path
