"""The downloader's file fetching: resumable (NAME.part + Range), retried, and checked before a file takes its name.

A body that is not what was asked for (an HTML page served as an image, a corrupt part) is discarded and fetched
once more from the start; a second bad one fails with the reason. Files get the mode the umask gives.
"""

from __future__ import annotations

import http.client
import os
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from PIL import Image
from tqdm import tqdm

from captioning.data import IMAGE_FORMATS, MAX_PIXELS
from captioning.io import umask

_WORKERS = 8
_CHUNK = 1 << 16
_USER_AGENT = "captioning-download/1.0"
MAX_IMAGE_BYTES = 64 << 20  # COCO's largest image is under 1 MB: a longer body is not one of its images
MAX_JPEG_SCANS = 100  # a progressive JPEG has about 10; libtiff and GDAL stop at 100 too

# on_progress(stage, done, total): "annotations" counts bytes of the zip, "images" counts images (total may be None)
Progress = Callable[[str, int, int | None], None]
Check = Callable[[Path], str | None]  # why a complete body is unusable, or None

# Errors worth retrying: the host answered before, so the network may come back.
NETWORK_ERRORS = (URLError, TimeoutError, ConnectionError, http.client.HTTPException)

# The leading bytes of each accepted format (WebP: RIFF, 4 bytes of size, WEBP).
_MAGIC = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG", b"GIF87a": "GIF", b"GIF89a": "GIF", b"BM": "BMP",
          b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}  # fmt: skip


class DownloadError(RuntimeError):
    """A download problem the user has to fix; the message is one sentence."""


class BadBody(Exception):
    """A complete response that is not what was asked for; the message says why, never quoting it."""


class Client:
    """Fetches URLs into files with resume (.part + Range), retries and a check of what arrived."""

    def __init__(self, base_url: str, dest: Path, retries: int, timeout: float, backoff: float):
        self.base_url = base_url
        self.dest = dest
        self.retries = retries
        self.timeout = timeout
        self.backoff = backoff
        self.reached = False  # set once any response came back from the host

    def unreachable(self, err: BaseException) -> DownloadError:
        reason = getattr(err, "reason", None) or err
        return DownloadError(
            f"cannot reach {self.base_url} ({reason}): check your internet connection, "
            f"or copy COCO into {self.dest} by hand"
        )

    def fetch(
        self, url: str, dest: Path, show: bool = False, report: Progress | None = None,
        check: Check | None = None, max_bytes: int | None = None,
    ) -> None:  # fmt: skip
        """Download url to dest, resuming dest's .part. A body over `max_bytes` or refused by `check` is discarded
        and fetched once more from the start, then raises BadBody; HTTPError or a network error once retries run
        out. dest appears only once complete and checked, with the mode a plain open() would give it."""
        part = dest.with_name(dest.name + ".part")
        for last in (False, True):
            try:
                self._retrying(url, part, show, report, max_bytes)
                problem = check(part) if check is not None else None
            except BadBody as err:
                problem = str(err)
            if problem is None:
                break
            part.unlink(missing_ok=True)  # never resumed: the next try starts from the first byte
            if last:
                raise BadBody(problem)
        os.chmod(part, 0o666 & ~umask())  # a .part left by another tool may have had any mode
        os.replace(part, dest)

    def _retrying(self, url: str, part: Path, show: bool, report: Progress | None, max_bytes: int | None) -> None:
        for attempt in range(self.retries + 1):
            try:
                self._fetch_once(url, part, show, report, max_bytes)
                return
            except HTTPError as err:
                self.reached = True
                retryable = err.code >= 500 or err.code in (408, 429)
                if not retryable or attempt == self.retries:
                    raise
            except NETWORK_ERRORS as err:
                # Never answered at all: offline or wrong host, so retrying only makes the user wait.
                if not self.reached:
                    raise self.unreachable(err) from err
                if attempt == self.retries:
                    raise
            time.sleep(self.backoff * 2**attempt)

    def _fetch_once(self, url: str, part: Path, show: bool, report: Progress | None, max_bytes: int | None) -> None:
        start = part.stat().st_size if part.exists() else 0
        request = Request(url, headers={"User-Agent": _USER_AGENT})
        if start:
            request.add_header("Range", f"bytes={start}-")
        try:
            response = urlopen(request, timeout=self.timeout)
        except HTTPError as err:
            err.close()
            if err.code == 416 and start:
                # The .part already holds the whole file (or junk): start over.
                part.unlink()
                self._fetch_once(url, part, show, report, max_bytes)
                return
            raise
        self.reached = True
        with response:
            if response.status != 206:
                start = 0  # the server ignored Range and sends the whole file
            length = response.headers.get("Content-Length")
            expected = int(length) if length is not None else None
            received = 0
            total = None if expected is None else start + expected
            bar = tqdm(
                total=total, initial=start, desc=part.stem, disable=not show, unit="B", unit_scale=True, leave=False
            )
            with part.open("ab" if start else "wb") as out, bar:
                while chunk := response.read(_CHUNK):
                    if max_bytes is not None and start + received + len(chunk) > max_bytes:
                        raise BadBody(f"longer than {max_bytes / 2**20:g} MB")
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
                    if report is not None:  # the zip's: images report as they complete
                        report("annotations", start + received, total)
        # http.client returns a short body silently when the connection drops.
        if expected is not None and received < expected:
            raise http.client.IncompleteRead(b"", expected - received)


