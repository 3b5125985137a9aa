"""Browse and Fine-tune offer every caption dataset in the data folder, whatever its format, by name and format.

Run: python -m pytest tests/test_app_datasets.py
"""

from __future__ import annotations

from pathlib import Path

from app_fixtures import of_type, open_page, point_app, text
from fixtures import COLOURS, SHAPES, draw

from app.render import plain
from captioning import formats

PICTURES = [(colour, shape) for shape in SHAPES for colour in COLOURS]  # 8 images


def make_data_folder(data: Path) -> Path:
    """A data folder holding a Flickr8k-style dataset (token file + Images/), a CSV whose images are in pics/, and
    a folder of notes that is no dataset; returns `data`."""
    images = data / "flickr8k" / "Images"
    images.mkdir(parents=True)
    lines = []
    for i, (colour, shape) in enumerate(PICTURES):
        draw(colour, shape, jitter=i % 4).save(images / f"{1000 + i}_{colour}.jpg")
        lines += [f"{1000 + i}_{colour}.jpg#{k}\ta {colour} {shape} in picture {k}" for k in range(3)]
    (data / "flickr8k" / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    (data / "pics").mkdir()
    rows = ["image,caption"]
    for i, (colour, shape) in enumerate(PICTURES):
        draw(colour, shape).save(data / "pics" / f"p{i}.png")
        rows += [f"pics/p{i}.png,one {colour} {shape} drawn", f'pics/p{i}.png,"a {shape}, {colour}"']
    (data / "captions.csv").write_text("\n".join(rows) + "\n")
    (data / "notes").mkdir()
    (data / "notes" / "todo.md").write_text("# not a dataset\n")
    return data


def _browse(monkeypatch, tmp_path: Path):
    point_app(monkeypatch, tmp_path)
    data = make_data_folder(tmp_path / "data")
    monkeypatch.setenv("CAPTIONING_DATA_DIR", str(data))
    return open_page("browse"), data


def _box(at, label: str):
    return next(s for s in at.sidebar.selectbox if s.label == label)


def test_browse_offers_each_dataset_by_name_and_format_and_shows_a_flickr_split(monkeypatch, tmp_path):
    at, data = _browse(monkeypatch, tmp_path)
    assert not at.exception
    # the CSV's own folder (data/) and its image folder are not datasets of their own; notes/ is nothing
    assert _box(at, "Dataset").options == ["captions.csv (csv)", "flickr8k (flickr)"]
    _box(at, "Dataset").set_value(str(data / "flickr8k")).run()
    _box(at, "Split").set_value("train").run()
    split = formats.open_split(data / "flickr8k", "train", "flickr")
    shown = text(at)
    assert not at.exception and f"{len(split)} of {len(split)} images in train match" in shown
    assert len(of_type(at, "image")) == len(split)
    assert all(split.captions[i][0] in shown for i in split.ids)  # each tile: its first reference

    image_id = split.ids[0]
    at.query_params["image"] = str(image_id)  # a 48-bit id: the link still opens it
    at.run()
    shown = text(at)
    assert not at.exception and all(c in shown for c in split.captions[image_id])
    [image] = of_type(at, "image")
    name = plain(split.files[image_id].name, 120)  # a file name from a data file: markdown-escaped
    assert image.proto.imgs[0].caption == f"{name} (link: ?image={image_id})" and "COCO image" not in shown


def test_browse_shows_a_csv_dataset_with_its_references(monkeypatch, tmp_path):
    at, data = _browse(monkeypatch, tmp_path)
    assert _box(at, "Dataset").value == str(data / "captions.csv")  # the first one offered
    for name in _box(at, "Split").options:
        _box(at, "Split").set_value(name).run()
        split = formats.open_split(data / "captions.csv", name, "csv")
        assert not at.exception and f"{len(split)} of {len(split)} images in {name} match" in text(at)
        assert len(of_type(at, "image")) == len(split)
    at.main.text_input[0].set_value("circle").run()  # the search reads the CSV's captions
    assert not at.exception and all(caption.startswith(("one", "a circle")) for caption in _tile_references(at))


def _tile_references(at) -> list[str]:
    return [c.value.split("** ", 1)[1] for c in at.main.caption if c.value.startswith("**#")]


def test_a_data_folder_with_nothing_readable_offers_nothing_and_says_so(monkeypatch, tmp_path):
    point_app(monkeypatch, tmp_path)
    data = tmp_path / "data"
    (data / "notes").mkdir(parents=True)
    (data / "notes" / "todo.md").write_text("# not a dataset\n")
    (data / "pics").mkdir()
    draw("red", "circle").save(data / "pics" / "a.png")  # images without captions
    (data / "empty.csv").write_text("")  # a CSV: offered, and its error said in one line when chosen
    monkeypatch.setenv("CAPTIONING_DATA_DIR", str(data))
    at = open_page("browse")
    assert not at.exception and _box(at, "Dataset").options == ["empty.csv (csv)"]
    assert "empty.csv is empty" in at.error[0].value
    (data / "empty.csv").unlink()
    at = open_page("browse")
    assert not at.exception and "No caption dataset found" in at.info[0].value


def test_finetune_offers_a_csv_dataset_and_its_splits(tiny_checkpoint, monkeypatch, tmp_path):
    point_app(monkeypatch, tmp_path, checkpoint=tiny_checkpoint)
    data = make_data_folder(tmp_path / "data")
    monkeypatch.setenv("CAPTIONING_DATA_DIR", str(data))
    at = open_page("finetune")
    assert not at.exception and _box(at, "Dataset").options == ["captions.csv (csv)", "flickr8k (flickr)"]
    assert _box(at, "Training split").value == "train"
    validation = next(s for s in at.main.selectbox if s.label == "Validation split")
    assert validation.options == ["(none)", "train", "val"] and validation.value == "val"
    assert any(b.label == "Fine-tune on train" for b in at.button)
