"""What the Streamlit pages compute, kept free of Streamlit: captioning uploads, attention heatmaps,
word-confidence HTML, charts, dataset search and per-image scores."""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass

import altair as alt
import numpy as np
import pandas as pd
from PIL import Image

from captioning.data import CocoSplit, ImageLoadError, load_image
from captioning.evaluate import caption_split
from captioning.inference import Caption, Captioner
from captioning.metrics import score_captions

IMAGE_TYPES = ["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"]
# An "inferno"-like ramp: dark purple (little attention) -> yellow (most attention).
_RAMP = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float64)


@dataclass
class UploadResult:
    """One uploaded file: its image and caption, or why it could not be captioned."""

    name: str
    image: Image.Image | None = None
    caption: Caption | None = None
    error: str | None = None


def caption_files(captioner: Captioner, files: list[tuple[str, bytes]], **decoding) -> list[UploadResult]:
    """Caption every readable file in one batch; an unreadable one gets its own error message."""
    results = []
    for name, data in files:
        try:
            results.append(UploadResult(name, image=load_image(data)))
        except ImageLoadError as exc:
            results.append(UploadResult(name, error=str(exc).replace("the uploaded file", name, 1)))
    good = [r for r in results if r.image is not None]
    if good:
        for result, caption in zip(good, captioner.caption([r.image for r in good], **decoding), strict=True):
            result.caption = caption
    return results


def captions_frame(results: list[UploadResult]) -> pd.DataFrame:
    """file, caption: one row per uploaded file, the reason instead of a caption where it failed."""
    captions = [r.caption.text if r.caption else f"(not captioned: {r.error})" for r in results]
    return pd.DataFrame({"file": [r.name for r in results], "caption": captions})


def captions_csv(results: list[UploadResult]) -> bytes:
    """captions_frame as UTF-8 CSV, for download."""
    return captions_frame(results).to_csv(index=False).encode("utf-8")


def alternatives_frame(caption: Caption) -> pd.DataFrame:
    """Beam search's captions, best first, with their length-normalised log-probability scores."""
    rows = [
        {"caption": h.text, "score (mean log-probability per word)": round(h.score, 3)} for h in caption.alternatives
    ]
    return pd.DataFrame(rows)


def word_confidence_html(words: list[str], probs: list[float]) -> str:
    """Each word on a chip shaded by its probability (darker = more confident), the % beneath."""
    chips = []
    for word, p in zip(words, probs, strict=True):
        text_colour = "#ffffff" if p > 0.55 else "#1f2937"
        chips.append(
            f'<span title="p = {p:.3f}" style="display:inline-block;text-align:center;margin:2px;'
            f"padding:3px 8px;border-radius:8px;background:rgba(37,99,235,{0.08 + 0.87 * p:.2f});"
            f'color:{text_colour};font-size:1.05rem">{html.escape(word)}'
            f'<br><span style="font-size:0.7rem">{100 * p:.0f}%</span></span>'
        )
    return '<div style="line-height:1.2">' + "".join(chips) + "</div>"


def word_probability_chart(words: list[str], probs: list[float]) -> alt.Chart:
    """A bar per generated word, in caption order, of the probability the model gave it."""
    df = pd.DataFrame({"position": range(1, len(words) + 1), "word": words, "probability": probs})
    df["label"] = [f"{i}. {w}" for i, w in zip(df.position, df.word, strict=True)]
    return (
        alt.Chart(df, height=alt.Step(24))  # a fixed row height: every word keeps its label
        .mark_bar(color="#2563eb")
        .encode(
            y=alt.Y("label:N", sort=list(df.label), title=None),
            x=alt.X("probability:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%")),
            tooltip=["word", alt.Tooltip("probability:Q", format=".1%")],
        )
    )


def center_square(image: Image.Image) -> Image.Image:
    """The centre square the model sees (preprocessing resizes the short side, then centre-crops)."""
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return image.crop((left, top, left + side, top + side))


def attention_overlay(image: Image.Image, attention, alpha: float = 0.6, size: int = 384) -> Image.Image:
    """Blend an (h, w) attention map, upsampled smoothly, onto the image's centre square."""
    base = center_square(image.convert("RGB")).resize((size, size), Image.Resampling.BICUBIC)
    att = np.asarray(attention, dtype=np.float64)  # (h, w)
    att = (att - att.min()) / max(att.max() - att.min(), 1e-12)
    up = Image.fromarray((att * 255).astype(np.uint8), "L").resize((size, size), Image.Resampling.BICUBIC)
    a = np.asarray(up, dtype=np.float64) / 255.0  # (S, S) in [0, 1]
    colour = np.stack([np.interp(a, np.linspace(0, 1, len(_RAMP)), _RAMP[:, c]) for c in range(3)], -1)  # (S, S, 3)
    weight = alpha * (0.3 + 0.7 * a)[..., None]  # keep low-attention areas visible, dimmed
    blended = np.asarray(base, dtype=np.float64) * (1 - weight) + colour * weight
    return Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8))


def ema(values: list[float] | pd.Series, weight: float) -> list[float]:
    """Exponential moving average, bias-corrected like TensorBoard's smoothing (weight 0 = raw)."""
    out, avg = [], 0.0
    for k, v in enumerate(values, start=1):
        avg = weight * avg + (1 - weight) * float(v)
        out.append(avg / (1 - weight**k) if weight > 0 else float(v))
    return out


