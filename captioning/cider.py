"""CIDEr-D (Vedantam et al. 2015) as a training reward: one sampled caption against one image's references.

Why a second CIDEr beside `metrics.py`: the metrics module scores a finished set of captions the official
way (pycocoevalcap, captions tokenized by the Java PTB tokenizer, document frequencies from the scored set
or a given one); self-critical training scores thousands of sampled captions per step, already as words,
against document frequencies fixed by the training split. That needs a scorer that is built once and scores
one caption in microseconds with no subprocess. Both use the same n-gram orders and length penalty
(`CIDER_N`, `CIDER_SIGMA`); a test checks that this one matches pycocoevalcap's.
"""

from __future__ import annotations

import json
import math
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from captioning.io import atomic_write_text, read_json
from captioning.vocab import tokenize

CIDER_N = 4  # 1..4-grams
CIDER_SIGMA = 6.0  # CIDEr-D's Gaussian length penalty
END = "<end>"  # kept as a word, so a caption cut off mid-phrase ("a man riding a") earns less
_PUNCTUATION = {".", ",", "!", "?", ";", ":", "'", '"', "``", "''", "-", "--"}

Vector = tuple[list[dict[str, float]], list[float], int]  # per order tf-idf, norms, length


def words_for_reward(tokens: Iterable[str]) -> list[str]:
    """Words as CIDEr sees them (the COCO evaluation drops punctuation), then `<end>`."""
    return [w for w in tokens if w not in _PUNCTUATION] + [END]


def _ngrams(words: Sequence[str]) -> list[Counter]:
    """Counts of the 1..4-grams of `words`, each n-gram as one space-joined string (a compact key)."""
    return [Counter(" ".join(words[i : i + n]) for i in range(len(words) - n + 1)) for n in range(1, CIDER_N + 1)]


@dataclass
class DocumentFrequencies:
    """In how many images' reference sets each n-gram occurs, for the n-grams in at least two of them: CIDEr-D
    weighs an n-gram by log(docs / max(1, df)), so one seen once weighs the same as one never seen, and
    leaving out the singletons (most 3- and 4-grams) changes no score. Saved as JSON, to compute it once."""

    counts: dict[str, int]
    docs: int

    @classmethod
    def compute(cls, references: Iterable[Sequence[Sequence[str]]]) -> DocumentFrequencies:
        counts: Counter = Counter()
        docs = 0
        for refs in references:
            counts.update({g for words in refs for order in _ngrams(words) for g in order})
            docs += 1
        if not docs:
            raise ValueError("CIDEr-D needs at least one image with references")
        return cls({g: c for g, c in counts.items() if c > 1}, docs)

    def save(self, path) -> None:
        atomic_write_text(path, json.dumps({"docs": self.docs, "counts": self.counts}))

    @classmethod
    def load(cls, path) -> DocumentFrequencies:
        data = read_json(Path(path).read_text(encoding="utf-8"))
        return cls(data["counts"], int(data["docs"]))


class CiderD:
    """CIDEr-D (Vedantam et al. 2015) of one caption against one image's references.

    Document frequencies come from the training split's reference sets (computed from `references` unless
    given): tf-idf n-gram vectors for n = 1..4, clipped candidate counts, a Gaussian penalty on the length
    difference (sigma 6), averaged over references and orders, times 10. `references` maps an image id to its
    references as word lists; it may be lazy (see `from_captions`): an image's reference vectors are built when
    it is first scored and kept for the most recent REF_CACHE images, so memory does not grow with the split.
    """

    REF_CACHE = 4096

    def __init__(self, references: Mapping[int, Sequence[Sequence[str]]], df: DocumentFrequencies | None = None):
        if not references:
            raise ValueError("CIDEr-D needs at least one image with references")
        self.references = references
        self.df = df or DocumentFrequencies.compute(references.values())
        self.log_docs = math.log(float(self.df.docs))
        self._refs: OrderedDict[int, list[Vector]] = OrderedDict()

    @classmethod
    def from_captions(cls, captions: Mapping[int, list[str]], df: DocumentFrequencies | None = None) -> CiderD:
        """From raw caption strings, tokenized as the reward sees them when first needed."""
        return cls(RewardReferences(captions), df)

    def _vector(self, words: Sequence[str]) -> Vector:
        vec, norms, counts = [], [], self.df.counts
        for grams in _ngrams(words):
            v = {g: tf * (self.log_docs - math.log(max(1, counts.get(g, 1)))) for g, tf in grams.items()}
            vec.append(v)
            norms.append(math.sqrt(sum(x * x for x in v.values())))
        return vec, norms, len(words)

    def _references(self, image_id: int) -> list[Vector]:
        refs = self._refs.get(image_id)
        if refs is None:
            refs = self._refs[image_id] = [self._vector(words) for words in self.references[image_id]]
            if len(self._refs) > self.REF_CACHE:
                self._refs.popitem(last=False)
        else:
            self._refs.move_to_end(image_id)
        return refs

    def score(self, image_id: int, words: Sequence[str]) -> float:
        vec, norms, length = self._vector(words)
        refs = self._references(image_id)
        total = 0.0
        for rvec, rnorms, rlength in refs:
            penalty = math.exp(-((length - rlength) ** 2) / (2 * CIDER_SIGMA**2))
            for n in range(CIDER_N):
                if norms[n] == 0 or rnorms[n] == 0:
                    continue
                ref = rvec[n]
                dot = sum(min(x, ref[g]) * ref[g] for g, x in vec[n].items() if g in ref)
                total += penalty * dot / (norms[n] * rnorms[n])
        return 10.0 * total / (CIDER_N * len(refs))


class RewardReferences(Mapping):
    """Image id -> its captions as reward words, tokenized on access (the raw strings stay the only copy)."""

    def __init__(self, captions: Mapping[int, list[str]]) -> None:
        self.captions = captions

    def __getitem__(self, image_id: int) -> list[list[str]]:
        return [words_for_reward(tokenize(c)) for c in self.captions[image_id]]

    def __iter__(self):
        return iter(self.captions)

    def __len__(self) -> int:
        return len(self.captions)
