"""Greedy and beam-search decoding, batched over images. Pure tensor code: no files, no globals.

Both work with any decoder that has `init_state(feats) -> state` and
`step(tokens, state) -> (log_probs (B, V), state, attention (B, N) | None)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from captioning.vocab import Vocabulary


@dataclass
class Hypothesis:
    """One decoded caption. `ids` and `word_probs` include `<end>` when the caption ended."""

    text: str
    ids: list[int]
    logprob: float  # total log-probability of `ids`
    score: float  # logprob / len(ids) ** length_penalty, what beams are ranked by
    word_probs: list[float]
    attention: list[torch.Tensor] | None = field(default=None, repr=False)  # one (N,) per id


def _normalise(logprob: float, length: int, length_penalty: float) -> float:
    return logprob / max(length, 1) ** length_penalty


def _allowed(logp: torch.Tensor, vocab: Vocabulary, last: bool) -> torch.Tensor:
    """Never generate <pad> or <start>; at the last step only <end> is left."""
    logp = logp.clone()
    if last:
        end = logp[:, vocab.end_id].clone()
        logp.fill_(float("-inf"))
        logp[:, vocab.end_id] = end
    else:
        logp[:, [vocab.pad_id, vocab.start_id]] = float("-inf")
    return logp


REPEAT_NGRAM = 3  # with block_repeats, no caption says the same three words twice

# Words that join phrases rather than name things. With block_repeats a caption does not bring back the head
# of a phrase it has already said ("a truck with a truck", "a cat on a table with a table"); a word is a head
# where the next word is one of these or a participle ("a man sitting", "a truck parked"), and it may not come
# again right after one of these. A modifier may ("a tennis racket on a tennis court").
FUNCTION_WORDS = frozenset(
    """a an the some two three four one each other another his her its their this that it
    of on in with and or at to near next by for from under over into onto up down through behind beside
    top front side while as is are has have , .""".split()
)


def _is_participle(word: str) -> bool:
    return len(word) > 4 and word.endswith(("ing", "ed"))


def _word_classes(vocab: Vocabulary) -> tuple[list[bool], list[bool]]:
    """Per vocabulary id: (a function word, marks the word before it as a phrase's head)."""
    special = {vocab.pad_id, vocab.start_id, vocab.end_id, vocab.unk_id}
    function = [i in special or w in FUNCTION_WORDS for i, w in enumerate(vocab.itos)]
    ends_phrase = [f or _is_participle(w) for f, w in zip(function, vocab.itos)]
    return function, ends_phrase


def _block_repeats(
    logp: torch.Tensor,
    histories: list[list[int]],
    classes: tuple[list[bool], list[bool]] | None = None,
    n: int = REPEAT_NGRAM,
) -> torch.Tensor:
    """Forbid each row's next word where it would complete an n-gram the row has already said, or, given
    `classes` (from `_word_classes`), bring back a phrase head right after a function word.

    `histories[r]` is row r's words so far (no `<start>`). Self-critical training makes a model echo
    its object phrases ("holding a cell phone on a cell phone", "a cat on a table with a table"); the
    n-gram rule is the usual cure (the "no repeat n-gram" rule of sequence generators), the head rule
    catches the shorter echoes it lets through.
    """
    rows, cols = [], []
    for r, h in enumerate(histories):
        if len(h) >= n:
            prefix = h[len(h) - n + 1 :]
            for i in range(len(h) - n + 1):
                if h[i : i + n - 1] == prefix:
                    rows.append(r)
                    cols.append(h[i + n - 1])
        if classes is not None and len(h) >= 2 and classes[0][h[-1]]:
            function, ends_phrase = classes
            for i in range(len(h) - 1):
                if not function[h[i]] and ends_phrase[h[i + 1]]:
                    rows.append(r)
                    cols.append(h[i])
    if rows:
        logp = logp.clone()
        logp[rows, cols] = float("-inf")
    return logp


def _reorder(state: dict[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v.index_select(0, index) for k, v in state.items()}


@torch.inference_mode()
def greedy(
    decoder: nn.Module,
    feats: torch.Tensor,
    vocab: Vocabulary,
    max_len: int = 20,
    length_penalty: float = 1.0,
    block_repeats: bool = False,
) -> list[Hypothesis]:
    """The most probable word at every step, for each of the B images in `feats`."""
    B = feats.size(0)
    classes = _word_classes(vocab) if block_repeats else None
    state = decoder.init_state(feats)
    tokens = torch.full((B,), vocab.start_id, dtype=torch.long, device=feats.device)
    ids, logps, attns = [], [], []
    done = torch.zeros(B, dtype=torch.bool, device=feats.device)
    for t in range(max_len + 1):  # up to max_len words, then <end>
        logp, state, alpha = decoder.step(tokens, state)  # (B, V)
        logp = _allowed(logp, vocab, last=t == max_len)
        if block_repeats and ids:
            logp = _block_repeats(logp, torch.stack(ids, 1).tolist(), classes)
        best, tokens = logp.max(dim=1)  # (B,)
        ids.append(tokens)
        logps.append(best)
        attns.append(alpha)
        done |= tokens == vocab.end_id
        if bool(done.all()):
            break
    ids_t, logps_t = torch.stack(ids, 1).tolist(), torch.stack(logps, 1).tolist()  # (B, T)
    out = []
    for b in range(B):
        seq = ids_t[b]
        n = seq.index(vocab.end_id) + 1
        lp = logps_t[b][:n]
        attention = None if attns[0] is None else [attns[t][b].float().cpu() for t in range(n)]
        out.append(
            Hypothesis(
                vocab.decode(seq[:n]),
                seq[:n],
                float(sum(lp)),
                _normalise(sum(lp), n, length_penalty),
                [math.exp(x) for x in lp],
                attention,
            )
        )
    return out


@torch.inference_mode()
def beam_search(
    decoder: nn.Module,
    feats: torch.Tensor,
    vocab: Vocabulary,
    beam_size: int = 3,
    max_len: int = 20,
    length_penalty: float = 1.0,
    block_repeats: bool = False,
) -> list[list[Hypothesis]]:
    """The `beam_size` best captions for each image, best first by length-normalised score.

    Every step expands each live beam by every word, keeps the best 2k candidates per image
    (by total log-probability), sets those ending in `<end>` aside as finished, and keeps the
    best k others alive. An image is done when it has k finished captions.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be at least 1 (got {beam_size})")
    B, k, dev = feats.size(0), beam_size, feats.device
    classes = _word_classes(vocab) if block_repeats else None
    state = decoder.init_state(feats.repeat_interleave(k, dim=0))  # rows b*k + j
    scores = torch.full((B, k), float("-inf"), device=dev)
    scores[:, 0] = 0.0  # at first all beams are identical: expand only one
    tokens = torch.full((B * k,), vocab.start_id, dtype=torch.long, device=dev)
    # per row history: ids, per-word log-probs, attention
    hist_ids = [[[] for _ in range(k)] for _ in range(B)]
    hist_lp = [[[] for _ in range(k)] for _ in range(B)]
    hist_att: list[list[list]] = [[[] for _ in range(k)] for _ in range(B)]
    finished: list[list[Hypothesis]] = [[] for _ in range(B)]
    for t in range(max_len + 1):
        logp, state, alpha = decoder.step(tokens, state)  # (B*k, V)
        logp = _allowed(logp, vocab, last=t == max_len)
        if block_repeats:
            logp = _block_repeats(logp, [h for row in hist_ids for h in row], classes)
        V = logp.size(1)
        cand = (scores.unsqueeze(2) + logp.view(B, k, V)).view(B, k * V)  # (B, k*V)
        top_scores, top_idx = cand.topk(min(2 * k, k * V), dim=1)  # (B, 2k)
        top_scores, top_idx = top_scores.tolist(), top_idx.tolist()
        logp_cpu = logp.view(B, k, V).float().cpu()
        new_rows, new_tokens, new_scores = [], [], []
        new_ids, new_lp, new_att = [], [], []
        for b in range(B):
            rows, toks, scs, ids_b, lp_b, att_b = [], [], [], [], [], []
            if len(finished[b]) < k:
                for s, flat in zip(top_scores[b], top_idx[b]):
                    if s == float("-inf"):
                        break
                    j, w = divmod(flat, V)
                    ids = hist_ids[b][j] + [w]
                    lps = hist_lp[b][j] + [float(logp_cpu[b, j, w])]
                    att = hist_att[b][j] + ([] if alpha is None else [alpha[b * k + j].float().cpu()])
                    if w == vocab.end_id:
                        finished[b].append(_hypothesis(vocab, ids, lps, att, alpha, length_penalty))
                        if len(finished[b]) >= k:
                            break
                    elif len(rows) < k:
                        rows.append(b * k + j)
                        toks.append(w)
                        scs.append(s)
                        ids_b.append(ids)
                        lp_b.append(lps)
                        att_b.append(att)
                    if len(rows) == k:
                        break
            while len(rows) < k:  # pad dead beams so the batch keeps its shape
                rows.append(b * k)
                toks.append(vocab.end_id)
                scs.append(float("-inf"))
                ids_b.append([])
                lp_b.append([])
                att_b.append([])
            new_rows += rows
            new_tokens += toks
            new_scores.append(scs)
            new_ids.append(ids_b)
            new_lp.append(lp_b)
            new_att.append(att_b)
        if all(len(f) >= k for f in finished):
            break
        index = torch.tensor(new_rows, device=dev)
        state = _reorder(state, index)
        tokens = torch.tensor(new_tokens, device=dev)
        scores = torch.tensor(new_scores, device=dev)
        hist_ids, hist_lp, hist_att = new_ids, new_lp, new_att
    return [sorted(f, key=lambda h: h.score, reverse=True)[:k] for f in finished]


def _hypothesis(
    vocab: Vocabulary, ids: list[int], lps: list[float], att: list, alpha, length_penalty: float
) -> Hypothesis:
    total = float(sum(lps))
    probs = [math.exp(x) for x in lps]
    return Hypothesis(
        vocab.decode(ids),
        ids,
        total,
        _normalise(total, len(ids), length_penalty),
        probs,
        None if alpha is None else att,
    )


def sample(
    decoder: nn.Module, feats: torch.Tensor, vocab: Vocabulary, k: int = 5, max_len: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """`k` captions per image drawn word by word from the decoder's distribution, with gradients.

    Returns ids (B*k, T), rows b*k .. b*k+k-1 for image b, `<pad>` after `<end>`; and the
    log-probability of each drawn id (B*k, T), 0 after `<end>`. Uses the global RNG.
    """
    state = decoder.init_state(feats)
    state = {key: v.repeat_interleave(k, dim=0) for key, v in state.items()}
    n = feats.size(0) * k
    tokens = torch.full((n,), vocab.start_id, dtype=torch.long, device=feats.device)
    alive = torch.ones(n, dtype=torch.bool, device=feats.device)
    ids, logps = [], []
    for t in range(max_len + 1):  # up to max_len words, then <end>
        logp, state, _ = decoder.step(tokens, state)
        logp = torch.log_softmax(_allowed(logp.float(), vocab, last=t == max_len), dim=-1)  # renormalised
        tokens = torch.multinomial(logp.detach().exp(), 1).squeeze(1)
        chosen = logp.gather(1, tokens.unsqueeze(1)).squeeze(1)
        ids.append(torch.where(alive, tokens, torch.full_like(tokens, vocab.pad_id)))
        logps.append(chosen * alive)
        alive = alive & (tokens != vocab.end_id)
        if not bool(alive.any()):
            break
    return torch.stack(ids, 1), torch.stack(logps, 1)
