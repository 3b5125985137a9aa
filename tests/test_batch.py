"""`caption` on folders (captioning/batch.py): nested folders, unreadable files, outputs, and a killed run resumed."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from captioning.cli import main


@pytest.fixture
def photos(tiny_coco, tmp_path):
    """6 images: 3 at the top, 3 in a subfolder; a broken JPEG and a text file beside them."""
    folder = tmp_path / "photos"
    (folder / "trip").mkdir(parents=True)
    images = sorted((tiny_coco / "val").iterdir())
    for k, image in enumerate(images[:6]):
        shutil.copy(image, folder / ("trip" if k >= 3 else "") / f"p{k}.jpg")
    (folder / "trip" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (folder / "notes.txt").write_text("not an image")
    return folder


def _rows(path):
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_a_folder_is_captioned_recursively_into_a_csv_and_a_broken_file_is_listed(photos, tiny_checkpoint, capsys):
    out = photos.parent / "captions.csv"
    assert main(["caption", str(photos), "--checkpoint", str(tiny_checkpoint), "--out", str(out)]) == 0
    assert len(_rows(out)) == 3  # the top folder only
    out.unlink()
    code = main(["caption", str(photos), "-r", "--batch-size", "4", "--checkpoint", str(tiny_checkpoint), "--out",
                 str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "broken.jpg" in err and "captioned 6 image(s), 1 unreadable" in err
    rows = _rows(out)
    assert sorted(r["image"].rsplit("/", 1)[1] for r in rows) == [f"p{k}.jpg" for k in range(6)]
    assert all(r["caption"].split() and 0 < float(r["confidence"]) <= 1 for r in rows)


def test_a_killed_run_resumes_where_it_stopped(photos, tiny_checkpoint, capsys):
    out = photos.parent / "captions.jsonl"
    argv = ["caption", str(photos), "-r", "--batch-size", "2", "--checkpoint", str(tiny_checkpoint), "--out", str(out)]
    main(argv)
    full = out.read_text().splitlines()
    out.write_text("\n".join(full[:2]) + "\n" + full[2][:15])  # killed while writing the third line
    capsys.readouterr()
    main(argv)
    assert "captioned 4 image(s), 2 already done" in capsys.readouterr().err
    again = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["image"] for r in again) == sorted(json.loads(line)["image"] for line in full)
    assert again[0]["words"] and "alternatives" in again[0]


def test_sidecars_never_overwrite_and_alt_text_is_capped_with_a_review_column(photos, tiny_checkpoint, capsys):
    (photos / "p0.txt").write_text("my own caption\n")
    alt = photos.parent / "alt.csv"
    argv = ["caption", str(photos), "--sidecar", "--alt-text", str(alt), "--alt-max", "12", "--checkpoint",
            str(tiny_checkpoint)]  # fmt: skip
    assert main(argv) == 0
    assert (photos / "p0.txt").read_text() == "my own caption\n"
    assert (photos / "p1.txt").read_text().strip() and (photos / "p2.txt").is_file()
    rows = _rows(alt)
    assert len(rows) == 3 and list(rows[0]) == ["file", "alt", "review", "why"]
    assert all(len(r["alt"]) <= 12 and r["review"] in ("", "yes") for r in rows)
    assert all((r["review"] == "yes") == r["why"].startswith("unsure: ") for r in rows)  # flagged, with the reason
    assert any(r["alt"].endswith("...") for r in rows)


def test_nothing_to_caption_and_a_wrong_output_name_are_one_line(tmp_path, tiny_checkpoint, capsys):
    assert main(["caption", str(tmp_path), "--checkpoint", str(tiny_checkpoint)]) == 2
    assert capsys.readouterr().err.strip() == "error: no image files to caption"
    assert main(["caption", str(tmp_path), "--out", str(tmp_path / "x.xlsx")]) == 2
    assert "--out must end in .csv or .jsonl" in capsys.readouterr().err
