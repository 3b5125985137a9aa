"""app.background (one background job per folder) and the download manager on it: how a job's ending is told
from its exit and its own ending event, re-attaching from another server process, strangers with a job's pid,
job files of the older version, and the download's progress from the records it writes.

The jobs are short stand-in scripts (milliseconds), except two real `python -m captioning download` runs against
the local fake COCO mirror.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from app_fixtures import open_page, point_app, text

from app import procs
from app.background import CANCELLED, FAILED, FINISHED, INTERRUPTED, RUNNING, Background, Busy, Exit, ended_as
from app.downloads import DownloadManager
from app.jobs import JobManager
from captioning.download import ANNOTATIONS_ZIP, download_coco

REPO = Path(__file__).resolve().parents[1]
STAND_IN = """
import json, os, sys, time
records, how = sys.argv[1], sys.argv[2]
def log(event, **fields):
    with open(records, "a") as f:
        f.write(json.dumps({"event": event, **fields}) + "\\n")
log("pid", pid=os.getpid())
print("working", flush=True)
if how == "finish":
    log("finished"); sys.exit(0)
if how == "fail":
    print("Traceback (most recent call last):\\nOSError: the disk is full", file=sys.stderr); sys.exit(2)
if how == "log-failure":
    log("failed", message="2 images failed (run again to retry them)"); sys.exit(1)
if how == "silent":
    sys.exit(0)
if how == "crash-after-end":
    log("finished"); sys.exit(3)
