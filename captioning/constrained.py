"""Constrained beam search (Anderson et al. 2017, "Guided Open Vocabulary Image Captioning with Constrained Beam
Search"), for one constraint per image: the caption must contain one of a set of words, the ones that say what
the encoder is sure of (`targets`: a Pekinese at 0.76 -> dog, dogs).

Each image keeps two beams of k hypotheses: those that have not said a target word yet (group 0) and those
that have (group 1). A group-0 hypothesis extended by a target word moves to group 1; only group 1 may end, so
every finished caption holds a target. Both groups advance together: a caption that says "cat" early competes
with one that says it late, which a bonus on the word (`guidance`, the soft version) cannot arrange. An image
whose constraint cannot be met within the maximum length keeps its unconstrained captions (`meet`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import torch
from torch import nn

from captioning import repeats
from captioning.config import DecodeConfig
from captioning.decoding import Hypothesis, _allowed, _hypothesis, _reorder
from captioning.naming import THRESHOLD as NAMING_THRESHOLD
from captioning.naming import class_nouns
from captioning.vocab import Vocabulary

_NEG = float("-inf")


@dataclass(frozen=True)
class Target:
    """What one image's caption must say: one of `ids` (`words`), because the encoder is `prob` sure of `noun`."""

    noun: str  # what a caption would call the class ("dog" for a Pekinese), or its label when that is no one word
    prob: float  # the probability of every class called that, summed
    words: tuple[str, ...]
    ids: tuple[int, ...]


def targets(
    probs: torch.Tensor,
    labels: tuple[str, ...],
    vocab: Vocabulary,
    threshold: float,
    concept_words: dict[str, list[str]] | None = None,
    name_novel: bool = True,
) -> list[Target | None]:
    """Per image, what its caption must say (None: nothing), from the encoder's class probabilities `probs`
    (B, 1000).

    The classes are pooled by what a caption would call them, their name's last word with the 118 dog breeds as
    "dog" (`naming.class_nouns`: Egyptian cat + tiger cat + Persian cat -> cat), so that an encoder sure of a dog
    but not of its breed counts as sure. When the likeliest such noun holds at least `threshold`:
    - a noun the vocabulary can say (dog, bridge, orange) is the target, with its plural (and "dog" for "hotdog",
      which captions also write "hot dog");
    - for a noun it cannot say (trolleybus, tripod), the words `concept_words` learned for the noun's likeliest
      class are (trolleybus -> bus, city, street), and none when `name_novel` will name it after decoding anyway
      (the top class at the naming threshold or above): a stand-in word would keep naming from saying the real
      one. The learned words of a class whose noun can be said are not used: they hold the scene as well as the
      subject (analog clock -> clock, atop, building), and "building" is no way to say "clock".
    """
    groups, names = _noun_groups(labels)
    probs = probs.float().cpu()
    mass = torch.zeros(probs.size(0), len(names)).index_add_(1, groups, probs)
    out: list[Target | None] = []
    for b, (p, g) in enumerate(zip(*mass.max(dim=1))):
        noun, members = names[g], torch.nonzero(groups == g).flatten()
        top = int(members[probs[b, members].argmax()])
        if _sayable(noun, vocab):
            words = [noun, *_open_compound(noun, vocab)]
        elif name_novel and noun and float(probs[b, top]) >= NAMING_THRESHOLD:
            words = []
        else:
            words = list((concept_words or {}).get(str(top), []))
        ids = _ids(words, vocab)
        found = float(p) >= threshold and ids
        out.append(Target(noun or labels[top], float(p), tuple(vocab.itos[i] for i in ids), ids) if found else None)
    return out


@functools.cache
def _noun_groups(labels: tuple[str, ...]) -> tuple[torch.Tensor, list[str]]:
    """Each class's group index (classes with the same noun share one; a class without a one-word noun is alone)
    and each group's noun ("" for the lone ones)."""
    nouns = class_nouns(labels)
    group_of = {noun: g for g, noun in enumerate(dict.fromkeys(nouns))}
    groups = torch.tensor([group_of[n] if n else len(group_of) + c for c, n in enumerate(nouns)])
    return groups, list(group_of) + [""] * len(nouns)


def _sayable(noun: str, vocab: Vocabulary) -> bool:
    return bool(noun) and noun not in repeats.FUNCTION_WORDS and (noun in vocab.stoi or f"{noun}s" in vocab.stoi)


def _open_compound(noun: str, vocab: Vocabulary) -> list[str]:
    """The last part of a closed compound that captions also write as two words the vocabulary has (hotdog: "hot
    dog", so "dog" says it; sunglasses: "sun glasses"), else []."""
    for i in range(3, len(noun) - 2):
        first, last = noun[:i], noun[i:]
        if first in vocab.stoi and last in vocab.stoi and last not in repeats.FUNCTION_WORDS:
            return [last]
    return []


def _ids(words: list[str], vocab: Vocabulary) -> tuple[int, ...]:
    """The vocabulary ids of `words` and of their plurals (a caption that says "boats" has said "boat"), in
    that order."""
    forms = [f for w in words for f in (w, f"{w}s", f"{w}es", f"{w[:-1]}ies" if w.endswith("y") else w)]
    return tuple(dict.fromkeys(vocab.stoi[f] for f in forms if f in vocab.stoi and f not in repeats.FUNCTION_WORDS))


