"""How Home and Browse show a caption: word-confidence chips, word probabilities, attention heatmaps, tables
and grid tiles. Presentation only; the captions come from `captioning`."""

from __future__ import annotations

import html
import re

import numpy as np
import pandas as pd
from PIL import Image

from app.uploads import UploadResult
from captioning.data import CocoSplit
from captioning.inference import Caption

# Characters that make markup anywhere in a line: emphasis, code, strikethrough, links and images ([), HTML and
# autolinks in <>, headings, tables, math ($), entities (&), Streamlit's directives (:red[...]{...}).
_MARKUP = frozenset("\\`*_~[]<>#|$&{}")
_LINE_START = re.compile(r"^(?:[-+=]|\d{1,9}(?=[.)](?:\s|$)))")  # a list item or a rule, at a line's start
# GFM also links bare http://..., www.... and e-mail addresses, in the text after escapes are resolved (remark-gfm
# finds them with a regex), so escaping cannot stop them: an invisible word joiner breaks the pattern instead.
_AUTOLINK = re.compile(r"(?i)(?<=https)(?=:)|(?<=http)(?=:)|(?<=www)(?=\.)|(?<=@)")
# C0/C1 controls and the bidirectional overrides that can make a name read backwards
_INVISIBLE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")

# An "inferno"-like ramp: dark purple (little attention) -> yellow (most attention).
_RAMP = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float64)


def plain(text: str, limit: int = 80) -> str:
    """Text from a file or a visitor (a caption, a word, a file name) made safe to show inside markdown: one line,
    shortened to `limit` characters, with no markup left (links, images, emphasis, tags...), so it reads as the
    text it is."""
    text = " ".join(_INVISIBLE.sub(" ", str(text)).split())
    text = text if len(text) <= limit else text[: limit - 1] + "\u2026"
    text = "".join("\\" + c if c in _MARKUP else c for c in text)
    text = _LINE_START.sub(lambda m: m.group() + "\\" if m.group().isdigit() else "\\" + m.group(), text)
    return _AUTOLINK.sub("\u2060", text)


# What each number means, its scale and which way is better: one plain sentence, shown wherever the number is.
METRIC_HELP = {
    "loss": "Loss: cross-entropy, how surprised the model is by the next word of a training caption (lower is "
    "better; about 7.3 for guessing among 1,445 words, around 2 for a trained model).",
    "perplexity": "Perplexity: e to the loss, roughly how many words the model hesitates between at each step "
    "(lower is better; 1 would be certain).",
    "BLEU-4": "BLEU-4: how many 1- to 4-word sequences the caption shares with the people's captions, 0 to 1 "
    "(higher is better; 0 whenever no 4-word sequence matches, so one image often scores 0).",
    "CIDEr": "CIDEr: agreement with the people's captions, weighting words that are rare in the dataset, usually "
    "0 to about 3 (higher is better; about 1 is a good COCO model, and one image can score well above 1).",
    "reward": "Reward: the CIDEr-D of the captions the model sampled during self-critical training, measured "
    "against their images' captions (higher is better).",
}
WORD_PROBS_HELP = "Each word's percentage is the probability the decoder gave it (darker: surer)."
NAMED_HELP = " The dashed word is the encoder's: its percentage is the ImageNet class's probability."
SCORE_HELP = (
    "Score: the caption's mean log-probability per word, from the decoder (0 is the most it can be; nearer 0 is "
    "surer). The first row is the caption shown above."
)


def captions_frame(results: list[UploadResult]) -> pd.DataFrame:
    """file, caption, unsure: one row per uploaded file, the reason instead of a caption where it failed."""
    captions = [r.caption.text if r.caption else f"(not captioned: {r.error})" for r in results]
    unsure = [r.caption.unsure if r.caption else "" for r in results]
    return pd.DataFrame({"file": [r.name for r in results], "caption": captions, "unsure": unsure})


def captions_csv(results: list[UploadResult]) -> bytes:
    """captions_frame as UTF-8 CSV, for download."""
    return captions_frame(results).to_csv(index=False).encode("utf-8")


