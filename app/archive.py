"""A dataset archive a visitor uploads (zip, tar or tar.gz), unpacked safely, checked, and stored in the data folder.

`store_archive(upload, name, data_dir())` writes every member itself into `<dest>/.incoming-XXXX`, counting real
bytes against the limits below as they arrive, reads the dataset there with `captioning.formats`, decodes its
captioned images, and only then renames it to `<dest>/<name>`. Whatever is refused leaves nothing behind, and no
existing dataset is ever replaced. The Fine-tune page shows `ArchiveReport.lines()` or the ArchiveError's message.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import re
import shutil
import stat
import tempfile
import threading
import time
import unicodedata
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from captioning import formats
from captioning.checkpoint import _directory_size
from captioning.data import SkippedImagesWarning, load_image
from captioning.formats.common import image_files
from captioning.formats.table import SPLIT_NAMES

MAX_ARCHIVE_BYTES = 200_000_000  # the upload itself
MAX_MEMBERS = 20_000  # files and folders in it
MAX_TOTAL_BYTES = 2_000_000_000  # all files unpacked
MAX_MEMBER_BYTES = 50_000_000  # one file unpacked (readers hold a caption file in memory)
MAX_RATIO = 100  # unpacked : packed, for a zip member and for the whole archive (a compression bomb beyond)
RATIO_FLOOR = 1_000_000  # unpacked bytes below which no ratio is checked: a small text file packs 100:1
MAX_DEPTH = 16  # folders in a member's path
MAX_PATH_BYTES = 400  # a member's path, UTF-8
MAX_HEADER_BYTES = 65_536  # a tar pax or GNU long-name header (as captioning.formats.shards)
DIRECTORY_BYTES = 512  # a zip record (46 bytes), its name and extra fields; the list is checked before parsing
MAX_NAME = 40  # characters of a dataset's folder name
CHECK_SECONDS = 120.0  # decoding the captioned images stops here; the rest are reported unchecked
STALE_SECONDS = 86_400  # an `.incoming-*` folder this old was left by a crash and is removed
NAMED = 5  # names shown per report line
CHUNK = 1 << 18
BLOCK = 512
JUNK = (".DS_Store", "Thumbs.db", "desktop.ini")  # and `__MACOSX/`, `._*`: what zipping on a Mac or Windows adds
_TAR_KINDS = {b"1": "a hard link", b"2": "a symbolic link", b"3": "a device", b"4": "a device", b"6": "a FIFO"}
_READING = threading.Lock()  # catch_warnings swaps process-wide state: one upload's reading at a time


class ArchiveError(ValueError):
    """An upload that was refused; the one-line message says why (and the limit where one was passed)."""


@dataclass(frozen=True)
class SplitReport:
    """One split as the readers found it."""

    name: str
    images: int  # with captions, in the archive
    captions: int
    missing: int = 0  # images the captions name that the archive does not hold
    missing_names: tuple[str, ...] = ()  # the first few
    malformed: int = 0  # caption rows or records skipped
    notes: tuple[str, ...] = ()  # anything else the readers said, or why the split could not be read


@dataclass(frozen=True)
class ArchiveReport:
    """What was stored, for the page: `lines()`."""

    name: str  # the dataset's folder name
    path: Path
    format: str
    splits: tuple[SplitReport, ...]
    files: int
    bytes: int
    junk: int = 0  # system files left out
    uncaptioned: int = 0  # image files no caption names
    uncaptioned_names: tuple[str, ...] = ()
    unreadable: int = 0  # captioned images that do not decode
    unreadable_reasons: tuple[str, ...] = ()
    unchecked: int = 0  # captioned images not decoded within CHECK_SECONDS

    def lines(self) -> list[str]:
        out = [f"Stored as {self.name} ({self.format} format): {self.files:,} files, {self.bytes / 1e6:,.1f} MB."]
        for s in self.splits:
            out.append(f"Split {s.name}: {s.images:,} images, {s.captions:,} captions.")
            if s.missing:
                names = _few(s.missing_names, s.missing)
                out.append(f"Split {s.name}: {s.missing:,} captioned image(s) not in the archive: {names}.")
            if s.malformed:
                out.append(f"Split {s.name}: {s.malformed:,} malformed caption row(s) skipped.")
            out += [f"Split {s.name}: {note}" for note in s.notes]
        if self.uncaptioned:
            names = _few(self.uncaptioned_names, self.uncaptioned)
            out.append(f"{self.uncaptioned:,} image(s) without captions: {names}.")
        if self.unreadable:
            why = _few(self.unreadable_reasons, self.unreadable, "; ")
            out.append(f"{self.unreadable:,} image(s) cannot be read and will be skipped: {why}.")
        if self.unchecked:
            out.append(f"{self.unchecked:,} image(s) were not checked (the check stops after {CHECK_SECONDS:.0f} s).")
        if self.junk:
            out.append(f"{self.junk:,} system file(s) left out (__MACOSX, .DS_Store, Thumbs.db, ._*).")
        return out


def dataset_name(name: str) -> str:
    """The folder an upload called `name` is stored as: lowercase ASCII letters, digits, `-` and `_`, at most
    MAX_NAME long ("Flickr 8k (mine)" -> "flickr-8k-mine"); ArchiveError for a name with none of them."""
    text = unicodedata.normalize("NFKD", name[:1000] if isinstance(name, str) else "")
    slug = re.sub(r"[^a-z0-9_-]+", "-", text.encode("ascii", "ignore").decode().lower())
    slug = re.sub(r"-{2,}", "-", slug).strip("-_")[:MAX_NAME].rstrip("-_")
    if not slug:
        raise ArchiveError("name the dataset with letters or digits, e.g. flickr8k-mine")
    return slug


def store_archive(upload: bytes | BinaryIO, name: str, dest: Path) -> ArchiveReport:
    """Unpack, check and store an uploaded dataset archive as `dest/<dataset_name(name)>`.

    Args:
        upload: the archive's bytes or a binary file (Streamlit's UploadedFile).
        name: what the visitor called the dataset.
        dest: the data folder (`app.catalog.data_dir()`).
    Returns:
        the report of what was stored. Raises ArchiveError (one line) for anything refused, leaving `dest` as it was.
    """
    slug = dataset_name(name)
    dest, final = Path(dest), Path(dest) / slug
    if os.path.lexists(final):
        raise ArchiveError(f"a dataset named {slug} exists already: choose another name")
    fp, size = _opened(upload)
    try:
        dest.mkdir(parents=True, exist_ok=True)
        _sweep(dest)
        tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=dest))
    except OSError as exc:
        raise ArchiveError(f"cannot write to the data folder ({exc.strerror})") from None
    try:
        tally = _unpack(fp, size, tmp / slug)
        root = _dataset_root(tmp / slug, tally).resolve()
        report = _inspect(root, slug, final, tally)
        _claim(root, final)
        return report
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # holds no links: we wrote every entry


def _opened(upload: bytes | BinaryIO) -> tuple[BinaryIO, int]:
    """The upload as a seekable binary file, and its size (at most MAX_ARCHIVE_BYTES)."""
    if not isinstance(upload, (bytes, bytearray, memoryview)) and not callable(getattr(upload, "read", None)):
        raise ArchiveError("the upload must be an archive's bytes or a binary file")
    try:
        if isinstance(upload, (bytes, bytearray, memoryview)):
            fp = io.BytesIO(upload)
        else:
            fp = upload if upload.seekable() else io.BytesIO(upload.read(MAX_ARCHIVE_BYTES + 1))
        size = fp.seek(0, os.SEEK_END)
        fp.seek(0)
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise ArchiveError(f"the upload cannot be read ({type(exc).__name__})") from None
    if size > MAX_ARCHIVE_BYTES:
        raise ArchiveError(f"the archive is larger than {MAX_ARCHIVE_BYTES:,} bytes (the limit)")
    if not size:
        raise ArchiveError("the upload is empty")
    return fp, size


@dataclass
class _Tally:
    """What an unpack has written so far, checked against the limits as each member and chunk arrives."""

    archive_bytes: int
    members: int = 0
    files: int = 0
    bytes: int = 0
    junk: int = 0
    paths: dict[str, bool] = field(default_factory=dict)  # member path -> is a folder
    folders: set[str] = field(default_factory=set)  # every folder a path runs through

    def accept(self, name: str | bytes, kind: str, size: int) -> tuple[str, ...] | None:
        """Where the member goes (path parts), None for junk or the root folder; ArchiveError for an unsafe one."""
        self.members += 1
        if self.members > MAX_MEMBERS:
            raise ArchiveError(f"the archive holds more than {MAX_MEMBERS:,} files and folders (the limit)")
        parts = _parts(name)
        shown = _show("/".join(parts))
        if kind not in ("file", "folder"):
            raise ArchiveError(f"{shown} is {kind}: the archive may hold only files and folders")
        if size > MAX_MEMBER_BYTES:
            raise ArchiveError(f"{shown} is larger than {MAX_MEMBER_BYTES:,} bytes (the limit for one file)")
        if not parts and kind == "folder":
            return None
        if not parts or (kind == "file" and size < 0):
            raise ArchiveError("the archive has a member without a name or size")
        if "__MACOSX" in parts or parts[-1] in JUNK or parts[-1].startswith("._"):
            self.junk += 1
            return None
        path = "/".join(parts)
        if (path in self.paths and not (kind == "folder" and self.paths[path])) or (
            kind == "file" and path in self.folders
        ):
            raise ArchiveError(f"{shown} appears twice in the archive")
        for k in range(1, len(parts)):
            above = "/".join(parts[:k])
            if self.paths.get(above) is False:
                raise ArchiveError(f"{_show(above)} is both a file and a folder in the archive")
            self.folders.add(above)
        self.paths[path] = kind == "folder"
        return parts

    def grow(self, n: int, written: int, packed: int | None, shown: str) -> None:
        """Count `n` more bytes of a member (`written` so far, from `packed` bytes of the archive where known)."""
        self.bytes += n
        if written > MAX_MEMBER_BYTES:
            raise ArchiveError(f"{shown} unpacks to more than {MAX_MEMBER_BYTES:,} bytes (the limit for one file)")
        if self.bytes > MAX_TOTAL_BYTES:
            raise ArchiveError(f"the archive unpacks to more than {MAX_TOTAL_BYTES:,} bytes (the limit)")
        if packed is not None and written > RATIO_FLOOR and written > MAX_RATIO * max(packed, 1):
            raise ArchiveError(f"{shown} unpacks to over {MAX_RATIO} times its packed size (a zip bomb?; the limit)")
        if self.bytes > RATIO_FLOOR and self.bytes > MAX_RATIO * self.archive_bytes:
            raise ArchiveError(f"the archive unpacks to over {MAX_RATIO} times its size (a zip bomb?; the limit)")


def _parts(name: str | bytes) -> tuple[str, ...]:
    """A member's name as path parts inside the dataset; ArchiveError for any name that could leave it."""
    try:
        text = name.decode("utf-8") if isinstance(name, bytes) else name
        text.encode("utf-8")  # a tar name read with surrogateescape fails here
    except UnicodeError:
        raise ArchiveError("a file name in the archive is not UTF-8 text: rename it and pack again") from None
    shown = _show(text)
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ArchiveError(f"{shown} has control characters in its name")
    if "\\" in text:
        raise ArchiveError(f"{shown} has a backslash in its name (a Windows path?)")
    if text.startswith("/"):
        raise ArchiveError(f"{shown} is an absolute path: the archive may hold only relative ones")
    parts = tuple(p for p in text.split("/") if p not in ("", "."))
    if ".." in parts:
        raise ArchiveError(f"{shown} points outside the archive's folder (..)")
    if parts and ":" in parts[0]:
        raise ArchiveError(f"{shown} starts with a drive letter or a colon")
    if len(parts) - 1 > MAX_DEPTH or len(text.encode()) > MAX_PATH_BYTES or any(len(p.encode()) > 255 for p in parts):
        raise ArchiveError(f"{shown} is nested deeper than {MAX_DEPTH} folders or longer than {MAX_PATH_BYTES} bytes")
    return parts


