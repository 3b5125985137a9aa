"""Single-image latency with and without concepts, side by side in one run: the attention decoder, beam 3, on
EfficientNet-Lite0, as the app captions an upload.

Run: .venv/bin/python -m benchmarks.bench_concepts [--repeats 30]

Variants, interleaved image by image so the machine's noise falls on all alike:
- baseline: no concepts in the decoder, no tags (what the app did before);
- tags: the encoder's top-5 ImageNet labels computed too (what Home and caption --json now show);
- concepts: a --concepts init decoder, plus tags;
- guided: tags plus guided decoding (bonus 3) with a class-to-words map for every class.
Random decoder weights (timing only), with an end-of-caption bias so captions run about 10 words.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from PIL import Image

from captioning.config import ModelConfig
from captioning.inference import Captioner
from captioning.model import CaptionModel
from captioning.vocab import SPECIALS, Vocabulary


def _captioner(vocab: Vocabulary, concepts: str) -> Captioner:
    torch.manual_seed(0)
    cfg = ModelConfig(decoder="attention", vocab_size=len(vocab), concepts=concepts)
    model = CaptionModel.create(cfg, pretrained=True)
    with torch.no_grad():
        model.decoder.fc.weight.mul_(0.01)
        model.decoder.fc.bias.zero_()
        model.decoder.fc.bias[vocab.end_id] = math.log(0.1 / 0.9 * (len(vocab) - 1))
    return Captioner(model, vocab, device="cpu")


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
    variants = {
        "baseline (no tags)": (no_tags, 0.0),
        "tags": (plain, 0.0),
        "concepts init + tags": (with_concepts, 0.0),
        "guided (bonus 3) + tags": (guided, 3.0),
    }
    images = [Image.new("RGB", (640, 480), (i * 40 % 255, 120, 200)) for i in range(8)]
    for captioner, bonus in variants.values():
        captioner.caption(images[:1], guide=bonus)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(args.repeats):
        for name, (captioner, bonus) in variants.items():
            t = time.perf_counter()
            captioner.caption([images[r % len(images)]], guide=bonus)
            times[name].append((time.perf_counter() - t) * 1000)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, attention decoder, beam 3, max_len 20")
    print(f"{'variant':26s} {'p50 ms':>8s} {'p95 ms':>8s}")
    for name, values in times.items():
        ordered = sorted(values)
        print(f"{name:26s} {statistics.median(values):8.1f} {ordered[int(0.95 * (len(ordered) - 1))]:8.1f}")


if __name__ == "__main__":
    main()
