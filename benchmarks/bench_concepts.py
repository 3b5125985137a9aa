"""Single-image latency with and without concepts and ensembles, side by side in one run: the attention decoder,
beam 3, on EfficientNet-Lite0, as the app captions an upload.

Run: .venv/bin/python -m benchmarks.bench_concepts [--repeats 30]

Variants, interleaved image by image so the machine's noise falls on all alike:
- baseline: no concepts in the decoder, no tags (what the app did before);
- tags: the encoder's top-5 ImageNet labels computed too (what Home and caption --json now show);
- concepts: a --concepts init decoder, plus tags;
- guided: tags plus guided decoding (bonus 3) with a class-to-words map for every class;
- concepts step: a --concepts step decoder, plus tags;
- named: tags plus naming a confident class the vocabulary lacks (every class is confident and unknown here);
- ensemble of 2 / 3: that many attention decoders over one encoder pass, plus tags.
Random decoder weights (timing only), with an end-of-caption bias so captions run about 10 words.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import replace

import torch
from PIL import Image

from captioning.config import DecodeConfig, ModelConfig
from captioning.ensemble import EnsembleDecoder
from captioning.inference import Captioner
from captioning.model import CaptionModel
from captioning.vocab import SPECIALS, Vocabulary


def _model(vocab: Vocabulary, concepts: str, seed: int = 0) -> CaptionModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(decoder="attention", vocab_size=len(vocab), concepts=concepts)
    model = CaptionModel.create(cfg, pretrained=True)
    with torch.no_grad():
        model.decoder.fc.weight.mul_(0.01)
        model.decoder.fc.bias.zero_()
        model.decoder.fc.bias[vocab.end_id] = math.log(0.1 / 0.9 * (len(vocab) - 1))
    return model


def _captioner(vocab: Vocabulary, concepts: str, members: int = 1) -> Captioner:
    models = [_model(vocab, concepts, seed) for seed in range(members)]
    decoder = EnsembleDecoder([m.decoder for m in models]) if members > 1 else None
    return Captioner(models[0], vocab, device="cpu", decoder=decoder)


UNNAMED = DecodeConfig(name_novel=False)  # each variant alone; naming is a variant of its own


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    vocab = Vocabulary(list(SPECIALS) + [f"w{i}" for i in range(1500)])  # a COCO-sample-sized vocabulary
    plain, with_concepts = _captioner(vocab, "none"), _captioner(vocab, "init")
    guided = _captioner(vocab, "none")
    guided.info["concept_words"] = {str(c): [f"w{c}"] for c in range(1000)}
    no_tags = _captioner(vocab, "none")
    no_tags._class_probabilities = lambda feats: None
    named = _captioner(vocab, "none")
    named._known = frozenset()  # every class name is novel: the naming always runs
    variants = {
        "baseline (no tags)": (no_tags, UNNAMED),
        "tags": (plain, UNNAMED),
        "concepts init + tags": (with_concepts, UNNAMED),
        "concepts step + tags": (_captioner(vocab, "step"), UNNAMED),
        "guided (bonus 3) + tags": (guided, replace(UNNAMED, guide=3.0)),
        "named + tags": (named, DecodeConfig()),
        "ensemble of 2 + tags": (_captioner(vocab, "none", members=2), UNNAMED),
        "ensemble of 3 + tags": (_captioner(vocab, "none", members=3), UNNAMED),
    }
    images = [Image.new("RGB", (640, 480), (i * 40 % 255, 120, 200)) for i in range(8)]
    for captioner, options in variants.values():
        captioner.caption(images[:1], options)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(args.repeats):
        for name, (captioner, options) in variants.items():
            t = time.perf_counter()
            captioner.caption([images[r % len(images)]], options)
            times[name].append((time.perf_counter() - t) * 1000)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, attention decoder, beam 3, max_len 20")
    print(f"{'variant':26s} {'p50 ms':>8s} {'p95 ms':>8s}")
    for name, values in times.items():
        ordered = sorted(values)
        print(f"{name:26s} {statistics.median(values):8.1f} {ordered[int(0.95 * (len(ordered) - 1))]:8.1f}")


if __name__ == "__main__":
    main()
