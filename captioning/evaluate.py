"""Caption a split and score it with the COCO caption metrics, as a whole or per image."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from captioning.config import DecodeConfig
from captioning.data import CocoSplit, warn_skipped
from captioning.inference import Captioner
from captioning.loader import batches
from captioning.metrics import CaptionScores, IdfSet, idf_set, score_captions


def caption_split(
    captioner: Captioner,
    split: CocoSplit,
    ids: Iterable[int],
    decoding: DecodeConfig = DecodeConfig(),
    batch_size: int = 16,
    on_batch: Callable[[int, int], None] | None = None,
) -> dict[int, str]:
    """image id -> caption for `ids`; unreadable images are skipped with one warning."""
    ids = list(ids)
    out: dict[int, str] = {}
    bad: list[str] = []
    for batch in batches(ids, split.files, captioner.preprocess, batch_size):
        bad += [split.files[i].name for i in batch.skipped]
        if batch.keys:
            caps = captioner.caption_features(captioner.encode(batch.pixels), decoding, batch.pixels)
            out.update({i: c.text for i, c in zip(batch.keys, caps, strict=True)})
        if on_batch:
            on_batch(len(out) + len(bad), len(ids))
    warn_skipped(f"split {split.split}", bad, "could not be read")
    return out


def evaluate(
    captioner: Captioner,
    split: CocoSplit,
    decoding: DecodeConfig = DecodeConfig(),
    limit: int | None = None,
    meteor: bool | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, float], dict[int, str], list[str]]:
    """Corpus scores (keys BLEU-1..4, METEOR, ROUGE-L, CIDEr, images), captions, notes."""
    scores, preds = score_split(captioner, split, decoding, limit, meteor, on_batch)
    return {**scores.corpus, "images": len(preds)}, preds, scores.notes


def score_split(
    captioner: Captioner,
    split: CocoSplit,
    decoding: DecodeConfig = DecodeConfig(),
    limit: int | None = None,
    meteor: bool | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    idf: dict[int, list[str]] | IdfSet | None = None,
) -> tuple[CaptionScores, dict[int, str]]:
    """Caption the split's first `limit` images (all when None) and score them, per image as well as over the
    corpus (what `bootstrap` resamples). CIDEr's document frequencies come from `idf` when given (another split's
    references: `--cider-df`), else from the scored images' own references, as COCO's evaluation does."""
    ids = split.ids[:limit] if limit else split.ids
    preds = caption_split(captioner, split, ids, decoding, on_batch=on_batch)
    if not preds:
        raise ValueError(f"no image of split {split.split} could be read and captioned")
    references = {i: split.captions[i] for i in preds}
    return score_captions(preds, references, meteor=meteor, idf_references=idf), preds


def score_images(
    captioner: Captioner,
    split: CocoSplit,
    ids: list[int],
    on_batch: Callable[[int, int], None] | None = None,
    idf: IdfSet | None = None,
    decoding: DecodeConfig = DecodeConfig(),
) -> dict[int, dict]:
    """image id -> {"caption", "BLEU-4", "CIDEr"}; CIDEr's idf comes from the whole split (`idf`, when given,
    is its `idf_set`)."""
    preds = caption_split(captioner, split, ids, decoding, on_batch=on_batch)
    if not preds:
        return {}
    scores = score_captions(preds, split.captions, meteor=False, idf_references=idf or split.captions)
    return {i: {"caption": preds[i], **{m: scores.per_image[i][m] for m in ("BLEU-4", "CIDEr")}} for i in preds}


SCORE_CHUNK = 128  # images captioned and scored together by `iter_scores`: what an interruption can lose


def iter_scores(
    captioner: Captioner,
    split: CocoSplit,
    ids: list[int],
    decoding: DecodeConfig = DecodeConfig(),
    chunk: int = SCORE_CHUNK,
) -> Iterator[tuple[dict[int, dict], int]]:
    """`score_images` a chunk at a time: yields (that chunk's scores, images done so far), so a caller can keep
    each chunk's results (and show progress) as they come; CIDEr's idf is the whole split's for every chunk."""
    idf = idf_set(split.captions) if ids else None
    for start in range(0, len(ids), chunk):
        part = ids[start : start + chunk]
        yield score_images(captioner, split, part, idf=idf, decoding=decoding), start + len(part)
