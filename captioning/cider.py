"""CIDEr-D (Vedantam et al. 2015) as a training reward: one sampled caption against one image's references.

Why a second CIDEr beside `metrics.py`: the metrics module scores a finished set of captions the official
way (pycocoevalcap, captions tokenized by the Java PTB tokenizer, document frequencies from the scored set
or a given one); self-critical training scores thousands of sampled captions per step, already as words,
against document frequencies fixed by the training split. That needs a scorer that is built once and scores
one caption in microseconds with no subprocess. Both use the same n-gram orders and length penalty
(`CIDER_N`, `CIDER_SIGMA`); a test checks that this one matches pycocoevalcap's.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence

from captioning.vocab import tokenize

CIDER_N = 4  # 1..4-grams
CIDER_SIGMA = 6.0  # CIDEr-D's Gaussian length penalty
END = "<end>"  # kept as a word, so a caption cut off mid-phrase ("a man riding a") earns less
_PUNCTUATION = {".", ",", "!", "?", ";", ":", "'", '"', "``", "''", "-", "--"}

Vector = tuple[list[dict[tuple[str, ...], float]], list[float], int]  # per order tf-idf, norms, length


def words_for_reward(tokens: Iterable[str]) -> list[str]:
    """Words as CIDEr sees them (the COCO evaluation drops punctuation), then `<end>`."""
    return [w for w in tokens if w not in _PUNCTUATION] + [END]


def _ngrams(words: Sequence[str]) -> list[Counter]:
    return [Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1)) for n in range(1, CIDER_N + 1)]


class CiderD:
    """CIDEr-D (Vedantam et al. 2015) of one caption against one image's references.

    Document frequencies come from the reference sets given at construction (the training
    split): tf-idf n-gram vectors for n = 1..4, clipped candidate counts, a Gaussian penalty on
    the length difference (sigma 6), averaged over references and orders, times 10.
    """

    def __init__(self, references: dict[int, list[list[str]]]) -> None:
        if not references:
            raise ValueError("CIDEr-D needs at least one image with references")
        self.df: Counter = Counter()
        for refs in references.values():
            self.df.update({g for words in refs for order in _ngrams(words) for g in order})
        self.log_docs = math.log(float(len(references)))
        self.refs = {image_id: [self._vector(words) for words in refs] for image_id, refs in references.items()}

    @classmethod
    def from_captions(cls, captions: dict[int, list[str]]) -> CiderD:
        return cls({i: [words_for_reward(tokenize(c)) for c in caps] for i, caps in captions.items()})

    def _vector(self, words: Sequence[str]) -> Vector:
        vec, norms = [], []
        for counts in _ngrams(words):
            v = {g: tf * (self.log_docs - math.log(max(1.0, self.df[g]))) for g, tf in counts.items()}
            vec.append(v)
            norms.append(math.sqrt(sum(x * x for x in v.values())))
        return vec, norms, len(words)

    def score(self, image_id: int, words: Sequence[str]) -> float:
        vec, norms, length = self._vector(words)
        total = 0.0
        for rvec, rnorms, rlength in self.refs[image_id]:
            penalty = math.exp(-((length - rlength) ** 2) / (2 * CIDER_SIGMA**2))
            for n in range(CIDER_N):
                if norms[n] == 0 or rnorms[n] == 0:
                    continue
                ref = rvec[n]
                dot = sum(min(x, ref[g]) * ref[g] for g, x in vec[n].items() if g in ref)
                total += penalty * dot / (norms[n] * rnorms[n])
        return 10.0 * total / (CIDER_N * len(self.refs[image_id]))
