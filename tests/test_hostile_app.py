"""Every page driven headless with hostile and malformed input: no exception, a clear message, no server file
content, no markup smuggled into the page, and no view stale after its model file changed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest
from adversarial import BAD_IDS, BAD_METRICS_LINES, IMAGES, QUERY_STRINGS, SEED_LOGS, good_metrics_lines
from app_fixtures import chart_specs, image_bytes, open_page, point_app, text

from app import procs
from app.jobs import JobManager
from captioning.data import CocoSplit
from captioning.rundir import read_metrics

PASSWD = "root:x:0:0"


def _clean(at) -> str:
    """The page's text, after checking that nothing raised and no server file leaked into it."""
    assert not at.exception, [e.value for e in at.exception]
    shown = text(at)
    assert PASSWD not in shown and "Traceback" not in shown
    return shown


def test_home_captions_the_good_uploads_beside_hostile_ones(tiny_checkpoint, monkeypatch, tmp_path):
    point_app(monkeypatch, tmp_path, checkpoint=tiny_checkpoint)
    at = open_page("home")
    files = [(name, data, "image/png") for name, (data, _) in IMAGES.items()] + [
        ("good.png", image_bytes(), "image/png")
    ]
    at.file_uploader[0].set_value(files).run()
    shown = _clean(at)
    refused = [name for name, (_, ok) in IMAGES.items() if not ok]
    assert len(at.error) == len(refused) and all(any(e.value.startswith(n) for e in at.error) for n in refused)
    assert shown.count("### ") >= len(IMAGES) - len(refused) + 1  # a caption heading for each readable image
    memo = at.session_state["caption_memo"]
    assert all(r.image is None or max(r.image.size) <= 1024 for r in memo.values())  # thumbnails, not decodes


def test_home_shows_a_new_model_written_over_the_old_file(tiny_checkpoint, tiny_attention_checkpoint, monkeypatch,
                                                          tmp_path):  # fmt: skip
    model = tmp_path / "model" / "default.pt"
    model.parent.mkdir()
    shutil.copy(tiny_checkpoint, model)
    point_app(monkeypatch, tmp_path, checkpoint=model)
    at = open_page("home")
    at.file_uploader[0].set_value(("red.png", image_bytes(), "image/png")).run()
    assert "showtell decoder" in _clean(at)
    tabs_before = len(at.tabs)
    shutil.copy(tiny_attention_checkpoint, model)  # retrained in place: same path, new file
    os.utime(model, ns=(time.time_ns(), time.time_ns() + 10**9))
    at.run()
    assert "attention decoder" in _clean(at) and len(at.tabs) > tabs_before  # captioned again: an Attention tab


@pytest.mark.parametrize("raw", QUERY_STRINGS)
def test_browse_survives_any_image_link(raw, tiny_checkpoint, tiny_coco, monkeypatch, tmp_path):
    point_app(monkeypatch, tmp_path, checkpoint=tiny_checkpoint, coco=tiny_coco)
    at = open_page("browse")
    at.query_params["image"] = raw
    at.run()
    _clean(at)
    for warning in at.warning:
        assert "](http" not in warning.value and "<script>" not in warning.value  # shown as text, not markup


def test_browse_reads_a_dataset_with_malformed_records(tiny_checkpoint, tiny_coco, monkeypatch, tmp_path):
    root = tmp_path / "coco"
    shutil.copytree(tiny_coco, root)
    ann = root / "annotations" / "captions_val.json"
    data = json.loads(ann.read_text())
    data["images"] += [{"id": 900}, {"id": 901, "file_name": "/etc/passwd"}, {"id": "x", "file_name": "a.jpg"}]
    data["annotations"] += [{"id": 9000, "image_id": 1, "caption": None}, {"id": 9001, "image_id": [2]}]
    ann.write_text(json.dumps(data))
    point_app(monkeypatch, tmp_path, checkpoint=tiny_checkpoint, coco=root)
    shown = _clean(open_page("browse"))
    assert f"of {len(CocoSplit.load(tiny_coco, 'val'))} images in val" in shown


def test_browse_with_an_unreadable_annotations_file_says_so(tiny_checkpoint, tiny_coco, monkeypatch, tmp_path):
    root = tmp_path / "coco"
    shutil.copytree(tiny_coco, root)
    (root / "annotations" / "captions_val.json").write_text('{"images": [1, 2')
    point_app(monkeypatch, tmp_path, checkpoint=tiny_checkpoint, coco=root)
    at = open_page("browse")
    _clean(at)
    assert any("is not a COCO captions file" in e.value for e in at.error)


