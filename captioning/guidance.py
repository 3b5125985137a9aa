"""Guided decoding: when the encoder's own ImageNet head is confident about a class, reward the caption words
that class stands for (after Anderson et al. 2017, "Guided Open Vocabulary Image Captioning with Constrained
Beam Search", as a soft constraint: a bonus rather than a hard one).

The map from classes to words is learned from a training split, not written by hand: for each class, the
caption words whose rate among the images, weighted by that class's probability, is far above their rate over
all images (their lift), e.g. espresso -> coffee, cup. It is stored in the checkpoint (`concept_words`, added by
`python -m captioning concept-words`), so any model with an EfficientNet-Lite encoder can use it.

While decoding an image whose top class has probability >= `threshold`, every word that class maps to gets
`bonus` added to its log-probability until the caption has said one of them; the probabilities a caption shows
are then the guided ones.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from captioning.repeats import FUNCTION_WORDS
from captioning.vocab import Vocabulary, tokenize

MIN_MASS = 1.5  # a class must hold at least this much probability over the split to learn its words
MIN_RATE = 0.15  # P(word | class): the share of the class's images whose captions use the word
MIN_LIFT = 3.0  # P(word | class) / P(word)
WORDS_PER_CLASS = 3
THRESHOLD, BONUS = 0.5, 2.0  # defaults of guided decoding


def learn_concept_words(probs: torch.Tensor, captions: Iterable[list[str]], vocab: Vocabulary) -> dict[str, list[str]]:
    """{class index (as a string, for JSON): its words, most associated first} from (N, 1000) class
    probabilities and the N images' captions."""
    rows = []
    for caps in captions:
        words = {w for c in caps for w in tokenize(c)}
        rows.append([vocab.stoi[w] for w in words if w in vocab.stoi and w not in FUNCTION_WORDS and w.isalpha()])
    n, v = len(rows), len(vocab)
    present = torch.zeros(n, v)
    for i, ids in enumerate(rows):
        present[i, ids] = 1.0
    base = present.mean(dim=0).clamp(min=1.0 / n)  # P(word)
    mass = probs.sum(dim=0)  # (1000,)
    given = (probs.T @ present) / mass.clamp(min=1e-9).unsqueeze(1)  # (1000, V): P(word | class)
    lift = given / base
    out = {}
    for c in torch.nonzero(mass >= MIN_MASS).flatten().tolist():
        good = (given[c] >= MIN_RATE) & (lift[c] >= MIN_LIFT)
        ranked = sorted(torch.nonzero(good).flatten().tolist(), key=lambda w: -float(given[c, w] * lift[c, w].log()))
        if ranked:
            out[str(c)] = [vocab.itos[w] for w in ranked[:WORDS_PER_CLASS]]
    return out


def guide_bonus(
    probs: torch.Tensor,
    concept_words: dict[str, list[str]],
    vocab: Vocabulary,
    threshold: float = THRESHOLD,
    bonus: float = BONUS,
) -> tuple[torch.Tensor, list[list[int]]]:
    """(B, V) additive log-probability bonus and, per image, the rewarded word ids (empty: not guided)."""
    if not 0 < threshold <= 1 or not math.isfinite(bonus) or bonus < 0:
        raise ValueError("guidance needs 0 < threshold <= 1 and a bonus >= 0")
    top_p, top_c = probs.max(dim=1)
    out = torch.zeros(probs.size(0), len(vocab), device=probs.device)
    targets: list[list[int]] = []
    for b, (p, c) in enumerate(zip(top_p.tolist(), top_c.tolist())):
        ids = [vocab.stoi[w] for w in concept_words.get(str(c), []) if w in vocab.stoi] if p >= threshold else []
        out[b, ids] = bonus
        targets.append(ids)
    return out, targets