def _unpack(fp: BinaryIO, size: int, folder: Path) -> _Tally:
    """Write the archive's files under `folder` (made here); ArchiveError for a damaged or unsafe archive."""
    head = fp.read(4)
    fp.seek(0)
    kind = "zip" if head in (b"PK\x03\x04", b"PK\x05\x06") else "tar.gz" if head[:2] == b"\x1f\x8b" else "tar"
    tally = _Tally(size)
    folder.mkdir()
    try:
        _unpack_zip(fp, size, folder, tally) if kind == "zip" else _unpack_tar(fp, kind == "tar.gz", folder, tally)
    except ArchiveError:
        raise
    except UnicodeDecodeError:  # zipfile decodes a name flagged UTF-8 strictly
        raise ArchiveError("a file name in the archive is not UTF-8 text: rename it and pack again") from None
    except Exception as exc:  # zipfile and gzip raise many kinds for damaged or crafted input; none is a crash
        if isinstance(exc, OSError) and exc.errno:  # the disk's error (full, a quota), not the archive's
            raise ArchiveError(f"cannot store the archive's files ({exc.strerror})") from None
        raise ArchiveError(f"the {kind} archive is damaged ({type(exc).__name__}: {_oneline(exc)})") from None
    return tally


def _unpack_zip(fp: BinaryIO, size: int, folder: Path, tally: _Tally) -> None:
    if _directory_size(fp, size) > MAX_MEMBERS * DIRECTORY_BYTES:  # zipfile keeps ~10x its record list in memory
        raise ArchiveError(f"the archive's list of files is over {MAX_MEMBERS * DIRECTORY_BYTES:,} bytes: more than "
                           f"{MAX_MEMBERS:,} files and folders (the limit), or very long names")  # fmt: skip
    fp.seek(0)
    with zipfile.ZipFile(fp) as archive:
        todo = []
        for info in archive.infolist():
            mode = stat.S_IFMT(info.external_attr >> 16) if info.create_system == 3 else 0  # 3: Unix keeps a type
            kind = "folder" if info.is_dir() or mode == stat.S_IFDIR else "file"
            if mode == stat.S_IFLNK:
                kind = "a symbolic link"
            elif mode not in (0, stat.S_IFREG, stat.S_IFDIR):  # 0: a zip of permissions only (Python's, Windows')
                kind = "a device or other special file"
            name = info.orig_filename if info.flag_bits & 0x800 else info.orig_filename.encode("cp437")  # raw bytes
            parts = tally.accept(name, kind, info.file_size)
            if parts is None:
                continue
            if info.flag_bits & 0x1:
                raise ArchiveError(f"{_show(info.filename)} is encrypted: pack the archive without a password")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) and kind == "file":
                raise ArchiveError(f"{_show(info.filename)} is compressed with a method other than deflate")
            todo.append((info, parts, kind))
        if sum(info.file_size for info, _, _ in todo) > MAX_TOTAL_BYTES:
            raise ArchiveError(f"the archive unpacks to more than {MAX_TOTAL_BYTES:,} bytes (the limit)")
        for info, parts, kind in todo:
            if kind == "folder":
                folder.joinpath(*parts).mkdir(parents=True, exist_ok=True)
                continue
            with archive.open(info) as src:  # counted as it inflates: the declared sizes may lie
                _write(src, folder.joinpath(*parts), tally, info.compress_size)