def test_no_page_takes_a_server_path(tiny_checkpoint, tiny_coco, monkeypatch, tmp_path):
    point_app(monkeypatch, tmp_path, checkpoint=tiny_checkpoint, coco=tiny_coco)
    for page in ("browse", "finetune"):
        at = open_page(page)
        labels = [t.label.lower() for t in at.text_input]
        assert not [label for label in labels if "root" in label or "file" in label or "path" in label], labels


def _launch(at, ids: tuple[str, bytes] | None, name: str = "from-page"):
    at.text_input(key="run_name").set_value(name)
    if ids is not None:
        next(u for u in at.file_uploader if u.label.startswith("Image ids")).set_value((*ids, "text/plain"))
    next(n for n in at.number_input if n.label == "How many").set_value(2)
    next(b for b in at.button if b.label.startswith("Fine-tune on")).click()
    return at.run()


@pytest.mark.slow
def test_finetune_refuses_bad_ids_uploads_and_keeps_good_ones_in_the_run(tiny_checkpoint, tiny_coco, monkeypatch,
                                                                         tmp_path):  # fmt: skip
    runs = point_app(monkeypatch, tmp_path, checkpoint=tiny_checkpoint, coco=tiny_coco)
    at = open_page("finetune")
    for name, data in {**BAD_IDS, "passwd.txt": open("/etc/passwd", "rb").read(), "unknown": b"123456"}.items():
        _launch(at, (name, data))
        _clean(at)
        assert at.error and at.error[0].value.startswith("Could not start"), name
    assert not (runs / "from-page").exists() and JobManager(runs).current() is None
    ids = CocoSplit.load(tiny_coco, "train").ids[:3]
    at = open_page("finetune")
    _launch(at, ("ids.json", json.dumps(ids).encode()))
    _clean(at)
    manager = JobManager(runs)
    job = manager.current()
    written = runs / "from-page" / "train_ids.txt"
    assert job is not None and str(written) in job.command and written.read_text().split() == [str(i) for i in ids]
    deadline = time.time() + 240
    while manager.status().running and time.time() < deadline:
        time.sleep(0.5)
    status = manager.status()
    assert status.state == "finished", status.log_tail
    start = next(r for r in read_metrics(runs / "from-page" / "metrics.jsonl") if r.get("event") == "start")
    assert start["images"] == 3  # it trained on the uploaded ids only


def test_logs_plot_the_good_records_of_malformed_logs(monkeypatch, tmp_path):
    runs = point_app(monkeypatch, tmp_path)
    (runs / "damaged").mkdir(parents=True)
    good = good_metrics_lines()
    (runs / "damaged" / "metrics.jsonl").write_text("\n".join(good[:2] + BAD_METRICS_LINES + good[2:]) + "\n")
    at = open_page("logs")
    shown = _clean(at)
    assert f"{len(BAD_METRICS_LINES)} malformed line(s) skipped" in shown
    assert {spec["title"] for spec in chart_specs(at)} >= {"Training loss", "Validation CIDEr"}  # the good ones
    for name, log in SEED_LOGS.items():
        at.file_uploader[0].set_value((name, log.encode(), "text/plain")).run()
        assert "1 malformed line(s) skipped" in _clean(at), name
    at.file_uploader[0].set_value(("binary.log", bytes(range(256)) * 100, "text/plain")).run()
    assert "has no training lines" in _clean(at)


def test_a_stale_job_file_naming_a_stranger_offers_a_new_run_and_cancel_spares_it(tiny_checkpoint, tiny_coco,
                                                                                   monkeypatch, tmp_path):  # fmt: skip
    runs = point_app(monkeypatch, tmp_path, checkpoint=tiny_checkpoint, coco=tiny_coco)
    stranger = subprocess.Popen(["sleep", "60"])  # took the pid of a job from before a reboot, say
    try:
        real = procs.identify(stranger.pid)
        base = {"pid": stranger.pid, "name": "old", "out": str(runs / "old"), "started": "2026-01-01T00:00:00",
                "command": ["python", "-m", "captioning", "train", "--coco-root", str(tiny_coco)]}  # fmt: skip
        for variant in ({}, {"start_time": real.start_time + 1, "boot_id": real.boot_id},
                        {"start_time": real.start_time, "boot_id": "another-boot"}):  # fmt: skip
            runs.mkdir(parents=True, exist_ok=True)
            (runs / ".active_job.json").write_text(json.dumps({**base, **variant}))
            at = open_page("finetune")
            shown = _clean(at)
            assert any(b.label.startswith("Fine-tune on") for b in at.button), shown  # the form, not "training"
            assert not JobManager(runs).cancel()
            assert stranger.poll() is None  # never signalled
    finally:
        stranger.send_signal(signal.SIGKILL)
        stranger.wait()
