"""Shared fixtures: a tiny COCO-format dataset, a tiny run trained on it (seconds on a CPU), the real sample."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from download_mirror import mirror  # noqa: F401  (the fake COCO mirror fixture of the download tests)
from fixtures import make_coco

from captioning.config import TrainConfig
from captioning.train import fit

if os.environ.get("PYTEST_XDIST_WORKER"):  # two workers on two cores: one thread each, their subprocesses too
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_COCO = REPO.parent / "shared" / "data" / "coco"  # the real COCO sample, where this machine has it
needs_shared_coco = pytest.mark.skipif(
    not (SHARED_COCO / "annotations" / "captions_val.json").is_file(),
    reason=f"the real COCO sample is not at {SHARED_COCO}",
)


@pytest.fixture(scope="session")
def tiny_coco(tmp_path_factory) -> Path:
    """A COCO root with splits `train` (24 images) and `val` (8) of coloured shapes, 5 captions each."""
    return make_coco(tmp_path_factory.mktemp("tiny_coco"))


@pytest.fixture(scope="session")
def tiny_cache_dir(tmp_path_factory) -> Path:
    """The feature cache the tiny runs train with; pass it as --cache-dir to skip the CNN."""
    return tmp_path_factory.mktemp("tiny_features")


def _train(coco: Path, out: Path, cache: Path, **kw) -> Path:
    fit(TrainConfig.of(coco_root=str(coco), out=str(out), batch_size=16, vocab_threshold=1, cache_dir=str(cache),
                    num_workers=0, log_every=1, seed=0, **kw))  # fmt: skip
    return out


@pytest.fixture(scope="session")
def tiny_run(tiny_coco, tiny_cache_dir, tmp_path_factory) -> Path:
    """A finished run directory (show-and-tell, default sizes, 6 epochs): metrics.jsonl, best.pt, last.pt."""
    return _train(tiny_coco, tmp_path_factory.mktemp("tiny_run") / "showtell", tiny_cache_dir, epochs=6)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_run) -> Path:
    """The tiny run's best.pt: a model that names the colours and shapes of tiny_coco."""
    return tiny_run / "best.pt"


@pytest.fixture(scope="session")
def tiny_attention_checkpoint(tiny_coco, tiny_cache_dir, tmp_path_factory) -> Path:
    """A small attention-decoder model (7x7 attention per word), 1 epoch: best.pt in its run directory."""
    out = tmp_path_factory.mktemp("tiny_run") / "attention"
    _train(tiny_coco, out, tiny_cache_dir, epochs=1, decoder="attention", embed_size=64, hidden_size=128,
           attention_size=64)  # fmt: skip
    return out / "best.pt"


@pytest.fixture
def caption_calls(monkeypatch) -> list:
    """The DecodeConfig of every batch a Captioner decodes from here on (`caption_features`, which `caption` and the
    folder path call; the captions are real)."""
    from captioning.config import DecodeConfig
    from captioning.inference import Captioner

    seen: list[DecodeConfig] = []
    real = Captioner.caption_features

    def spy(self, feats, decoding, *args, **kwargs):
        seen.append(decoding)
        return real(self, feats, decoding, *args, **kwargs)

    monkeypatch.setattr(Captioner, "caption_features", spy)
    return seen
