"""The Karpathy split of COCO (Karpathy & Fei-Fei 2015): 113,287 train / 5,000 val / 5,000 test images, the split
captioning papers report on, made from the 2014 folders. `dataset_coco.json` names each image by its COCO id and
one of train, restval, val, test; restval joins train.

COCO 2017 holds the same images (train2014 + most of val2014 is train2017, the rest is val2017), so each Karpathy
split spans both 2017 folders. `make_splits` writes, under the COCO root, for each of karpathy_train,
karpathy_val and karpathy_test:
  annotations/captions_karpathy_NAME.json  the official 2017 captions of its images
  karpathy_NAME/                           a relative symlink per image, into train2017/ or val2017/
  karpathy_NAME_ids.txt                    its image ids, one a line (for --train-ids / --val-ids)
so `train --train-split karpathy_train --val-split karpathy_val` trains on it as on any split.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from captioning.data import DatasetError, read_coco, split_paths
from captioning.io import atomic_write_text, read_json

GROUPS = {"train": "karpathy_train", "restval": "karpathy_train", "val": "karpathy_val", "test": "karpathy_test"}
MAX_DATASET_BYTES = 1_000_000_000  # the real dataset_coco.json is about 150 MB


@dataclass
class SplitReport:
    name: str
    images: int = 0
    by_folder: dict[str, int] = field(default_factory=dict)
    missing: int = 0  # in the Karpathy file but in neither 2017 folder's annotations


def read_karpathy(path: Path) -> dict[str, list[int]]:
    """karpathy_train/val/test -> COCO ids, from dataset_coco.json; a clear DatasetError for anything else."""
    path = Path(path)
    try:
        if not path.is_file() or path.stat().st_size > MAX_DATASET_BYTES:
            raise DatasetError(f"{path} is not a file of at most {MAX_DATASET_BYTES:,} bytes")
        with open(path, "rb") as f:
            data = read_json(f.read())
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path} is not Karpathy's dataset_coco.json ({type(exc).__name__})") from None
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise DatasetError(f"{path} is not Karpathy's dataset_coco.json (no 'images' list)")
    groups: dict[str, list[int]] = {name: [] for name in dict.fromkeys(GROUPS.values())}
    bad = 0
    for image in images:
        group = GROUPS.get(image.get("split")) if isinstance(image, dict) else None
        cocoid = image.get("cocoid") if group else None
        if isinstance(cocoid, int) and not isinstance(cocoid, bool) and cocoid >= 0:
            groups[group].append(cocoid)
        else:
            bad += 1
    if not any(groups.values()):
        raise DatasetError(f"{path} names no image with a cocoid and a split of train, restval, val or test")
    if bad:
        print(f"note: skipped {bad} image record(s) of {path.name} without a cocoid and a known split")
    return groups


def make_splits(
    dataset: Path, coco_root: Path, folders: tuple[str, ...] = ("train2017", "val2017")
) -> list[SplitReport]:
    """Write the three Karpathy splits under `coco_root` (see the module docstring); returns what each holds."""
    coco_root = Path(coco_root)
    groups = read_karpathy(dataset)
    where: dict[int, tuple[str, dict]] = {}  # id -> (2017 folder, its image record)
    captions: dict[int, list[dict]] = {}
    for folder in folders:
        ann_file, _ = split_paths(coco_root, folder)
        if not ann_file.is_file():
            raise DatasetError(f"no {ann_file}: download the {folder} annotations first")
        coco = read_coco(ann_file)
        for image_id, image in coco.imgs.items():
            where[image_id] = (folder, image)
            captions[image_id] = coco.imgToAnns.get(image_id, [])
    reports = []
    for name, ids in groups.items():
        report = SplitReport(name)
        found = [i for i in dict.fromkeys(ids) if i in where]
        report.missing = len(set(ids)) - len(found)
        for i in found:
            report.by_folder[where[i][0]] = report.by_folder.get(where[i][0], 0) + 1
        report.images = len(found)
        if found:
            _write_split(coco_root, name, found, where, captions)
        reports.append(report)
    return reports


def _write_split(root: Path, name: str, ids: list[int], where: dict, captions: dict) -> None:
    """The split's symlink folder (built beside it, then renamed into place), annotations and ids file."""
    ann_file, image_dir = split_paths(root, name)
    building = image_dir.with_name(f".{image_dir.name}.building")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    for i in ids:
        folder, image = where[i]
        os.symlink(Path("..") / folder / image["file_name"], building / image["file_name"])
    shutil.rmtree(image_dir, ignore_errors=True)
    os.replace(building, image_dir)
    data = {
        "info": {"description": f"{name}: the Karpathy split of COCO, images and captions from COCO 2017"},
        "images": [where[i][1] for i in ids],
        "annotations": [a for i in ids for a in captions[i]],
    }
    atomic_write_text(ann_file, json.dumps(data))
    atomic_write_text(root / f"{name}_ids.txt", "".join(f"{i}\n" for i in ids))
