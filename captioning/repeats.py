"""The repeat rules of decoding: no caption says the same three words twice ("a cell phone on a cell phone")
or brings back a phrase's head ("a cat on a table with a table"). Pure tensor code over word ids."""

from __future__ import annotations

import torch

from captioning.vocab import Vocabulary

REPEAT_NGRAM = 3  # no caption says the same three words twice

# Words that join phrases rather than name things. A caption does not bring back the head of a phrase it has
# already said ("a truck with a truck", "a cat on a table with a table"); a word is a head where the next word
# is one of these or a participle ("a man sitting", "a truck parked"), and it may not come again right after
# one of these. A modifier may ("a tennis racket on a tennis court").
FUNCTION_WORDS = frozenset(
    """a an the some two three four one each other another his her its their this that it
    of on in with and or at to near next by for from under over into onto up down through behind beside
    top front side while as is are has have , .""".split()
)


def is_participle(word: str) -> bool:
    return len(word) > 4 and word.endswith(("ing", "ed"))


def word_classes(vocab: Vocabulary) -> tuple[list[bool], list[bool]]:
    """Per vocabulary id: (a function word, marks the word before it as a phrase's head)."""
    special = {vocab.pad_id, vocab.start_id, vocab.end_id, vocab.unk_id}
    function = [i in special or w in FUNCTION_WORDS for i, w in enumerate(vocab.itos)]
    ends_phrase = [f or is_participle(w) for f, w in zip(function, vocab.itos)]
    return function, ends_phrase


def block_repeats(
    logp: torch.Tensor,
    histories: list[list[int]],
    classes: tuple[list[bool], list[bool]] | None = None,
    n: int = REPEAT_NGRAM,
) -> torch.Tensor:
    """Forbid each row's next word where it would complete an n-gram the row has already said, or, given
    `classes` (from `word_classes`), bring back a phrase head right after a function word.

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
