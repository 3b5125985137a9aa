"""captioning.download against hostile or damaged input: a download only adds, bodies that are not images, damaged
kept parts, file modes."""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path

import pytest
from adversarial import BROKEN_ANNOTATIONS, IMAGES, NOT_IMAGE_BODIES, damaged_zips
from download_mirror import (
    IMAGE_IDS,
    MEMBER,
    ZIP_PATH,
    Mirror,
    _annotations_zip,
    _captions_json,
    _download,
    _file_name,
    _image_path,
    _jpeg,
)
from PIL import Image

from captioning.cli import main
from captioning.download import ANNOTATIONS_ZIP, DownloadError
from captioning.io import umask

# a download only adds (issue #22) -----------------------------------------------------------------------------------


def _state(dest: Path) -> tuple[bytes, int, dict[str, bytes]]:
    """What a user has: the captions file (bytes and time) and every image."""
    path = dest / "annotations" / "captions_val2017.json"
    return path.read_bytes(), path.stat().st_mtime_ns, {p.name: p.read_bytes() for p in (dest / "val2017").iterdir()}


@pytest.mark.parametrize(("first", "then"), [(None, 1), (None, 4), (3, 1), (3, 3), (2, 2)])
def test_a_smaller_limit_after_a_bigger_one_changes_nothing(mirror: Mirror, tmp_path: Path, first, then):
    dest = tmp_path / "coco"
    _download(mirror, dest, limit=first)
    before = _state(dest)
    mirror.requests.clear()

    summary = _download(mirror, dest, limit=then)
    assert _state(dest) == before  # not a byte, not even the file's time
    assert mirror.requests == []  # nothing fetched, the zip reused
    assert (summary.listed, summary.added, summary.downloaded, summary.skipped) == (first or 5, 0, 0, first or 5)


def test_a_download_merges_with_the_captions_already_there(mirror: Mirror, tmp_path: Path):
    # A captions file made by hand: an image the mirror lacks, its own record and an extra caption for one it has,
    # a malformed record.
    dest = tmp_path / "coco"
    mine = {
        "images": [{"id": 1000, "file_name": "mine.jpg"}, {"id": 42, "file_name": _file_name(42)}, {"id": "x"}],
        "annotations": [{"id": 1, "image_id": 1000, "caption": "my photo"},
                        {"id": 99999, "image_id": 42, "caption": "my own caption of 42"}],
    }  # fmt: skip
    (dest / "annotations").mkdir(parents=True)
    (dest / "annotations" / "captions_val2017.json").write_text(json.dumps(mine))
    (dest / "val2017").mkdir()
    (dest / "val2017" / "mine.jpg").write_bytes(_jpeg(1))

    summary = _download(mirror, dest, limit=3)  # it holds 42 of the mirror's: the two lowest others are added
    assert mirror.image_gets() == sorted(_image_path(i) for i in (3, 7, 42))
    for limit, ids in [(3, {1000, 42, 3, 7}), (None, {1000, *IMAGE_IDS})]:
        summary = _download(mirror, dest, limit=limit)
        captions = json.loads(summary.annotations.read_text())
        assert all(r in captions["images"] for r in mine["images"])  # kept as they were
        assert all(r in captions["annotations"] for r in mine["annotations"])
        assert {im["id"] for im in captions["images"]} - {"x"} == ids and summary.listed == len(ids)
        of_42 = sorted(a["id"] for a in captions["annotations"] if a["image_id"] == 42)
        assert of_42 == [420, 421, 422, 423, 424, 99999]  # the union of the captions
        assert len(captions["annotations"]) == 2 + 5 * (len(ids) - 1)  # none twice
    assert (dest / "val2017" / "mine.jpg").read_bytes() == _jpeg(1)


@pytest.mark.parametrize("kind", sorted(BROKEN_ANNOTATIONS))
def test_a_captions_file_that_cannot_be_read_is_never_replaced(mirror: Mirror, tmp_path: Path, kind):
    path = tmp_path / "coco" / "annotations" / "captions_val2017.json"
    path.parent.mkdir(parents=True)
    path.write_text(BROKEN_ANNOTATIONS[kind])
    with pytest.raises(DownloadError, match=r"is not a COCO captions file \(.*\); a download only adds to it"):
        _download(mirror, tmp_path / "coco")
    assert path.read_text() == BROKEN_ANNOTATIONS[kind] and mirror.image_gets() == []


