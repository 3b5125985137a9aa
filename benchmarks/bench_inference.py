"""Single-image latency of the shipped model against the seed's pipeline, interleaved call by call in one process.

Run: .venv/bin/python -m benchmarks.bench_inference [--repeats 40] [--checkpoint captioning/shipped/default.pt]
     [--quality ../shared/data/coco [--heldout-ids runs/select/ids/train-heldout-ids.txt]]
     (also what the fast path, onnxruntime encoder + int8 decoder, costs in quality against all-PyTorch fp32 on
      val, and on the protocol's held-out train images)

The seed's pipeline is ResNet-50 (random weights: timing only) + the Show-and-Tell LSTM, greedy, with its decoder
biased to end captions after about 10 words as a trained one does. Each variant of the shipped model (beam 3, the
default decoding) is timed on the same image right after the seed, every call, so a noisy machine slows both;
the ratio reported is the median of those paired ratios. Each time is split into preprocessing, encoder, decoder.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from captioning.checkpoint import SHIPPED
from captioning.config import DecodeConfig, ModelConfig
from captioning.data import load_image
from captioning.inference import Captioner
from captioning.model import CaptionModel

SAMPLE_VAL = Path(__file__).resolve().parent.parent / "captioning" / "sample" / "val"


def seed_pipeline(vocab, backbone: str = "resnet50", decoder: str = "showtell") -> Captioner:
    """Random weights whose captions end after about 10 words, as a trained model's do."""
    cfg = ModelConfig(backbone=backbone, decoder=decoder, vocab_size=len(vocab))
    model = CaptionModel.create(cfg, pretrained=False)
    with torch.no_grad():
        model.decoder.fc.weight.mul_(0.01)
        model.decoder.fc.bias.zero_()
        model.decoder.fc.bias[vocab.end_id] = math.log(0.1 / 0.9 * (len(vocab) - 1))
    return Captioner(model, vocab, device="cpu")


def variants(checkpoint: Path, workdir: Path, also: list[Path]) -> dict[str, Captioner]:
    """The shipped model as it runs (its recorded precision), and with each lever that was measured."""
    from captioning.export import ExportedModel, export, exported_captioner, paths

    shipped = Captioner.from_checkpoint(checkpoint, device="cpu")
    fp32 = Captioner.from_checkpoint(checkpoint, device="cpu", precision="fp32", encoder="torch")
    int8 = Captioner.from_checkpoint(checkpoint, device="cpu", precision="int8", encoder="torch")
    how = f"{shipped.info['precision']} decoder, {shipped.info['encoder']} encoder"
    out = {f"shipped, as it runs ({how})": shipped, "shipped, all PyTorch fp32": fp32}
    files = export(checkpoint, workdir / "model.onnx")
    encoder = ExportedModel(paths(files["encoder"]), fp32.model.cfg)
    out["shipped, fp32, encoder in onnxruntime"] = Captioner(encoder, fp32.vocab, "cpu", fp32.info, fp32.decoder)
    out["shipped, all in onnxruntime"] = exported_captioner(files["encoder"])
    last = Captioner.from_checkpoint(checkpoint, device="cpu", precision="fp32", encoder="torch")
    last.model.backbone.to(memory_format=torch.channels_last)
    out["shipped, fp32, channels_last"] = last
    out["shipped, int8 decoder"] = int8
    out["shipped, onnxruntime encoder + int8 decoder"] = Captioner(encoder, int8.vocab, "cpu", int8.info, int8.decoder)
    for other in also:
        other_model = Captioner.from_checkpoint(other, device="cpu")
        out[f"{other.parent.name or other.stem}, as it runs ({other_model.model.cfg.backbone})"] = other_model
    return out


def quality(checkpoint: Path, root: Path, split: str, ids: Path | None = None) -> tuple:
    """What the fast path (onnxruntime encoder + int8 decoder) costs against PyTorch fp32: both scored on the
    same images, the paired 95% interval of the difference (`captioning.bootstrap`), and how many captions
    changed. Returns both scores."""
    from captioning import bootstrap
    from captioning.evaluate import score_split
    from captioning.formats import open_split

    images = open_split(root, split, ids_file=ids)
    fp32 = Captioner.from_checkpoint(checkpoint, device="cpu", precision="fp32", encoder="torch")
    fast = Captioner.from_checkpoint(checkpoint, device="cpu", precision="int8", encoder="onnxruntime")
    (a, pa), (b, pb) = (score_split(c, images, DecodeConfig(), meteor=False) for c in (fp32, fast))
    same = sum(pa[i] == pb[i] for i in pa)
    delta = bootstrap.compare(a, b)
    where = f"{split}{' held-out' if ids else ''} ({a.images} images, default decoding)"
    print(f"{where}: CIDEr {a.corpus['CIDEr']:.4f} fp32, "
          f"{b.corpus['CIDEr']:.4f} fast, fast - fp32 {delta['CIDEr'].delta.text(4)}; BLEU-4 "
          f"{a.corpus['BLEU-4']:.4f}, {b.corpus['BLEU-4']:.4f}, {delta['BLEU-4'].delta.text(4)}; "
          f"{same} of {len(pa)} captions the same")  # fmt: skip
    return a, b