def alternatives_frame(caption: Caption) -> pd.DataFrame:
    """The caption shown first (the subject named by the encoder, where it was), then beam search's other
    captions, best first, each with its length-normalised log-probability score and where it came from."""
    shown = "shown: the decoder's best" + (", subject named by the encoder" if caption.named else "")
    rows = [{"caption": caption.text, "score": round(caption.score, 3), "from": shown}]
    rows += [{"caption": h.text, "score": round(h.score, 3), "from": "beam search"} for h in caption.alternatives[1:]]
    if caption.named and caption.alternatives:
        rows.insert(1, {"caption": caption.alternatives[0].text, "score": round(caption.alternatives[0].score, 3),
                        "from": "the decoder's best, as it said it"})  # fmt: skip
    return pd.DataFrame(rows)


def word_confidence_html(words: list[str], probs: list[float], named_at: int | None = None) -> str:
    """Each word on a chip shaded by its probability (darker = more confident), the % beneath; the word at
    `named_at` (named by the encoder: its % is a class probability) has a dashed outline."""
    chips = []
    for i, (word, p) in enumerate(zip(words, probs, strict=True)):
        text_colour = "#ffffff" if p > 0.55 else "#1f2937"
        what = "the encoder's class probability" if i == named_at else "the decoder's word probability"
        border = "border:2px dashed #b45309;" if i == named_at else ""
        chips.append(
            f'<span title="{what}: {p:.3f}" style="display:inline-block;text-align:center;margin:2px;{border}'
            f"padding:3px 8px;border-radius:8px;background:rgba(37,99,235,{0.08 + 0.87 * p:.2f});"
            f'color:{text_colour};font-size:1.05rem">{html.escape(word)}'
            f'<br><span style="font-size:0.7rem">{100 * p:.0f}%</span></span>'
        )
    return '<div style="line-height:1.2">' + "".join(chips) + "</div>"


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


def order_ids(ids: list[int], scores: dict[int, dict], key: str | None) -> list[int]:
    """`ids` by image id, or by score `key` worst first with unscored images after."""
    if key is None:
        return sorted(ids)
    scored = sorted((i for i in ids if i in scores), key=lambda i: (scores[i][key], i))
    return scored + sorted(i for i in ids if i not in scores)


def tile_text(label: int | str, references: list[str], score: dict | None) -> str:
    """A grid tile's caption (markdown): the image's id (COCO) or file name, then the model's caption and scores
    once scored, else the first reference."""
    name = f"#{label}" if isinstance(label, int) else plain(label, 60)
    if score is None:
        return f"**{name}** {plain(references[0] if references else '', 200)}"
    caption = plain(score["caption"], 200)
    return (f"**{name}** Model: _{caption}_ \u2014 CIDEr {score['CIDEr']:.2f}, BLEU-4 {score['BLEU-4']:.2f}  \n"
            f"Reference: {plain(references[0] if references else '', 200)}")  # fmt: skip


def word_forms(word: str) -> list[str]:
    """A word with its English plural or singular: "dog" finds "dogs", "pizzas" finds "pizza", "bus" "buses",
    "puppy" "puppies" (digits and short words stay as they are)."""
    if word.isdigit() or len(word) < 3:
        return [word]
    forms = {word, word + "s", word + "es"}
    if word.endswith("ies"):
        forms.add(word[:-3] + "y")
    if word.endswith("es"):
        forms.add(word[:-2])
    if word.endswith("s"):
        forms.add(word[:-1])
    if word.endswith("y"):
        forms.add(word[:-1] + "ies")
    return sorted(forms, key=len, reverse=True)


def search_captions(split: CocoSplit, query: str) -> list[int]:
    """Ids whose reference captions contain every word of `query`, singular or plural (or the id itself, for
    digits)."""
    words = re.findall(r"[a-z0-9']+", query.lower())
    if not words:
        return list(split.ids)
    if len(words) == 1 and words[0].isdigit() and int(words[0]) in split.files:
        return [int(words[0])]
    patterns = [re.compile(r"\b(?:" + "|".join(map(re.escape, word_forms(w))) + r")\b") for w in words]
    return [i for i in split.ids if all(any(p.search(c.lower()) for c in split.captions[i]) for p in patterns)]
