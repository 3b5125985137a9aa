"""COCO caption splits, robust image loading and caption batching.

A COCO root holds splits: split NAME is `annotations/captions_NAME.json` plus the folder `NAME/`.
That reads the official layout (`train2017`, `val2017`) and the project's sample (`train`, `val`).
"""

from __future__ import annotations

import contextlib
import io
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from captioning.decodebudget import DECODES, DecodeBusyError
from captioning.imagefile import ImageLoadError, open_checked
from captioning.io import read_json

IMAGE_TYPES = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")  # the file types the app offers
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")  # what PIL may decode them as (JPEG includes MPO)
MAX_IDS_BYTES = 16_000_000  # an ids file of every COCO image is about 1 MB
MAX_PIXELS = 40_000_000  # larger images are refused: decoding them could exhaust memory
DRAFT_SIDE = 2048  # a JPEG with a short side of twice this is decoded smaller, never below it (COCO is <= 640)
SAMPLE_ROOT = Path(__file__).resolve().parent / "sample"  # the embedded COCO sample: 150 train, 60 val
DOWNLOAD_HINT = "python -m captioning download --dest {root} --split val2017"


class DatasetError(ValueError):
    """A COCO root or split that cannot be read; the message says what to do."""


class SkippedImagesWarning(UserWarning):
    """Some images of a split were missing or unreadable and were left out."""


def warn_skipped(what: str, names: list[str], reason: str) -> None:
    """One warning that counts the skipped images and names the first few."""
    if names:
        first = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        warnings.warn(
            f"{len(names)} image(s) of {what} {reason} and were skipped: {first}", SkippedImagesWarning, stacklevel=2
        )


def load_image(source: Path | str | bytes | io.BytesIO, name: str | None = None) -> Image.Image:
    """Open an image file or bytes as an upright RGB PIL image.

    Only the formats the app offers are read (`IMAGE_FORMATS`: never EPS or another format whatever the file's
    name says), up to MAX_PIXELS, first frame of an animation, if its structure bounds the work (`imagefile`) and
    when the process's budget has room (`decodebudget`); a JPEG of a short side over 2 x DRAFT_SIDE is decoded at
    1/2-1/8 scale. Applies the EXIF orientation; converts grayscale, CMYK, palette, alpha and 16-bit images to
    8-bit RGB (transparent areas on white). Raises ImageLoadError with a clear reason, which calls the image `name`
    (default: its path, else "the uploaded file").
    """
    if not isinstance(source, (str, Path, bytes, io.BytesIO)):  # an image inside a shard (formats.shards)
        name = name or source.name
        try:
            source = source.read_bytes()
        except OSError as exc:
            raise ImageLoadError(f"{name} cannot be read ({exc})") from None
    name = name or (str(source) if isinstance(source, (str, Path)) else "the uploaded file")
    with open_checked(source, name) as fp:
        return _decode(fp, name)


def _decode(source, name: str) -> Image.Image:
    """The first frame of the checked file `source`, decoded within the process's budget, as RGB."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(source, formats=IMAGE_FORMATS)
            try:
                w, h = image.size
                if w * h > MAX_PIXELS:
                    raise ImageLoadError(
                        f"{name} is too large to decode safely ({w}x{h} pixels; the limit is "
                        f"{MAX_PIXELS // 1_000_000} megapixels)"
                    )
                with DECODES.hold(w * h):
                    if image.format in ("JPEG", "MPO") and min(w, h) >= 2 * DRAFT_SIDE:
                        image.draft(None, (DRAFT_SIDE, DRAFT_SIDE))  # libjpeg scales by 1/2-1/8 as it decodes
                    image.load()
                    return to_rgb(image)
            finally:
                image.close()  # PIL keeps a file open otherwise; to_rgb made a copy
    except ImageLoadError:
        raise
    except DecodeBusyError as exc:
        raise ImageLoadError(f"{name} was not decoded: {exc}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageLoadError(f"{name} is too large to decode safely") from None
    except Exception as exc:  # PIL raises many types for corrupt data
        reason = (
            "not an image this app can read (JPG, PNG, WebP, BMP, GIF or TIFF)"
            if "cannot identify" in str(exc)
            else f"corrupt or truncated ({type(exc).__name__}: {str(exc)[:200]})"
        )
        raise ImageLoadError(f"{name} is {reason}") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> upright 8-bit RGB."""
    image = ImageOps.exif_transpose(image) or image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(image, dtype=np.float32)
        top = 65535.0 if image.mode.startswith("I;16") or arr.max() > 255 else 255.0
        image = Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")


def split_paths(root: Path, split: str) -> tuple[Path, Path]:
    """(annotation file, image folder) of a split."""
    root = Path(root)
    return root / "annotations" / f"captions_{split}.json", root / split


def available_splits(root: Path) -> list[str]:
    """Split names under `root` that have both an annotation file and an image folder."""
    ann = Path(root) / "annotations"
    names = [p.stem.removeprefix("captions_") for p in sorted(ann.glob("captions_*.json"))]
    return [n for n in names if (Path(root) / n).is_dir()]


def read_ids_file(path: Path) -> list[int]:
    """Image ids, one per line or a JSON list; DatasetError for a special file, a huge one or bad content."""
    path = Path(path)
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise DatasetError(f"ids file {path} is not a regular file")
        if info.st_size > MAX_IDS_BYTES:
            raise DatasetError(f"ids file {path} is too large ({info.st_size:,} bytes; at most {MAX_IDS_BYTES:,})")
        with open(path, "rb") as f:
            data = f.read(MAX_IDS_BYTES + 1)
    except OSError as exc:
        raise DatasetError(f"cannot read ids file {path} ({exc.strerror or exc})") from None
    return parse_ids(data, str(path))