time.sleep(60)  # "wait": until cancelled or killed
"""


class Demo:
    """A Background in a temporary folder whose jobs run STAND_IN, and what they logged."""

    def __init__(self, tmp_path: Path) -> None:
        self.script, self.records = tmp_path / "stand_in.py", tmp_path / "records.jsonl"
        self.script.write_text(STAND_IN)
        self.jobs = Background(tmp_path / "jobs", ".job.json", ".job.lock")

    def start(self, how: str, jobs: Background | None = None):
        command = [sys.executable, str(self.script), str(self.records), how]
        forget = lambda: self.records.unlink(missing_ok=True)  # the last job's, once the slot is free  # noqa: E731
        jobs = jobs or self.jobs
        return jobs.start("demo", self.records.parent, command, jobs.folder / "out.log", forget)

    def logged(self, event: str) -> dict | None:
        lines = self.records.read_text().splitlines() if self.records.is_file() else []
        return next((r for r in map(json.loads, reversed(lines)) if r["event"] == event), None)

    def state(self, jobs: Background | None = None) -> str:
        jobs = jobs or self.jobs
        job = jobs.current()
        alive = jobs.alive(job)
        ending = next((e for e in ("finished", "failed") if self.logged(e)), None)
        return jobs.state(job, alive, ending)

    def wait_until(self, done, jobs: Background | None = None, timeout: float = 30.0):
        deadline = time.time() + timeout
        while not done(self.state(jobs)):
            assert time.time() < deadline, f"not there after {timeout} s: {self.state(jobs)}"
            time.sleep(0.02)
        return self.state(jobs)


@pytest.fixture
def demo(tmp_path) -> Demo:
    return Demo(tmp_path)


# how a job ended: its exit and its own ending event -----------------------------------------------------------------


@pytest.mark.parametrize(
    "how, then, state, message",
    [
        ("finish", None, FINISHED, ""),
        ("fail", None, FAILED, "OSError: the disk is full"),  # the last line it wrote to stderr
        ("log-failure", None, FAILED, "2 images failed (run again to retry them)"),  # the message it logged
        ("silent", None, FAILED, "it exited without logging how it ended"),
        ("crash-after-end", None, FAILED, "it exited with code 3"),
        ("wait", "cancel", CANCELLED, ""),
        ("wait", "kill", INTERRUPTED, ""),  # killed from outside, before it logged an ending
    ],
)
def test_a_job_ends_as_its_exit_and_its_ending_event_say(demo, how, then, state, message):
    demo.start(how)
    if then is not None:
        assert demo.wait_until(lambda s: demo.logged("pid") is not None or s != RUNNING) == RUNNING
        if then == "cancel":
            assert demo.jobs.cancel()
        else:
            os.kill(demo.logged("pid")["pid"], signal.SIGKILL)
    assert demo.wait_until(lambda s: s not in (RUNNING, "stopping")) == state
    job = demo.jobs.current()
    logged = (demo.logged("failed") or {}).get("message")
    assert (demo.jobs.failure(job, logged) if state == FAILED else "") == message
    assert "working" in demo.jobs.log_tail(job)  # its output, for the page's log view


@pytest.mark.parametrize(
    "ending, exited, cancelled, state",
    [
        ("finished", None, False, FINISHED),  # an older version's job: no exit record, its log decides
        (None, None, True, CANCELLED),
        (None, None, False, INTERRUPTED),  # gone without a word: killed, or the machine restarted
        ("stopped", Exit(0), True, "stopped"),  # a trainer that saved last.pt on our SIGTERM
        (None, Exit(-signal.SIGTERM), True, CANCELLED),
        (None, Exit(130, "interrupted"), True, CANCELLED),  # asked to stop: its exit code is no failure
        ("failed", Exit(2, "error: x"), False, FAILED),
    ],
)
def test_the_ending_rules_for_what_the_runs_above_do_not_reach(ending, exited, cancelled, state):
    assert ended_as(ending, exited, cancelled) == state


# one at a time, re-attach, cancel, strangers ------------------------------------------------------------------------


def test_a_restarted_server_reattaches_refuses_a_second_job_and_cancels_the_first(demo, tmp_path):
    starter = (  # a server process that starts the job, then is gone
        "import sys; from pathlib import Path; from app.background import Background; "
        "Background(Path(sys.argv[1]), '.job.json', '.job.lock').start('demo', Path(sys.argv[2]), sys.argv[3:], "
        "Path(sys.argv[1]) / 'out.log')"
    )
    command = [sys.executable, str(demo.script), str(demo.records), "wait"]
    subprocess.run([sys.executable, "-c", starter, str(tmp_path / "jobs"), str(tmp_path), *command], cwd=REPO,
                   check=True)  # fmt: skip
    restarted = Background(tmp_path / "jobs", ".job.json", ".job.lock")  # knows the job by its job file only
    assert restarted.current().name == "demo" and restarted.alive(restarted.current())
    with pytest.raises(Busy):
        demo.start("finish", restarted)
    demo.wait_until(lambda s: demo.logged("pid") is not None, restarted)
    assert restarted.cancel()
    assert demo.wait_until(lambda s: s != "stopping", restarted) == CANCELLED
    assert restarted.exit_of(restarted.current()) == Exit(-signal.SIGTERM, "")
    assert not restarted.cancel()  # nothing left to cancel
    demo.start("finish", restarted)  # the slot is free again
    assert demo.wait_until(lambda s: s != RUNNING, restarted) == FINISHED


@pytest.fixture
def sleeper():
    """A live process that this app did not start as a job."""
    process = subprocess.Popen(["sleep", "60"])
    yield process
    process.kill()
    process.wait()


def test_a_job_file_naming_a_stranger_is_never_signalled_and_frees_the_slot(demo, sleeper, tmp_path):
    stranger = sleeper  # it took the pid of a job from before a reboot, say
    real = procs.identify(stranger.pid)
    for wrong in ({"start_time": real.start_time + 1}, {"boot_id": "another-boot"}, {"start_time": None}):
        job = {"pid": stranger.pid, "name": "demo", "out": str(tmp_path), "started": "", "command": ["x"],
               "start_time": real.start_time, "boot_id": real.boot_id, **wrong}  # fmt: skip
        (tmp_path / "jobs").mkdir(exist_ok=True)
        (tmp_path / "jobs" / ".job.json").write_text(json.dumps(job))
        jobs = Background(tmp_path / "jobs", ".job.json", ".job.lock")
        assert not jobs.alive(jobs.current()) and not jobs.cancel()
        assert stranger.poll() is None  # never signalled
    demo.start("finish", jobs)  # a new job may start
    assert demo.wait_until(lambda s: s != RUNNING, jobs) == FINISHED and stranger.poll() is None


def test_a_job_file_cannot_make_the_page_show_another_file(tmp_path):
    (tmp_path / "jobs").mkdir()
    for field in ("log", "exit_file"):
        job = {"pid": 1, "name": "demo", "out": str(tmp_path), "started": "", "command": [], field: "/etc/passwd"}
        (tmp_path / "jobs" / ".job.json").write_text(json.dumps(job))
        assert Background(tmp_path / "jobs", ".job.json", ".job.lock").current() is None


def test_an_older_versions_training_job_file_is_recognised_while_it_runs(tiny_checkpoint, tiny_coco, sleeper,
                                                                          tmp_path):  # fmt: skip
    runs, ident = tmp_path / "runs", procs.identify(sleeper.pid)  # here: the trainer an older app started
    (runs / "old").mkdir(parents=True)
    (runs / "old" / "train.log").write_text("loading the data\n")
    job = {"pid": sleeper.pid, "name": "old", "out": str(runs / "old"), "started": "2026-01-01T00:00:00",
           "command": ["python", "-m", "captioning", "train"], "start_time": ident.start_time,
           "boot_id": ident.boot_id}  # fmt: skip
    (runs / ".active_job.json").write_text(json.dumps(job))
    manager = JobManager(runs)
    status = manager.status()
    assert status.running and status.state == "starting" and status.log_tail == "loading the data"
    with pytest.raises(ValueError, match="'old' is still training"):
        manager.start("new", tiny_checkpoint, tiny_coco, "train", steps=2)
    assert manager.cancel()
    sleeper.wait(timeout=10)
    assert manager.status().state == CANCELLED and "cancelled before its first step" in manager.status().summary()[1]


def test_an_older_versions_download_job_file_is_recognised_while_it_runs(mirror, sleeper, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("CAPTIONING_COCO_URL", mirror.url)
    data, ident = tmp_path / "data", procs.identify(sleeper.pid)  # here: the downloader an older app started
    data.mkdir()
    old = {"pid": sleeper.pid, "start_time": ident.start_time, "boot_id": ident.boot_id, "limit": 3}
    (data / ".download.json").write_text(json.dumps(old))
    manager = DownloadManager(data, data / "coco")
    assert manager.status().running
    assert manager.start(3) == "a download is already running"
    assert manager.cancel()
    sleeper.wait(timeout=10)
    assert manager.status().state == CANCELLED and not manager.status().running


# the download's progress, from the records it writes ---------------------------------------------------------------

HALFWAY = """
import json, sys, time
def log(**record):
    with open(sys.argv[1], "a") as f:
        f.write(json.dumps(record) + "\\n")
