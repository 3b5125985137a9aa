"""The `evaluate` command: COCO metrics of a model on a split, each with its bootstrap interval over images, and
with `--compare` a paired comparison of two models on the same images."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from captioning.flags import DATA_FLAGS, add_train_arguments, decode_config, positive, read_options
from captioning.formats import open_split


def cmd_evaluate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from captioning import bootstrap
    from captioning.cli import _load_captioner
    from captioning.evaluate import score_split

    decoding = decode_config(args)
    split = open_split(args.coco_root, args.split, args.format, read_options(args), args.ids_file)
    idf = None
    if args.cider_df:  # CIDEr's document frequencies from a named split's references, whatever is scored
        idf = open_split(args.coco_root, args.cider_df, args.format, read_options(args)).captions
    if args.compare is not None and not args.compare.is_file():  # say so now, not after scoring A
        raise FileNotFoundError(f"--compare {args.compare} does not exist")
    models = [("A", args.checkpoint, args.ensemble)] + ([("B", args.compare, None)] if args.compare else [])
    n = min(len(split), args.limit) if args.limit else len(split)
    scored = []
    for name, checkpoint, ensemble in models:
        captioner = _load_captioner(checkpoint, args.device, ensemble, args.precision, args.encoder)
        label = f"captioning {args.split}" + (f" with {name}" if args.compare else "")
        with tqdm(total=n, desc=label, unit="img", disable=args.json or None) as bar:
            scores, _ = score_split(
                captioner,
                split,
                decoding,
                args.limit,
                meteor=False if args.no_meteor else None,
                on_batch=lambda done, total, bar=bar: bar.update(done - bar.n),
                idf=idf,
            )
        scored.append(scores)
        del captioner
    for note in dict.fromkeys(note for s in scored for note in s.notes):
        print(f"note: {note}", file=sys.stderr)
    intervals = [bootstrap.intervals(s, args.resamples) for s in scored]
    differences = bootstrap.compare(scored[0], scored[1], args.resamples) if args.compare else None
    about = {"split": args.split, "cider_df": args.cider_df or args.split, "decoding": decoding.to_dict()}
    if args.json:
        print(json.dumps(_as_json(scored, intervals, differences, args) | about))
        return 0
    _print_table(scored, intervals, differences, args)
    return 0


def _as_json(scored, intervals, differences, args) -> dict:
    a = scored[0]
    out = {**a.corpus, "images": a.images}
    out["intervals"] = {m: [i.low, i.high] for m, i in intervals[0].items()}
    out["interval"] = {"level": 0.95, "resamples": args.resamples, "over": "images"}
    if differences is not None:
        b = scored[1]
        out["compare"] = {
            "checkpoint": str(args.compare),
            "scores": {**b.corpus, "images": b.images},
            "intervals": {m: [i.low, i.high] for m, i in intervals[1].items()},
            "difference": {
                m: {
                    "b_minus_a": d.delta.value,
                    "interval": [d.delta.low, d.delta.high],
                    "b_better_share": d.b_better,
                    "images_b_higher": d.images_b_higher,
                    "images_a_higher": d.images_a_higher,
                    "shown": d.shown,
                }
                for m, d in differences.items()
            },
        }
    return out


def _print_table(scored, intervals, differences, args) -> None:
    a = scored[0]
    df = f"; CIDEr's document frequencies from {args.cider_df}" if args.cider_df else ""
    print(f"{a.images} images of {args.split}; 95% intervals from {args.resamples} bootstrap draws over images{df}")
    if differences is None:
        for metric, interval in intervals[0].items():
            print(f"{metric:8s} {interval.value:.4f}  [{interval.low:.4f}, {interval.high:.4f}]")
        return
    print(f"A = {args.checkpoint or 'the default model'}, B = {args.compare}")
    print(f"{'metric':8s} {'A':>26s} {'B':>26s}   {'B - A':>28s}  B better in")
    for metric, d in differences.items():
        ia, ib = intervals[0][metric], intervals[1][metric]
        print(
            f"{metric:8s} {ia.text(4):>26s} {ib.text(4):>26s}   {d.delta.text(4):>28s}  "
            f"{100 * d.b_better:3.0f}% of draws, {d.images_b_higher} images (A: {d.images_a_higher})"
        )
    cider = differences.get("CIDEr")
    if cider is not None:
        verdict = (
            f"B is {'better' if cider.delta.value > 0 else 'worse'} on CIDEr: the interval excludes 0"
            if cider.shown
            else "no CIDEr difference shown: the interval includes 0"
        )
        print(verdict + f" ({cider.images} images)")


def add_evaluate(sub) -> None:
    from captioning.cli import _add_decoding

    p = sub.add_parser(
        "evaluate",
        help="COCO metrics of a checkpoint on a split, with intervals; --compare B: is B better?",
        description="Caption a split and score it with BLEU-1..4, METEOR, ROUGE-L and CIDEr, each with a 95%% "
        "bootstrap interval over images. With --compare, a second model captions the same images and each "
        "metric's paired difference B - A gets its interval and how often B wins.",
    )
    add_train_arguments(p, only=DATA_FLAGS, fill=True)
    p.add_argument("--split", required=True)
    p.add_argument("--ids-file", type=Path, help="only the image ids listed in this file (one per line)")
    p.add_argument("--limit", type=positive, help="only the first N images")
    p.add_argument("--compare", type=Path, metavar="CKPT_B", help="a second model to compare on the same images")
    p.add_argument(
        "--cider-df",
        metavar="SPLIT",
        help="take CIDEr's document frequencies from this split's references (stable scores on small splits); "
        "default: the scored images' own references, as COCO does",
    )
    p.add_argument("--resamples", type=positive, default=1000, help="bootstrap draws (default 1000)")
    p.add_argument("--json", action="store_true", help="print one JSON object of scores and intervals")
    p.add_argument("--no-meteor", action="store_true", help="skip METEOR (saves ~7 s of Java)")
    _add_decoding(p)
    p.set_defaults(func=cmd_evaluate)
