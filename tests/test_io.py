"""`captioning.io` and its readers: JSON nested too deeply is refused like any malformed file, atomic writes keep
the mode the umask gives, and the served app does not watch its files."""

from __future__ import annotations

import json
import os
import stat
import tomllib

import pytest
from conftest import REPO
from fixtures import make_coco

from captioning import rundir
from captioning.data import CocoSplit, DatasetError, parse_ids
from captioning.io import atomic_write_text, read_json, umask
from captioning.vocab import Vocabulary

DEEP = "[" * 100_000 + "]" * 100_000  # valid JSON that Python's parser cannot nest into: a RecursionError before


def test_deep_json_is_malformed_input_to_every_reader(tmp_path):
    with pytest.raises(ValueError, match="nested too deeply"):
        read_json(DEEP)
    with pytest.raises(DatasetError, match="image ids, one per line or a JSON list"):
        parse_ids(DEEP.encode(), "ids.json")  # an uploaded ids file
    root = make_coco(tmp_path / "coco", {"val": 2})
    (root / "annotations" / "captions_val.json").write_text('{"images": ' + DEEP + "}")
    with pytest.raises(DatasetError, match="is not a COCO captions file"):
        CocoSplit.load(root, "val")
    (tmp_path / "vocab.json").write_text(DEEP)
    with pytest.raises(ValueError):
        Vocabulary.load(tmp_path / "vocab.json")


def test_a_deep_metrics_line_is_skipped_and_a_resume_truncates_around_it(tmp_path):
    path = tmp_path / "metrics.jsonl"
    good = [json.dumps({"kind": "step", "step": s, "epoch": 0, "loss": 2.0}) for s in (1, 2, 3)]
    path.write_text("\n".join([good[0], '{"kind": "step", "x": ' + DEEP + "}", *good[1:]]) + "\n")
    log = rundir.read_log(path)
    assert [r["step"] for r in log.records] == [1, 2, 3] and log.skipped == 1
    assert rundir.run_status(path) in ("running", "interrupted", "unknown")  # the tail reader survives it too
    rundir.RunLog(path).truncate_after(2)  # what a resume does to the log: nothing good is lost
    assert [r["step"] for r in rundir.read_log(path).records] == [1, 2]  # up to the checkpoint's step


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_atomic_writes_keep_the_mode_the_umask_gives(tmp_path, mask, monkeypatch):
    monkeypatch.setattr("captioning.io.umask", lambda: mask)
    atomic_write_text(tmp_path / "config.json", "{}")
    assert stat.S_IMODE((tmp_path / "config.json").stat().st_mode) == 0o666 & ~mask
    plain = tmp_path / "plain.txt"  # what open() gives under the process's own umask
    plain.write_text("x")
    assert stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~umask()


def test_the_process_umask_is_read_without_changing_it():
    before = os.umask(0o022)
    os.umask(before)
    umask.cache_clear()
    assert umask() == before
    now = os.umask(0o022)
    os.umask(now)
    assert now == before


def test_the_served_app_does_not_watch_its_files():
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert config["server"]["fileWatcherType"] == "none"
    assert config["server"]["address"] == "127.0.0.1" and config["client"]["showErrorDetails"] == "none"