def parse_ids(data: bytes, name: str = "the ids file") -> list[int]:
    """Image ids from text: whitespace-separated numbers or a JSON list of them."""
    if len(data) > MAX_IDS_BYTES:
        raise DatasetError(f"{name} is too large (at most {MAX_IDS_BYTES:,} bytes)")
    try:
        text = data.decode("utf-8").strip()
        values = read_json(text) if text.startswith("[") else text.split()
    except (UnicodeDecodeError, ValueError):
        raise DatasetError(
            f"{name} must hold image ids, one per line or a JSON list; it is not readable text"
        ) from None
    ids = []
    for k, value in enumerate(values if isinstance(values, list) else [values], start=1):
        if isinstance(value, str) and value.isascii() and value.isdigit():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:  # not echoed: it may be anything
            raise DatasetError(
                f"{name} must hold image ids (whole numbers), one per line or a JSON list; entry {k} is not one"
            )
        ids.append(value)
    if not ids:
        raise DatasetError(f"{name} holds no image ids")
    return ids


@dataclass
class CocoSplit:
    """The images and reference captions of one split, read with pycocotools."""

    root: Path
    split: str
    ids: list[int]
    files: dict[int, Path]
    captions: dict[int, list[str]]

    @classmethod
    def load(cls, root: Path, split: str, ids_file: Path | None = None, check_files: bool = True) -> CocoSplit:
        """Read a split; malformed image or caption records are skipped with one warning that counts them."""
        root = Path(root)
        ann_file, image_dir = split_paths(root, split)
        if not ann_file.is_file():
            have = available_splits(root) if root.is_dir() else []
            raise DatasetError(
                f"no annotations for split {split!r}: expected {ann_file}"
                + (f" (splits here: {', '.join(have)})" if have else "")
                + f". To fetch COCO: {DOWNLOAD_HINT.format(root=root)}"
            )
        coco = read_coco(ann_file)
        ids = sorted(coco.imgs)
        if ids_file is not None:
            wanted = read_ids_file(ids_file)
            unknown = [i for i in wanted if i not in coco.imgs]
            if unknown:
                raise DatasetError(f"{len(unknown)} id(s) in {ids_file} are not in split {split}: {unknown[:5]}")
            ids = sorted(set(wanted))
        files = {i: image_dir / coco.imgs[i]["file_name"] for i in ids}
        captions = {i: [a["caption"].strip() for a in coco.imgToAnns.get(i, [])] for i in ids}
        ids = [i for i in ids if captions[i]]
        if check_files:
            missing = {i for i in ids if not files[i].is_file()}
            warn_skipped(f"split {split}", [files[i].name for i in sorted(missing)], "are missing")
            ids = [i for i in ids if i not in missing]
        if not ids:
            raise DatasetError(f"split {split} under {root} has no images with captions on disk")
        return cls(root, split, ids, files, captions)

    def __len__(self) -> int:
        return len(self.ids)

    def all_captions(self) -> list[str]:
        return [c for i in self.ids for c in self.captions[i]]


def read_coco(ann_file: Path):
    """pycocotools' index of a captions file whose malformed records were dropped (counted in one warning)."""
    from pycocotools.coco import COCO

    try:
        with open(ann_file, "rb") as f:
            data = read_json(f.read())
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{ann_file} is not a COCO captions file ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(f"{ann_file} is not a COCO captions file (no 'images' list)")
    images = [im for im in data["images"] if _good_image(im)]
    known = {im["id"] for im in images}
    anns = [a for a in data.get("annotations") or [] if _good_caption(a, known)]
    bad_images, bad_anns = len(data["images"]) - len(images), len(data.get("annotations") or []) - len(anns)
    if bad_images or bad_anns:
        warnings.warn(
            f"{ann_file.name}: skipped {bad_images} malformed image record(s) and {bad_anns} malformed or orphan "
            "caption(s) (each needs an integer id; an image a plain file_name, a caption its image_id and text)",
            SkippedImagesWarning,
            stacklevel=3,
        )
    coco = COCO()
    coco.dataset = {**data, "images": images, "annotations": anns}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _good_image(image) -> bool:
    name = image.get("file_name") if isinstance(image, dict) else None
    plain = isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name and "\\" not in name
    return plain and _is_int(image.get("id"))


def _good_caption(ann, known: set[int]) -> bool:
    return (
        isinstance(ann, dict)
        and isinstance(ann.get("caption"), str)
        and bool(ann["caption"].strip())
        and _is_int(ann.get("image_id"))
        and ann["image_id"] in known
        and _is_int(ann.get("id"))
    )


def collate_captions(
    batch: list[tuple[torch.Tensor, list[int]]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack inputs and pad captions, longest first.

    Args:
        batch: (input tensor, caption ids starting with <start> and ending with <end>) pairs;
            an input may be an image (3, S, S) or cached features (C,) / (N, C).
    Returns:
        inputs (B, ...), captions (B, T) padded with 0 (`<pad>`), lengths (B,).
    """
    batch = sorted(batch, key=lambda item: len(item[1]), reverse=True)
    inputs = torch.stack([x for x, _ in batch])
    lengths = torch.tensor([len(c) for _, c in batch], dtype=torch.long)
    captions = torch.zeros(len(batch), int(lengths.max()), dtype=torch.long)
    for row, (_, cap) in enumerate(batch):
        captions[row, : len(cap)] = torch.as_tensor(cap, dtype=torch.long)
    return inputs, captions, lengths
