"""webdataset tar shards (formats/shards.py): read in place, damaged shards bounded, ranks on shards of their own."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path

import pytest
from fixtures import COLOURS, SHAPES, TEMPLATES, draw

from captioning.data import SkippedImagesWarning, load_image
from captioning.formats import detect, open_split, split_names
from captioning.formats.shards import MAX_TEXT_BYTES

REPO = Path(__file__).resolve().parent.parent


def _add(tar: tarfile.TarFile, name: str, data: bytes, **info) -> None:
    member = tarfile.TarInfo(name)
    member.size = len(data)
    for key, value in info.items():
        setattr(member, key, value)
    tar.addfile(member, io.BytesIO(data))


def _jpeg(k: int) -> bytes:
    out = io.BytesIO()
    draw(list(COLOURS)[k % 4], SHAPES[(k // 4) % 2]).save(out, "JPEG")
    return out.getvalue()


def make_shards(folder: Path, shards: int, per_shard: int, start: int = 0) -> list[str]:
    """Shards as img2dataset writes them: NNNNNNNNN.jpg + .txt + .json per sample; every caption written."""
    folder.mkdir(parents=True)
    captions = []
    for s in range(shards):
        with tarfile.open(folder / f"{s:05d}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for j in range(per_shard):
                k = start + s * per_shard + j
                caption = TEMPLATES[k % len(TEMPLATES)].format(c=list(COLOURS)[k % 4], s=SHAPES[(k // 4) % 2])
                _add(tar, f"{k:09d}.jpg", _jpeg(k))
                _add(tar, f"{k:09d}.txt", caption.encode())
                _add(tar, f"{k:09d}.json", json.dumps({"key": f"{k:09d}", "caption": caption}).encode())
                captions.append(caption)
    return captions


def test_shards_are_read_in_place_with_their_captions_and_a_held_out_val(tmp_path):
    captions = make_shards(tmp_path / "wds", shards=3, per_shard=4)
    assert detect(tmp_path / "wds") == "webdataset" and detect(tmp_path / "wds" / "00001.tar") == "webdataset"
    assert split_names(tmp_path / "wds") == ["train", "val"]
    train, val = open_split(tmp_path / "wds", "train"), open_split(tmp_path / "wds", "val")
    assert len(train) + len(val) == 12 and len(val) >= 1 and not set(train.ids) & set(val.ids)
    assert sorted(c for s in (train, val) for i in s.ids for c in s.captions[i]) == sorted(captions)
    first = train.files[train.ids[0]]
    assert first.name.startswith("0000") and ".tar:" in first.name
    k = int(first.key.split(".")[0])
    assert load_image(first).tobytes() == load_image(_jpeg(k)).tobytes()  # decoded straight from the shard
    assert [train.files[i].shard for i in train.ids] == sorted(train.files[i].shard for i in train.ids)
    assert not list((tmp_path / "wds").glob("*.jpg"))  # nothing unpacked


def test_split_folders_json_only_captions_and_convert(tmp_path, capsys):
    from captioning.cli import main

    make_shards(tmp_path / "wds" / "train", shards=2, per_shard=3)
    with _new(tmp_path) as tar:
        _add(tar, "a/000000100.jpg", _jpeg(1))
        _add(tar, "a/000000100.json", json.dumps({"caption": "a red circle on white"}).encode())
    assert split_names(tmp_path / "wds") == ["train", "val"]
    val = open_split(tmp_path / "wds", "val")
    assert list(val.captions.values()) == [["a red circle on white"]]
    assert main(["convert", "--data", str(tmp_path / "wds"), "--to", str(tmp_path / "coco")]) == 0
    assert "train: 6 images, 6 captions" in capsys.readouterr().out
    assert len(list((tmp_path / "coco" / "train").iterdir())) == 6


def _new(tmp_path: Path) -> tarfile.TarFile:
    (tmp_path / "wds" / "validation").mkdir(parents=True)
    return tarfile.open(tmp_path / "wds" / "validation" / "00000.tar", "w", format=tarfile.PAX_FORMAT)


def test_damaged_shards_keep_what_came_before_and_bounded_headers(tmp_path):
    make_shards(tmp_path / "wds", shards=2, per_shard=4)
    cut = tmp_path / "wds" / "00001.tar"
    with tarfile.open(cut) as tar:
        at = tar.getmember("000000005.jpg").offset_data + 100
    cut.write_bytes(cut.read_bytes()[:at])  # the second sample's image is cut short
    with tarfile.open(tmp_path / "wds" / "00002.tar", "w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "link.jpg", b"", type=tarfile.SYMTYPE, linkname="/etc/passwd")
        _add(tar, "000000050.jpg", _jpeg(50))
        _add(tar, "000000050.txt", b"x" * (MAX_TEXT_BYTES + 1))  # a caption too long to be one: skipped
        _add(tar, "000000051.jpg", _jpeg(51), pax_headers={"comment": "y" * (MAX_TEXT_BYTES + 10)})
        _add(tar, "000000051.txt", b"a blue square")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids = {i for s in split_names(tmp_path / "wds") for i in open_split(tmp_path / "wds", s).ids}
    assert len(ids) == 4 + 1  # shard 0 whole, the first sample of the cut shard, nothing after the huge header
    said = " ".join(str(w.message) for w in caught if issubclass(w.category, SkippedImagesWarning))
    assert "00001.tar: it is cut short" in said and "00002.tar: a 65,5" in said


@pytest.mark.slow
def test_two_torchrun_ranks_train_on_shards_each_reading_shards_of_its_own(tmp_path):
    make_shards(tmp_path / "wds" / "train", shards=4, per_shard=4)
    make_shards(tmp_path / "wds" / "val", shards=1, per_shard=4, start=100)
    out, cache = tmp_path / "run", tmp_path / "cache"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "captioning",
               "train", "--data", str(tmp_path / "wds"), "--format", "webdataset", "--out", str(out),
               "--vocab-threshold", "1", "--epochs", "1", "--batch-size", "4", "--num-workers", "0", "--device", "cpu",
               "--cache-dir", str(cache)]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    train = open_split(tmp_path / "wds", "train")
    (index,) = cache.glob("*/train-*/index.json")
    cached = json.loads(index.read_text())["shards"]
    read = {r: {train.files[i].shard for s in cached if f"-r{r}-" in s["file"] for i in s["ids"]} for r in (0, 1)}
    assert len(read[0]) == len(read[1]) == 2 and not read[0] & read[1]  # two whole shards each
    assert sorted(i for s in cached for i in s["ids"]) == sorted(train.ids)
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("kind") == "step" for r in steps) and (out / "best.pt").is_file()


def test_a_coco_root_with_a_tar_beside_it_is_still_coco(tiny_coco, tmp_path):
    import shutil

    root = tmp_path / "coco"
    shutil.copytree(tiny_coco, root)
    (root / "sealed-test.tar").write_bytes(b"")  # never opened: a COCO root wins
    assert detect(root) == "coco"


def test_browse_shows_shard_images_with_their_file_names(monkeypatch, tmp_path):
    from app_fixtures import of_type, open_page, point_app, text

    point_app(monkeypatch, tmp_path)
    make_shards(tmp_path / "data" / "web", shards=2, per_shard=3)
    monkeypatch.setenv("CAPTIONING_DATA_DIR", str(tmp_path / "data"))
    at = open_page("browse")
    box = next(s for s in at.sidebar.selectbox if s.label == "Dataset")
    assert box.options == ["web (webdataset)"]
    next(s for s in at.sidebar.selectbox if s.label == "Split").set_value("train").run()
    split = open_split(tmp_path / "data" / "web", "train")
    shown = text(at)
    assert not at.exception and f"{len(split)} of {len(split)} images in train match" in shown
    assert len(of_type(at, "image")) == len(split)  # thumbnails read from inside the shards
    assert all(split.files[i].key in shown for i in split.ids)  # each tile named by its file
