"""Rebuild the embedded COCO sample (`captioning/sample/`) from a COCO root, reproducibly.

    .venv/bin/python scripts/build_sample.py [--coco-root ../shared/data/coco] [--out captioning/sample]

Takes only images whose Flickr license allows redistributing modified copies (COCO license ids 4 CC BY 2.0,
5 CC BY-SA 2.0, 7 no known copyright restrictions, 8 US Government Work), from the root's train and val splits
only (never anything else there), about 150 train and 60 val images, at most 35% of them showing people
(by their captions), resized to a short side of at most 256 px. Writes the COCO layout, ATTRIBUTION.csv and a
README, all into a temporary folder that replaces `--out` only when complete.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
import re
import shutil
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parents[1]
FREE_LICENSES = {4, 5, 7, 8}
LICENSES = {  # COCO's own license list, for the ids the sample may hold
    4: ("Attribution License", "http://creativecommons.org/licenses/by/2.0/"),
    5: ("Attribution-ShareAlike License", "http://creativecommons.org/licenses/by-sa/2.0/"),
    7: ("No known copyright restrictions", "http://flickr.com/commons/usage/"),
    8: ("United States Government Work", "http://www.usa.gov/copyright.shtml"),
}
PEOPLE = re.compile(
    r"\b(man|men|woman|women|person|people|boy|boys|girl|girls|child|children|kid|kids|guy|guys|lady|ladies|"
    r"player|players|skier|skiers|surfer|surfers|skateboarder|snowboarder|crowd|baby|couple|family|he|she)\b"
)
MAX_PEOPLE = 0.35  # of the whole sample
SHORT_SIDE = 256
QUALITY = 85
README = """# Embedded COCO sample

{train} train and {val} val images from MS COCO 2017 with their official captions, in the COCO caption layout
(`annotations/captions_NAME.json` + `NAME/`), so that Browse and Fine-tune have something to show on a machine
with no dataset and no internet. Rebuilt by `scripts/build_sample.py`.

- **Images**: each keeps its Flickr license, listed per image in `ATTRIBUTION.csv` (COCO id, split, license,
  Flickr and COCO URLs). Only licenses that allow redistributing modified copies are included: CC BY 2.0,
  CC BY-SA 2.0, "no known copyright restrictions" (Flickr Commons) and US Government Work. They are resized
  (short side at most {side} px) and re-encoded as JPEG; CC BY-SA images stay under CC BY-SA 2.0.
