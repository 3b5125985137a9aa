"""Download MS COCO 2017 caption annotations and images from the official COCO site.

Run: python -m captioning download --dest data/coco --split val2017 --limit 500
"""

from __future__ import annotations

import http.client
import json
import os
import tempfile
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit
from urllib.request import Request, urlopen

from tqdm import tqdm

from captioning.io import read_json

DEFAULT_BASE_URL = "http://images.cocodataset.org"
ANNOTATIONS_ZIP = "annotations/annotations_trainval2017.zip"
SPLITS = ("train2017", "val2017")

_WORKERS = 8
_CHUNK = 1 << 16
_USER_AGENT = "captioning-download/1.0"

# on_progress(stage, done, total): "annotations" counts bytes of the zip, "images" counts images (total may be None)
Progress = Callable[[str, int, int | None], None]


class DownloadError(RuntimeError):
    """A download problem the user has to fix; the message is one sentence."""


# Errors worth retrying: the host answered before, so the network may come back.
_NETWORK_ERRORS = (URLError, TimeoutError, ConnectionError, http.client.HTTPException)


@dataclass(frozen=True)
class DownloadSummary:
    """What a download run did: where things are and how many images it fetched."""

    split: str
    annotations: Path
    images_dir: Path
    downloaded: int
    skipped: int
    failed: list[str]


class _Client:
    """Fetches URLs into files with resume (.part + Range) and retries."""

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

    def fetch(self, url: str, dest: Path, show: bool = False, report: Progress | None = None) -> None:
        """Download url to dest; raises HTTPError or a network error once retries run out."""
        for attempt in range(self.retries + 1):
            try:
                self._fetch_once(url, dest, show, report)
                return
            except HTTPError as err:
                self.reached = True
                retryable = err.code >= 500 or err.code in (408, 429)
                if not retryable or attempt == self.retries:
                    raise
            except _NETWORK_ERRORS as err:
                # Never answered at all: offline or wrong host, so retrying only makes
                # the user wait.
                if not self.reached:
                    raise self.unreachable(err) from err
                if attempt == self.retries:
                    raise
            time.sleep(self.backoff * 2**attempt)

    def _fetch_once(self, url: str, dest: Path, show: bool, report: Progress | None = None) -> None:
        part = dest.with_name(dest.name + ".part")
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
                self._fetch_once(url, dest, show, report)
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
                total=total, initial=start, desc=dest.name, disable=not show, unit="B", unit_scale=True, leave=False
            )
            with part.open("ab" if start else "wb") as out, bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
                    if report is not None:  # the zip's: images report as they complete
                        report("annotations", start + received, total)
        # http.client returns a short body silently when the connection drops.
        if expected is not None and received < expected:
            raise http.client.IncompleteRead(b"", expected - received)
        os.replace(part, dest)


def _fetch_required(client: _Client, url: str, dest: Path, show: bool, report: Progress) -> None:
    """Fetch a file the run cannot do without; any failure becomes a DownloadError."""
    try:
        client.fetch(url, dest, show, report)
    except HTTPError as err:
        raise DownloadError(f"cannot download {url}: HTTP {err.code} {err.reason}") from err
    except _NETWORK_ERRORS as err:
        raise client.unreachable(err) from err


def _read_captions(client: _Client, dest: Path, split: str, show: bool, report: Progress) -> bytes:
    """Return captions_<split>.json from the annotations zip, fetching the zip if needed."""
    url = f"{client.base_url}/{ANNOTATIONS_ZIP}"
    zip_path = dest / Path(ANNOTATIONS_ZIP).name
    member = f"annotations/captions_{split}.json"
    refetched = False
    while True:
        if not zip_path.exists():
            _fetch_required(client, url, zip_path, show, report)
        try:
            with zipfile.ZipFile(zip_path) as archive:
                return archive.read(member)  # checks the CRC too
        except zipfile.BadZipFile as err:
            zip_path.unlink()  # damaged: fetch it once more
            if refetched:
                raise DownloadError(f"{url} is not a valid zip archive ({err})") from err
            refetched = True
        except KeyError as err:
            raise DownloadError(f"{zip_path} has no {member}; is {url} COCO 2017?") from err


