"""Self-critical sequence training (Rennie et al. 2017): after cross-entropy, optimise CIDEr-D itself.

For every image the decoder draws k captions; each one's reward is its CIDEr-D against the
image's references, and its baseline is the mean reward of the other k - 1 (Luo 2020, "a better
variant of SCST"), so no greedy decode is needed. The loss pushes up the log-probability of
captions that beat their siblings and down the others.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence

import torch

from captioning.vocab import Vocabulary, tokenize

ORDERS = 4
SIGMA = 6.0  # CIDEr-D's Gaussian length penalty
END = "<end>"  # kept as a word, so a caption cut off mid-phrase ("a man riding a") earns less
_PUNCTUATION = {".", ",", "!", "?", ";", ":", "'", '"', "``", "''", "-", "--"}

Vector = tuple[list[dict[tuple[str, ...], float]], list[float], int]  # per order tf-idf, norms, length


def words_for_reward(tokens: Iterable[str]) -> list[str]:
    """Words as CIDEr sees them (the COCO evaluation drops punctuation), then `<end>`."""
    return [w for w in tokens if w not in _PUNCTUATION] + [END]


def _ngrams(words: Sequence[str]) -> list[Counter]:
    return [Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1)) for n in range(1, ORDERS + 1)]


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
            penalty = math.exp(-((length - rlength) ** 2) / (2 * SIGMA**2))
            for n in range(ORDERS):
                if norms[n] == 0 or rnorms[n] == 0:
                    continue
                ref = rvec[n]
                dot = sum(min(x, ref[g]) * ref[g] for g, x in vec[n].items() if g in ref)
                total += penalty * dot / (norms[n] * rnorms[n])
        return 10.0 * total / (ORDERS * len(self.refs[image_id]))


def scst_loss(
    decoder: torch.nn.Module,
    feats: torch.Tensor,
    image_ids: list[int],
    vocab: Vocabulary,
    cider: CiderD,
    k: int = 5,
    max_len: int = 16,
) -> tuple[torch.Tensor, float]:
    """Policy-gradient loss over k sampled captions per image, and their mean reward.

    `decoder` may be a DistributedDataParallel wrapper: sampling goes through its forward.
    """
    if k < 2:
        raise ValueError(f"SCST needs at least 2 samples per image for its baseline (got {k})")
    ids, logps = decoder(feats, sample={"vocab": vocab, "k": k, "max_len": max_len})
    rows = ids.tolist()
    rewards = []
    for n, row in enumerate(rows):
        words = []
        for i in row:
            if i in (vocab.end_id, vocab.pad_id):
                break
            words.append(vocab.itos[i])
        rewards.append(cider.score(image_ids[n // k], words_for_reward(words)))
    r = torch.tensor(rewards, device=logps.device).view(-1, k)  # (B, k)
    baseline = (r.sum(dim=1, keepdim=True) - r) / (k - 1)
    advantage = (r - baseline).view(-1, 1)  # (B*k, 1)
    tokens = (ids != vocab.pad_id).sum().clamp(min=1)  # words and <end>
    return -(advantage * logps).sum() / tokens, float(r.mean())
