"""Vocabulary: nltk tokenizing that needs no downloaded data, JSON save/load, readable decoding."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from nltk.tokenize import TreebankWordTokenizer

from captioning.io import atomic_write_text, read_json

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)

_tokenizer = TreebankWordTokenizer()
# Treebank keeps a final period glued to the word when it is not the sentence end; split it off.
_GLUED_DOT = re.compile(r"^([a-z]+)\.$")


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens; punkt-free so it works offline."""
    tokens: list[str] = []
    for tok in _tokenizer.tokenize(text.lower().strip()):
        match = _GLUED_DOT.match(tok)
        tokens.extend([match.group(1), "."] if match else [tok])
    return tokens


class Vocabulary:
    """Word <-> id mapping with `<pad>`=0, `<start>`, `<end>`, `<unk>`."""

    def __init__(self, words: Sequence[str]) -> None:
        if not all(isinstance(w, str) for w in words):
            raise ValueError("a vocabulary's words must all be text")
        if list(words[: len(SPECIALS)]) != list(SPECIALS):
            raise ValueError(f"a vocabulary must start with {SPECIALS}")
        if len(set(words)) != len(words):
            raise ValueError("a vocabulary cannot repeat a word")
        self.itos: list[str] = list(words)
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}

    pad_id, start_id, end_id, unk_id = 0, 1, 2, 3

    @classmethod
    def build(cls, captions: Iterable[str], threshold: int = 5) -> Vocabulary:
        """Words seen at least `threshold` times, most frequent first (ties alphabetical)."""
        counts = Counter(tok for cap in captions for tok in tokenize(cap))
        kept = sorted((w for w, n in counts.items() if n >= threshold), key=lambda w: (-counts[w], w))
        return cls(list(SPECIALS) + [w for w in kept if w not in SPECIALS])

    def __len__(self) -> int:
        return len(self.itos)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.itos == other.itos

    def encode(self, text: str) -> list[int]:
        """`<start>` ids... `<end>`, unknown words as `<unk>`."""
        ids = [self.stoi.get(tok, self.unk_id) for tok in tokenize(text)]
        return [self.start_id, *ids, self.end_id]

    def decode(self, ids: Iterable[int]) -> str:
        """Readable sentence: stops at `<end>`, drops specials, no space before punctuation."""
        words = []
        for i in ids:
            i = int(i)
            if i == self.end_id:
                break
            if i in (self.pad_id, self.start_id):
                continue
            words.append(self.itos[i] if 0 <= i < len(self.itos) else UNK)
        return detokenize(words)

    def to_dict(self) -> dict:
        return {"itos": self.itos}

    @classmethod
    def from_dict(cls, data: dict) -> Vocabulary:
        if not isinstance(data, dict) or not isinstance(data.get("itos"), list):
            raise ValueError("not a vocabulary: expected a JSON object with an 'itos' list")
        return cls(data["itos"])

    def save(self, path: Path) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict(), ensure_ascii=False))

    @classmethod
    def load(cls, path: Path) -> Vocabulary:
        return cls.from_dict(read_json(Path(path).read_text(encoding="utf-8")))


def detokenize(words: Sequence[str]) -> str:
    """Join tokens into a sentence: capitalised, no space before punctuation or clitics."""
    text = ""
    for w in words:
        if w == UNK:
            w = "<unk>"
        if text and (w in {".", ",", "!", "?", ";", ":", "'s", "n't", "'"} or w.startswith("'")):
            text += w
        else:
            text += (" " if text else "") + w
    return text[:1].upper() + text[1:]
