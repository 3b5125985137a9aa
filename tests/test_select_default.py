"""The selection protocol script (scripts/select_default.py) end to end on the tiny dataset: held-out ids carved
once, recipes x seeds trained on the rest, scored on val and the held-out set, compared seed by seed; a rerun
trains nothing again."""

from __future__ import annotations

import sys

from captioning.data import read_ids_file


def test_the_protocol_trains_scores_compares_and_a_rerun_reuses_everything(tiny_coco, tmp_path, monkeypatch, capsys):
    from scripts import select_default

    out = tmp_path / "select"
    extra = (f"--epochs 1 --scst-epochs 0 --batch-size 8 --vocab-threshold 1 --val-method greedy --num-workers 0 "
             f"--cache-dir {tmp_path / 'cache'} --log-every 50")  # fmt: skip
    argv = ["select_default", "--coco-root", str(tiny_coco), "--out", str(out), "--heldout", "4", "--extra", extra]
    monkeypatch.setattr(sys, "argv", argv)
    select_default.main()
    held, rest = (read_ids_file(out / "ids" / f"train-{kind}-ids.txt") for kind in ("heldout", "rest"))
    assert len(held) == 4 and len(rest) == 20 and not set(held) & set(rest)
    report = (out / "report.md").read_text()
    for recipe in ("lite2", "lite0"):
        for seed in (0, 1):
            assert f"| {recipe} | {seed} |" in report
            assert (out / f"{recipe}-seed{seed}" / "best.pt").is_file()
    assert "lite0 minus lite2, paired on the same images (CIDEr):" in report
    assert "- seed 0: val " in report and "; held-out " in report and "- verdict: lite0 is " in report
    assert "- lite2, seeds' mean CIDEr (spread): val " in report
    for recipe in ("lite2", "lite0"):  # the ensemble of a recipe's seeds, a candidate of its own
        assert f"| {recipe} | ensemble |" in report
        assert f"{recipe}: the ensemble of seeds 0, 1 minus each seed alone:" in report
    assert report.count("- verdict: the ensemble is ") == 2
    trained = {p: p.stat().st_mtime_ns for p in out.glob("*/best.pt")}
    capsys.readouterr()
    select_default.main()  # again: nothing is trained or scored again, and the report is the same
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/best.pt")} == trained
    assert (out / "report.md").read_text() == report and "train" not in capsys.readouterr().err.lower()

    # the winner shipped: concept words from the images it trained on, the measured precision, its log beside it
    from captioning.checkpoint import load_checkpoint
    from captioning.inference import Captioner
    from scripts import ship_default

    shipped = tmp_path / "shipped"
    ship_default.main(["--run", str(out / "lite0-seed1"), "--precision", "int8", "--encoder", "onnxruntime",
                       "--out", str(shipped)])  # fmt: skip
    ckpt = load_checkpoint(shipped / "default.pt")
    assert ckpt["inference"] == {"decoder": "int8", "encoder": "onnxruntime"}
    assert "concept_words" in ckpt and "train_state" not in ckpt
    assert (shipped / "default-metrics.jsonl").read_bytes() == (out / "lite0-seed1" / "metrics.jsonl").read_bytes()
    monkeypatch.setenv("CAPTIONING_CACHE", str(tmp_path / "cache"))
    info = Captioner.from_checkpoint(shipped / "default.pt", device="cpu").info
    assert (info["precision"], info["encoder"]) == ("int8", "onnxruntime")
