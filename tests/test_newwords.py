"""Fine-tuning teaches new words: the vocabulary and the decoder grow by the words of the new captions the base
model lacks, its captions unchanged at step 0; `--keep-vocab` keeps the base's words."""

from __future__ import annotations

import json
import shutil

from captioning import newwords
from captioning.checkpoint import load_checkpoint, model_from_checkpoint
from captioning.config import DecodeConfig, TrainConfig
from captioning.data import CocoSplit, load_image
from captioning.inference import Captioner
from captioning.train import fit
from captioning.vocab import Vocabulary


def _renamed(tiny_coco, tmp_path, old: str, new: str):
    """A copy of the tiny set whose captions call every `old` a `new`."""
    root = tmp_path / "renamed"
    shutil.copytree(tiny_coco, root)
    for ann in (root / "annotations").glob("captions_*.json"):
        data = json.loads(ann.read_text())
        for a in data["annotations"]:
            a["caption"] = a["caption"].replace(old, new)
        ann.write_text(json.dumps(data))
    return root


def test_a_grown_model_captions_exactly_as_before_and_old_words_keep_their_ids(tiny_checkpoint, tiny_coco):
    ckpt = load_checkpoint(tiny_checkpoint)
    model, vocab = model_from_checkpoint(ckpt)
    grown = newwords.grow(model, vocab, ["zorb", "blick"])
    assert grown.itos[: len(vocab)] == vocab.itos and grown.itos[-2:] == ["zorb", "blick"]
    assert model.decoder.fc.out_features == model.decoder.embed.num_embeddings == model.cfg.vocab_size == len(grown)
    before = Captioner.from_checkpoint(tiny_checkpoint, device="cpu")
    after = Captioner(model, grown, device="cpu")
    val = CocoSplit.load(tiny_coco, "val")
    images = [load_image(val.files[i]) for i in val.ids]
    for decoding in (DecodeConfig(method="greedy"), DecodeConfig(beam_size=3)):
        old = [c.text for c in before.caption(images, decoding)]
        assert [c.text for c in after.caption(images, decoding)] == old


def test_a_fine_tune_learns_a_word_its_base_lacks(tiny_checkpoint, tiny_coco, tmp_path):
    root = _renamed(tiny_coco, tmp_path, "circle", "zorb")
    base = Vocabulary.from_dict(load_checkpoint(tiny_checkpoint)["vocab"])
    assert "zorb" not in base.stoi
    args = dict(coco_root=str(root), batch_size=16, cache_dir=str(tmp_path / "cache"), num_workers=0, seed=0,
                init_from=str(tiny_checkpoint), epochs=6, lr=3e-3)  # fmt: skip
    fit(TrainConfig.of(out=str(tmp_path / "grown"), **args))
    tuned = Vocabulary.from_dict(load_checkpoint(tmp_path / "grown" / "best.pt")["vocab"])
    assert tuned.itos == base.itos + ["zorb"]  # seen 60 times in the new captions, at or above the threshold
    captioner = Captioner.from_checkpoint(tmp_path / "grown" / "best.pt", device="cpu")
    val = CocoSplit.load(root, "val")
    said = {i: captioner.caption([load_image(val.files[i])])[0].words for i in val.ids}
    circles = [i for i in val.ids if any("zorb" in c for c in val.captions[i])]
    assert circles and all("zorb" in said[i] for i in circles)
    assert not any("zorb" in said[i] for i in val.ids if i not in circles)
    fit(TrainConfig.of(out=str(tmp_path / "kept"), keep_vocab=True, **args))
    assert load_checkpoint(tmp_path / "kept" / "best.pt")["vocab"] == load_checkpoint(tiny_checkpoint)["vocab"]
