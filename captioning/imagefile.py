"""An image file checked before PIL decodes it: a regular file, not empty, and a structure that bounds the work.

`open_checked` walks the markers, chunks, blocks or strips of a JPEG, PNG, GIF, TIFF or BMP in a few milliseconds
and refuses a file whose decode would take far longer than its pixel count suggests.
"""

from __future__ import annotations

import io
import mmap
import os
import re
import stat
import struct
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

# Steps PIL takes in Python, one per PNG chunk, GIF sub-block or stray byte, JPEG marker or fill byte, TIFF IFD entry
# or strip/tile (about 1-8 us each, so 0.5 s at most). A 25 MB PNG from libpng has ~3,100 chunks; a 40-Mpixel TIFF
# with a row per strip has ~8,000 strips.
MAX_SEGMENTS = 65_536
# libjpeg decodes every scan a file holds, each over the whole image: about 1 ns per pixel per scan here. Its own
# progression writes 10 scans (mozjpeg about as many); libtiff and GDAL stop at 100 scans by default. The work
# limit keeps a 40-Mpixel file to 25 scans, about 1 s, where 2,000 repeated scans took 16 s at 4 Mpixels.
JPEG_MAX_SCANS = 100
JPEG_SCAN_WORK = 1_000_000_000  # pixels x scans
# PIL decodes RLE-compressed BMPs in Python, a step per 2 bytes and per pixel of padding: 2 MB of RLE data or
# 4 Mpixels are about 1 s. Windows has written uncompressed BMPs since the 1990s.
MAX_RLE_BYTES = 2_000_000
MAX_RLE_PIXELS = 4_000_000

_JPEG_MARKER = re.compile(rb"\xff[^\x00\xff\xd0-\xd7]")  # a marker; not stuffing (FF00), fill (FFFF) or RSTn
_JPEG_FRAMES = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}  # SOFn
_TIFF_TYPES = {3: "H", 4: "I", 13: "I", 16: "Q"}  # the integer types strip and tile tags use


class ImageLoadError(ValueError):
    """An image that cannot be decoded; the message names the file and the reason."""


class CostError(ValueError):
    """An image whose structure would make decoding it cost far more than its size; the message says why."""


@contextmanager
def open_checked(source: Path | str | bytes | io.BytesIO, name: str) -> Iterator[io.BytesIO | io.BufferedReader]:
    """The image file or bytes, open for PIL, once checked (ImageLoadError naming it as `name` otherwise).

    A path must be a regular, non-empty file (a FIFO or device would block or never end); it is mapped for the
    check, not read. Files of other formats, and damaged ones, pass: the decoder reports those.
    """
    with ExitStack() as files:
        try:
            if isinstance(source, (str, Path)):
                fp = files.enter_context(_open_regular_file(Path(source), name))
                view = _mapped(fp, files)
            else:
                view = source.getvalue() if isinstance(source, io.BytesIO) else source
                if not view:
                    raise ImageLoadError(f"{name} is empty (0 bytes)")
                fp = io.BytesIO(view)
            check_cost(view)
        except CostError as exc:
            raise ImageLoadError(f"{name} {exc}") from None
        except OSError as exc:
            raise ImageLoadError(f"{name} cannot be read ({exc.strerror or type(exc).__name__})") from None
        yield fp


def _mapped(fp: io.BufferedReader, files: ExitStack):
    """The file's bytes for the walk: mapped (no copy), or read where its file system cannot map it."""
    try:
        return files.enter_context(mmap.mmap(fp.fileno(), 0, access=mmap.ACCESS_READ))
    except (OSError, ValueError):  # ValueError: emptied since it was checked
        data = fp.read()
        fp.seek(0)
        return data


