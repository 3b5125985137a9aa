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


METHODS = ("greedy", "beam")


def decode(
    decoder: nn.Module,
    feats: torch.Tensor,
    vocab: Vocabulary,
    method: str = "beam",
    beam_size: int = 3,
    max_len: int = 20,
    block_repeats: bool = True,
    guide: Guide | None = None,
) -> list[list[Hypothesis]]:
    """The one decoding entry point (validation, evaluation, `Captioner`): captions per row of `feats`,
    best first; greedy gives one, beam search `beam_size`.

    `block_repeats` forbids echoes: the same three words twice ("a cell phone on a cell phone") or a
    phrase's head again ("a cat on a table with a table"); see `_block_repeats`. `guide` (from
    `guidance.guide_bonus`) rewards each image's target words until its caption says one.
    """
    check_decoding(method, beam_size, max_len)
    if method == "greedy":
        return [[h] for h in greedy(decoder, feats, vocab, max_len, block_repeats=block_repeats, guide=guide)]
    return beam_search(decoder, feats, vocab, beam_size, max_len, block_repeats=block_repeats, guide=guide)


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


def check_decoding(method: str, beam_size: int, max_len: int) -> None:
    """ValueError naming the allowed values for a bad decoding setting."""
    if method not in METHODS:
        raise ValueError(f"method must be one of: {', '.join(METHODS)} (got {method!r})")
    if max_len < 1:
        raise ValueError(f"max_len must be at least 1 (got {max_len})")
    if beam_size < 1:
        raise ValueError(f"beam_size must be at least 1 (got {beam_size})")


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


def is_participle(word: str) -> bool:
    return len(word) > 4 and word.endswith(("ing", "ed"))


def _word_classes(vocab: Vocabulary) -> tuple:
    """Per vocabulary id: (a function word, marks the word before it as a phrase's head), and with
    PLURAL_HEADS the singular and plural forms of each word, which the head rule then treats as one."""
    special = {vocab.pad_id, vocab.start_id, vocab.end_id, vocab.unk_id}
    function = [i in special or w in FUNCTION_WORDS for i, w in enumerate(vocab.itos)]
    ends_phrase = [f or is_participle(w) for f, w in zip(function, vocab.itos)]
    return (function, ends_phrase, _same_head(vocab)) if PLURAL_HEADS else (function, ends_phrase)


PLURAL_HEADS = False  # measured (model card): whether a plural counts as its singular for the head rule


def _same_head(vocab: Vocabulary) -> dict[int, list[int]]:
    """Word id -> the ids of its singular and plural forms in the vocabulary ("motorcycles" <-> "motorcycle")."""
    groups: dict[int, list[int]] = {}
    for i, w in enumerate(vocab.itos):
        for stem in (w[:-1], w[:-2]) if w.endswith("s") else ():
            j = vocab.stoi.get(stem)
            if j is not None and j != i:
                groups.setdefault(i, [i]).append(j)
                groups.setdefault(j, [j]).append(i)
    return groups


def _block_repeats(
    logp: torch.Tensor,
    histories: list[list[int]],
    classes: tuple | None = None,
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
            function, ends_phrase = classes[0], classes[1]
            forms = classes[2] if len(classes) > 2 else {}
            for i in range(len(h) - 1):
                if not function[h[i]] and ends_phrase[h[i + 1]]:
                    for form in forms.get(h[i], [h[i]]):
                        rows.append(r)
                        cols.append(form)
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
    guide: Guide | None = None,
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
        history = torch.stack(ids, 1).tolist() if ids and (block_repeats or guide) else [[] for _ in range(B)]
        if block_repeats and ids:
            logp = _block_repeats(logp, history, classes)
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
    guide: Guide | None = None,
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
    beams = [[_Beam([], [], []) for _ in range(k)] for _ in range(B)]  # per image, per row: its history
    finished: list[list[Hypothesis]] = [[] for _ in range(B)]
    for t in range(max_len + 1):
        logp, state, alpha = decoder.step(tokens, state)  # (B*k, V)
        logp = _allowed(logp, vocab, last=t == max_len)
        if block_repeats:
            logp = _block_repeats(logp, [beam.ids for row in beams for beam in row], classes)
        if guide is not None and t < max_len:
            logp = _guided(logp, guide, [beam.ids for row in beams for beam in row], per_image=k)
        V = logp.size(1)
        cand = (scores.unsqueeze(2) + logp.view(B, k, V)).view(B, k * V)  # (B, k*V)
        top_scores, top_idx = cand.topk(min(2 * k, k * V), dim=1)  # (B, 2k)
        step = _Step(logp.view(B, k, V).float().cpu(), alpha, vocab, k, length_penalty)
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
        logp = torch.log_softmax(_allowed(logp.float(), vocab, last=t == max_len), dim=-1)  # renormalised
        tokens = torch.multinomial(logp.detach().exp(), 1).squeeze(1)
        chosen = logp.gather(1, tokens.unsqueeze(1)).squeeze(1)
        ids.append(torch.where(alive, tokens, torch.full_like(tokens, vocab.pad_id)))
        logps.append(chosen * alive)
        alive = alive & (tokens != vocab.end_id)
        if not bool(alive.any()):
            break
    return torch.stack(ids, 1), torch.stack(logps, 1)