@torch.inference_mode()
def meet(
    decoder: nn.Module,
    feats: torch.Tensor,
    vocab: Vocabulary,
    cfg: DecodeConfig,
    targets: list[list[int]],
    found: list[list[Hypothesis]],
) -> list[list[Hypothesis]]:
    """`found` (plain decoding's captions per image, best first) where the best caption holds one of its image's
    `targets` or none is asked; constrained beam search's captions for the rest. So the constraint changes only a
    caption that misses what the encoder is sure of, and costs a second search only there."""
    unmet = [b for b, t in enumerate(targets) if t and not set(found[b][0].ids) & set(t)]
    if not unmet:
        return found
    index = torch.tensor(unmet, device=feats.device)
    searched = constrained_beam_search(decoder, feats.index_select(0, index), vocab, cfg, [targets[b] for b in unmet])
    out = list(found)
    for b, hyps in zip(unmet, searched, strict=True):
        if hyps:  # else no caption could say it within the maximum length: the plain ones stay
            out[b] = [replace(h, constrained=True) for h in hyps]
    return out


@torch.inference_mode()
def constrained_beam_search(
    decoder: nn.Module, feats: torch.Tensor, vocab: Vocabulary, cfg: DecodeConfig, targets: list[list[int]]
) -> list[list[Hypothesis]]:
    """Captions per image, best first, each holding one of its `targets` word ids ([] for an image whose targets
    no caption reached within the maximum length). Rows b*2k + j hold group 0's beam j of image b, rows
    b*2k + k + j group 1's."""
    B, dev, max_len = feats.size(0), feats.device, cfg.max_len
    k = cfg.beam_size if cfg.method == "beam" else 1
    classes = repeats.word_classes(vocab) if cfg.block_repeats else None
    state = decoder.init_state(feats.repeat_interleave(2 * k, dim=0))
    scores = torch.full((B, 2, k), _NEG, device=dev)
    scores[:, 0, 0] = 0.0  # one live hypothesis to start: the empty caption, which has said no target
    tokens = torch.full((B * 2 * k,), vocab.start_id, dtype=torch.long, device=dev)
    histories: list[list[tuple[list[int], list[float]]]] = [[([], []) for _ in range(2 * k)] for _ in range(B)]
    finished: list[list[Hypothesis]] = [[] for _ in range(B)]
    wanted = torch.zeros(B, 1, len(vocab), dtype=torch.bool, device=dev)
    for b, ids in enumerate(targets):
        wanted[b, 0, ids] = True
    for t in range(max_len + 1):
        logp, state, _ = decoder.step(tokens, state)
        logp = _allowed(logp, vocab, last=t == max_len)
        if classes:
            logp = repeats.block_repeats(logp, [ids for row in histories for ids, _ in row], classes)
        V = logp.size(1)
        lp = logp.view(B, 2, k, V)
        unmet = scores[:, 0, :, None] + lp[:, 0]  # (B, k, V)
        met = scores[:, 1, :, None] + lp[:, 1]
        closing = torch.where(wanted, unmet, _NEG)  # group 0 saying a target joins group 1
        unmet = torch.where(wanted, _NEG, unmet)
        unmet[:, :, vocab.end_id] = _NEG  # only a caption that said a target may end
        top1, idx1 = torch.cat([met, closing], dim=1).view(B, 2 * k * V).topk(2 * k, dim=1)
        top0, idx0 = unmet.reshape(B, k * V).topk(k, dim=1)
        cpu = lp.float().cpu()
        rows, words, new_scores, new_histories = [], [], [], []
        for b in range(B):
            group0 = _extend(b, k, 0, top0[b].tolist(), idx0[b].tolist(), V, histories[b], cpu, None, vocab, cfg)
            group1 = _extend(b, k, 1, top1[b].tolist(), idx1[b].tolist(), V, histories[b], cpu, finished[b], vocab, cfg)
            for row, word, score, _ in group0 + group1:
                rows.append(b * 2 * k + row)
                words.append(word)
                new_scores.append(score)
            new_histories.append([h for *_, h in group0 + group1])
        if all(len(f) >= k for f in finished):
            break
        state = _reorder(state, torch.tensor(rows, device=dev))
        tokens = torch.tensor(words, device=dev)
        scores = torch.tensor(new_scores, device=dev).view(B, 2, k)
        histories = new_histories
    return [sorted(f, key=lambda h: h.score, reverse=True)[:k] for f in finished]


def _extend(b, k, group, scores, flat, V, histories, logp, finished, vocab, cfg):
    """Group `group`'s k live hypotheses of image b for the next step, as (parent row, word, score, history);
    for group 1, a candidate that ends goes to `finished`. Dead slots are padded (score -inf)."""
    out = []
    for score, index in zip(scores, flat):
        if score == _NEG:
            break
        if group == 1:  # candidates from group 1's rows (k..2k-1) first, then from group 0's (0..k-1)
            parent, word = divmod(index, V)
            row = k + parent if parent < k else parent - k
        else:
            row, word = divmod(index, V)
        ids, lps = histories[row]
        ids, lps = ids + [word], lps + [float(logp[b, row // k, row % k, word])]
        if word == vocab.end_id:
            if finished is not None and len(finished) < k:
                finished.append(_hypothesis(vocab, ids, lps, [], None, cfg.length_penalty))
            continue
        out.append((row, word, score, (ids, lps)))
        if len(out) == k:
            break
    while len(out) < k:
        out.append((0, vocab.end_id, _NEG, ([], [])))
    return out
