"""What keeps full COCO tractable: linear split loading, logs read from their tail and once, charts that draw a
bounded number of points, document frequencies computed once, the Karpathy split."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO
from fixtures import make_coco

from app import catalog
from app.charts import MAX_POINTS, steps_frame
from captioning import cider, rundir
from captioning.data import CocoSplit
from captioning.karpathy import read_karpathy


def test_loading_a_split_with_many_missing_images_is_linear(tmp_path):
    # 20k ids, half of them missing on disk: the check used to rebuild a set of the missing per id
    n = 20_000
    (tmp_path / "annotations").mkdir()
    (tmp_path / "big").mkdir()
    images = [{"id": i, "file_name": f"{i:012d}.jpg"} for i in range(1, n + 1)]
    anns = [{"id": i, "image_id": i, "caption": f"a photo number {i}"} for i in range(1, n + 1)]
    (tmp_path / "annotations" / "captions_big.json").write_text(json.dumps({"images": images, "annotations": anns}))
    for i in range(2, n + 1, 2):
        (tmp_path / "big" / f"{i:012d}.jpg").write_bytes(b"x")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        split = CocoSplit.load(tmp_path, "big")
    assert split.ids == list(range(2, n + 1, 2))
    assert any("10000 image" in str(w.message) for w in caught)


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


def test_document_frequencies_leave_out_singletons_without_changing_a_score(tmp_path):
    refs = {1: ["a dog runs on the grass", "a brown dog running"], 2: ["a cat on a sofa", "a dog and a cat"],
            3: ["two dogs play on the grass", "dogs playing outside"]}  # fmt: skip
    full = cider.CiderD.from_captions(refs)
    df = full.df
    assert "dog" in df.counts and "brown" not in df.counts  # "brown" is in one image's references only
    df.save(tmp_path / "df.json")
    again = cider.CiderD.from_captions(refs, cider.DocumentFrequencies.load(tmp_path / "df.json"))
    for image_id in refs:
        words = cider.words_for_reward("a brown dog on the grass".split())
        assert again.score(image_id, words) == full.score(image_id, words)


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


def _karpathy(tmp_path: Path) -> tuple[Path, Path]:
    root = make_coco(tmp_path / "coco", {"train2017": 12, "val2017": 6})  # ids 1-12 and 13-18
    splits = {**{i: "train" for i in range(1, 11)}, 11: "restval", 12: "val", 13: "restval", 14: "restval",
              15: "val", 16: "test", 17: "test", 18: "restval", 999: "test"}  # fmt: skip
    images = [{"cocoid": i, "split": s, "filepath": "x", "filename": f"{i}.jpg", "sentences": []}
              for i, s in splits.items()] + [{"split": "train"}, "junk"]  # fmt: skip
    dataset = tmp_path / "dataset_coco.json"
    dataset.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return root, dataset


def test_karpathy_split_command_makes_splits_over_both_2017_folders(tmp_path):
    root, dataset = _karpathy(tmp_path)
    result = subprocess.run([sys.executable, "-m", "captioning", "karpathy-split", "--dataset", str(dataset),
                             "--coco-root", str(root)], cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "karpathy_train: 14 images (11 in train2017, 3 in val2017)" in result.stdout
    assert "karpathy_test: 2 images (2 in val2017); 1 not in the 2017 annotations" in result.stdout
    train = CocoSplit.load(root, "karpathy_train")
    assert train.ids == [*range(1, 12), 13, 14, 18]
    official = CocoSplit.load(root, "val2017")
    assert train.captions[13] == official.captions[13] and train.files[13].resolve() == official.files[13].resolve()
    assert (root / "karpathy_val_ids.txt").read_text().split() == ["12", "15"]
    assert CocoSplit.load(root, "val2017", root / "karpathy_test_ids.txt").ids == [16, 17]


@pytest.mark.parametrize("content", ["", "[1, 2]", '{"images": 5}', '{"images": [{"cocoid": 1, "split": "x"}]}'])
def test_karpathy_split_refuses_a_file_that_is_not_one(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_text(content)
    result = subprocess.run([sys.executable, "-m", "captioning", "karpathy-split", "--dataset", str(path),
                             "--coco-root", str(tmp_path)], cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    with pytest.raises(ValueError):
        read_karpathy(path)
