"""Hostile and malformed files through the library and the CLI: a clear message each, bounded memory, no
server file read or shown, and the good inputs beside them still work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import warnings

import pytest
import torch
from adversarial import (
    BAD_IDS,
    BAD_METRICS_LINES,
    BROKEN_ANNOTATIONS,
    IMAGES,
    SEED_LOGS,
    annotation_cases,
    good_metrics_lines,
)
from app_fixtures import image_bytes
from conftest import REPO

from app import catalog
from app.seedlog import parse_seed_log
from app.uploads import THUMBNAIL, caption_files
from captioning.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from captioning.config import DecodeConfig
from captioning.data import (
    CocoSplit,
    DatasetError,
    ImageLoadError,
    SkippedImagesWarning,
    load_image,
    parse_ids,
    read_ids_file,
)
from captioning.inference import Captioner
from captioning.rundir import read_log

PASSWD = "root:x:0:0"  # how /etc/passwd begins: it must never reach a message


@pytest.fixture(scope="module")
def captioner(tiny_checkpoint) -> Captioner:
    return Captioner.from_checkpoint(tiny_checkpoint, device="cpu")


def test_each_hostile_image_gets_its_own_message_and_the_others_still_caption(captioner):
    files = [(name, data) for name, (data, _) in IMAGES.items()] + [("good.png", image_bytes())]
    results = caption_files(captioner, files, DecodeConfig(method="greedy"))
    assert [r.name for r in results] == [name for name, _ in files]
    for r in results:
        if IMAGES.get(r.name, (b"", True))[1]:
            assert r.caption is not None and r.caption.words and r.error is None, (r.name, r.error)
            assert max(r.image.size) <= THUMBNAIL  # what the session keeps is a display copy
        else:
            assert r.caption is None and r.image is None and r.error.startswith(r.name), r.name
    errors = {r.name: r.error for r in results}
    assert "too large to decode safely" in errors["bomb.png"]
    assert "not an image this app can read" in errors["eps-renamed.jpg"]  # never handed to Ghostscript
    assert "empty (0 bytes)" in errors["empty.jpg"] and "corrupt or truncated" in errors["truncated.jpg"]


def test_special_files_are_refused_without_being_read(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)  # reading it would block for ever
    for path, message in ((fifo, "not a regular file"), ("/dev/zero", "not a regular file"),
                          (tmp_path, "not a regular file"), (tmp_path / "none.jpg", "does not exist")):  # fmt: skip
        with pytest.raises(ImageLoadError, match=message):
            load_image(path)


def _caption_rss(checkpoint, image) -> tuple[int, str]:
    """(peak RSS in MB, output) of `python -m captioning caption IMAGE` in a fresh process."""
    code = ("import resource, sys\nfrom captioning.cli import main\nrc = main(sys.argv[1:])\n"
            "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, file=sys.stderr)\n"
            "sys.exit(rc)")  # fmt: skip
    args = [sys.executable, "-c", code, "caption", str(image), "--checkpoint", str(checkpoint), "--device", "cpu"]
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rss = int(done.stderr.split("MAXRSS")[-1])
    return rss, done.stdout


@pytest.mark.slow
def test_captioning_a_strip_costs_no_more_memory_than_a_photo(tiny_checkpoint, tmp_path):
    (tmp_path / "photo.png").write_bytes(image_bytes())
    baseline, _ = _caption_rss(tiny_checkpoint, tmp_path / "photo.png")
    for name in ("wide-strip.png", "tall-strip.png", "very-wide-strip.png"):
        (tmp_path / name).write_bytes(IMAGES[name][0])
        rss, out = _caption_rss(tiny_checkpoint, tmp_path / name)
        assert rss < baseline + 200, f"{name}: {rss} MB against {baseline} MB for a photo"  # was 4.8 GB
        assert len(out.split()) >= 2  # it was captioned


def test_ids_sources_that_are_not_ids_files_give_a_clear_error(tmp_path):
    for name, data in BAD_IDS.items():
        with pytest.raises(DatasetError, match="ids"):
            parse_ids(data, name)
    fifo = tmp_path / "ids.fifo"
    os.mkfifo(fifo)
    big = tmp_path / "big.txt"
    with open(big, "wb") as f:
        f.truncate(20_000_000)  # sparse: no time or disk to make
    cases = {"/etc/passwd": "image ids", "/dev/zero": "not a regular file", str(fifo): "not a regular file",
             str(big): "too large", str(tmp_path / "none.txt"): "cannot read"}  # fmt: skip
    for path, message in cases.items():
        done = threading.Event()
        errors: list[Exception] = []

        def read(path=path, errors=errors, done=done):
            try:
                read_ids_file(path)
            except DatasetError as exc:
                errors.append(exc)
            done.set()

        threading.Thread(target=read, daemon=True).start()
        assert done.wait(5), f"reading {path} blocked"
        assert errors and message in str(errors[0]) and PASSWD not in str(errors[0]), (path, errors)


@pytest.mark.parametrize("ids", ["/etc/passwd", "/dev/zero"])
def test_the_cli_names_a_bad_ids_file_in_one_line(ids, tiny_coco, tmp_path):
    command = [sys.executable, "-m", "captioning", "train", "--coco-root", str(tiny_coco), "--out", str(tmp_path / "r"),
               "--train-ids", ids]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert PASSWD not in done.stderr and "Traceback" not in done.stderr


def test_malformed_annotation_records_are_skipped_and_counted(tiny_coco, tmp_path):
    name = sorted(p.name for p in (tiny_coco / "val").iterdir())[0]
    for case, data in annotation_cases(name).items():
        root = tmp_path / case
        (root / "annotations").mkdir(parents=True)
        (root / "annotations" / "captions_val.json").write_text(json.dumps(data))
        (root / "val").mkdir()
        (root / "val" / name).write_bytes((tiny_coco / "val" / name).read_bytes())
        with pytest.warns(SkippedImagesWarning, match="skipped 1 malformed image record|malformed or orphan"):
            split = CocoSplit.load(root, "val")
        assert split.ids == [1] and split.captions[1] == ["a red circle on white."], case
        assert all(p.parent == root / "val" for p in split.files.values())  # nothing outside the image folder
    for case, text in BROKEN_ANNOTATIONS.items():
        root = tmp_path / f"broken-{case}"
        (root / "annotations").mkdir(parents=True)
        (root / "annotations" / "captions_val.json").write_text(text)
        with pytest.raises(DatasetError, match="not a COCO captions file"):
            CocoSplit.load(root, "val")


def _mutated(checkpoint, tmp_path, name, change) -> str:
    ckpt = torch.load(checkpoint, weights_only=True)
    change(ckpt)
    path = tmp_path / f"{name}.pt"
    torch.save(ckpt, path)
    return path


CHECKPOINT_MUTATIONS = {
    "vocab-of-numbers": lambda c: c["vocab"].update(itos=list(range(len(c["vocab"]["itos"])))),
    "hidden-size-text": lambda c: c["model_config"].update(hidden_size="big"),
    "dropout-list": lambda c: c["model_config"].update(dropout=[0.5]),
    "metrics-list": lambda c: c.update(metrics=[1, 2]),
    "decoder-state-list": lambda c: c.update(decoder_state=[1, 2]),
    "model-config-list": lambda c: c.update(model_config=["showtell"]),
    "wrong-shapes": lambda c: c["decoder_state"].update({k: torch.zeros(3) for k in list(c["decoder_state"])[:2]}),
}


def test_checkpoints_with_fields_of_the_wrong_type_give_a_clear_error(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("CAPTIONING_RUNS_DIR", str(tmp_path / "runs"))
    for name, change in CHECKPOINT_MUTATIONS.items():
        path = _mutated(tiny_checkpoint, tmp_path, name, change)
        with pytest.raises(CheckpointError):
            model_from_checkpoint(load_checkpoint(path), source=str(path))
        monkeypatch.setenv("CAPTIONING_CHECKPOINT", str(path))
        catalog.list_checkpoints()  # lists it (perhaps without a score) rather than raising


def test_malformed_logs_keep_their_good_records_and_count_the_rest(tmp_path):
    for name, text in SEED_LOGS.items():
        log = parse_seed_log(text)
        assert [r["step"] for r in log.records] == [200] and log.skipped == 1, name
    path = tmp_path / "metrics.jsonl"
    good = good_metrics_lines()
    path.write_text("\n".join(good[:3] + BAD_METRICS_LINES + good[3:]) + "\n")
    log = read_log(path)
    assert len(log.records) == len(good) and log.skipped == len(BAD_METRICS_LINES)


def test_warnings_of_skipped_records_do_not_show_file_contents(tmp_path):
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "val").mkdir()
    data = {
        "images": [{"id": 1, "file_name": "/etc/passwd"}],
        "annotations": [{"id": 1, "image_id": 1, "caption": "x"}],
    }
    (root / "annotations" / "captions_val.json").write_text(json.dumps(data))
    with warnings.catch_warnings(record=True) as caught, pytest.raises(DatasetError, match="no images"):
        warnings.simplefilter("always")
        CocoSplit.load(root, "val")
    assert caught and all(PASSWD not in str(w.message) for w in caught)
