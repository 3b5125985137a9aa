"""Greedy and beam-search decoding, batched over images. Pure tensor code: no files, no globals.

Both work with any decoder that has `init_state(feats) -> state` and
`step(tokens, state) -> (log_probs (B, V), state, attention (B, N) | None)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from captioning import repeats
from captioning.config import DecodeConfig
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
    constrained: bool = False  # found by constrained beam search, where plain decoding missed the target


def decode(
    decoder: nn.Module,
    feats: torch.Tensor,
    vocab: Vocabulary,
    cfg: DecodeConfig,
    guide: Guide | None = None,
    constraint: list[list[int]] | None = None,
) -> list[list[Hypothesis]]:
    """The one decoding entry point (validation, evaluation, `Captioner`): captions per row of `feats`,
    best first; greedy gives one, beam search `cfg.beam_size`.

    `cfg.block_repeats` forbids echoes (see `repeats`). `guide` (from `guidance.guide_bonus`, sized by
    `cfg.guide`) rewards each image's target words until its caption says one. `constraint` (per image, word
    ids; empty for none) makes each caption contain one of its words: an image whose best caption misses them all
    is decoded again by constrained beam search (`constrained.meet`, `cfg.constrain`).
    """
    if cfg.method == "greedy":
        found = [[h] for h in greedy(decoder, feats, vocab, cfg, guide)]
    else:
        found = beam_search(decoder, feats, vocab, cfg, guide)
    if constraint is not None and any(constraint):
        from captioning.constrained import meet

        found = meet(decoder, feats, vocab, cfg, constraint, found)
    return found


Guide = tuple[torch.Tensor, list[list[int]]]  # (B, V) log-probability bonus, each image's target word ids


def _guided(logp: torch.Tensor, guide: Guide, histories: list[list[int]], per_image: int = 1) -> torch.Tensor:
    """Add each row's bonus (row r is image r // per_image) while its history holds none of its targets, and
    renormalise, so the guided scores stay log-probabilities."""
    bonus, targets = guide
    rows = [r for r, h in enumerate(histories) if targets[r // per_image] and not set(h) & set(targets[r // per_image])]
    if not rows:
        return logp
    logp = logp.clone()
    index = torch.tensor(rows, device=logp.device)
    images = torch.tensor([r // per_image for r in rows], device=logp.device)
    logp[index] = torch.log_softmax(logp[index] + bonus.to(logp.device)[images], dim=-1)
    return logp


def _normalise(logprob: float, length: int, length_penalty: float) -> float:
    return logprob / max(length, 1) ** length_penalty


def _allowed(logp: torch.Tensor, vocab: Vocabulary, last: bool, unknown: bool = False) -> torch.Tensor:
    """Never generate <pad> or <start>, nor <unk> unless `unknown` (SCST's sampling may: it learns from what the
    model would say); at the last step only <end> is left."""
    logp = logp.clone()
    if last:
        end = logp[:, vocab.end_id].clone()
        logp.fill_(float("-inf"))
        logp[:, vocab.end_id] = end
    else:
        logp[:, [vocab.pad_id, vocab.start_id] + ([] if unknown else [vocab.unk_id])] = float("-inf")
    return logp


def _reorder(state: dict[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v.index_select(0, index) for k, v in state.items()}


@torch.inference_mode()
def greedy(
    decoder: nn.Module,
    feats: torch.Tensor,
    vocab: Vocabulary,
    cfg: DecodeConfig,
    guide: Guide | None = None,
) -> list[Hypothesis]:
    """The most probable word at every step, for each of the B images in `feats` (`cfg.method` is not read)."""
    B, max_len = feats.size(0), cfg.max_len
    classes = repeats.word_classes(vocab) if cfg.block_repeats else None
    state = decoder.init_state(feats)
    tokens = torch.full((B,), vocab.start_id, dtype=torch.long, device=feats.device)
    ids, logps, attns = [], [], []
    done = torch.zeros(B, dtype=torch.bool, device=feats.device)
    for t in range(max_len + 1):  # up to max_len words, then <end>
        logp, state, alpha = decoder.step(tokens, state)  # (B, V)
        logp = _allowed(logp, vocab, last=t == max_len)
        history = torch.stack(ids, 1).tolist() if ids and (classes or guide) else [[] for _ in range(B)]
        if classes and ids:
            logp = repeats.block_repeats(logp, history, classes)
        if guide is not None and t < max_len:
            logp = _guided(logp, guide, history)
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
                _normalise(sum(lp), n, cfg.length_penalty),
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
    cfg: DecodeConfig,
    guide: Guide | None = None,
) -> list[list[Hypothesis]]:
    """The `beam_size` best captions for each image, best first by length-normalised score.

    Every step expands each live beam by every word, keeps the best 2k candidates per image
    (by total log-probability), sets those ending in `<end>` aside as finished, and keeps the
    best k others alive. An image is done when it has k finished captions.
    """
    B, k, dev, max_len = feats.size(0), cfg.beam_size, feats.device, cfg.max_len
    classes = repeats.word_classes(vocab) if cfg.block_repeats else None
    state = decoder.init_state(feats.repeat_interleave(k, dim=0))  # rows b*k + j
    scores = torch.full((B, k), float("-inf"), device=dev)
    scores[:, 0] = 0.0  # at first all beams are identical: expand only one
    tokens = torch.full((B * k,), vocab.start_id, dtype=torch.long, device=dev)
    beams = [[_Beam([], [], []) for _ in range(k)] for _ in range(B)]  # per image, per row: its history
    finished: list[list[Hypothesis]] = [[] for _ in range(B)]
    for t in range(max_len + 1):
        logp, state, alpha = decoder.step(tokens, state)  # (B*k, V)
        logp = _allowed(logp, vocab, last=t == max_len)
        if classes:
            logp = repeats.block_repeats(logp, [beam.ids for row in beams for beam in row], classes)
        if guide is not None and t < max_len:
            logp = _guided(logp, guide, [beam.ids for row in beams for beam in row], per_image=k)
        V = logp.size(1)
        cand = (scores.unsqueeze(2) + logp.view(B, k, V)).view(B, k * V)  # (B, k*V)
        top_scores, top_idx = cand.topk(min(2 * k, k * V), dim=1)  # (B, 2k)
        step = _Step(logp.view(B, k, V).float().cpu(), alpha, vocab, k, cfg.length_penalty)
        chosen = [step.advance(b, beams[b], top_scores[b].tolist(), top_idx[b].tolist(), finished[b]) for b in range(B)]
        if all(len(f) >= k for f in finished):
            break
        state = _reorder(state, torch.tensor([b * k + j for b, row in enumerate(chosen) for j, *_ in row], device=dev))
        tokens = torch.tensor([w for row in chosen for _, w, _, _ in row], device=dev)
        scores = torch.tensor([[s for _, _, s, _ in row] for row in chosen], device=dev)
        beams = [[beam for *_, beam in row] for row in chosen]
    return [sorted(f, key=lambda h: h.score, reverse=True)[:k] for f in finished]


@dataclass
class _Beam:
    """A live beam's history: word ids, their log-probabilities and attention maps."""

    ids: list[int]
    logps: list[float]
    attention: list[torch.Tensor]


