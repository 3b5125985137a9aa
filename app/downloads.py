"""Download a COCO sample from the app: one `python -m captioning download` process at a time, in the background.

The downloader is the package's own (resumable, retried, atomic). As with Fine-tune's jobs, a job file
(`DATA/.download.json`) names the process by pid, start time and boot, so a reload, a second tab or another
server process re-attaches, and a stranger that later got the pid is never taken for it. Progress is read from
the process's log. Before starting, a short request checks that the COCO host answers, so an offline machine
gets a message at once instead of a hanging bar. $CAPTIONING_COCO_URL points it at a mirror (tests use a local
one).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from app import procs
from captioning.download import DEFAULT_BASE_URL
from captioning.io import atomic_write_text, file_lock

JOB_FILE, LOG_FILE, LOCK_FILE = ".download.json", ".download.log", ".download.lock"
MAX_IMAGES = 5000  # all of val2017
PROGRESS = re.compile(rb"(\d+)/(\d+) \[")  # tqdm's "123/500 [00:04<00:10, ...]"


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
    done: int | None  # images so far, from the progress bar in the log
    total: int | None
    message: str  # the log's last line


class DownloadManager:
    """At most one download into `dest` (a COCO root under the app's data folder)."""

    def __init__(self, data_dir: Path, dest: Path) -> None:
        self.data_dir, self.dest = Path(data_dir), Path(dest)
        self.job_file, self.log_file = self.data_dir / JOB_FILE, self.data_dir / LOG_FILE
        self._children: list[subprocess.Popen] = []  # the downloads this process started: polled, so none is a zombie

    def _exclusive(self):
        return file_lock(self.data_dir / LOCK_FILE)  # shared with other server processes

    def _process(self) -> procs.ProcessId | None:
        try:
            job = json.loads(self.job_file.read_text(encoding="utf-8"))
            ident = procs.ProcessId(int(job["pid"]), job.get("start_time"), job.get("boot_id"))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return ident if procs.is_running(ident) else None

    def start(self, limit: int) -> str | None:
        """Start downloading the first `limit` val2017 images and the annotations; an error message, or None."""
        if not isinstance(limit, int) or not 1 <= limit <= MAX_IMAGES:
            return f"the number of images must be between 1 and {MAX_IMAGES}"
        url = base_url()
        if not reachable(url):
            return (f"{url} cannot be reached: this machine seems to be offline. On a machine with internet, run "
                    f"`python -m captioning download --dest data/coco --split val2017 --limit {limit}` "
                    "and copy data/coco here.")  # fmt: skip
        command = [sys.executable, "-m", "captioning", "download", "--dest", str(self.dest), "--split", "val2017",
                   "--limit", str(limit), "--base-url", url]  # fmt: skip
        with self._exclusive():
            if self._process() is not None:
                return "a download is already running"
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            with open(self.log_file, "wb") as log:
                child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, env=env)  # fmt: skip
            self._children.append(child)
            ident = procs.identify(child.pid)
            job = {"pid": child.pid, "start_time": ident.start_time, "boot_id": ident.boot_id, "limit": limit}
            atomic_write_text(self.job_file, json.dumps(job))
        return None

    def status(self) -> DownloadStatus | None:
        """The current or last download, None when there has been none."""
        self._children = [c for c in self._children if c.poll() is None]
        if not self.job_file.is_file():
            return None
        try:
            with open(self.log_file, "rb") as f:
                f.seek(max(0, self.log_file.stat().st_size - 8192))
                tail = f.read()
        except OSError:
            tail = b""
        found = PROGRESS.findall(tail)
        done, total = (int(found[-1][0]), int(found[-1][1])) if found else (None, None)
        lines = [ln for ln in re.split(rb"[\r\n]", tail) if ln.strip()]
        last = lines[-1].decode("utf-8", "replace")[-300:] if lines else ""
        return DownloadStatus(self._process() is not None, done, total, last)
