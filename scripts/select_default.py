"""The selection protocol for the default model (#26), as one command: recipes x seeds trained on the train split
minus a fixed held-out set, each scored on val and on that held-out set with intervals, each recipe compared
with the first, seed by seed, by paired bootstrap on both splits.

Run: .venv/bin/python -m scripts.select_default --coco-root ../shared/data/coco --out runs/select \
         [--recipes lite2 lite0] [--seeds 0 1] [--heldout 300] [--extra "--epochs 1"]

A recipe counts as better than the first only when, for every seed, its paired CIDEr interval excludes 0 on
val and on the held-out set (`captioning.bootstrap`); worse when its interval lies below 0 on either split for
any seed. With two or more seeds, the ensemble of a recipe's seeds is a candidate too, compared with each of
its members on both splits in the same way. A rerun skips what is done: finished runs are not trained
again (an interrupted one resumes), and each run's scores are kept in OUT/scores/. Writes OUT/report.md.
Each run is the shipped model's one-command recipe (captioning/shipped/README.md) with the recipe's changes.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from captioning import bootstrap
from captioning.cli import main as cli
from captioning.config import DecodeConfig
from captioning.evaluate import score_split
from captioning.formats import open_split
from captioning.inference import Captioner
from captioning.io import atomic_write_text
from captioning.metrics import CaptionScores
from captioning.rundir import RunDir

# the shipped model's training flags (its card's "Reproduce"), and each recipe's changes to them
BASE = ("--decoder attention --flip --epochs 12 --batch-size 64 --lr 1e-3 --lr-schedule cosine --dropout 0.3 "
        "--label-smoothing 0.1 --scst-epochs 10 --scst-lr 2e-4 --scst-lr-schedule cosine --val-method beam "
        "--log-every 20").split()  # fmt: skip
RECIPES = {
    "lite2": ["--backbone", "efficientnet_lite2"],  # the shipped model's
    "lite0": ["--backbone", "efficientnet_lite0"],  # its predecessor's encoder: 0.59x the seed's latency, not 0.86x
}


def run_one(args: argparse.Namespace, recipe: str, seed: int, ids: Path) -> Path:
    """Train (or resume, or skip) one recipe and seed on the train split minus the held-out ids."""
    out = args.out / f"{recipe}-seed{seed}"
    if (out / "best.pt").is_file() and RunDir(out).status() in ("finished", "early_stopped"):
        return out
    argv = ["train", "--coco-root", str(args.coco_root), "--out", str(out), "--train-ids", str(ids)]
    argv += ["--seed", str(seed), *BASE, *RECIPES[recipe], *shlex.split(args.extra)]
    argv += ["--resume"] if (out / "last.pt").is_file() else []
    if cli(argv) != 0:
        raise SystemExit(f"training {out.name} failed; rerun to resume it")
    return out


def scores_of(args: argparse.Namespace, run: Path | list[Path], split: str, ids: Path | None) -> CaptionScores:
    """The run's best.pt (or an ensemble of runs') on a split (default decoding), kept in OUT/scores/ so a rerun
    reads it back."""
    runs = run if isinstance(run, list) else [run]
    name = "+".join(r.name for r in runs)
    kept = args.out / "scores" / f"{name}-{split}{'-heldout' if ids else ''}.json"
    if kept.is_file():
        data = json.loads(kept.read_text())
        per_image = {int(k): v for k, v in data["per_image"].items()}
        counts = {int(k): v for k, v in data["bleu_counts"].items()}
        return CaptionScores(data["corpus"], per_image, [], len(per_image), counts)
    captioner = Captioner.from_checkpoints([r / "best.pt" for r in runs], device="cpu")
    scores, _ = score_split(captioner, open_split(args.coco_root, split, ids_file=ids), DecodeConfig(), meteor=False)
    kept.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(kept, json.dumps({"corpus": scores.corpus, "per_image": scores.per_image,
                                        "bleu_counts": scores.bleu_counts}))  # fmt: skip
    return scores


def paired(a: dict[str, CaptionScores], b: dict[str, CaptionScores]) -> dict:
    """B minus A in CIDEr on each split, paired over the same images."""
    return {name: bootstrap.compare(a[name], b[name])["CIDEr"] for name in a}


def verdict(diffs) -> str:
    """'better' when every seed's interval lies above 0 on both splits; 'worse' when any lies below 0."""
    diffs = [d for by_split in diffs for d in by_split.values()]
    if all(d.shown and d.delta.value > 0 for d in diffs):
        return "better"
    return "worse" if any(d.shown and d.delta.value < 0 for d in diffs) else "not shown better or worse"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coco-root", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--heldout", type=int, default=300, help="images held out of train (seeded, fixed)")
    parser.add_argument("--extra", default="", help="more train flags for every run (e.g. a shorter test run)")
    args = parser.parse_args()

    heldout, rest = args.out / "ids" / "train-heldout-ids.txt", args.out / "ids" / "train-rest-ids.txt"
    if not heldout.is_file():
        holdout = ["holdout", "--coco-root", str(args.coco_root), "--size", str(args.heldout)]
        if cli([*holdout, "--out", str(heldout.parent)]) != 0:
            raise SystemExit("could not carve the held-out set")
    runs = {(r, s): run_one(args, r, s, rest) for r in args.recipes for s in args.seeds}
    splits = {"val": ("val", None), "held-out": ("train", heldout)}
    scored = {key: {name: scores_of(args, run, *where) for name, where in splits.items()} for key, run in runs.items()}

    lines = ["| recipe | seed | val CIDEr [95%] | held-out CIDEr [95%] |", "|---|---|---|---|"]
    for (recipe, seed), by_split in scored.items():
        shown = [bootstrap.intervals(by_split[name])["CIDEr"].text() for name in splits]
        lines.append(f"| {recipe} | {seed} | {shown[0]} | {shown[1]} |")
    lines.append("")
    for recipe in args.recipes:  # how far apart the seeds land: what one run's number is worth
        cider = {name: [scored[recipe, seed][name].corpus["CIDEr"] for seed in args.seeds] for name in splits}
        lines.append(f"- {recipe}, seeds' mean CIDEr (spread): " + "; ".join(
            f"{name} {sum(v) / len(v):.3f} ({max(v) - min(v):.3f})" for name, v in cider.items()))  # fmt: skip
    first = args.recipes[0]
    for recipe in args.recipes[1:]:
        lines += ["", f"{recipe} minus {first}, paired on the same images (CIDEr):", ""]
        diffs = {seed: paired(scored[first, seed], scored[recipe, seed]) for seed in args.seeds}
        lines += [f"- seed {seed}: " + "; ".join(f"{n} {d.delta.text()}" for n, d in diffs[seed].items())
                  for seed in args.seeds]  # fmt: skip
        lines.append(f"- verdict: {recipe} is {verdict(diffs.values())} than {first} (every seed, both splits)")
    if len(args.seeds) > 1:
        for recipe in args.recipes:
            members = [runs[recipe, seed] for seed in args.seeds]
            together = {name: scores_of(args, members, *where) for name, where in splits.items()}
            shown = [bootstrap.intervals(together[name])["CIDEr"].text() for name in splits]
            lines.insert(2 + len(scored) + args.recipes.index(recipe), f"| {recipe} | ensemble | {' | '.join(shown)} |")
            lines += [
                "",
                f"{recipe}: the ensemble of seeds {', '.join(map(str, args.seeds))} minus each seed alone:",
                "",
            ]
            diffs = {seed: paired(scored[recipe, seed], together) for seed in args.seeds}
            lines += [f"- seed {seed}: " + "; ".join(f"{n} {d.delta.text()}" for n, d in diffs[seed].items())
                      for seed in args.seeds]  # fmt: skip
            lines.append(
                f"- verdict: the ensemble is {verdict(diffs.values())} than one model (every seed, both splits)"
            )
    report = "\n".join(lines) + "\n"
    atomic_write_text(args.out / "report.md", report)
    print(report)


if __name__ == "__main__":
    main()
