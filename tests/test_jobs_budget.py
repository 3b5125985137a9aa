"""app.jobs: what a visitor's Fine-tune budget bounds (images extracted, validations, wall time), and the page's
view of each stage of a run (extraction, training, validation)."""

from __future__ import annotations

import sys

import pytest
from app_fixtures import fake_python, wait_for

from app import jobs
from app.jobs import JobError, JobManager

FAKE_TRAINER = f"""#!{sys.executable}
# Stand-in for `python -m captioning train`: logs its extraction's progress like it, then waits to be stopped.
import json, signal, sys, time
from pathlib import Path
out = Path(sys.argv[sys.argv.index("--out") + 1])
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
with open(out / "metrics.jsonl", "a") as log:
    log.write(json.dumps({{"kind": "event", "event": "progress", "step": 0, "epoch": 0, "stage": "features train",
                           "done": 20, "total": 100}}) + "\\n")
time.sleep(60)
"""


@pytest.fixture
def manager(tmp_path) -> JobManager:
    return JobManager(tmp_path / "runs", python=fake_python(tmp_path, FAKE_TRAINER))


def test_a_run_from_the_app_extracts_a_bounded_sample_validates_a_bounded_number_of_times_and_has_a_deadline(
    manager, tiny_checkpoint, tiny_coco, monkeypatch
):
    monkeypatch.setattr(jobs, "MAX_TRAIN_IMAGES", 5)  # tiny_coco has 24 train and 8 val images
    monkeypatch.setattr(jobs, "MAX_VAL_IMAGES", 3)
    job = manager.start("budget", tiny_checkpoint, tiny_coco, "train", val_split="val", epochs=2000, minutes=3)
    train_ids = (job.out_dir / "train_ids.txt").read_text().split()
    val_ids = (job.out_dir / "val_ids.txt").read_text().split()
    assert len(train_ids) == 5 and len(set(train_ids)) == 5 and len(val_ids) == 3
    command = " ".join(job.command)
    assert "--max-validations 10" in command and "--max-minutes 3.0" in command
    assert f"--train-ids {job.out_dir / 'train_ids.txt'}" in command
    status = wait_for(manager, lambda s: s.stage is not None)
    assert status.progress_text() == "Extracting image features (train): 20 of 100 images"
    assert status.fraction == pytest.approx(0.2)
    manager.cancel()
    wait_for(manager, lambda s: not s.running)


def test_a_budget_beyond_the_apps_limits_is_refused(manager, tiny_checkpoint, tiny_coco, monkeypatch):
    monkeypatch.setattr(jobs, "MAX_TRAIN_IMAGES", 5)
    args = dict(base=tiny_checkpoint, data=tiny_coco, split="train", steps=10)
    with pytest.raises(JobError, match="at most 5"):
        manager.start("many", train_ids=list(range(1, 7)), **args)
    for minutes in (0, jobs.MAX_MINUTES + 1):
        with pytest.raises(JobError, match="time budget"):
            manager.start("late", minutes=minutes, **args)
    assert manager.current() is None
