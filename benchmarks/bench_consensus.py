"""Consensus reranking (Devlin et al. 2015, "Exploring nearest neighbor approaches for image captioning"): pick,
among the beam's captions, the one that agrees most with the captions of the image's nearest training images in
the encoder's feature space. Scored against the default decoding on the same images, with paired intervals.

Run: .venv/bin/python -m benchmarks.bench_consensus [--coco-root ../shared/data/coco] [--split val]
     [--train-split train] [--neighbours 20] [--checkpoint CKPT] [--everyday cache/everyday]

Neighbours: cosine similarity of the pooled (grid-averaged) encoder features. Agreement: CIDEr-D of a candidate
against all the neighbours' captions, with document frequencies from the train split. Two rules, fixed before
any run (not tuned): "consensus" takes the candidate with the highest agreement; "consensus + model" adds the
decoder's own score (mean log-probability per word) to it. The candidates are the default decoding's beam (3).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def pooled(feats: torch.Tensor) -> torch.Tensor:
    """(B, C) unit vectors from pooled (B, C) or grid (B, N, C) features."""
    flat = feats.mean(dim=1) if feats.dim() == 3 else feats
    return torch.nn.functional.normalize(flat.float(), dim=1)


def main() -> None:
    from benchmarks.bench_everyday import names_subject
    from benchmarks.everyday import collect, load_check_set
    from captioning import bootstrap
    from captioning.checkpoint import default_checkpoint
    from captioning.cider import CiderD, DocumentFrequencies, RewardReferences, words_for_reward
    from captioning.config import DecodeConfig
    from captioning.data import load_image
    from captioning.formats import open_split
    from captioning.inference import Captioner
    from captioning.loader import batches
    from captioning.metrics import score_captions
    from captioning.vocab import tokenize

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coco-root", type=Path, default=Path("../shared/data/coco"))
    parser.add_argument("--split", default="val")
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--neighbours", type=int, default=20)
    parser.add_argument("--checkpoint", type=Path, default=default_checkpoint())
    parser.add_argument("--everyday", type=Path, default=Path("cache/everyday"))
    args = parser.parse_args()

    captioner = Captioner.from_checkpoint(args.checkpoint, device="cpu")
    train, split = open_split(args.coco_root, args.train_split), open_split(args.coco_root, args.split)
    keys, vectors = [], []
    with torch.inference_mode():
        for batch in batches(train.ids, train.files, captioner.preprocess, 32):
            keys += batch.keys
            vectors.append(pooled(captioner.encode(batch.pixels)))
    bank = torch.cat(vectors)  # (train images, C)
    references = RewardReferences(train.captions)
    df = DocumentFrequencies.compute(references[i] for i in keys)
    decoding = DecodeConfig()

    def rerank(caps, feats) -> tuple[list[str], list[str]]:
        """Each caption's pick by consensus, and by consensus + model score."""
        near = (pooled(feats) @ bank.T).topk(args.neighbours, dim=1).indices.tolist()
        alone, mixed = [], []
        for cap, rows in zip(caps, near, strict=True):
            cider = CiderD({0: [words for r in rows for words in references[keys[r]]]}, df)
            shown = [(cap.text, cap.score)] + [(h.text, h.score) for h in cap.alternatives[1:]]
            agree = [(cider.score(0, words_for_reward(tokenize(text))), score, text) for text, score in shown]
            alone.append(max(agree, key=lambda a: a[0])[2])
            mixed.append(max(agree, key=lambda a: a[0] + a[1])[2])
        return alone, mixed

    preds: dict[str, dict[int, str]] = {"default": {}, "consensus": {}, "consensus + model": {}}
    with torch.inference_mode():
        for batch in batches(split.ids, split.files, captioner.preprocess, 16):
            feats = captioner.encode(batch.pixels)
            caps = captioner.caption_features(feats, decoding, batch.pixels)
            alone, mixed = rerank(caps, feats)
            for i, cap, a, m in zip(batch.keys, caps, alone, mixed, strict=True):
                preds["default"][i], preds["consensus"][i], preds["consensus + model"][i] = cap.text, a, m
    scored = {name: score_captions(p, split.captions, meteor=False) for name, p in preds.items()}
    print(f"{len(preds['default'])} images of {args.split}, {args.neighbours} neighbours among {len(keys)} "
          f"{args.train_split} images; paired 95% intervals (1,000 draws)")  # fmt: skip
    print("| decoding | CIDEr [95%] | BLEU-4 [95%] | CIDEr minus default [95%] | changed captions |")
    print("|---|---|---|---|---|")
    for name, scores in scored.items():
        found = bootstrap.intervals(scores)
        delta = "" if name == "default" else bootstrap.compare(scored["default"], scores)["CIDEr"].delta.text()
        changed = sum(preds[name][i] != preds["default"][i] for i in preds["default"])
        print(f"| {name} | {found['CIDEr'].text()} | {found['BLEU-4'].text()} | {delta} | {changed} |")

    collect(args.everyday)
    photos = load_check_set(args.everyday)
    hits = {name: 0 for name in preds}
    with torch.inference_mode():
        for _, path, words in photos:
            pixels = captioner.preprocess(load_image(path)).unsqueeze(0)
            feats = captioner.encode(pixels)
            cap = captioner.caption_features(feats, decoding, pixels)[0]
            alone, mixed = rerank([cap], feats)
            for name, text in zip(preds, (cap.text, alone[0], mixed[0]), strict=True):
                hits[name] += names_subject(text, words)
    print(f"\n{len(photos)} everyday photos, subject named: " + ", ".join(f"{n} {h}" for n, h in hits.items()))


if __name__ == "__main__":
    main()
