"""`captioning.loader`: the one image loader of the cache, validation, evaluation and training."""

from __future__ import annotations

import torch
from fixtures import draw

from captioning.backbones import get_spec
from captioning.loader import batches, load_batch, load_views

PREPROCESS = get_spec("efficientnet_lite0").preprocess


def _files(tmp_path) -> dict[int, object]:
    files = {}
    for i, colour in enumerate(["red", "blue", "green", "yellow", "red"]):
        files[i] = tmp_path / f"{i}.png"
        draw(colour, "circle", jitter=i).save(files[i])
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    files["bad"], files["empty"] = tmp_path / "bad.jpg", tmp_path / "empty.png"
    return files


def test_unreadable_images_are_skipped_and_named_and_the_rest_keep_their_order(tmp_path):
    files = _files(tmp_path)
    batch = load_batch([3, "bad", 0, "empty", 4], files, PREPROCESS)
    assert batch.keys == [3, 0, 4] and batch.skipped == ["bad", "empty"]
    assert batch.pixels.shape == (3, 3, 224, 224)
    assert torch.equal(batch.pixels[1], load_views(files[0], PREPROCESS)[0])
    assert load_batch(["bad"], files, PREPROCESS).pixels is None


def test_two_views_are_the_image_and_its_mirror_side_by_side(tmp_path):
    files = _files(tmp_path)
    batch = load_batch([1, 2], files, PREPROCESS, views=2)
    assert batch.pixels.shape == (4, 3, 224, 224)
    assert torch.equal(batch.pixels[1], batch.pixels[0].flip(-1)) and torch.equal(
        batch.pixels[3], batch.pixels[2].flip(-1)
    )


def test_worker_processes_give_the_batches_one_process_gives(tmp_path):
    files = _files(tmp_path)
    keys = [0, "bad", 1, 2, "empty", 3, 4]
    alone = list(batches(keys, files, PREPROCESS, batch_size=3))
    workers = list(batches(keys, files, PREPROCESS, batch_size=3, num_workers=2))
    assert [b.keys for b in alone] == [b.keys for b in workers] == [[0, 1], [2, 3], [4]]
    assert [b.skipped for b in alone] == [["bad"], ["empty"], []]
    assert all(torch.equal(a.pixels, w.pixels) for a, w in zip(alone, workers, strict=True))
    fixed = list(batches(keys, files, PREPROCESS, batch_sampler=[[6, 5], [0]]))
    assert [b.keys for b in fixed] == [[4, 3], [0]]