def _step_series(runs: dict[str, list[dict]], column: str, smoothing: float) -> pd.DataFrame:
    """run, step, `column` (smoothed per run) from the step records of each run that have `column`."""
    frames = []
    for name, records in runs.items():
        df = pd.DataFrame([r for r in records if r.get("kind") == "step" and column in r])
        if df.empty:
            continue
        df = df.sort_values("step").drop_duplicates("step", keep="last")
        df[column] = ema(df[column], smoothing)
        frames.append(df.assign(run=name)[["run", "step", column]])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["run", "step", column])


def steps_frame(runs: dict[str, list[dict]], smoothing: float = 0.0) -> pd.DataFrame:
    """run, step, loss, perplexity (smoothed per run) from each run's cross-entropy step records."""
    df = _step_series(runs, "loss", smoothing)
    return df.assign(perplexity=np.exp(np.minimum(df["loss"].astype(float), 50.0)))


def rewards_frame(runs: dict[str, list[dict]], smoothing: float = 0.0) -> pd.DataFrame:
    """run, step, reward (smoothed per run) from the self-critical (SCST) steps of each run."""
    return _step_series(runs, "reward", smoothing)


def epochs_frame(runs: dict[str, list[dict]], metrics: tuple[str, ...] = ("BLEU-4", "CIDEr")) -> pd.DataFrame:
    """Long format run, epoch, metric, value from each run's validation (epoch) records."""
    rows = [
        {"run": name, "epoch": r["epoch"], "metric": m, "value": r[m]}
        for name, records in runs.items()
        for r in records
        if r.get("kind") == "epoch"
        for m in metrics
        if isinstance(r.get(m), (int, float))
    ]
    return pd.DataFrame(rows, columns=["run", "epoch", "metric", "value"])


def runs_summary(runs: dict[str, list[dict]]) -> pd.DataFrame:
    """run, steps, best val CIDEr and its epoch, and the epoch a self-critical phase started from: a row per run.

    The last matters because SCST starts from the best cross-entropy epoch's weights by default, so the
    validation curves jump back to that epoch's level where the phase begins.
    """
    rows = []
    for name, records in runs.items():
        scored = [r for r in records if r.get("kind") == "epoch" and "CIDEr" in r]
        best = max(scored, key=lambda r: r["CIDEr"], default=None)
        scst = [r for r in records if r.get("event") == "scst_start"]
        rows.append(
            {
                "run": name,
                "steps": max((r.get("step", 0) for r in records), default=0),
                "best val CIDEr": best["CIDEr"] if best else None,
                "best epoch": best.get("epoch") if best else None,
                "SCST started from epoch": scst[-1].get("from_epoch") if scst else None,
            }
        )
    return pd.DataFrame(rows)


def line_chart(df: pd.DataFrame, x: str, y: str, title: str, log_y: bool = False, points: bool = False) -> alt.Chart:
    """A line per run (coloured by run) of `y` against `x`."""
    scale = alt.Scale(type="log") if log_y else alt.Scale(zero=False)
    return (
        alt.Chart(df, title=title, height=260)
        .mark_line(point=points or len(df) < 3)  # a run's first record is a point, not an invisible line
        .encode(
            x=alt.X(f"{x}:Q", title=x, axis=alt.Axis(format="~d")),
            y=alt.Y(f"{y}:Q", title=y, scale=scale, axis=alt.Axis(format=".3~g")),
            color=alt.Color("run:N", title="run"),
            tooltip=["run", x, alt.Tooltip(f"{y}:Q", format=".4g")],
        )
    )


def search_ids(split: CocoSplit, query: str) -> list[int]:
    """Ids whose reference captions contain every word of `query` (or the id itself, for digits)."""
    words = re.findall(r"[a-z0-9']+", query.lower())
    if not words:
        return list(split.ids)
    if len(words) == 1 and words[0].isdigit() and int(words[0]) in split.files:
        return [int(words[0])]
    patterns = [re.compile(rf"\b{re.escape(w)}\b") for w in words]
    return [i for i in split.ids if all(any(p.search(c.lower()) for c in split.captions[i]) for p in patterns)]


def order_ids(ids: list[int], scores: dict[int, dict], key: str | None) -> list[int]:
    """`ids` by image id, or by score `key` worst first with unscored images after."""
    if key is None:
        return sorted(ids)
    scored = sorted((i for i in ids if i in scores), key=lambda i: (scores[i][key], i))
    return scored + sorted(i for i in ids if i not in scores)


def tile_text(image_id: int, references: list[str], score: dict | None) -> str:
    """A grid tile's caption: the model's caption and scores once scored, else the first reference."""
    if score is None:
        return f"**#{image_id}** {references[0]}"
    return f"**#{image_id}** _{score['caption']}_ \u2014 CIDEr {score['CIDEr']:.2f}, BLEU-4 {score['BLEU-4']:.2f}"


def score_images(
    captioner: Captioner,
    split: CocoSplit,
    ids: list[int],
    on_batch: Callable[[int, int], None] | None = None,
    **decoding,
) -> dict[int, dict]:
    """image id -> {"caption", "BLEU-4", "CIDEr"}; CIDEr's idf comes from the whole split."""
    preds = caption_split(captioner, split, ids, on_batch=on_batch, **decoding)
    if not preds:
        return {}
    scores = score_captions(preds, split.captions, meteor=False, idf_references=split.captions)
    return {i: {"caption": preds[i], **{m: scores.per_image[i][m] for m in ("BLEU-4", "CIDEr")}} for i in preds}