@dataclass
class _Step:
    """One beam-search step's view of the candidates, shared by every image of the batch."""

    logp: torch.Tensor  # (B, k, V) on the cpu
    alpha: torch.Tensor | None  # (B*k, N) attention, or None
    vocab: Vocabulary
    k: int
    length_penalty: float

    def advance(
        self, b: int, beams: list[_Beam], scores: list[float], flat: list[int], finished: list[Hypothesis]
    ) -> list[tuple[int, int, float, _Beam]]:
        """Image b's k beams for the next step as (parent row, word, score, history), best first.

        Candidates ending in `<end>` go to `finished`; dead rows (no candidates left) are padded so
        the batch keeps its shape.
        """
        out: list[tuple[int, int, float, _Beam]] = []
        if len(finished) < self.k:
            for s, index in zip(scores, flat):
                if s == float("-inf"):
                    break
                j, w = divmod(index, self.logp.size(2))
                parent = beams[j]
                att = [] if self.alpha is None else [self.alpha[b * self.k + j].float().cpu()]
                beam = _Beam(parent.ids + [w], parent.logps + [float(self.logp[b, j, w])], parent.attention + att)
                if w == self.vocab.end_id:
                    finished.append(
                        _hypothesis(self.vocab, beam.ids, beam.logps, beam.attention, self.alpha, self.length_penalty)
                    )
                    if len(finished) >= self.k:
                        break
                elif len(out) < self.k:
                    out.append((j, w, s, beam))
                if len(out) == self.k:
                    break
        while len(out) < self.k:
            out.append((0, self.vocab.end_id, float("-inf"), _Beam([], [], [])))
        return out


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
        logp = torch.log_softmax(_allowed(logp.float(), vocab, last=t == max_len, unknown=True), dim=-1)
        tokens = torch.multinomial(logp.detach().exp(), 1).squeeze(1)
        chosen = logp.gather(1, tokens.unsqueeze(1)).squeeze(1)
        ids.append(torch.where(alive, tokens, torch.full_like(tokens, vocab.pad_id)))
        logps.append(chosen * alive)
        alive = alive & (tokens != vocab.end_id)
        if not bool(alive.any()):
            break
    return torch.stack(ids, 1), torch.stack(logps, 1)
