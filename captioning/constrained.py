"""Constrained beam search (Anderson et al. 2017, "Guided Open Vocabulary Image Captioning with Constrained Beam
Search"), for one constraint per image: the caption must contain one of a set of words (the words learned for
the ImageNet class the encoder is sure of: cat -> cat, cats, kitten).

Each image keeps two beams of k hypotheses: those that have not said a target word yet (group 0) and those
that have (group 1). A group-0 hypothesis extended by a target word moves to group 1; only group 1 may end, so
every finished caption holds a target. Both groups advance together: a caption that says "cat" early competes
with one that says it late, which a bonus on the word (`guidance`, the soft version) cannot arrange. An image
whose constraint cannot be met within the maximum length gets its unconstrained captions (`beam_search`).
"""

from __future__ import annotations

import torch
from torch import nn

from captioning import repeats
from captioning.config import DecodeConfig
from captioning.decoding import Hypothesis, _allowed, _hypothesis, _reorder, beam_search
from captioning.vocab import Vocabulary

_NEG = float("-inf")


@torch.inference_mode()
def constrained_beam_search(
    decoder: nn.Module, feats: torch.Tensor, vocab: Vocabulary, cfg: DecodeConfig, targets: list[list[int]]
) -> list[list[Hypothesis]]:
    """Captions per image, best first, each holding one of its `targets` word ids; an image without targets
    (or whose targets no caption reached) is decoded by plain beam search."""
    out: list[list[Hypothesis] | None] = [None] * feats.size(0)
    bound = [b for b, t in enumerate(targets) if t]
    if bound:
        index = torch.tensor(bound, device=feats.device)
        found = _search(decoder, feats.index_select(0, index), vocab, cfg, [targets[b] for b in bound])
        for b, hyps in zip(bound, found, strict=True):
            out[b] = hyps or None
    rest = [b for b, hyps in enumerate(out) if hyps is None]
    if rest:
        plain = beam_search(decoder, feats.index_select(0, torch.tensor(rest, device=feats.device)), vocab, cfg)
        for b, hyps in zip(rest, plain, strict=True):
            out[b] = hyps
    return out  # type: ignore[return-value]


def _search(
    decoder: nn.Module, feats: torch.Tensor, vocab: Vocabulary, cfg: DecodeConfig, targets: list[list[int]]
) -> list[list[Hypothesis]]:
    """Rows b*2k + j hold group 0's beam j of image b, rows b*2k + k + j group 1's."""
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
