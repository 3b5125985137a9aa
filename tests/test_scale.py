"""What keeps full COCO tractable: linear split loading, logs read from their tail and once, charts that draw a
bounded number of points, document frequencies computed once."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pandas as pd
import pytest

from app import catalog
from app.charts import MAX_POINTS, steps_frame
from captioning import cider, rundir
from captioning.data import CocoSplit


def test_loading_a_split_with_many_missing_images_checks_each_file_once(tmp_path, monkeypatch):
    # 20k ids, half of them missing on disk: loading stats each image file once, so it grows linearly
    n = 20_000
    (tmp_path / "annotations").mkdir()
    (tmp_path / "big").mkdir()
    images = [{"id": i, "file_name": f"{i:012d}.jpg"} for i in range(1, n + 1)]
    anns = [{"id": i, "image_id": i, "caption": f"a photo number {i}"} for i in range(1, n + 1)]
    (tmp_path / "annotations" / "captions_big.json").write_text(json.dumps({"images": images, "annotations": anns}))
    for i in range(2, n + 1, 2):
        (tmp_path / "big" / f"{i:012d}.jpg").write_bytes(b"x")
    checked: list[str] = []
    real = Path.is_file
    monkeypatch.setattr(Path, "is_file", lambda self: checked.append(self.name) or real(self))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        split = CocoSplit.load(tmp_path, "big")
    assert split.ids == list(range(2, n + 1, 2))
    assert any("10000 image" in str(w.message) for w in caught)
    images_checked = [name for name in checked if name.endswith(".jpg")]
    assert len(images_checked) == n and len(set(images_checked)) == n  # every image once, none twice


def _log(path: Path, steps: int, ending: str | None) -> None:
    lines = [json.dumps({"kind": "event", "event": "start", "step": 0, "epoch": 0})]
    lines += [json.dumps({"kind": "step", "step": s, "epoch": 0, "loss": 3.0 - s / steps}) for s in range(1, steps + 1)]
    if ending:
        lines.append(json.dumps({"kind": "event", "event": ending, "step": steps, "epoch": 1}))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("steps", "ending", "status"),
    [
        (10, "finished", "finished"),
        (20_000, "stopped", "stopped"),
        (20_000, None, "interrupted"),
        (5, None, "interrupted"),
    ],
)
def test_run_status_comes_from_the_tail_of_a_long_log(tmp_path, steps, ending, status):
    _log(tmp_path / "run" / "metrics.jsonl", steps, ending)
    assert rundir.RunDir(tmp_path / "run").status() == status


def test_the_catalog_does_not_reparse_an_unchanged_log(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    _log(runs / "a" / "metrics.jsonl", 30_000, "finished")
    _log(runs / "b" / "metrics.jsonl", 100, None)
    monkeypatch.setenv("CAPTIONING_CHECKPOINT", str(tmp_path / "none.pt"))
    reads = []
    real = rundir._events
    monkeypatch.setattr(rundir, "_events", lambda *a, **k: reads.append(a[0]) or real(*a, **k))
    rundir._status.cache_clear()
    first = catalog.list_runs(runs)
    assert {r.name: r.status for r in first} == {"a": "finished", "b": "interrupted"}
    count = len(reads)
    assert 2 <= count <= 4  # each log's tail (and at most its head), not every line
    for _ in range(3):
        catalog.list_runs(runs)
    assert len(reads) == count  # unchanged logs: nothing read again
    with open(runs / "b" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"kind": "event", "event": "finished", "step": 100, "epoch": 1}) + "\n")
    assert {r.name: r.status for r in catalog.list_runs(runs)}["b"] == "finished"
    assert len(reads) == count + 1


def test_charts_draw_at_most_max_points_per_run_keeping_the_ends():
    records = {"long": [{"kind": "step", "step": s, "loss": 1.0 + (s % 7)} for s in range(1, 100_001)],
               "short": [{"kind": "step", "step": s, "loss": 2.0} for s in range(1, 51)]}  # fmt: skip
    df = steps_frame(records, smoothing=0.0)
    long = df[df.run == "long"]
    assert len(long) <= MAX_POINTS and long.step.iloc[0] == 1 and long.step.iloc[-1] == 100_000
    assert len(df[df.run == "short"]) == 50
    assert isinstance(df, pd.DataFrame) and long.step.is_monotonic_increasing


def test_self_critical_training_computes_document_frequencies_once_beside_the_features(
    tiny_coco, tmp_path, monkeypatch
):
    from captioning.config import TrainConfig
    from captioning.train import fit

    computed = []
    real = cider.DocumentFrequencies.compute.__func__
    monkeypatch.setattr(cider.DocumentFrequencies, "compute",
                        classmethod(lambda cls, refs: computed.append(1) or real(cls, refs)))  # fmt: skip
    for name in ("a", "b"):
        fit(TrainConfig.of(coco_root=str(tiny_coco), out=str(tmp_path / name), epochs=0, scst_epochs=1,
                           scst_batch_size=8, init_from=None, batch_size=8, vocab_threshold=1,
                           cache_dir=str(tmp_path / "cache"), num_workers=0, val_split=None, seed=0))  # fmt: skip
    assert computed == [1]  # the second run read the first one's file
    assert len(list((tmp_path / "cache").rglob("cider-df-*.json"))) == 1
