"""Naming what the decoder cannot say: when the frozen encoder is confident of an ImageNet class whose name is
not in the caption vocabulary (a lion, a bee, a castle: words the training captions never used often enough),
the caption's subject becomes that name. After the "direct transfer" of novel words in Hendricks et al. 2016
(Deep Compositional Captioning) and the slot filling of Lu et al. 2018 (Neural Baby Talk), with the encoder's
own classifier as the detector.

"A group of people sitting on a table." with lion 0.89 -> "A lion sitting on a table."

Only names the vocabulary lacks are used: where the decoder could have said the word and did not, it had the
chance (and guided decoding is the tool). Pure list code: no files, no tensors beyond the class probabilities.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from captioning.repeats import FUNCTION_WORDS, is_participle

THRESHOLD = 0.7  # the top class's probability needed to name it: "sure" (at 0.5: 6 of 250 val images, 3 wrong)
DOGS = range(151, 269)  # ImageNet's dog breeds (Chihuahua ... Mexican hairless), which the vocabulary calls "dog"
DETERMINERS = {"a", "an", "the", "some", "two", "three", "four", "several", "many", "this", "that"}
VERBS = {"is", "are", "was", "were", "has", "have", "sits", "stands", "lays", "lies", "looks", "holds", "rides"}
_WORD = re.compile(r"^[a-z]+$")


@dataclass(frozen=True)
class Naming:
    """A caption's subject span [start, end) replaced by `words` (the class name with its article)."""

    start: int
    end: int
    words: tuple[str, str]
    label: str  # the ImageNet class, as the encoder's tags show it
    prob: float


@functools.cache
def class_nouns(labels: tuple[str, ...]) -> tuple[str, ...]:
    """Each class's head noun, the last word of its name ("fox squirrel" -> "squirrel"; "dog" for a breed; "" if
    not one word of letters, e.g. "hen-of-the-woods")."""
    nouns = [w if _WORD.match(w := label.lower().split()[-1]) else "" for label in labels]
    return tuple("dog" if i in DOGS and len(labels) == 1000 else w for i, w in enumerate(nouns))


def subject_span(words: list[str]) -> tuple[int, int] | None:
    """[start, end) of the caption's subject noun phrase, determiner included; None when it has no clear one.

    No tagger (nltk's taggers need data that cannot be downloaded offline): the phrase is the run of words after
    the determiner up to the first function word, participle or verb; a quantifier's "of" continues it ("a group
    of people sitting" -> "a group of people").
    """
    if not words or words[0] not in DETERMINERS:
        return None
    i = 1
    while True:
        start = i
        while i < len(words) and _content(words[i]):
            i += 1
        if i == start:
            return None
        if words[i - 1] == "close" and i + 1 < len(words) and words[i] == "up":
            i += 1  # "a close up of a cat"
        if (
            i + 1 < len(words)
            and words[i] == "of"
            and _content(words[i + 1])
            or (i + 2 < len(words) and words[i] == "of" and words[i + 1] in DETERMINERS)
        ):
            i += 1 + (words[i + 1] in DETERMINERS)  # "a group of people", "a close up of a cat"
            continue
        return (0, i)


def _content(word: str) -> bool:
    return bool(_WORD.match(word)) and word not in FUNCTION_WORDS and word not in VERBS and not is_participle(word)


def novel_subject(
    words: list[str],
    probs: list[float],
    labels: tuple[str, ...],
    known: frozenset[str] | set[str],
    related: dict[str, list[str]] | None = None,
    threshold: float = THRESHOLD,
) -> Naming | None:
    """How to name the subject of a caption (its tokens `words`) from the encoder's class probabilities
    `probs` (1,000), or None when:
    - the top class is under `threshold`, or its noun is a word the decoder `known`s (plural included);
    - the caption already names it another way: a word the class's name ends with ("minibus": "bus"), or one
      of the caption words learned for the class (`related`, a checkpoint's concept words: "parachute": "kite");
    - the caption has no clear subject.
    """
    top = max(range(len(probs)), key=probs.__getitem__)
    noun = class_nouns(labels)[top]
    if probs[top] < threshold or not noun or noun in known or f"{noun}s" in known:
        return None
    said = {w for w in words if _content(w)}
    said |= {w[:-1] for w in said if w.endswith("s") and len(w) > 3}  # "kites" says "kite"
    synonyms = set((related or {}).get(str(top), []))
    if said & synonyms or any(len(w) >= 3 and noun.endswith(w) for w in said):
        return None
    span = subject_span(words)
    if span is None:
        return None
    article = "an" if noun[0] in "aeio" or (noun[0] == "u" and not noun.startswith(("uni", "use", "usu"))) else "a"
    return Naming(span[0], span[1], (article, noun), labels[top], float(probs[top]))


def apply(items: list, naming: Naming, article_item, noun_item) -> list:
    """`items` (aligned with a caption's words: the words, their probabilities, attention maps) with the subject
    span replaced by the two items that stand for the article and the noun."""
    return [*items[: naming.start], article_item, noun_item, *items[naming.end :]]