def _open_regular_file(path: Path, name: str) -> io.BufferedReader:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # not blocked by a FIFO; checked on the file opened
    except FileNotFoundError:
        raise ImageLoadError(f"{name} does not exist") from None
    info = os.fstat(fd)
    regular = stat.S_ISREG(info.st_mode)
    if not regular or info.st_size == 0:
        os.close(fd)
        raise ImageLoadError(f"{name} is " + ("empty (0 bytes)" if regular else "not a regular file"))
    return os.fdopen(fd, "rb")


def check_cost(data) -> None:
    """Raise CostError if decoding the image in `data` (bytes, or an mmap of its file) would be unbounded work."""
    head = bytes(data[:16])
    walk = None
    if head.startswith(b"\xff\xd8"):
        walk = _check_jpeg
    elif head.startswith(b"\x89PNG\r\n\x1a\n"):
        walk = _check_png
    elif head[:6] in (b"GIF87a", b"GIF89a"):
        walk = _check_gif
    elif head[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):
        walk = _check_tiff
    elif head[:2] == b"BM":
        walk = _check_bmp
    # WebP is left to libwebp: it parses every chunk in C and decodes the first frame only (200,000 frames: 0.05 s)
    if walk is not None:
        try:
            walk(data)
        except (IndexError, struct.error, OverflowError):
            pass  # damaged past what the walk needs: the decoder reports it


def _too_many(count: int, what: str) -> None:
    if count > MAX_SEGMENTS:
        raise CostError(f"has too many {what} to decode safely (more than {MAX_SEGMENTS:,})")


def jpeg_scans(data, start: int = 0, end: int | None = None) -> tuple[int, int]:
    """(scans, pixels) of the first JPEG image in data[start:end], walking its markers as libjpeg reads them.

    Segments are skipped by their length, scan data up to the next marker; an MPO's later images are not decoded,
    so the walk stops at the first EOI. Stray and fill bytes outside scans count against MAX_SEGMENTS: PIL steps
    through them one at a time.
    """
    end = len(data) if end is None else end
    pos, scans, pixels, steps, in_scan = start + 2, 0, 0, 1, False
    while pos < end:
        found = _JPEG_MARKER.search(data, pos, end)
        if found is None:
            break
        steps += 1 + (0 if in_scan else found.start() - pos)
        _too_many(steps, "JPEG markers or stray bytes")
        code, pos, in_scan = data[found.end() - 1], found.end(), False
        if code == 0xD9:
            break
        if code in (0x01, 0xD8) or pos + 2 > end:
            continue  # no length follows
        length = int.from_bytes(data[pos : pos + 2], "big")
        if code in _JPEG_FRAMES and pos + 7 <= end:
            pixels = int.from_bytes(data[pos + 3 : pos + 5], "big") * int.from_bytes(data[pos + 5 : pos + 7], "big")
        elif code == 0xDA:
            scans, in_scan = scans + 1, True
        pos += max(length, 2)  # libjpeg goes on after a length under 2
    return scans, pixels