def _write_atomic(path: Path, data: bytes) -> None:
    """Write data so that path is either the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _subset(captions: dict, images: list[dict], total: int) -> dict:
    """Captions json restricted to images, with a note saying so."""
    ids = {image["id"] for image in images}
    info = dict(captions.get("info") or {})
    note = f"subset: first {len(images)} of {total} images by id"
    info["description"] = f"{info.get('description', 'COCO 2017 captions')} ({note})"
    return {
        **captions,
        "info": info,
        "images": images,
        "annotations": [a for a in captions["annotations"] if a["image_id"] in ids],
    }


def _image_url(image: dict, split: str, base_url: str) -> str:
    # coco_url points at the official host; keep its path, swap the host for base_url.
    official = image.get("coco_url") or f"{DEFAULT_BASE_URL}/{split}/{image['file_name']}"
    return base_url + urlsplit(official).path


def download_coco(
    dest: Path,
    split: str = "val2017",
    limit: int | None = None,
    base_url: str = DEFAULT_BASE_URL,
    retries: int = 3,
    timeout: float = 30.0,
    progress: bool = True,
    *,
    backoff: float = 0.5,
    on_progress: Progress | None = None,
) -> DownloadSummary:
    """Download COCO 2017 captions and images into dest, in the standard COCO layout.

    Args:
        dest: folder that gets annotations/captions_<split>.json and <split>/*.jpg.
        split: "train2017" or "val2017".
        limit: only the first `limit` images by id (the json is cut to match).
        base_url: COCO host or a mirror of it.
        retries: extra tries per file after network errors or HTTP 5xx.
        timeout: seconds to wait on a silent connection.
        progress: show tqdm progress bars.
        backoff: first pause between tries in seconds; it doubles each time.
        on_progress: called as on_progress(stage, done, total) while the zip ("annotations", bytes) and the
            images ("images", counting those already there) arrive; `ProgressFile` writes it for another process.

    Returns:
        A DownloadSummary; images that failed (e.g. HTTP 404) are listed, not raised.

    Raises:
        DownloadError: the host cannot be reached or the annotations cannot be had.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of: {', '.join(SPLITS)} (got {split!r})")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of images (got {limit})")
    if retries < 0:
        raise ValueError(f"retries must be 0 or more (got {retries})")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    client = _Client(base_url.rstrip("/"), dest, retries, timeout, backoff)
    on_progress = on_progress or (lambda *_: None)
    annotations, images = _write_captions(client, dest, split, limit, progress, on_progress)
    images_dir = dest / split
    images_dir.mkdir(parents=True, exist_ok=True)
    todo: dict[str, Path] = {}
    for image in images:
        # Path(...).name: a file_name must not write outside images_dir.
        target = images_dir / Path(image["file_name"]).name
        if not target.exists():  # final names appear only once complete
            todo[_image_url(image, split, client.base_url)] = target
    skipped = len(images) - len(todo)
    downloaded, failed = _fetch_images(client, todo, len(images), skipped, split, progress, on_progress)
    return DownloadSummary(split, annotations, images_dir, downloaded, skipped, sorted(failed))


def _write_captions(
    client: _Client, dest: Path, split: str, limit: int | None, progress: bool, report: Progress
) -> tuple[Path, list]:
    """Write annotations/captions_<split>.json (cut to the first `limit` images by id); (its path, its images).

    Rewritten from the kept zip on every run, so a new limit takes effect.
    """
    raw = _read_captions(client, dest, split, progress, report)
    captions = read_json(raw)
    images = sorted(captions["images"], key=lambda image: image["id"])
    if limit is not None and limit < len(images):
        subset = _subset(captions, images[:limit], len(images))
        images = subset["images"]
        raw = json.dumps(subset, separators=(",", ":")).encode()
    annotations = dest / "annotations" / f"captions_{split}.json"
    _write_atomic(annotations, raw)
    return annotations, images


def _fetch_images(
    client: _Client, todo: dict[str, Path], total: int, skipped: int, split: str, progress: bool, report: Progress
) -> tuple[int, list[str]]:
    """Fetch url -> file in parallel; (how many arrived, names of those that failed)."""
    downloaded, failed = 0, []
    report("images", skipped, total)
    with (
        tqdm(total=total, initial=skipped, unit="img", desc=split, disable=not progress) as bar,
        ThreadPoolExecutor(max_workers=_WORKERS) as pool,
    ):
        futures = {pool.submit(client.fetch, url, t): t.name for url, t in todo.items()}
        try:
            for future in as_completed(futures):
                try:
                    future.result()
                    downloaded += 1
                except _NETWORK_ERRORS:  # HTTPError included
                    failed.append(futures[future])
                bar.update()
                report("images", skipped + downloaded + len(failed), total)
        except BaseException:
            # Offline or Ctrl-C: don't start thousands of fetches that will fail too.
            pool.shutdown(cancel_futures=True)
            raise
    return downloaded, failed


class ProgressFile:
    """Writes a download's progress as JSON lines for another process to watch, each line flushed at once:
    {"event": "progress", "stage", "done", "total"} (at most one a percent), then one ending record."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("", encoding="utf-8")  # this run's records only
        self._shown: tuple[str, int] | None = None

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        step = done * 100 // total if total else done >> 20  # a percent; without a total, a MiB
        if (stage, step) != self._shown:
            self._shown = (stage, step)
            self.write({"event": "progress", "stage": stage, "done": done, "total": total})

    def end(self, event: str, message: str, **fields) -> None:
        """The last record: "finished" or "failed", with a sentence for the user."""
        self.write({"event": event, "message": message, **fields})

    def write(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
