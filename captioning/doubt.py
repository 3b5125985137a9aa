"""When a caption deserves doubt, in plain words: the reasons the model itself gives for not trusting a caption.

A captioner trained on photos of people says "A man sitting on a table with a laptop." of a cat as surely as it
says "A man riding a motorcycle." of a motorcycle. Three signals it has for free say otherwise:

- **The encoder disagrees.** Its own ImageNet head is confident of a class (an Egyptian cat, 59%) and the caption
  says none of the class's words: the class's name or the caption words the checkpoint learned for it (its
  concept words). Naming (`naming`) already puts a confident class the vocabulary lacks into the caption; this
  is the other case, where the decoder could have said it and did not.
- **The decoder hesitates.** Its words average (geometric mean) a low probability.
- **The input is unlike a photo.** It is tiny, or most of it is a few exact colours (a screenshot, text, a
  drawing, an icon): the model learned from photos.

Each reason is a short sentence for a person; `summary` joins them after "unsure:". The thresholds were chosen
on val and checked on the everyday photos (`benchmarks/bench_doubt.py` measures how often a flag is right).
Pure functions over lists and one small tensor: no files.
"""

from __future__ import annotations

import math

import torch

from captioning.naming import class_nouns

CLASS_SURE = 0.3  # the top class this probable counts (0.3-0.5 tried on val and the everyday set: bench_doubt)
WORDS_UNSURE = 0.35  # geometric mean of the caption's word probabilities below which the decoder hesitates
TINY = 64  # pixels on the short side below which an image is too small to describe
PALETTE, PALETTE_SHARE = 4, 0.75  # an image mostly covered by its 4 commonest exact colours is no photo
# ImageNet classes that name a room or a shop: where a photo was taken, which a right caption need not say
# ("A group of people in a kitchen." is right of a photo the encoder calls "restaurant", 63%)
SETTINGS = frozenset(
    ("restaurant", "grocery store", "bakery", "barbershop", "bookshop", "butcher shop", "confectionery", "shoe shop")
    + ("tobacco shop", "toyshop", "library", "cinema", "home theater")
)
_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)  # the backbones' ImageNet normalisation
_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def mean_word_probability(word_probs: list[float]) -> float:
    """Geometric mean of a caption's word probabilities (1.0 for an empty caption: nothing to doubt)."""
    if not word_probs:
        return 1.0
    return math.exp(sum(math.log(max(p, 1e-12)) for p in word_probs) / len(word_probs))


def _said(words: list[str]) -> set[str]:
    said = {w.lower() for w in words}
    return said | {w[:-1] for w in said if w.endswith("s") and len(w) > 3} | {w[:-2] for w in said if w.endswith("es")}


def encoder_reason(
    words: list[str], tags: list[tuple[str, float]], labels: tuple[str, ...], related: dict[str, list[str]] | None
) -> str | None:
    """A sentence when the encoder's top class (`tags[0]`, a label of `labels`) is confident and the caption
    (`words`) says none of its words; None otherwise."""
    if not tags or tags[0][1] < CLASS_SURE or tags[0][0] in SETTINGS:
        return None
    label, prob = tags[0]
    index = labels.index(label) if label in labels else -1
    names = {w.lower() for w in label.replace("-", " ").split()}
    if index >= 0:
        names |= {class_nouns(labels)[index]} - {""}
        names |= {w.lower() for w in (related or {}).get(str(index), [])}
    if _said(words) & names:
        return None
    return f"the image looks like {_article(label)} {label} ({100 * prob:.0f}%), which the caption does not mention"


def _article(label: str) -> str:
    return "an" if label[:1].lower() in "aeiou" else "a"


def decoder_reason(word_probs: list[float]) -> str | None:
    mean = mean_word_probability(word_probs)
    if mean >= WORDS_UNSURE:
        return None
    return f"the model is unsure of its words (they average {100 * mean:.0f}%)"


def palette_share(pixels: torch.Tensor, colours: int = PALETTE) -> float:
    """Share of a preprocessed image (3, S, S, ImageNet-normalised) covered by its `colours` most common exact
    8-bit colours. Photos have noise and gradients in every region: on the embedded sample's 210 COCO photos the
    median is 0.02 and the largest 0.36 (2 of COCO val's 250, dim indoor shots, pass 0.5). A screenshot, text
    on a plain background, a flat drawing or an enlarged icon is mostly a few exact colours: 0.87 and more on
    such images (tests/test_doubt.py)."""
    if pixels.dim() != 3 or pixels.numel() == 0:
        return 0.0
    rgb = ((pixels.float() * _STD.to(pixels.device) + _MEAN.to(pixels.device)).clamp(0, 1) * 255).round().long()
    codes = (rgb[0] * 256 + rgb[1]) * 256 + rgb[2]
    counts = torch.unique(codes.flatten(), return_counts=True)[1]  # not bincount: that would hold 2^24 counters
    return float(counts.topk(min(colours, counts.numel())).values.sum() / codes.numel())


def input_reasons(pixels: torch.Tensor | None = None, size: tuple[int, int] | None = None) -> list[str]:
    """Sentences about the input itself: `size` is the image's (width, height) as uploaded, `pixels` its
    preprocessed tensor (3, S, S). Either may be None where a caller does not have it."""
    reasons = []
    if size is not None and min(size) < TINY:
        reasons.append(f"the image is tiny ({size[0]}x{size[1]} pixels), too small to describe")
    elif pixels is not None and palette_share(pixels) > PALETTE_SHARE:
        reasons.append("the image looks like a screenshot, text or a drawing, and the model learned from photos")
    return reasons


def summary(reasons: list[str]) -> str:
    """One line for a person ("" when there is no doubt)."""
    return "unsure: " + "; ".join(reasons) if reasons else ""
