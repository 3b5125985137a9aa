"""Inference speed: single-image latency (p50/p95) for greedy and beam 3, and batch throughput.

Run: .venv/bin/python -m benchmarks.bench_inference [--repeats 20] [--backbones efficientnet_lite0 resnet50]
Random weights (timing only); every backbone is measured in the same run, on the same images.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from PIL import Image

from captioning.config import DecodeConfig, ModelConfig
from captioning.inference import Captioner
from captioning.model import CaptionModel
from captioning.vocab import SPECIALS, Vocabulary


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["efficientnet_lite0", "resnet50"])
    parser.add_argument("--decoder", default="showtell", choices=["showtell", "attention"])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)
    vocab = Vocabulary(list(SPECIALS) + [f"w{i}" for i in range(1500)])  # a COCO-sample-sized vocabulary
    images = [Image.new("RGB", (640, 480), (i * 40 % 255, 120, 200)) for i in range(args.batch)]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, decoder {args.decoder}, "
        f"vocab {len(vocab)}, max_len 20"
    )
    print(f"{'backbone':20s} {'method':8s} {'p50 ms':>8s} {'p95 ms':>8s} {'batch img/s':>12s}")
    for name in args.backbones:
        cfg = ModelConfig(backbone=name, decoder=args.decoder, vocab_size=len(vocab))
        model = CaptionModel.create(cfg, pretrained=False)
        with torch.no_grad():  # random weights, but captions end after ~10 words as a trained model's do
            model.decoder.fc.weight.mul_(0.01)
            model.decoder.fc.bias.zero_()
            model.decoder.fc.bias[vocab.end_id] = math.log(0.1 / 0.9 * (len(vocab) - 1))
        captioner = Captioner(model, vocab, device="cpu")
        captioner.caption(images[:2], DecodeConfig(name_novel=False))  # warm-up
        for method, beam in (("greedy", 1), ("beam", 3)):
            times = []
            for r in range(args.repeats):
                t = time.perf_counter()
                captioner.caption(
                    [images[r % len(images)]], DecodeConfig(method=method, beam_size=beam, name_novel=False)
                )
                times.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            captioner.caption(
                images, DecodeConfig(method=method, beam_size=beam, name_novel=False), batch_size=args.batch
            )
            throughput = len(images) / (time.perf_counter() - t)
            print(
                f"{name:20s} {method + str(beam if method == 'beam' else ''):8s} {statistics.median(times):8.1f} "
                f"{_percentile(times, 0.95):8.1f} {throughput:12.1f}"
            )


if __name__ == "__main__":
    main()
