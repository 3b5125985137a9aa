"""`captioning.formats`: every common caption layout read into the same splits, detected where unambiguous, and
malformed input refused with one line or skipped with a count; no file outside the dataset is ever read."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import pytest
from fixtures import COLOURS, SHAPES, TEMPLATES, draw

from captioning.data import DatasetError
from captioning.formats import ReadOptions, detect, open_split, split_names
from captioning.formats.common import stable_id

NAMES = [f"img{k:02d}.jpg" for k in range(12)]


def _captions(k: int) -> list[str]:
    colour, shape = list(COLOURS)[k % 4], SHAPES[(k // 4) % 2]
    return [t.format(c=colour, s=shape) for t in TEMPLATES]


def _images(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(NAMES):
        draw(list(COLOURS)[k % 4], SHAPES[(k // 4) % 2]).save(folder / name)


def make(fmt: str, root: Path) -> Path:
    """A small dataset of 12 images, 5 captions each, in format `fmt`; the path to hand the reader."""
    root.mkdir(parents=True)
    if fmt == "flickr":  # Kaggle's layout: the token file beside Images/, the split lists beside it
        _images(root / "Images")
        lines = [f"{n}#{j}\t{c}" for k, n in enumerate(NAMES) for j, c in enumerate(_captions(k))]
        (root / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
        (root / "Flickr_8k.trainImages.txt").write_text("\n".join(NAMES[:8]) + "\n")
        (root / "Flickr_8k.devImages.txt").write_text("\n".join(NAMES[8:10]) + "\n")
        (root / "Flickr_8k.testImages.txt").write_text("\n".join(NAMES[10:]) + "\n")
    elif fmt == "karpathy":
        _images(root / "Flicker8k_Dataset")
        split = ["train"] * 7 + ["restval", "val", "val", "test", "test"]
        records = [{"filename": n, "split": split[k], "sentences": [{"raw": c} for c in _captions(k)]}
                   for k, n in enumerate(NAMES)]  # fmt: skip
        (root / "dataset_flickr8k.json").write_text(json.dumps({"images": records, "dataset": "flickr8k"}))
    elif fmt == "csv":
        _images(root / "pics")
        with open(root / "captions.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\r\n")  # CRLF, as Excel writes it
            writer.writerow(["path", "text"])
            for k, n in enumerate(NAMES):
                writer.writerows([f"pics/{n}", c.replace(" on ", ", on ")] for c in _captions(k))  # quoted commas
    elif fmt == "folder":
        _images(root)
        for k, n in enumerate(NAMES):
            (root / n).with_suffix(".txt").write_text("\n".join(_captions(k)) + "\n")
    elif fmt == "imagefolder":
        for split, names in (("train", NAMES[:9]), ("validation", NAMES[9:])):
            _images(root / split)
            for n in set(NAMES) - set(names):
                (root / split / n).unlink()
            lines = [json.dumps({"file_name": n, "text": c}) for n in names for c in _captions(NAMES.index(n))]
            (root / split / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize(
    ("fmt", "splits"),
    [
        ("flickr", {"train": 8, "val": 2, "test": 2}),
        ("karpathy", {"train": 8, "val": 2, "test": 2}),
        ("csv", None),
        ("folder", None),
        ("imagefolder", {"train": 9, "val": 3}),
    ],
)
def test_every_format_reads_into_the_same_splits_of_images_and_captions(tmp_path, fmt, splits):
    path = make(fmt, tmp_path / fmt)
    assert detect(path) == fmt
    names = split_names(path)
    counts = {name: len(open_split(path, name)) for name in names}
    if splits is None:  # no splits of its own: a stable held-out val
        assert set(names) == {"train", "val"} and sum(counts.values()) == 12 and counts["val"] >= 1
    else:
        assert counts == splits
    train = open_split(path, "train")
    first = train.ids[0]
    assert len(train.captions[first]) == 5 and train.files[first].is_file()
    assert all(i == stable_id(train.files[i].resolve().relative_to(path.resolve()).as_posix()) for i in train.ids)
    assert open_split(path, "train", fmt, ReadOptions()).ids == train.ids  # read again: the same ids


def test_a_bom_and_explicit_columns_are_read_and_a_missing_column_names_the_columns(tmp_path):
    path = make("csv", tmp_path / "csv")
    text = (path / "captions.csv").read_text(encoding="utf-8")
    (path / "captions.csv").write_text("\ufeff" + text.replace("path,text", "picture,words"), encoding="utf-8")
    with pytest.raises(DatasetError, match=r"no image column .*its columns: picture, words \(name it with --image"):
        open_split(path, "train")
    split = open_split(path, "train", "csv", ReadOptions(image_column="picture", caption_column="words"))
    assert len(split) >= 8 and any(", on" in c for caps in split.captions.values() for c in caps)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"\xff\xfe not utf-8", "is not UTF-8 text"), (b"", "is empty")],
)
def test_unreadable_caption_files_are_refused_in_one_line(tmp_path, content, message):
    (tmp_path / "data.csv").write_bytes(content)
    with pytest.raises(DatasetError, match=message):
        open_split(tmp_path / "data.csv", "train")


def test_files_named_outside_the_dataset_are_never_read_and_bad_rows_are_counted(tmp_path):
    secret = tmp_path / "secret.jpg"
    draw("red", "square").save(secret)
    path = make("flickr", tmp_path / "flickr")
    (path / "Images" / "link.jpg").symlink_to(secret)
    token = path / "Flickr8k.token.txt"
    bad = ["../secret.jpg#0\ta secret", "/etc/passwd#0\ta password", "link.jpg#0\ta link out", "no tab here",
           f"{NAMES[0]}#9\t", "missing.jpg#0\ta missing image"]  # fmt: skip
    token.write_text(token.read_text() + "\n".join(bad) + "\n")
    (path / "Flickr_8k.trainImages.txt").write_text("\n".join(NAMES[:8] + ["../secret.jpg", "link.jpg"]) + "\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train = open_split(path, "train", "flickr")
    assert len(train) == 8 and all(p.resolve().is_relative_to(path.resolve()) for p in train.files.values())
    said = " ".join(str(w.message) for w in caught)
    assert "2 malformed row(s) skipped" in said and "outside the dataset" in said


def test_duplicate_records_and_an_ambiguous_folder(tmp_path):
    path = make("karpathy", tmp_path / "karpathy")
    data = json.loads((path / "dataset_flickr8k.json").read_text())
    data["images"].append(dict(data["images"][0]))  # the same file twice
    (path / "dataset_flickr8k.json").write_text(json.dumps(data))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert len(open_split(path, "train")) == 8
    assert any("1 malformed row(s)" in str(w.message) for w in caught)
    (path / "other.csv").write_text("image,caption\nx.jpg,a thing\n")
    assert detect(path) == "karpathy"  # a named layout wins over a stray CSV
    (path / "Flickr8k.token.txt").write_text(f"{NAMES[0]}#0\ta thing\n")
    with pytest.raises(DatasetError, match="could be read as flickr or karpathy: say which with --format"):
        detect(path)
    with pytest.raises(DatasetError, match="no images with captions in its folder"):
        open_split(path, "train", "csv")  # --format picks the reader: its CSV names an image that is not there
    (tmp_path / "x.bin").write_bytes(b"\0" * 10)
    with pytest.raises(DatasetError, match="is not a caption dataset"):
        detect(tmp_path / "x.bin")


def test_convert_writes_a_coco_root_and_refuses_to_overwrite(tmp_path, capsys):
    from captioning.cli import main
    from captioning.data import CocoSplit

    path = make("flickr", tmp_path / "flickr")
    assert main(["convert", "--data", str(path), "--to", str(tmp_path / "coco")]) == 0
    assert "train: 8 images, 40 captions" in capsys.readouterr().out
    for name in ("train", "val", "test"):
        ours, theirs = CocoSplit.load(tmp_path / "coco", name), open_split(path, name)
        assert ours.ids == theirs.ids and ours.captions == theirs.captions
        assert all(ours.files[i].read_bytes() == theirs.files[i].read_bytes() for i in ours.ids)
    assert main(["convert", "--data", str(path), "--to", str(tmp_path / "coco")]) == 2
    assert "already holds split(s) test, train, val" in capsys.readouterr().err


@pytest.mark.slow
def test_train_and_evaluate_read_any_format_with_data(tmp_path, capsys):
    from captioning.cli import main

    path = make("csv", tmp_path / "csv")
    out = tmp_path / "run"
    argv = ["train", "--data", str(path / "captions.csv"), "--out", str(out), "--epochs", "2", "--batch-size", "8",
            "--vocab-threshold", "1", "--cache-dir", str(tmp_path / "cache"), "--num-workers", "0"]  # fmt: skip
    assert main(argv) == 0
    assert json.loads((out / "config.json").read_text())["train"]["format"] == "auto"
    capsys.readouterr()
    evaluate = ["evaluate", "--checkpoint", str(out / "best.pt"), "--data", str(path), "--format", "csv",
                "--split", "val", "--json", "--no-meteor"]  # fmt: skip
    assert main(evaluate) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["images"] == len(open_split(path, "val"))
