"""`karpathy-split`: Karpathy's dataset_coco.json made into splits over the 2017 folders; anything else refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from fixtures import make_coco

from captioning.data import CocoSplit
from captioning.karpathy import read_karpathy


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
