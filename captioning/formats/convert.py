"""`captioning convert`: any dataset the formats read, written as a COCO root (`annotations/captions_SPLIT.json`
and `SPLIT/` for each split it has), so COCO-only tools can read it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from captioning.data import DatasetError, split_paths
from captioning.formats import ReadOptions, open_split, split_names
from captioning.io import atomic_write, atomic_write_text


def convert(path: Path, fmt: str, options: ReadOptions, dest: Path) -> dict[str, tuple[int, int]]:
    """Write every split of the dataset at `path` under `dest`; split -> (images, captions). Refuses a `dest`
    that holds any of those splits already, so nothing there is overwritten."""
    names = split_names(path, fmt, options)
    taken = [n for n in names if any(p.exists() for p in split_paths(dest, n))]
    if taken:
        raise DatasetError(f"{dest} already holds split(s) {', '.join(taken)}; choose another --to")
    counts = {}
    for name in names:
        split = open_split(path, name, fmt, options)
        ann_file, folder = split_paths(dest, name)
        folder.mkdir(parents=True, exist_ok=True)
        images, annotations, used = [], [], set()
        for image_id in split.ids:
            source = split.files[image_id]
            file_name = source.name if source.name not in used else f"{image_id}{source.suffix.lower()}"
            used.add(file_name)
            atomic_write(folder / file_name, lambda tmp, src=source: _copy(src, tmp))
            images.append({"id": image_id, "file_name": file_name})
            for caption in split.captions[image_id]:
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "caption": caption})
        data = {"info": {"description": f"converted from {Path(path).name}"}, "images": images,
                "annotations": annotations}  # fmt: skip
        atomic_write_text(ann_file, json.dumps(data))  # last: the split exists only once its images do
        counts[name] = (len(images), len(annotations))
    return counts


def _copy(source, tmp: Path) -> None:
    """A file, or an image inside a shard (`formats.shards.ShardMember`), to `tmp`."""
    if isinstance(source, Path):
        shutil.copyfile(source, tmp)
    else:
        tmp.write_bytes(source.read_bytes())