def pooled(parts: list) -> object:
    """Several splits' scores as one set of images (CIDEr: the mean of the per-image scores over all of them)."""
    from captioning.metrics import CaptionScores

    per_image = {i: s for part in parts for i, s in part.per_image.items()}
    cider = sum(s["CIDEr"] for s in per_image.values()) / len(per_image)
    return CaptionScores({"CIDEr": cider}, {i: {"CIDEr": s["CIDEr"]} for i, s in per_image.items()}, [], len(per_image))


def timed(captioner: Captioner, image, decoding: DecodeConfig) -> tuple[float, float, float]:
    """(preprocessing, encoder, decoder) seconds of one image."""
    t0 = time.perf_counter()
    pixels = captioner.preprocess(image).unsqueeze(0)
    t1 = time.perf_counter()
    with torch.inference_mode():
        feats = captioner.encode(pixels)
    t2 = time.perf_counter()
    captioner.caption_features(feats, decoding)
    return t1 - t0, t2 - t1, time.perf_counter() - t2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--checkpoint", type=Path, default=SHIPPED)
    parser.add_argument("--quality", type=Path, metavar="COCO_ROOT", help="also score fp32 and the fast path on val")
    parser.add_argument("--also", type=Path, nargs="*", default=[], help="other checkpoints to time as they run")
    parser.add_argument("--heldout-ids", type=Path, help="and on these train images (the protocol's held-out set)")
    args = parser.parse_args()
    if args.quality:
        scored = [quality(args.checkpoint, args.quality, "val")]
        if args.heldout_ids:
            from captioning import bootstrap

            scored.append(quality(args.checkpoint, args.quality, "train", args.heldout_ids))
            a, b = pooled([fp32 for fp32, _ in scored]), pooled([int8 for _, int8 in scored])
            print(f"both ({a.images} images): CIDEr fast - fp32 {bootstrap.compare(a, b)['CIDEr'].delta.text(4)}")
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    images = [load_image(p) for p in sorted(SAMPLE_VAL.glob("*.jpg"))[:8]]
    with tempfile.TemporaryDirectory() as tmp:
        shipped = variants(args.checkpoint, Path(tmp), args.also)
        seed = seed_pipeline(next(iter(shipped.values())).vocab)
        greedy, default = DecodeConfig(method="greedy", name_novel=False, block_repeats=False), DecodeConfig()
        for c in shipped.values():  # warm-up
            timed(c, images[0], default)
        timed(seed, images[0], greedy)
        seed_times, times = [], {name: [] for name in shipped}
        for r in range(args.repeats):
            image = images[r % len(images)]
            for name, captioner in shipped.items():
                base = timed(seed, image, greedy)
                seed_times.append(base)
                times[name].append((timed(captioner, image, default), sum(base)))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, one COCO-sample image a call, "
          f"{args.repeats} calls each, interleaved with the seed's")  # fmt: skip
    print(f"{'pipeline':34s} {'p50 ms':>8s} {'pre':>6s} {'enc':>6s} {'dec':>6s} {'x seed (paired median)':>24s}")
    cols = [statistics.median(t[j] for t in seed_times) * 1000 for j in range(3)]
    print(f"{'seed: ResNet-50 + greedy':34s} {statistics.median(sum(t) for t in seed_times) * 1000:8.1f} "
          + " ".join(f"{c:6.1f}" for c in cols) + f" {1.0:24.2f}")  # fmt: skip
    for name, rows in times.items():
        cols = [statistics.median(t[j] for t, _ in rows) * 1000 for j in range(3)]
        ratio = statistics.median(sum(t) / base for t, base in rows)
        print(f"{name + ', beam 3':34s} {statistics.median(sum(t) for t, _ in rows) * 1000:8.1f} "
              + " ".join(f"{c:6.1f}" for c in cols) + f" {ratio:24.2f}")  # fmt: skip
    constraint_cost(shipped[next(iter(shipped))], images, args.repeats)


def constraint_cost(captioner: Captioner, images: list, repeats: int) -> None:
    """What constrained decoding (on by default) costs: the images whose plain caption misses what the encoder is
    sure of are decoded a second time, with constraints; the others cost what they did."""
    on, off = DecodeConfig(), DecodeConfig(constrain=0.0)
    again = [captioner.caption([im], on)[0].text != captioner.caption([im], off)[0].text for im in images]
    rows: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for r in range(max(repeats, len(images))):
        k = r % len(images)
        rows[again[k]].append((sum(timed(captioner, images[k], on)), sum(timed(captioner, images[k], off))))
    print(f"\nconstrained decoding, interleaved with the same image unconstrained ({len(images)} images):")
    for searched, pairs in rows.items():
        if pairs:
            what = "searched again (caption changed)" if searched else "left as they were"
            ms_on, ms_off = (statistics.median(pair[j] for pair in pairs) * 1000 for j in (0, 1))
            count = sum(a == searched for a in again)
            print(f"  {count} {what}: p50 {ms_on:.1f} ms against {ms_off:.1f} ms unconstrained")


if __name__ == "__main__":
    main()