def _check_scans(scans: int, pixels: int) -> None:
    limit = max(1, min(JPEG_MAX_SCANS, JPEG_SCAN_WORK // max(pixels, 1)))
    if scans > limit:
        raise CostError(
            f"has {scans:,} JPEG scans, too many to decode safely (at most {limit} for "
            f"{pixels / 1e6:.1f} megapixels; a progressive photo has about 10)"
        )


def _check_jpeg(data) -> None:
    _check_scans(*jpeg_scans(data))


def _check_png(data) -> None:
    """Every chunk costs PIL a step; an APNG's later frames are chunks too."""
    pos, chunks = 8, 0
    while pos + 8 <= len(data):
        chunks += 1
        _too_many(chunks, "PNG chunks")
        if bytes(data[pos + 4 : pos + 8]) == b"IEND":
            return
        pos += 12 + int.from_bytes(data[pos : pos + 4], "big")


def _check_gif(data) -> None:
    """Extension sub-blocks and stray bytes before the first image are read in Python; its pixels in C, and later
    frames are not read at all."""
    flags = data[10]
    pos, steps = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0), 0
    while pos < len(data):
        kind = data[pos]
        if kind in (0x2C, 0x3B):  # the first image, or the end
            return
        steps += 1
        pos += 1
        if kind == 0x21:
            pos += 1  # the extension's label
            while pos < len(data):
                size, steps = data[pos], steps + 1
                _too_many(steps, "GIF blocks")
                pos += 1 + size
                if size == 0:
                    break
        _too_many(steps, "GIF blocks or stray bytes")


def _check_tiff(data) -> None:
    """The first IFD (the page decoded): its entries, its strips or tiles, and the scans of JPEG-compressed ones."""
    order = "<" if bytes(data[:2]) == b"II" else ">"
    big = data[2 if order == "<" else 3] == 0x2B
    count_fmt, entry, inline = ("Q", 20, 8) if big else ("H", 12, 4)
    ifd = struct.unpack_from(order + ("Q" if big else "I"), data, 8 if big else 4)[0]
    (entries,) = struct.unpack_from(order + count_fmt, data, ifd)
    _too_many(entries, "TIFF tags")
    tags = {}
    for k in range(entries):
        at = ifd + (8 if big else 2) + k * entry
        tag, kind = struct.unpack_from(order + "HH", data, at)
        (count,) = struct.unpack_from(order + ("Q" if big else "I"), data, at + 4)
        tags[tag] = (kind, count, at + (12 if big else 8))
    offsets, sizes = tags.get(324) or tags.get(273), tags.get(325) or tags.get(279)
    if offsets is None:
        return
    _too_many(offsets[1] + entries, "TIFF strips or tiles")
    if tags.get(259, (0, 0, 0))[1] == 1 and _tiff_values(data, order, inline, tags[259]) == [7] and sizes:
        _check_tiff_jpeg(data, _tiff_values(data, order, inline, offsets), _tiff_values(data, order, inline, sizes))


def _tiff_values(data, order: str, inline: int, tag: tuple[int, int, int]) -> list[int]:
    kind, count, at = tag[0], min(tag[1], MAX_SEGMENTS), tag[2]
    fmt = _TIFF_TYPES.get(kind)
    if fmt is None:
        return []
    if count * struct.calcsize(fmt) > inline:
        (at,) = struct.unpack_from(order + ("Q" if inline == 8 else "I"), data, at)
    return list(struct.unpack_from(f"{order}{count}{fmt}", data, at))


def _check_tiff_jpeg(data, offsets: list[int], sizes: list[int]) -> None:
    """Each strip or tile of a JPEG-compressed TIFF is a JPEG stream: the most scans any has, over all their pixels,
    is held to the limit of one JPEG of the whole image."""
    scans = pixels = walked = 0
    for start, size in zip(offsets, sizes, strict=False):
        walked += size
        if walked > len(data):  # strips of a sound file never overlap: each would be walked (and decoded) again
            raise CostError("has JPEG strips that overlap or run past the end of the file")
        n, p = jpeg_scans(data, start, start + size)
        scans, pixels = max(scans, n), pixels + p
    _check_scans(scans, pixels)


def _check_bmp(data) -> None:
    """PIL decodes RLE8 and RLE4 BMPs in Python."""
    offset, header = struct.unpack_from("<I", data, 10)[0], struct.unpack_from("<I", data, 14)[0]
    if header < 40:
        return  # an OS/2 header: never compressed
    width, height, _, _, compression = struct.unpack_from("<iiHHI", data, 18)
    if compression in (1, 2):
        rle, pixels = len(data) - offset, abs(width) * abs(height)
        if rle > MAX_RLE_BYTES or pixels > MAX_RLE_PIXELS:
            raise CostError(
                f"is a run-length-encoded BMP too large to decode safely ({pixels / 1e6:.1f} megapixels, {rle:,} "
                f"bytes; at most {MAX_RLE_PIXELS // 1_000_000} megapixels and {MAX_RLE_BYTES:,} bytes)"
            )