def image_problem(path: Path, kept: bool = False) -> str | None:
    """Why the file at `path` is not an image of an accepted format (`IMAGE_FORMATS`), or None when it is one.

    Bounded: the first bytes name the format, the header the size (at most MAX_PIXELS); a JPEG of at most
    MAX_JPEG_SCANS scans is then decoded at 1/8 scale (which reads every byte, so a truncated one fails), other
    formats verified. `kept` (a file already
    there): a JPEG that ends with its end marker passes on its first and last bytes alone.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(16)
            f.seek(max(0, size - 2))
            tail = f.read(2)
    except OSError as err:
        return f"unreadable ({err.strerror})"
    if size == 0:
        return "empty (0 bytes)"
    if size > MAX_IMAGE_BYTES:
        return f"longer than {MAX_IMAGE_BYTES / 2**20:g} MB"
    kind = next((name for magic, name in _MAGIC.items() if head.startswith(magic)), None)
    if kind is None and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        kind = "WEBP"
    if kind is None or kind not in IMAGE_FORMATS:
        return "not an image (neither JPEG, PNG, WebP, BMP, GIF nor TIFF)"
    if kept and kind == "JPEG" and tail == b"\xff\xd9":
        return None
    return _decode_problem(path, kind)


def _decode_problem(path: Path, kind: str) -> str | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=[kind]) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    return f"too large ({width}x{height} pixels; at most {MAX_PIXELS // 1_000_000} megapixels)"
                if kind == "JPEG":
                    scans = path.read_bytes().count(b"\xff\xda")  # libjpeg decodes each over the whole image
                    if scans > MAX_JPEG_SCANS:
                        return f"a JPEG of {scans} scans (at most {MAX_JPEG_SCANS})"
                    image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
                    image.load()
                else:
                    image.verify()
    except Exception as exc:  # PIL raises many types for corrupt data
        return f"a corrupt or truncated {kind} ({type(exc).__name__}: {str(exc)[:120]})"
    return None


def fetch_images(
    client: Client, todo: dict[str, Path], total: int, skipped: int, desc: str, progress: bool, report: Progress
) -> tuple[int, dict[str, str]]:
    """Fetch url -> file in parallel, each checked to be an image; (how many arrived, {file name: why it failed})."""
    downloaded, failed = 0, {}
    report("images", skipped, total)
    with (
        tqdm(total=total, initial=skipped, unit="img", desc=desc, disable=not progress) as bar,
        ThreadPoolExecutor(max_workers=_WORKERS) as pool,
    ):
        futures = {
            pool.submit(client.fetch, url, target, check=image_problem, max_bytes=MAX_IMAGE_BYTES): target.name
            for url, target in todo.items()
        }
        try:
            for future in as_completed(futures):
                try:
                    future.result()
                    downloaded += 1
                except (BadBody, *NETWORK_ERRORS) as err:  # HTTPError included
                    failed[futures[future]] = _reason(err)
                bar.update()
                report("images", skipped + downloaded + len(failed), total)
        except BaseException:
            # Offline or Ctrl-C: don't start thousands of fetches that will fail too.
            pool.shutdown(cancel_futures=True)
            raise
    return downloaded, failed


def _reason(err: BaseException) -> str:
    if isinstance(err, HTTPError):
        return f"HTTP {err.code}"
    if isinstance(err, BadBody):
        return f"the mirror sent a bad image twice: {err}"
    return f"network error: {getattr(err, 'reason', None) or type(err).__name__}"
