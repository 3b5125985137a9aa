"""The command line as a user types it: output, JSON shapes and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO

from captioning.cli import main
from captioning.config import DecodeConfig
from captioning.data import CocoSplit, read_ids_file
from captioning.vocab import Vocabulary


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "captioning", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_caption_prints_a_sentence_and_json(tiny_checkpoint, tiny_coco, capsys):
    images = sorted((tiny_coco / "val").iterdir())[:2]
    assert main(["caption", str(images[0]), "--checkpoint", str(tiny_checkpoint), "--method", "greedy"]) == 0
    text = capsys.readouterr().out.strip()
    assert len(text.split()) >= 3 and text[0].isupper()
    assert main(["caption", *map(str, images), "--checkpoint", str(tiny_checkpoint), "--json", "--beam-size", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in out] == [str(p) for p in images]
    assert len(out[0]["alternatives"]) == 2 and all(0 < w["prob"] <= 1 for w in out[0]["words"])


def test_allow_repeats_turns_off_the_repeat_block(tiny_checkpoint, tiny_coco, caption_calls, capsys):
    image = str(sorted((tiny_coco / "val").iterdir())[0])
    assert main(["caption", image, "--checkpoint", str(tiny_checkpoint)]) == 0
    assert main(["caption", image, "--checkpoint", str(tiny_checkpoint), "--allow-repeats"]) == 0
    assert [c.block_repeats for c in caption_calls] == [True, False]
    capsys.readouterr()


def test_caption_reports_a_broken_file_and_goes_on(tiny_checkpoint, tiny_coco, tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    good = sorted((tiny_coco / "val").iterdir())[0]
    assert main(["caption", str(bad), str(good), "--checkpoint", str(tiny_checkpoint)]) == 1
    captured = capsys.readouterr()
    assert "broken.jpg" in captured.err and "Traceback" not in captured.err
    assert str(good) in captured.out


def test_evaluate_json_has_coco_keys(tiny_checkpoint, tiny_coco, capsys):
    code = main(
        [
            "evaluate",
            "--checkpoint",
            str(tiny_checkpoint),
            "--coco-root",
            str(tiny_coco),
            "--split",
            "val",
            "--method",
            "greedy",
            "--limit",
            "6",
            "--json",
        ]
    )
    assert code == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    metrics = {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr", "images", "decoding"}
    metrics |= {"intervals", "interval", "split", "cider_df"}
    assert set(scores) in (metrics, metrics | {"METEOR"})
    assert scores["decoding"] == DecodeConfig(method="greedy").to_dict()  # the score says how it was decoded
    assert scores["images"] == 6 and 0 <= scores["BLEU-4"] <= 1 and scores["CIDEr"] > 0.5
    low, high = scores["intervals"]["CIDEr"]  # each metric has its 95% bootstrap interval over the 6 images
    assert low <= scores["CIDEr"] <= high and high - low > 0
    assert scores["interval"] == {"level": 0.95, "resamples": 1000, "over": "images"}


def test_evaluate_compare_answers_whether_b_is_better(tiny_checkpoint, tiny_coco, capsys):
    base = ["evaluate", "--checkpoint", str(tiny_checkpoint), "--coco-root", str(tiny_coco), "--split", "val"]
    base += ["--method", "greedy", "--limit", "6", "--no-meteor"]
    assert main([*base, "--compare", str(tiny_checkpoint)]) == 0
    out = capsys.readouterr().out
    assert "6 images of val; 95% intervals from 1000 bootstrap draws" in out
    assert "no CIDEr difference shown: the interval includes 0 (6 images)" in out  # a model against itself
    assert main([*base, "--compare", str(tiny_checkpoint), "--cider-df", "train", "--json"]) == 0
    found = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    same = found["compare"]["difference"]["CIDEr"]
    assert same["b_minus_a"] == 0 and same["interval"] == [0, 0] and not same["shown"]
    assert found["cider_df"] == "train" and found["compare"]["scores"]["CIDEr"] == found["CIDEr"]
    assert main([*base, "--compare", str(tiny_checkpoint.parent / "missing.pt")]) == 2
    assert "missing.pt does not exist" in capsys.readouterr().err


def test_build_vocab_writes_json(tiny_coco, tmp_path, capsys):
    out = tmp_path / "vocab.json"
    assert (
        main(["build-vocab", "--coco-root", str(tiny_coco), "--split", "train", "--threshold", "5", "--out", str(out)])
        == 0
    )
    vocab = Vocabulary.load(out)
    assert "square" in vocab.stoi and "circle" in vocab.stoi and len(vocab) < 40


@pytest.mark.parametrize(
    "args, message",
    [
        (["evaluate", "--coco-root", "{tmp}/none", "--split", "val", "--checkpoint", "{ckpt}"], "no annotations"),
        (["caption", "x.jpg", "--checkpoint", "{tmp}/none/model.pt"], "does not exist"),
        (["train", "--coco-root", "{coco}", "--out", "{tmp}/r", "--backbone", "vgg"], "invalid choice"),
        (["train", "--coco-root", "{coco}", "--out", "{tmp}/r", "--batch-size", "0"], "batch_size must be at least 1"),
    ],
)
def test_bad_arguments_exit_nonzero_with_one_clear_line(args, message, tiny_checkpoint, tiny_coco, tmp_path):
    fill = {"ckpt": str(tiny_checkpoint), "coco": str(tiny_coco), "tmp": str(tmp_path)}
    result = run_cli(*[a.format(**fill) for a in args])
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith(("error", "python -m"))]) >= 1


def test_holdout_carves_the_same_disjoint_ids_every_time(tiny_coco, tmp_path, capsys):
    args = ["holdout", "--coco-root", str(tiny_coco), "--size", "5", "--out"]
    assert main([*args, str(tmp_path / "a")]) == 0 and main([*args, str(tmp_path / "b")]) == 0
    assert "--train-ids" in capsys.readouterr().out  # says how to use them
    held, rest = (read_ids_file(tmp_path / "a" / f"train-{kind}-ids.txt") for kind in ("heldout", "rest"))
    assert len(held) == 5 and not set(held) & set(rest)
    assert sorted(held + rest) == sorted(CocoSplit.load(tiny_coco, "train").ids)
    assert (tmp_path / "b" / "train-heldout-ids.txt").read_text() == (
        tmp_path / "a" / "train-heldout-ids.txt"
    ).read_text()
    whole = ["holdout", "--coco-root", str(tiny_coco), "--size", "24", "--out", str(tmp_path / "c")]
    assert main(whole) == 2  # all of it: nothing left to train on
    assert "--size must be between 1 and 23" in capsys.readouterr().err
