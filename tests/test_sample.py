"""The embedded COCO sample and a first run without data: licenses and attribution, Browse and Fine-tune on the
sample by default, Home's examples, and the script that rebuilds the sample."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import socket
import time
from pathlib import Path

import pytest
from app_fixtures import of_type, open_page, point_app, text
from conftest import REPO, SHARED_COCO, needs_shared_coco
from fixtures import make_coco
from PIL import Image

from app import catalog
from app.downloads import DownloadManager
from app.jobs import JobManager
from captioning.data import SAMPLE_ROOT, CocoSplit
from captioning.download import download_coco
from captioning.inference import Captioner

FREE = {4, 5, 7, 8}


def _build_sample_module():
    spec = importlib.util.spec_from_file_location("build_sample", REPO / "scripts" / "build_sample.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _images(root: Path) -> list[dict]:
    return [im for s in ("train", "val")
            for im in json.loads((root / "annotations" / f"captions_{s}.json").read_text())["images"]]  # fmt: skip


def test_every_shipped_image_has_a_free_license_and_an_attribution_row():
    rows = list(csv.DictReader(open(SAMPLE_ROOT / "ATTRIBUTION.csv", encoding="utf-8")))
    assert set(rows[0]) == {"coco_id", "split", "license_id", "license_name", "license_url", "flickr_url", "coco_url"}
    by_id = {int(r["coco_id"]): r for r in rows}
    images = _images(SAMPLE_ROOT)
    assert {im["id"] for im in images} == set(by_id) and len(rows) == len(images)
    for im in images:
        assert im["license"] in FREE and int(by_id[im["id"]]["license_id"]) == im["license"]
        assert by_id[im["id"]]["flickr_url"].startswith("http") and by_id[im["id"]]["coco_url"].startswith("http")
    on_disk = {int(p.stem) for s in ("train", "val") for p in (SAMPLE_ROOT / s).iterdir()}
    assert on_disk == set(by_id)  # no image without its row, no row without its image


def test_the_sample_is_small_resized_and_in_the_coco_layout():
    train, val = CocoSplit.load(SAMPLE_ROOT, "train"), CocoSplit.load(SAMPLE_ROOT, "val")
    assert 140 <= len(train) <= 160 and 55 <= len(val) <= 65 and not set(train.ids) & set(val.ids)
    assert all(len(train.captions[i]) >= 5 for i in train.ids) and all(len(val.captions[i]) >= 5 for i in val.ids)
    total = sum(p.stat().st_size for p in SAMPLE_ROOT.rglob("*") if p.is_file())
    assert total < 8_000_000
    for path in [*train.files.values(), *val.files.values()]:
        with Image.open(path) as image:
            assert min(image.size) <= 256
    readme = (SAMPLE_ROOT / "README.md").read_text()
    assert "CC BY 4.0" in readme and "COCO Consortium" in readme
    assert "CC BY 4.0" in (REPO / "README.md").read_text()


def test_build_script_keeps_only_free_licenses_and_replaces_the_sample_whole(tmp_path):
    build_sample = _build_sample_module()
    root = make_coco(tmp_path / "coco", {"train": 24, "val": 12})
    for split in ("train", "val"):  # licenses 1..8 in turn: half of them free
        path = root / "annotations" / f"captions_{split}.json"
        data = json.loads(path.read_text())
        for k, im in enumerate(data["images"]):
            im["license"] = k % 8 + 1
        path.write_text(json.dumps(data))
    out = tmp_path / "sample"
    (out / "stale").mkdir(parents=True)  # what was there before goes
    build_sample.build(root, out, train=6, val=4)
    images = _images(out)
    assert len(images) == 10 and {im["license"] for im in images} <= FREE and not (out / "stale").exists()
    assert len(list(csv.DictReader(open(out / "ATTRIBUTION.csv")))) == 10
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind
    with pytest.raises(SystemExit, match="no annotations"):
        build_sample.build(tmp_path / "nothing", tmp_path / "x")


@needs_shared_coco
def test_build_script_reproduces_the_shipped_sample(tmp_path):
    _build_sample_module().build(SHARED_COCO, tmp_path / "sample")
    assert sorted(im["id"] for im in _images(tmp_path / "sample")) == sorted(im["id"] for im in _images(SAMPLE_ROOT))
    shipped = (SAMPLE_ROOT / "examples.json").read_text()
    assert (tmp_path / "sample" / "examples.json").read_text() == shipped


def test_browse_shows_the_sample_when_there_is_no_other_data(monkeypatch, tmp_path):
    point_app(monkeypatch, tmp_path, sample=True)
    at = open_page("browse")
    assert not at.exception
    shown = text(at)
    assert "No COCO captions" not in shown and "embedded sample" in shown
    assert len(of_type(at, "image")) == 12 and "60 of 60 images in val match" in shown
    image_id = CocoSplit.load(SAMPLE_ROOT, "val").ids[3]
    at.query_params["image"] = str(image_id)
    at.run()
    refs = CocoSplit.load(SAMPLE_ROOT, "val").captions[image_id]
    assert not at.exception and len(refs) >= 5 and all(r in text(at) for r in refs)


def test_home_captions_a_clicked_example_beside_its_references(tiny_checkpoint, monkeypatch, tmp_path):
    point_app(monkeypatch, tmp_path, checkpoint=tiny_checkpoint, sample=True)
    at = open_page("home")
    examples = catalog.examples()
    assert 6 <= len(examples) <= 8 and len(of_type(at, "image")) == len(examples)
    first = examples[0]
    at.button(key=f"example-{first.image_id}").click().run()
    assert not at.exception
    expected = Captioner.from_checkpoint(tiny_checkpoint).caption([Image.open(first.path)])[0].text
    assert f"### {expected}" in [m.value for m in at.markdown]
    shown = text(at)
    assert "Reference captions" in shown and all(r.strip()[:30] in shown.replace("\\", "") for r in first.references)


@pytest.mark.slow
def test_a_fine_tune_on_the_sample_finishes_and_joins_homes_model_picker(tiny_checkpoint, monkeypatch, tmp_path):
    runs = point_app(monkeypatch, tmp_path, checkpoint=tiny_checkpoint, sample=True, cache=tmp_path / "cache")
    at = open_page("finetune")
    assert not at.exception and "embedded sample" in text(at) and "3 to 4 minutes" in text(at)
    at.text_input(key="run_name").set_value("on-sample")
    next(n for n in at.number_input if n.label == "How many").set_value(20)
    next(b for b in at.button if b.label.startswith("Fine-tune on")).click()
    at.run()
    assert not at.exception and not at.error
    watcher, deadline = JobManager(runs), time.monotonic() + 600
    while (status := watcher.status()) is not None and status.running and time.monotonic() < deadline:
        time.sleep(1)
    assert status.state == "finished", status.log_tail
    home = open_page("home")
    labels = next(s for s in home.selectbox if s.label == "Checkpoint").options
    assert any(label.startswith("on-sample") for label in labels)


def test_browse_downloads_a_coco_sample_in_the_background_with_progress(mirror, monkeypatch, tmp_path):  # noqa: F811
    point_app(monkeypatch, tmp_path, sample=True)
    data = tmp_path / "data"
    monkeypatch.setenv("CAPTIONING_DATA_DIR", str(data))
    monkeypatch.setenv("CAPTIONING_COCO_URL", mirror.url)
    at = open_page("browse")
    next(n for n in at.number_input if n.label == "Images to add").set_value(3)  # of the mirror's 5
    next(b for b in at.button if b.label == "Download").click()
    at.run()
    assert not at.exception and not at.warning
    manager = DownloadManager(data, data / "coco")
    deadline = time.monotonic() + 120
    while (status := manager.status()) is not None and status.running and time.monotonic() < deadline:
        time.sleep(0.2)
    assert status is not None and not status.running and "val2017 images: 3 downloaded" in status.message
    assert len(CocoSplit.load(data / "coco", "val2017")) == 3
    at = open_page("browse")  # the new root is offered, before the sample
    assert next(s for s in at.selectbox if s.label == "Dataset").value == str(data / "coco")


def _wait_for(manager: DownloadManager):
    deadline = time.monotonic() + 120
    while (status := manager.status()) is not None and status.running and time.monotonic() < deadline:
        time.sleep(0.2)
    return status


def test_browse_says_what_data_coco_holds_and_a_download_only_adds(mirror, monkeypatch, tmp_path):  # noqa: F811
    point_app(monkeypatch, tmp_path, sample=True)
    data = tmp_path / "data"
    monkeypatch.setenv("CAPTIONING_DATA_DIR", str(data))
    monkeypatch.setenv("CAPTIONING_COCO_URL", mirror.url)
    download_coco(data / "coco", limit=3, base_url=mirror.url, progress=False)
    before = json.loads((data / "coco" / "annotations" / "captions_val2017.json").read_text())
    at = open_page("browse")  # data/coco itself: the panel offers more
    assert not at.exception and "data/coco holds 3 of 5,000 val2017 images" in text(at)
    assert "3 of 3 images in val2017 match" in text(at)
    more = next(n for n in at.number_input if n.label == "Images to add")
    assert (more.proto.min, more.proto.max) == (1, 4997)  # never fewer than it holds
    more.set_value(2)
    next(b for b in at.button if b.label == "Download").click()
    at.run()
    assert "val2017 images: 2 downloaded, 3 already there" in _wait_for(DownloadManager(data, data / "coco")).message
    at.run()  # what the page does once the download ends: the new images are there
    assert not at.exception and "5 of 5 images in val2017 match" in text(at)
    after = json.loads((data / "coco" / "annotations" / "captions_val2017.json").read_text())
    assert all(r in after["images"] for r in before["images"]) and all(
        r in after["annotations"] for r in before["annotations"]
    )
    monkeypatch.setattr("app.downloads.MAX_IMAGES", 5)  # now it holds all of them: nothing left to offer
    at = open_page("browse")
    assert not at.exception and not [n for n in at.number_input if n.label == "Images to add"]


def test_browse_shows_images_that_arrive_after_it_read_the_split(mirror, monkeypatch, tmp_path):  # noqa: F811
    point_app(monkeypatch, tmp_path, sample=True)
    data = tmp_path / "data"
    monkeypatch.setenv("CAPTIONING_DATA_DIR", str(data))
    download_coco(data / "coco", base_url=mirror.url, progress=False)
    folder, away = data / "coco" / "val2017", tmp_path / "away"
    away.mkdir()
    late = sorted(folder.iterdir())[:2]
    for path in late:  # still on their way, while the captions file already lists them
        path.rename(away / path.name)
    loads, real = [], CocoSplit.load.__func__
    monkeypatch.setattr(CocoSplit, "load", classmethod(lambda cls, *a, **k: loads.append(a) or real(cls, *a, **k)))
    at = open_page("browse")
    assert "3 of 3 images in val2017 match" in text(at) and len(loads) == 1
    at.run()
    assert len(loads) == 1  # nothing changed: the cached split is used
    seen = folder.stat()
    for path in late:
        (away / path.name).rename(path)
    os.utime(folder, ns=(seen.st_atime_ns, seen.st_mtime_ns))  # they arrived within the same clock tick
    at.run()
    assert not at.exception and "5 of 5 images in val2017 match" in text(at) and len(loads) == 2


def test_browse_download_says_so_at_once_when_offline(monkeypatch, tmp_path):
    point_app(monkeypatch, tmp_path, sample=True)
    with socket.socket() as sock:  # a local port nothing listens on
        sock.bind(("127.0.0.1", 0))
        monkeypatch.setenv("CAPTIONING_COCO_URL", f"http://127.0.0.1:{sock.getsockname()[1]}")
    monkeypatch.setenv("CAPTIONING_DATA_DIR", str(tmp_path / "data"))
    at = open_page("browse")
    next(b for b in at.button if b.label == "Download").click()
    at.run()
    assert not at.exception and "offline" in at.warning[0].value
    assert DownloadManager(tmp_path / "data", tmp_path / "data" / "coco").status() is None  # nothing started