def _unpack_tar(fp: BinaryIO, gz: bool, folder: Path, tally: _Tally) -> None:
    """Read tar headers ourselves (not `tarfile`: it reads a pax header whole, parses it with a backtracking regex,
    and builds sparse maps of any length), front to back, from the upload or its gzip stream."""
    stream = _Stream(gzip.GzipFile(fileobj=fp, mode="rb") if gz else fp, tally.archive_bytes)
    meta: dict[str, bytes] = {}
    chain = header_bytes = 0  # extended headers before this member, and in all
    while True:
        block = stream.read(BLOCK)
        if block == bytes(len(block)):
            return  # the end marker, or the end of the data between members
        if len(block) < BLOCK or _octal(block[148:156]) not in _checksums(block):
            first = stream.pos == len(block)
            raise ArchiveError("the upload is not a zip, tar or tar.gz archive" if first
                               else "the tar archive is damaged or cut short")  # fmt: skip
        kind, size = block[156:157], _tar_size(block)
        if kind in (b"x", b"g", b"L", b"K"):  # pax, pax global, GNU long name, GNU long link name
            chain, header_bytes = chain + 1, header_bytes + size
            if size > MAX_HEADER_BYTES or chain > 8 or header_bytes > MAX_MEMBERS * 1024:  # each costs a walk
                raise ArchiveError(f"the tar archive has a header over {MAX_HEADER_BYTES:,} bytes, or too many")
            body = stream.exact(-(-size // BLOCK) * BLOCK)[:size]
            if kind == b"x":
                meta.update(_pax(body))
            elif kind == b"L":
                meta["path"] = body.rstrip(b"\0")
            continue
        if kind == b"S" or any(key.startswith("GNU.sparse") for key in meta):
            raise ArchiveError("the tar archive holds a sparse file: pack it without --sparse")
        name = meta.get("path") or _ustar_name(block)
        size = _pax_size(meta["size"]) if "size" in meta else size
        meta, chain = {}, 0
        known = "file" if kind in (b"0", b"\0", b"7") else "folder" if kind == b"5" else None
        known = "folder" if known == "file" and name.endswith(b"/") else known  # an old tar's folder
        parts = tally.accept(name, known or _TAR_KINDS.get(kind, "an unsupported kind of tar member"), size)
        left = size if known == "file" else 0  # tar stores data for regular files only
        if parts is not None and known == "folder":
            folder.joinpath(*parts).mkdir(parents=True, exist_ok=True)
        elif parts is not None:
            _write(_Member(stream, size), folder.joinpath(*parts), tally, None)  # gzip: the stream checks the ratio
            left = 0
        stream.skip(left + (-size % BLOCK if known == "file" else 0))


class _Stream:
    """A tar read front to back (inflated or not): ArchiveError once it passes the total or ratio limits, which
    also bounds what is inflated only to be skipped (junk, headers)."""

    def __init__(self, src: BinaryIO, archive_bytes: int) -> None:
        self.src, self.archive_bytes, self.pos = src, archive_bytes, 0

    def read(self, n: int) -> bytes:
        data = self.src.read(n)
        self.pos += len(data)
        if self.pos > MAX_TOTAL_BYTES + MAX_MEMBERS * 4 * BLOCK:  # headers and padding come on top of the files
            raise ArchiveError(f"the archive unpacks to more than {MAX_TOTAL_BYTES:,} bytes (the limit)")
        if self.pos > RATIO_FLOOR and self.pos > MAX_RATIO * self.archive_bytes:
            raise ArchiveError(f"the archive unpacks to over {MAX_RATIO} times its size (a zip bomb?; the limit)")
        return data

    def exact(self, n: int) -> bytes:
        data = self.read(n)
        if len(data) != n:
            raise ArchiveError("the tar archive is cut short")
        return data

    def skip(self, n: int) -> None:
        while n > 0:
            n -= len(self.exact(min(n, CHUNK)))


class _Member:
    """The next `size` bytes of a tar stream, as a file to copy from."""

    def __init__(self, stream: _Stream, size: int) -> None:
        self.stream, self.left = stream, size

    def read(self, n: int) -> bytes:
        data = self.stream.exact(min(n, self.left)) if self.left else b""
        self.left -= len(data)
        return data


def _octal(field: bytes) -> int:
    text = field.rstrip(b"\0 ").strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        return -1


def _checksums(block: bytes) -> tuple[int, int]:
    """A header's checksum as unsigned and as (old tars) signed bytes, its checksum field read as spaces."""
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    return unsigned, unsigned - 256 * sum(b > 127 for b in block[:148] + block[156:])


def _tar_size(block: bytes) -> int:
    if block[124] & 0x80:  # GNU base-256, for members over 8 GB
        return int.from_bytes(block[125:136], "big")
    return _octal(block[124:136])


def _ustar_name(block: bytes) -> bytes:
    name = block[:100].split(b"\0")[0]
    if block[257:265] == b"ustar\x0000" and block[345]:  # POSIX ustar keeps a long path's folders apart
        name = block[345:500].split(b"\0")[0] + b"/" + name
    return name


def _pax(body: bytes) -> dict[str, bytes]:
    """A pax header's records (`<length> <key>=<value>\\n`), walked by their lengths."""
    out, pos, end = {}, 0, len(body.rstrip(b"\0"))
    while pos < end:
        space = body.find(b" ", pos, pos + 12)
        length = int(body[pos:space]) if space > pos and body[pos:space].isdigit() else 0
        record = body[space + 1 : pos + length]
        if length <= 0 or pos + length > len(body) or not record.endswith(b"\n") or b"=" not in record:
            raise ArchiveError("the tar archive has a damaged pax header")
        key, _, value = record[:-1].partition(b"=")
        out[key.decode("utf-8", "replace")] = value
        pos += length
    return out


def _pax_size(value: bytes) -> int:
    if not value.isdigit() or len(value) > 20:
        raise ArchiveError("the tar archive has a damaged pax header")
    return int(value)


def _write(src: BinaryIO | _Member, target: Path, tally: _Tally, packed: int | None) -> None:
    """Copy one member into a new file of ours, in chunks, counting the bytes that really arrive."""
    shown, written = _show(target.name), 0
    target.parent.mkdir(parents=True, exist_ok=True)
    with os.fdopen(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644), "wb") as out:
        while chunk := src.read(CHUNK):
            written += len(chunk)
            tally.grow(len(chunk), written, packed, shown)
            out.write(chunk)
    tally.files += 1


def _dataset_root(folder: Path, tally: _Tally) -> Path:
    """The dataset's folder: inside the folders the archive wraps everything in (a zipped folder, or a path), down
    to a split's folder (`train/`), which is the dataset's own."""
    entries = list(folder.iterdir())
    if not entries:
        raise ArchiveError("the archive holds no files" + (f" besides {tally.junk} system files" if tally.junk else ""))
    while len(entries) == 1 and entries[0].is_dir() and entries[0].name.lower() not in SPLIT_NAMES:  # ours: no links
        folder, entries = entries[0], list(entries[0].iterdir())
    return folder


_MISSING = re.compile(r"^(\d+) image\(s\) of .* are missing.*? and were skipped: (.*)$")
_MALFORMED = re.compile(r"(\d+) (?:malformed row|sample)\(s\)")
_COCO_BAD = re.compile(r"skipped (\d+) malformed image record\(s\) and (\d+) malformed or orphan caption")


def _inspect(root: Path, slug: str, final: Path, tally: _Tally) -> ArchiveReport:
    """Read the dataset at `root` as the app will; ArchiveError where no split has images with captions, or none
    of them can be read."""
    fmt, splits, images = _read_splits(root)
    if not any(s.images for s in splits):
        first = next((s for s in splits if s.notes or s.missing), None)
        why = f": {first.notes[-1]}" if first and first.notes else ""
        if first and first.missing:
            names = _few(first.missing_names, first.missing)
            why += f"; {first.missing:,} captioned image(s) are not in the archive: {names}"
        raise ArchiveError(f"{root.name} ({fmt}) has no split with images and captions{why}")
    captioned = {image.resolve() for image in images.values() if isinstance(image, Path)}
    uncaptioned = [p.relative_to(root).as_posix() for p in image_files(root) if p.resolve() not in captioned]
    bad, unchecked = _check_images(images)
    if bad and len(bad) == len(images):
        raise ArchiveError(f"none of the {len(images):,} captioned images can be read: {bad[0]}")
    return ArchiveReport(slug, final, fmt, tuple(splits), tally.files, tally.bytes, tally.junk, len(uncaptioned),
                         tuple(uncaptioned[:NAMED]), len(bad), tuple(bad[:NAMED]), unchecked)  # fmt: skip


def _read_splits(root: Path) -> tuple[str, list[SplitReport], dict[str, object]]:
    """(format, each split's report, display name -> captioned image), counting what the readers warned of."""
    splits, images = [], {}
    with _READING, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fmt = formats.detect(root)
            names = formats.split_names(root, fmt)
        except Exception as exc:  # the readers face hostile files: whatever they raise is a refusal, not a crash
            raise ArchiveError(_said(exc, root)) from None
        for name in names:
            start, found, error = len(caught), None, None
            try:
                found = formats.open_split(root, name, fmt)
            except Exception as exc:
                error = _said(exc, root)
            said = [str(w.message) for w in caught[start:] if issubclass(w.category, SkippedImagesWarning)]
            splits.append(_split_report(name, found, said, error))
            for i in found.ids if found else ():
                image = found.files[i]
                images[image.relative_to(root).as_posix() if isinstance(image, Path) else image.name] = image
    return fmt, splits, images


def _split_report(name: str, found, said: list[str], error: str | None) -> SplitReport:
    missing, missing_names, malformed, notes = 0, [], 0, []
    for text in said:
        if match := _MISSING.match(text):
            missing += int(match[1])
            missing_names += [n for n in match[2].split(", ") if n != "..."]
        elif match := _COCO_BAD.search(text):
            malformed += int(match[1]) + int(match[2])
        elif match := _MALFORMED.search(text):
            malformed += int(match[1])
        else:
            notes.append(_oneline(text))
    images = len(found.ids) if found else 0
    captions = sum(len(found.captions[i]) for i in found.ids) if found else 0
    notes += [error] if error else []
    return SplitReport(name, images, captions, missing, tuple(missing_names[:NAMED]), malformed, tuple(notes))


def _check_images(images: dict[str, object]) -> tuple[list[str], int]:
    """Decode each captioned image with the package's bounded loader, for CHECK_SECONDS at most: (why each
    unreadable one is, how many were not checked)."""
    bad, unchecked, deadline = [], 0, time.monotonic() + CHECK_SECONDS
    for k, (name, image) in enumerate(images.items()):
        if time.monotonic() > deadline:
            return bad, unchecked + len(images) - k
        try:
            load_image(image, name=name)
        except ValueError as exc:  # ImageLoadError
            if "was not decoded" in str(exc):  # the process's decode budget was busy: not the image's fault
                unchecked += 1
            else:
                bad.append(_oneline(exc))
    return bad, unchecked


def _claim(root: Path, final: Path) -> None:
    """Move the checked dataset to `final`, which must not exist (shared data only grows)."""
    try:
        os.mkdir(final)  # the name is ours from here; the rename replaces this empty folder in one step
    except FileExistsError:
        raise ArchiveError(f"a dataset named {final.name} exists already: choose another name") from None
    try:
        os.rename(root, final)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.rmdir(final)  # ours and empty; never one with files
        raise ArchiveError(f"cannot store the dataset as {final.name} ({exc.strerror})") from None


def _sweep(dest: Path) -> None:
    """Remove `.incoming-*` folders a crashed upload left (a day old: no upload takes that long)."""
    for old in dest.glob(".incoming-*"):
        with contextlib.suppress(OSError):
            info = old.lstat()
            if stat.S_ISDIR(info.st_mode) and time.time() - info.st_mtime > STALE_SECONDS:
                shutil.rmtree(old, ignore_errors=True)


def _said(exc: Exception, root: Path) -> str:
    """A reader's error as one line for the page: no server path, no command-line advice."""
    text = str(exc).replace(f"{root}{os.sep}", "").replace(str(root), root.name)
    text = text.replace("say which with --format", "keep the captions of one layout only")
    return _oneline(text) if isinstance(exc, ValueError) else f"{root.name} cannot be read ({type(exc).__name__})"


def _oneline(text: object) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _show(name: str) -> str:
    return repr(name if len(name) <= 80 else name[:77] + "...")


def _few(names: tuple[str, ...], count: int, sep: str = ", ") -> str:
    """The first NAMED names, then "..." where there are more."""
    return sep.join(names[:NAMED]) + (sep + "..." if count > len(names[:NAMED]) else "")
