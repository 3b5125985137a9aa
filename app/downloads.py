"""Add COCO val2017 images from the app: one `python -m captioning download` at a time, run by app.background.

The downloader is the package's own (resumable, retried, atomic; it only adds to what is there). Its job file
`DATA/.download.json` lets a reload, a second tab or another server process re-attach; its progress and its
ending are the JSON lines it writes to `DATA/.download.jsonl` (`--progress-jsonl`). Before starting, a short
request checks that the COCO host answers, so an offline machine gets a message at once instead of a hanging bar.
$CAPTIONING_COCO_URL points it at a mirror (tests use a local one).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from app.background import CANCELLED, FAILED, FINISHED, RUNNING, STOPPING, Background, Busy, read_jsonl
from captioning.download import DEFAULT_BASE_URL, listed_images

JOB_FILE, LOG_FILE, LOCK_FILE, PROGRESS_FILE = ".download.json", ".download.log", ".download.lock", ".download.jsonl"
MAX_IMAGES = 5000  # all of val2017
SPLIT = "val2017"
ANNOTATIONS, IMAGES = "annotations", "images"  # the stages of its progress records


def base_url() -> str:
    return os.environ.get("CAPTIONING_COCO_URL") or DEFAULT_BASE_URL


def reachable(url: str, timeout: float = 4.0) -> bool:
    """Whether the host answers at all (any HTTP status counts); False at once when offline."""
    try:
        urllib.request.urlopen(urllib.request.Request(url.rstrip("/") + "/", method="HEAD"), timeout=timeout)
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False
    return True


@dataclass(frozen=True)
class DownloadStatus:
    running: bool
    done: int | None  # so far in its stage: bytes of the annotations zip, or images
    total: int | None
    message: str  # how it ended: the downloader's summary, or why it failed
    stage: str | None = None  # ANNOTATIONS or IMAGES; None before its first progress record
    state: str = RUNNING  # RUNNING, STOPPING, or how it ended (app.background.ended_as)

    @property
    def fraction(self) -> float:
        return min(self.done / self.total, 1.0) if self.done is not None and self.total else 0.0

    def progress_text(self) -> str:
        """E.g. "3/500 images", "the annotations: 12 of 241 MB"."""
        if self.state == STOPPING:
            return "stopping..."
        if self.stage == IMAGES and self.total:
            return f"{self.done}/{self.total} images"
        if self.stage == ANNOTATIONS and self.done is not None:
            of = f" of {self.total / 1e6:.0f}" if self.total else ""
            return f"the annotations: {self.done / 1e6:.0f}{of} MB"
        return "fetching the annotations..."


class DownloadManager:
    """At most one download into `dest` (a COCO root under the app's data folder)."""

    def __init__(self, data_dir: Path, dest: Path) -> None:
        self.data_dir, self.dest = Path(data_dir), Path(dest).resolve()
        self.jobs = Background(self.data_dir, JOB_FILE, LOCK_FILE, upgrade=self._upgrade)
        self.progress_file = self.jobs.folder / PROGRESS_FILE
        self._held: tuple[tuple[int, int] | None, int] = (None, 0)  # (the captions file's stamp, images it lists)

    def held(self) -> int:
        """How many val2017 images `dest` lists already (its captions file is read again only when it changes)."""
        try:
            info = (self.dest / "annotations" / f"captions_{SPLIT}.json").stat()
        except OSError:
            return 0
        stamp = (info.st_mtime_ns, info.st_size)
        if self._held[0] != stamp:
            self._held = (stamp, listed_images(self.dest, SPLIT))
        return self._held[1]

    def start(self, more: int) -> str | None:
        """Start adding `more` val2017 images (the lowest ids not there yet) and the annotations; a download only
        adds, never removes. An error message, or None."""
        held = self.held()
        if held >= MAX_IMAGES:
            return f"{self.dest.name} already holds all {MAX_IMAGES:,} {SPLIT} images"
        if not isinstance(more, int) or not 1 <= more <= MAX_IMAGES - held:
            return f"the number of images to add must be between 1 and {MAX_IMAGES - held:,}"
        limit = held + more  # the downloader's --limit: how many the split lists at least, once it is done
        url = base_url()
        if not reachable(url):
            return (f"{url} cannot be reached: this machine seems to be offline. On a machine with internet, run "
                    f"`python -m captioning download --dest data/coco --split val2017 --limit {limit}` "
                    "and copy data/coco here.")  # fmt: skip
        command = [sys.executable, "-m", "captioning", "download", "--dest", str(self.dest), "--split", SPLIT,
                   "--limit", str(limit), "--base-url", url, "--progress-jsonl", str(self.progress_file)]  # fmt: skip
        forget = lambda: self.progress_file.unlink(missing_ok=True)  # the last download's records  # noqa: E731
        try:
            self.jobs.start("download", self.dest, command, self.jobs.folder / LOG_FILE, prepare=forget)
        except Busy:
            return "a download is already running"
        return None

    def status(self) -> DownloadStatus | None:
        """The current or last download, None when there has been none."""
        job = self.jobs.current()
        if job is None:
            return None
        alive = self.jobs.alive(job)  # before the records: an ending logged just before it exited is in them
        records = read_jsonl(self.progress_file) if job.exit_file else []  # an older version's job wrote none
        progress = [r for r in records if r.get("event") == "progress" and _counts(r)]
        end = next((r for r in reversed(records) if r.get("event") in (FINISHED, FAILED)), {})
        state = self.jobs.state(job, alive, end.get("event"))
        if state == FAILED:
            message = self.jobs.failure(job, str(end.get("message") or "") if end.get("event") == FAILED else None)
        elif state == FINISHED:
            message = str(end.get("message") or "")
        elif state == CANCELLED:
            message = "what had arrived is kept; Download continues from there"
        else:  # running, or interrupted: what it printed last
            message = self.jobs.log_tail(job, lines=1)
        last = progress[-1] if progress else {}
        return DownloadStatus(alive, last.get("done"), last.get("total"), message, last.get("stage"), state)

    def cancel(self) -> bool:
        """Stop the running download (the files that arrived stay; a new one resumes)."""
        return self.jobs.cancel()

    def _upgrade(self, data: dict) -> dict:
        """An older version's job file, {"pid", "start_time", "boot_id", "limit"}, as a job (it is recognised while
        it runs, so no second download starts beside it)."""
        if "name" in data or "limit" not in data:
            return data
        ident = {k: data[k] for k in ("pid", "start_time", "boot_id") if k in data}
        log = str(self.jobs.folder / LOG_FILE)
        return {"name": "download", "out": str(self.dest), "started": "", "command": [], "log": log, **ident}


def _counts(record: dict) -> bool:
    """Whether a progress record has the fields the status shows, of the right types."""
    done, total = record.get("done"), record.get("total")
    return record.get("stage") in (ANNOTATIONS, IMAGES) and type(done) is int and (total is None or type(total) is int)
