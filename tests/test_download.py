"""captioning.download against a local fake COCO mirror on 127.0.0.1: the layout, resume, retries, progress."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from download_mirror import (
    IMAGE_IDS,
    ZIP_PATH,
    Mirror,
    _captions_json,
    _dead_url,
    _download,
    _file_name,
    _image_path,
    _jpeg,
)

from captioning.cli import build_parser, main
from captioning.download import ANNOTATIONS_ZIP, DownloadError, ProgressFile, download_coco


def test_full_download_gives_standard_coco_layout(mirror: Mirror, tmp_path: Path):
    dest = tmp_path / "coco"
    summary = _download(mirror, dest)

    assert summary.annotations == dest / "annotations" / "captions_val2017.json"
    assert summary.images_dir == dest / "val2017"
    assert (summary.downloaded, summary.skipped, summary.failed) == (5, 0, [])
    assert json.loads(summary.annotations.read_text()) == _captions_json()
    for i in IMAGE_IDS:
        assert (dest / "val2017" / _file_name(i)).read_bytes() == mirror.data(_image_path(i))
    assert (dest / "annotations_trainval2017.zip").read_bytes() == mirror.data(ZIP_PATH)
    assert not list(dest.rglob("*.part")) and not list(dest.rglob("*.tmp"))


def test_limit_then_no_limit_fetches_only_the_rest(mirror: Mirror, tmp_path: Path):
    dest = tmp_path / "coco"
    summary = _download(mirror, dest, limit=2)

    assert summary.downloaded == 2
    assert sorted(p.name for p in (dest / "val2017").iterdir()) == [
        _file_name(3),
        _file_name(7),
    ]
    captions = json.loads(summary.annotations.read_text())
    assert [image["id"] for image in captions["images"]] == [3, 7]
    assert sorted({a["image_id"] for a in captions["annotations"]}) == [3, 7]
    assert len(captions["annotations"]) == 10
    assert "subset: 2 of 5 images" in captions["info"]["description"]

    mirror.requests.clear()
    summary = _download(mirror, dest)
    assert (summary.downloaded, summary.skipped) == (3, 2)
    assert mirror.image_gets() == sorted(_image_path(i) for i in (19, 42, 88))
    assert mirror.gets(ZIP_PATH) == []  # the kept zip is reused
    assert json.loads(summary.annotations.read_text()) == _captions_json()


def test_rerun_downloads_nothing(mirror: Mirror, tmp_path: Path):
    dest = tmp_path / "coco"
    _download(mirror, dest)
    mirror.requests.clear()

    summary = _download(mirror, dest)
    assert (summary.downloaded, summary.skipped, summary.failed) == (0, 5, [])
    assert mirror.requests == []


@pytest.mark.parametrize(
    ("url_path", "local"),
    [
        (_image_path(19), f"val2017/{_file_name(19)}"),
        (ZIP_PATH, "annotations_trainval2017.zip"),
    ],
    ids=["image", "zip"],
)
def test_interrupted_download_resumes_with_range(mirror: Mirror, tmp_path: Path, url_path, local):
    dest = tmp_path / "coco"
    original = mirror.data(url_path)
    half = len(original) // 2
    (dest / local).parent.mkdir(parents=True)
    (dest / (local + ".part")).write_bytes(original[:half])

    summary = _download(mirror, dest)
    assert (summary.downloaded, summary.failed) == (5, [])
    assert mirror.gets(url_path) == [f"bytes={half}-"]
    assert (dest / local).read_bytes() == original
    assert json.loads(summary.annotations.read_text()) == _captions_json()


@pytest.mark.parametrize("server_ranges", [False, True], ids=["range-ignored", "part-complete"])
def test_unusable_part_file_restarts_from_zero(mirror: Mirror, tmp_path: Path, server_ranges):
    # A server without Range support answers 200; a .part already whole gets a 416.
    mirror.ranges = server_ranges
    original = mirror.data(_image_path(3))
    dest = tmp_path / "coco"
    (dest / "val2017").mkdir(parents=True)
    stale = original if server_ranges else b"stale bytes"
    (dest / "val2017" / (_file_name(3) + ".part")).write_bytes(stale)

    _download(mirror, dest)
    restart = [None] if server_ranges else []  # after the 416
    assert mirror.gets(_image_path(3)) == [f"bytes={len(stale)}-", *restart]
    assert (dest / "val2017" / _file_name(3)).read_bytes() == original


def test_response_cut_short_is_resumed(mirror: Mirror, tmp_path: Path):
    dest = tmp_path / "coco"
    original = mirror.data(_image_path(42))
    mirror.cut[_image_path(42)] = 100

    summary = _download(mirror, dest)
    assert summary.failed == []
    assert mirror.gets(_image_path(42)) == [None, "bytes=100-"]
    assert (dest / "val2017" / _file_name(42)).read_bytes() == original


def test_server_errors_are_retried(mirror: Mirror, tmp_path: Path):
    dest = tmp_path / "coco"
    mirror.fail[_image_path(7)] = 2
    mirror.fail[ZIP_PATH] = 1

    summary = _download(mirror, dest)
    assert (summary.downloaded, summary.failed) == (5, [])
    assert len(mirror.gets(_image_path(7))) == 3
    assert (dest / "val2017" / _file_name(7)).read_bytes() == mirror.data(_image_path(7))


def test_image_that_keeps_failing_is_reported(mirror: Mirror, tmp_path: Path):
    mirror.fail[_image_path(7)] = 99
    summary = _download(mirror, tmp_path / "coco", retries=1)
    assert summary.failed == [_file_name(7)]
    assert len(mirror.gets(_image_path(7))) == 2  # first try + 1 retry
    assert summary.downloaded == 4


def test_missing_image_is_listed_and_not_retried(mirror: Mirror, tmp_path: Path):
    dest = tmp_path / "coco"
    (mirror.root / "val2017" / _file_name(88)).unlink()

    summary = _download(mirror, dest)
    assert summary.failed == [_file_name(88)]
    assert summary.downloaded == 4
    assert len(mirror.gets(_image_path(88))) == 1
    assert not (dest / "val2017" / _file_name(88)).exists()


def test_damaged_zip_is_fetched_again(mirror: Mirror, tmp_path: Path):
    dest = tmp_path / "coco"
    dest.mkdir()
    (dest / "annotations_trainval2017.zip").write_bytes(b"not a zip at all")

    summary = _download(mirror, dest)
    assert len(mirror.gets(ZIP_PATH)) == 1
    assert json.loads(summary.annotations.read_text()) == _captions_json()


def test_mirror_with_broken_zip_gives_clear_error(mirror: Mirror, tmp_path: Path):
    (mirror.root / ANNOTATIONS_ZIP).write_bytes(b"broken")
    with pytest.raises(DownloadError, match=r"sent a damaged annotations archive twice \(BadZipFile: File is not"):
        _download(mirror, tmp_path / "coco")
    assert len(mirror.gets(ZIP_PATH)) == 2  # refetched once, then gave up


def test_unreachable_host_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("no_proxy", "*")
    url = _dead_url()
    with pytest.raises(DownloadError, match=rf"cannot reach {re.escape(url)}.*internet"):
        download_coco(tmp_path / "coco", base_url=url, progress=False, backoff=0)


def test_host_gone_with_zip_kept_says_so(mirror: Mirror, tmp_path: Path):
    dest = tmp_path / "coco"
    _download(mirror, dest, limit=1)
    url = _dead_url()  # images still to fetch, but the host is gone
    with pytest.raises(DownloadError, match=f"cannot reach {re.escape(url)}"):
        download_coco(dest, base_url=url, progress=False, backoff=0)


def test_bad_split_names_the_allowed_ones(tmp_path: Path):
    with pytest.raises(ValueError, match="train2017, val2017"):
        download_coco(tmp_path / "coco", split="test2015", progress=False)


def test_cli_reports_failures(mirror: Mirror, tmp_path: Path, capsys):
    (mirror.root / "val2017" / _file_name(88)).unlink()
    parser = build_parser()
    dest = tmp_path / "coco"
    args = parser.parse_args(["download", "--dest", str(dest), "--base-url", mirror.url])
    assert args.split == "val2017" and args.limit is None

    assert args.func(args) == 1
    out = capsys.readouterr().out
    assert "4 downloaded" in out and _file_name(88) in out

    (mirror.root / "val2017" / _file_name(88)).write_bytes(_jpeg(88))
    assert args.func(args) == 0
    assert "1 downloaded, 4 already there, 0 failed" in capsys.readouterr().out


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_progress_records_follow_the_zip_then_the_images(mirror: Mirror, tmp_path: Path):
    path = tmp_path / "progress.jsonl"
    _download(mirror, tmp_path / "coco", limit=3, on_progress=ProgressFile(path))
    size = len(mirror.data(ZIP_PATH))
    records = _records(path)
    assert {r["event"] for r in records} == {"progress"}
    assert records[0] == {"event": "progress", "stage": "annotations", "done": size, "total": size}
    assert [(r["stage"], r["done"], r["total"]) for r in records[1:]] == [("images", n, 3) for n in range(4)]

    (tmp_path / "coco" / "val2017" / _file_name(7)).unlink()  # a rerun: the zip is kept, 2 of 3 images are there
    _download(mirror, tmp_path / "coco", limit=3, on_progress=ProgressFile(path))
    assert [(r["stage"], r["done"], r["total"]) for r in _records(path)] == [("images", 2, 3), ("images", 3, 3)]


def test_cli_writes_progress_and_how_it_ended_as_json_lines(mirror: Mirror, tmp_path: Path, capsys):
    dest, path = tmp_path / "coco", tmp_path / "progress.jsonl"
    argv = ["download", "--dest", str(dest), "--limit", "2", "--progress-jsonl", str(path), "--base-url"]
    assert main([*argv, mirror.url]) == 0
    *progress, end = _records(path)
    assert progress and progress[-1] == {"event": "progress", "stage": "images", "done": 2, "total": 2}
    assert end["event"] == "finished" and (end["downloaded"], end["skipped"], end["failed"]) == (2, 0, 0)
    assert end["message"] == capsys.readouterr().out.strip()  # what the terminal says

    (mirror.root / "val2017" / _file_name(88)).unlink()
    assert main([*argv[:3], "--progress-jsonl", str(path), "--base-url", mirror.url]) == 1  # all 5: one is gone
    end = _records(path)[-1]
    assert end["event"] == "failed" and end["message"].endswith(
        f"failed: {_file_name(88)} (HTTP 404); run again to retry them"
    )

    url = _dead_url()
    assert main(["download", "--dest", str(tmp_path / "new"), "--progress-jsonl", str(path), "--base-url", url]) == 2
    end = _records(path)[-1]
    assert end["event"] == "failed" and end["message"].startswith(f"cannot reach {url}")
    assert capsys.readouterr().err.splitlines()[-1] == f"error: {end['message']}"  # what the terminal says