log(event="progress", stage="annotations", done=24_000_000, total=24_000_000)
print("\\r 1/5 [00:01<00:04]\\r 2/5 [00:02<00:03]", end="", flush=True)  # a terminal bar: not what is read
log(event="progress", stage="images", done=2, total=5)
time.sleep(60)
"""


def test_browse_shows_a_download_halfway_from_its_records_and_cancels_it(monkeypatch, tmp_path):
    point_app(monkeypatch, tmp_path, sample=True)
    data = tmp_path / "data"
    monkeypatch.setenv("CAPTIONING_DATA_DIR", str(data))
    script = tmp_path / "halfway.py"
    script.write_text(HALFWAY)
    manager = DownloadManager(data, data / "coco")  # like another server process: the page re-attaches
    command = [sys.executable, str(script), str(manager.progress_file)]
    manager.jobs.start("download", data / "coco", command, data / ".download.log")
    deadline = time.time() + 30
    while (status := manager.status()).stage != "images":
        assert status.running and time.time() < deadline, status
        time.sleep(0.02)
    assert (status.done, status.total, status.fraction, status.progress_text()) == (2, 5, 0.4, "2/5 images")

    at = open_page("browse")
    bars = [n.proto for n in at.get("progress")]
    assert not at.exception and [(b.value, b.text) for b in bars] == [(40, "Downloading: 2/5 images")]
    next(b for b in at.button if b.label == "Cancel download").click().run()
    while "Last download cancelled" not in text(at):
        assert time.time() < deadline, text(at)
        time.sleep(0.1)
        at.run()
    assert manager.status().state == CANCELLED and any(b.label == "Download" for b in at.button)


@pytest.mark.parametrize("broken", [False, True], ids=["finished", "failed"])
def test_a_real_download_reports_its_progress_and_ending(mirror, monkeypatch, tmp_path, broken):  # noqa: F811
    monkeypatch.setenv("CAPTIONING_COCO_URL", mirror.url)
    if broken:
        (mirror.root / ANNOTATIONS_ZIP).write_bytes(b"broken")
    manager = DownloadManager(tmp_path / "data", tmp_path / "data" / "coco")
    assert manager.start(3) is None
    deadline = time.time() + 120
    while (status := manager.status()).running:
        assert time.time() < deadline, status
        time.sleep(0.1)
    if broken:
        assert status.state == FAILED
        assert "sent a damaged annotations archive twice (BadZipFile: File is not a zip file)" in status.message
    else:
        assert status.state == FINISHED and status.message.startswith("val2017 images: 3 downloaded, 0 already there")
        assert (status.stage, status.done, status.total, status.fraction) == ("images", 3, 3, 1.0)


def test_the_manager_only_offers_to_add_images(mirror, monkeypatch, tmp_path):  # noqa: F811
    monkeypatch.setenv("CAPTIONING_COCO_URL", mirror.url)
    data = tmp_path / "data"
    download_coco(data / "coco", limit=3, base_url=mirror.url, progress=False)
    manager = DownloadManager(data, data / "coco")
    assert manager.held() == 3
    assert manager.start(4998) == "the number of images to add must be between 1 and 4,997"
    assert manager.status() is None  # nothing started
    assert manager.start(1) is None
    assert manager.jobs.current().command[-6:-4] == ["--limit", "4"]  # what it holds, and one more
    deadline = time.time() + 120
    while (status := manager.status()).running:
        assert time.time() < deadline, status
        time.sleep(0.1)
    assert status.state == FINISHED and status.message.startswith("val2017 images: 1 downloaded, 3 already there")
    assert manager.held() == 4
    monkeypatch.setattr("app.downloads.MAX_IMAGES", 4)
    assert manager.start(1) == "coco already holds all 4 val2017 images"
