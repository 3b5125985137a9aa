"""A run folder survives its trainer being killed anywhere, is never written by two trainers, and is not
overwritten by a new run by mistake.

The kill tests run the real `python -m captioning train` in a subprocess that SIGKILLs itself at a chosen
point (fault injection by patching, in the subprocess only): after N optimizer steps, right after `best.pt`
is written (before `last.pt`), or inside a validation. A resume must then end where an uninterrupted run ends.
"""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import torch
from conftest import REPO

from captioning import rundir
from captioning.checkpoint import load_checkpoint
from captioning.cli import main
from captioning.rundir import read_metrics

KILLER = """
import os, signal, sys
import captioning.train as T
point, at, seen = sys.argv[1], int(sys.argv[2]), [0]

def count_then_maybe_die():
    seen[0] += 1
    if seen[0] == at:
        os.kill(os.getpid(), signal.SIGKILL)

if point == "step":
    step = T.Optimiser.step
    T.Optimiser.step = lambda self, *a: (step(self, *a), count_then_maybe_die())[0]
elif point == "after-best":
    save = T.save_checkpoint
    T.save_checkpoint = lambda path, ckpt: (save(path, ckpt), path.name == "best.pt" and count_then_maybe_die())[0]
elif point == "validation":
    validate = T.validate
    T.validate = lambda *a, **k: (count_then_maybe_die(), validate(*a, **k))[1]
from captioning.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _args(coco, out, cache, *more: str) -> list[str]:
    # 120 captions / 16 = 8 steps an epoch, 3 epochs; last.pt every 8 steps, so also at the final step (24),
    # just before the final validation
    return ["train", "--coco-root", str(coco), "--out", str(out), "--epochs", "3", "--batch-size", "16",
            "--vocab-threshold", "1", "--cache-dir", str(cache), "--num-workers", "0", "--log-every", "1",
            "--save-every", "8", "--device", "cpu", *more]  # fmt: skip


@pytest.fixture(scope="module")
def reference(tiny_coco, tiny_cache_dir, tmp_path_factory):
    """An uninterrupted run: its validation scores and final weights."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(_args(tiny_coco, out, tiny_cache_dir)) == 0
    cider = [r["CIDEr"] for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "epoch"]
    return cider, load_checkpoint(out / "last.pt")["decoder_state"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("point", "at"),
    [("step", 5), ("step", 13), ("after-best", 2), ("validation", 2), ("validation", 3)],
    ids=["before-any-checkpoint", "mid-epoch", "between-best-and-last", "in-a-validation", "in-the-final-validation"],
)
def test_a_run_killed_anywhere_resumes_to_the_same_end(point, at, reference, tiny_coco, tiny_cache_dir, tmp_path):
    out = tmp_path / "run"
    killed = subprocess.run([sys.executable, "-c", KILLER, point, str(at), *_args(tiny_coco, out, tiny_cache_dir)],
                            cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert main(_args(tiny_coco, out, tiny_cache_dir, "--resume")) == 0
    records = read_metrics(out / "metrics.jsonl")
    epochs = [r for r in records if r["kind"] == "epoch"]
    cider, weights = reference
    assert [r["epoch"] for r in epochs] == [1, 2, 3] and [r["CIDEr"] for r in epochs] == pytest.approx(cider)
    assert records[-1]["event"] == "finished"
    steps = [r["step"] for r in records if r["kind"] == "step"]
    assert steps == sorted(set(steps)) and steps[-1] == 24
    last, best = load_checkpoint(out / "last.pt"), load_checkpoint(out / "best.pt")
    assert last["train_state"]["validated"] and last["train_state"]["step"] == 24
    assert best["metrics"]["val"]["CIDEr"] == last["train_state"]["best_cider"] == max(cider)
    assert all(torch.allclose(weights[k], last["decoder_state"][k], atol=1e-6) for k in weights)
    assert not list(out.glob(".*.tmp"))  # no half-written file left behind


def test_a_new_run_into_an_existing_run_folder_is_refused(tiny_run, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    for name in ("config.json", "metrics.jsonl", "last.pt"):
        (out / name).write_bytes((tiny_run / name).read_bytes())
    before = (out / "metrics.jsonl").read_bytes()
    assert main(["train", "--coco-root", str(tmp_path), "--out", str(out)]) == 2
    message = capsys.readouterr().err
    assert "already holds a run" in message and "--resume" in message and "another --out" in message
    assert (out / "metrics.jsonl").read_bytes() == before


def test_two_trainers_cannot_write_one_run(tiny_coco, tiny_cache_dir, tmp_path, capsys):
    out = tmp_path / "run"
    with rundir.RunLock(rundir.RunDir(out)):  # as a live trainer holds it
        assert main(_args(tiny_coco, out, tiny_cache_dir)) == 2
        assert "being trained by another process" in capsys.readouterr().err
        assert rundir.RunDir(out).locked()
    assert not rundir.RunDir(out).locked()
    assert main(_args(tiny_coco, out, tiny_cache_dir, "--epochs", "1")) == 0  # free again