def test_cli_limit_below_what_is_there_removes_nothing_and_says_so(mirror: Mirror, tmp_path: Path, capsys):
    argv = ["download", "--dest", str(tmp_path / "coco"), "--base-url", mirror.url]
    assert main(argv) == 0
    before = _state(tmp_path / "coco")
    capsys.readouterr()
    assert main([*argv, "--limit", "1"]) == 0
    out = capsys.readouterr().out
    assert "0 downloaded, 5 already there, 0 failed" in out
    assert "val2017 lists 5 images, more than --limit 1: a download only adds, so none was removed" in out
    assert _state(tmp_path / "coco") == before


# every body checked before it takes an image's name ---------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(NOT_IMAGE_BODIES))
def test_a_body_that_is_not_an_image_is_refused_and_never_takes_the_images_name(mirror: Mirror, tmp_path, name):
    body = NOT_IMAGE_BODIES[name]
    (mirror.root / _image_path(19).lstrip("/")).write_bytes(body)
    dest = tmp_path / "coco"
    summary = _download(mirror, dest)
    assert (summary.failed, summary.downloaded) == ([_file_name(19)], 4)
    reason = summary.reasons[_file_name(19)]
    assert reason.startswith("the mirror sent a bad image twice: ") and (len(body) < 24 or str(body[:24]) not in reason)
    assert len(mirror.gets(_image_path(19))) == 2  # fetched once more from the start, then given up
    assert not (dest / "val2017" / _file_name(19)).exists() and not list(dest.rglob("*.part"))


@pytest.mark.parametrize("name", sorted(n for n, (_, ok) in IMAGES.items() if ok))
def test_every_image_format_the_app_reads_is_accepted(mirror: Mirror, tmp_path: Path, name):
    (mirror.root / _image_path(19).lstrip("/")).write_bytes(IMAGES[name][0])
    summary = _download(mirror, tmp_path / "coco")
    assert summary.failed == [] and len(mirror.gets(_image_path(19))) == 1
    assert (tmp_path / "coco" / "val2017" / _file_name(19)).read_bytes() == IMAGES[name][0]


def test_a_body_longer_than_any_image_is_cut_off(mirror: Mirror, tmp_path: Path, monkeypatch):
    monkeypatch.setattr("captioning.download_files.MAX_IMAGE_BYTES", 2**19)
    big = io.BytesIO()
    Image.effect_noise((1024, 1024), 100).save(big, "PNG")  # a real image, but over the bound
    (mirror.root / _image_path(19).lstrip("/")).write_bytes(big.getvalue())
    summary = _download(mirror, tmp_path / "coco")
    assert summary.reasons == {_file_name(19): "the mirror sent a bad image twice: longer than 0.5 MB"}
    assert not list((tmp_path / "coco").rglob("*.part")) and len(mirror.gets(_image_path(19))) == 2


# a damaged part is discarded and fetched again, never a traceback ---------------------------------------------------

ZIP_DAMAGE = sorted(damaged_zips(_annotations_zip(), MEMBER))


@pytest.mark.parametrize("how", ZIP_DAMAGE)
def test_a_damaged_kept_zip_is_fetched_again(mirror: Mirror, tmp_path: Path, how):
    dest = tmp_path / "coco"
    dest.mkdir()
    (dest / "annotations_trainval2017.zip").write_bytes(damaged_zips(mirror.data(ZIP_PATH), MEMBER)[how])
    summary = _download(mirror, dest)
    assert len(mirror.gets(ZIP_PATH)) == 1 and (summary.downloaded, summary.failed) == (5, [])
    assert json.loads(summary.annotations.read_text()) == _captions_json()
    assert (dest / "annotations_trainval2017.zip").read_bytes() == mirror.data(ZIP_PATH)