- **Captions**: the official COCO captions, (c) the COCO Consortium, licensed CC BY 4.0
  (https://creativecommons.org/licenses/by/4.0/).
- {people} of the {total} images show people (by their captions), most of them in val: only about 65 COCO val
  images carry a free license, and most of those show people.
"""


def shows_people(captions: list[str]) -> bool:
    """Whether most of an image's captions mention a person."""
    return sum(bool(PEOPLE.search(c.lower())) for c in captions) * 2 > len(captions)


def choose(images: list[dict], captions: dict[int, list[str]], n: int, seed: int, max_people: int) -> list[dict]:
    """n images of a free license, shuffled by `seed`: images without people first, then at most `max_people`
    with people."""
    free = sorted((im for im in images if im.get("license") in FREE_LICENSES and captions.get(im["id"])),
                  key=lambda im: im["id"])  # fmt: skip
    random.Random(seed).shuffle(free)
    people = [im for im in free if shows_people(captions[im["id"]])]
    others = [im for im in free if not shows_people(captions[im["id"]])]
    k = min(len(people), max_people, max(n - len(others), n // 3))
    chosen = others[: n - k] + people[:k]
    return sorted(chosen, key=lambda im: im["id"])


def _resized(path: Path) -> tuple[bytes, int, int]:
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image).convert("RGB")
        scale = SHORT_SIDE / min(image.size)
        if scale < 1:
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        image.save(out, "JPEG", quality=QUALITY, optimize=True)
        return out.getvalue(), image.width, image.height


def build_split(root: Path, split: str, n: int, seed: int, dest: Path, rows: list[dict], max_people: int) -> int:
    """Write one split of the sample into `dest`, adding its attribution rows; returns how many show people."""
    data = json.loads((root / "annotations" / f"captions_{split}.json").read_text(encoding="utf-8"))
    captions: dict[int, list[str]] = {}
    records: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        captions.setdefault(ann["image_id"], []).append(ann["caption"])
        records.setdefault(ann["image_id"], []).append(ann)
    chosen = choose(data["images"], captions, n, seed, max_people)
    (dest / split).mkdir(parents=True)
    images, anns, people = [], [], 0
    for im in chosen:
        blob, width, height = _resized(root / split / im["file_name"])
        (dest / split / im["file_name"]).write_bytes(blob)
        keep = ("id", "file_name", "license", "coco_url", "flickr_url", "date_captured")
        images.append({**{k: im[k] for k in keep if k in im}, "width": width, "height": height})
        anns += records[im["id"]]
        people += shows_people(captions[im["id"]])
        name, url = LICENSES[im["license"]]
        urls = {"flickr_url": im.get("flickr_url", ""), "coco_url": im.get("coco_url", "")}
        rows.append({"coco_id": im["id"], "split": split, "license_id": im["license"], "license_name": name,
                     "license_url": url, **urls})  # fmt: skip
    out = {
        "info": {"description": f"embedded sample of MS COCO 2017 captions ({split}); captions CC BY 4.0, COCO"},
        "licenses": [{"id": k, "name": v[0], "url": v[1]} for k, v in LICENSES.items()],
        "images": images,
        "annotations": anns,
    }
    (dest / "annotations").mkdir(exist_ok=True)
    (dest / "annotations" / f"captions_{split}.json").write_text(json.dumps(out, indent=0), encoding="utf-8")
    return people


EXAMPLES = 8


def examples(sample: Path) -> list[int]:
    """Home's example images: EXAMPLES val images without people, evenly spread over the split's ids."""
    data = json.loads((sample / "annotations" / "captions_val.json").read_text(encoding="utf-8"))
    captions: dict[int, list[str]] = {}
    for ann in data["annotations"]:
        captions.setdefault(ann["image_id"], []).append(ann["caption"])
    ids = sorted(i for i, caps in captions.items() if not shows_people(caps))
    step = max(len(ids) / EXAMPLES, 1)
    return [ids[int(k * step)] for k in range(min(EXAMPLES, len(ids)))]


def build(root: Path, out: Path, train: int = 150, val: int = 60, seed: int = 0) -> Path:
    """Write the sample into a temporary folder beside `out`, then put it in `out`'s place."""
    for split in ("train", "val"):
        if not (root / "annotations" / f"captions_{split}.json").is_file():
            raise SystemExit(f"error: {root} has no annotations/captions_{split}.json (a COCO root with train and val)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        rows: list[dict] = []
        # val first: only about 65 val images carry a free license, most of them with people; train, with
        # 615 to choose from, then keeps the whole sample's share of people to MAX_PEOPLE
        people = build_split(root, "val", val, seed, tmp, rows, val)
        people += build_split(root, "train", train, seed, tmp, rows, max(0, int((train + val) * MAX_PEOPLE) - people))
        rows.sort(key=lambda r: (r["split"] != "train", r["coco_id"]))
        (tmp / "examples.json").write_text(json.dumps({"val": examples(tmp)}))
        with open(tmp / "ATTRIBUTION.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "val")}
        (tmp / "README.md").write_text(README.format(**counts, side=SHORT_SIDE, people=people, total=len(rows)))
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coco-root", type=Path, default=REPO.parent / "shared" / "data" / "coco")
    parser.add_argument("--out", type=Path, default=REPO / "captioning" / "sample")
    parser.add_argument("--train", type=int, default=150)
    parser.add_argument("--val", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = build(args.coco_root, args.out, args.train, args.val, args.seed)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out}: {size / 1e6:.1f} MB", file=sys.stderr)


if __name__ == "__main__":
    main()