@pytest.mark.parametrize("how", ZIP_DAMAGE)
def test_a_mirror_that_keeps_sending_a_damaged_zip_gets_one_clear_line(mirror: Mirror, tmp_path: Path, how, capsys):
    dest = tmp_path / "coco"
    _download(mirror, dest, limit=2)
    before = _state(dest)
    (dest / "annotations_trainval2017.zip").unlink()  # so it is fetched anew, from a mirror gone bad
    (mirror.root / ANNOTATIONS_ZIP).write_bytes(damaged_zips(mirror.data(ZIP_PATH), MEMBER)[how])
    mirror.requests.clear()
    assert main(["download", "--dest", str(dest), "--base-url", mirror.url]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith(f"error: {mirror.url}{ZIP_PATH} sent a damaged annotations archive twice (")
    assert len(mirror.gets(ZIP_PATH)) == 2 and mirror.image_gets() == []
    assert _state(dest) == before  # what was there is all still there


def test_a_damaged_partial_zip_is_resumed_then_fetched_whole(mirror: Mirror, tmp_path: Path):
    original = mirror.data(ZIP_PATH)
    half = len(original) // 2
    (tmp_path / "coco").mkdir()
    part = tmp_path / "coco" / "annotations_trainval2017.zip.part"
    part.write_bytes(damaged_zips(original, MEMBER)["flipped-first-byte"][:half])
    summary = _download(mirror, tmp_path / "coco")
    assert mirror.gets(ZIP_PATH) == [f"bytes={half}-", None]
    assert json.loads(summary.annotations.read_text()) == _captions_json()


@pytest.mark.parametrize("name", sorted(NOT_IMAGE_BODIES))
def test_a_kept_file_that_is_not_a_whole_image_is_fetched_again(mirror: Mirror, tmp_path: Path, name):
    dest = tmp_path / "coco"
    _download(mirror, dest)
    (dest / "val2017" / _file_name(19)).write_bytes(NOT_IMAGE_BODIES[name])  # what an older downloader kept
    mirror.requests.clear()
    summary = _download(mirror, dest)
    assert mirror.image_gets() == [_image_path(19)]  # that one, once: the whole ones are not fetched again
    assert summary.damaged == [_file_name(19)] and (summary.downloaded, summary.skipped) == (1, 4)
    assert (dest / "val2017" / _file_name(19)).read_bytes() == mirror.data(_image_path(19))


def test_a_damaged_partial_image_is_fetched_again_from_the_start(mirror: Mirror, tmp_path: Path):
    dest = tmp_path / "coco"
    (dest / "val2017").mkdir(parents=True)
    (dest / "val2017" / (_file_name(3) + ".part")).write_bytes(b"<html>junk")  # resumed, it cannot be an image
    summary = _download(mirror, dest)
    assert mirror.gets(_image_path(3)) == ["bytes=10-", None] and summary.failed == []
    assert (dest / "val2017" / _file_name(3)).read_bytes() == mirror.data(_image_path(3))


# files get the mode the umask gives ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o027])
def test_downloaded_files_get_the_mode_the_umask_gives(mirror: Mirror, tmp_path: Path, mask):
    dest = tmp_path / "coco"
    (dest / "val2017").mkdir(parents=True)
    kept_part = dest / "val2017" / (_file_name(3) + ".part")
    kept_part.write_bytes(mirror.data(_image_path(3))[:100])
    kept_part.chmod(0o600)  # left by another tool
    mirror.cut[_image_path(7)] = 50  # with no retry, its .part stays
    old = os.umask(mask)
    umask.cache_clear()
    try:
        _download(mirror, dest, limit=3, retries=0)
    finally:
        os.umask(old)
        umask.cache_clear()
    files = [p for p in dest.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert {p.name for p in files} >= {"captions_val2017.json", "annotations_trainval2017.zip", _file_name(7) + ".part"}
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {p.name: oct(0o666 & ~mask) for p in files}


def test_a_jpeg_of_too_many_scans_is_refused_without_decoding_them(mirror: Mirror, tmp_path: Path):
    jpeg = _jpeg(19)
    scans = b"\xff\xda" * 150  # where libjpeg would decode each scan over the whole image
    comment = b"\xff\xfe" + (len(scans) + 2).to_bytes(2, "big") + scans
    (mirror.root / _image_path(19).lstrip("/")).write_bytes(jpeg[:2] + comment + jpeg[2:])
    summary = _download(mirror, tmp_path / "coco")
    assert summary.reasons == {_file_name(19): "the mirror sent a bad image twice: a JPEG of 151 scans (at most 100)"}
