"""COCO caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D) through pycocoevalcap, the official way.

Use: score_captions({42: "a dog on a beach"}, {42: ["A dog runs on sand.", ...]}).corpus
Training's CIDEr-D reward is `cider.CiderD`, which its docstring says why exists beside this one.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pycocoevalcap.bleu.bleu_scorer import BleuScorer
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.cider.cider_scorer import CiderScorer, precook
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer import ptbtokenizer
from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS

from captioning.cider import CIDER_N, CIDER_SIGMA  # pycocoevalcap's Cider defaults too

METRIC_NAMES = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
_BLEU_NAMES = METRIC_NAMES[:4]


@dataclass
class CaptionScores:
    """Corpus and per-image scores, as fractions the way COCO reports them."""

    corpus: dict[str, float]  # every name of METRIC_NAMES; METEOR absent when skipped
    per_image: dict[int, dict[str, float]]  # image id -> the same keys as corpus
    # Sentences on why a metric is missing or approximate, to show the user.
    notes: list[str] = field(default_factory=list)
    images: int = 0
    # image id -> BLEU's counts (testlen, reflen, guessed 1..4-grams, correct 1..4-grams): corpus BLEU is computed
    # from their sums, not as a mean, and `bootstrap` resamples them
    bleu_counts: dict[int, list[float]] = field(default_factory=dict)


def java_available() -> bool:
    """True when a `java` executable is on PATH (PTB tokenizer and METEOR need it)."""
    return shutil.which("java") is not None


# What the PTB tokenizer does to captions, approximately: contractions split off,
# brackets renamed (and, lower-cased, no longer in PUNCTUATIONS), numbers and
# abbreviations kept whole, punctuation split off and then dropped.
_CONTRACTION = re.compile(r"(\w)(n't|'(?:s|re|ll|d|ve|m))\b")
_BRACKETS = str.maketrans(
    {
        "(": " -lrb- ",
        ")": " -rrb- ",
        "[": " -lsb- ",
        "]": " -rsb- ",
        "{": " -lcb- ",
        "}": " -rcb- ",
    }
)
_TOKEN = re.compile(
    r"n't|'(?:s|re|ll|d|ve|m)\b"  # split-off contractions
    r"|-[lr][rsc]b-"  # renamed brackets
    r"|\d+(?:[.,]\d+)+|(?:[a-z]\.){2,}"  # 3.5, 10,000, u.s.
    r"|\w+(?:[-/'.]\w+)*"  # words, black-and-white, o'clock
    r"|\.\.\.|--|\S"  # anything else, one punctuation mark at a time
)


def _python_tokenize(caption: str) -> str:
    """Lower-case and tokenize like pycocoevalcap's PTBTokenizer, without Java."""
    text = caption.lower().replace("\u2019", "'").replace('"', " ").translate(_BRACKETS)
    text = _CONTRACTION.sub(r"\1 \2", text)
    return " ".join(t for t in _TOKEN.findall(text) if t not in PUNCTUATIONS)


# Stanford CoreNLP's PTB tokenizer, the jar pycocoevalcap ships and runs for the official COCO scores.
_PTB_JAR = Path(ptbtokenizer.__file__).with_name(ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR)


def _java_ptb_tokenize(lines: list[str]) -> list[str]:
    """Each line through the Java PTB tokenizer (lower-cased, punctuation tokens dropped), as the COCO
    evaluation does, with the same command line as pycocoevalcap's PTBTokenizer.

    Run here rather than through PTBTokenizer so that the tokenizer's report of every call ("PTBTokenizer
    tokenized 2739 tokens at ...") stays off the user's terminal (its stderr is kept for an error message),
    and its input goes to the system's temp dir rather than into the installed package.
    """
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".txt", delete=False) as f:
        f.write("\n".join(lines))
    try:
        cmd = ["java", "-cp", str(_PTB_JAR), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase"]
        done = subprocess.run([*cmd, f.name], capture_output=True, check=False)
    finally:
        os.unlink(f.name)
    if done.returncode != 0:
        last = (done.stderr.decode("utf-8", "replace").strip().splitlines() or ["no message"])[-1]
        raise OSError(f"exit status {done.returncode}: {last}")
    out = done.stdout.decode("utf-8").split("\n")
    return [" ".join(w for w in line.rstrip().split(" ") if w not in PUNCTUATIONS) for line in out[: len(lines)]]


def _tokenize(captions: dict[Hashable, list[str]], java: bool, notes: list[str]) -> dict[Hashable, list[str]]:
    """Tokenize every caption: Java's PTB tokenizer if possible, else the Python one."""
    # The Java tokenizer reads one caption a line, so no caption may hold a line break.
    flat = {key: [" ".join(c.split()) for c in caps] for key, caps in captions.items()}
    if java:
        keys = [key for key, caps in flat.items() for _ in caps]
        try:
            out = _java_ptb_tokenize([c for caps in flat.values() for c in caps])
            if len(out) == len(keys):
                tokens: dict[Hashable, list[str]] = {key: [] for key in flat}
                for key, line in zip(keys, out, strict=True):
                    tokens[key].append(line)
                return tokens
            notes.append("The PTB tokenizer lost captions; a Python tokenizer was used instead.")
        except (OSError, UnicodeError) as error:
            notes.append(f"The PTB tokenizer failed ({error}); a Python one was used instead.")
    else:
        notes.append(
            "Java was not found, so captions were tokenized by a Python approximation "
            "of the PTB tokenizer; scores may differ slightly from official COCO ones."
        )
    return {key: [_python_tokenize(c) for c in caps] for key, caps in flat.items()}


class _Frequencies(dict):
    """Document frequencies; an unseen n-gram reads as 0 without being inserted."""

    def __missing__(self, key: tuple[str, ...]) -> float:
        return 0.0


class _IdfCiderScorer(CiderScorer):
    """CIDEr-D with idf from a given reference set, not the scored one."""

    def __init__(self, document_frequency: _Frequencies, documents: int) -> None:
        super().__init__(n=CIDER_N, sigma=CIDER_SIGMA)
        self.document_frequency = document_frequency
        self._documents = documents

    @property
    def ref_len(self) -> float:
        """log(documents in the idf set), the term compute_cider() subtracts from."""
        return float(np.log(self._documents))

    @ref_len.setter
    def ref_len(self, value: float | None) -> None:
        pass  # compute_cider() would set log(number of scored images)

    def compute_doc_freq(self) -> None:
        """Keep the frequencies given at construction."""

    def compute_score(self, option: object = None, verbose: int = 0) -> tuple[float, np.ndarray]:
        """Return (corpus, per-image) CIDEr, without the parent's idf-set assert."""
        scores = np.array(self.compute_cider())
        return float(scores.mean()), scores


def _add_documents(frequencies: _Frequencies, documents: list[list[str]]) -> None:
    """Count each n-gram once per document (one image's tokenized references)."""
    for refs in documents:
        for ngram in {g for ref in refs for g in precook(ref, CIDER_N)}:
            frequencies[ngram] = frequencies.get(ngram, 0.0) + 1.0


@dataclass(frozen=True)
class IdfSet:
    """CIDEr's document frequencies of a reference set (e.g. a whole split), prepared once by `idf_set` so that
    scoring it a chunk at a time costs each chunk only its own images."""

    frequencies: _Frequencies
    documents: int
    ids: frozenset[int]


def idf_set(references: dict[int, list[str]], java: bool | None = None) -> IdfSet:
    """Tokenize `references` as `score_captions` would and count each n-gram once per image; the last two
    reference sets are cached (a split's set is reused by every page of it)."""
    java = java_available() if java is None else java
    return _idf_table(tuple((i, tuple(c)) for i, c in references.items()), java)


@functools.lru_cache(maxsize=2)
def _idf_table(references: tuple[tuple[int, tuple[str, ...]], ...], java: bool) -> IdfSet:
    tokenized = _tokenize({i: list(caps) for i, caps in references}, java, [])
    frequencies = _Frequencies()
    _add_documents(frequencies, list(tokenized.values()))
    return IdfSet(frequencies, len(tokenized), frozenset(i for i, _ in references))


def _cider(
    gts: dict[int, list[str]],
    res: dict[int, list[str]],
    idf_references: dict[int, list[str]] | IdfSet | None,
    java: bool,
) -> tuple[float, np.ndarray]:
    """CIDEr-D over gts/res, with idf from idf_references when given."""
    if idf_references is None:
        return Cider(n=CIDER_N, sigma=CIDER_SIGMA).compute_score(gts, res)
    idf = idf_references if isinstance(idf_references, IdfSet) else idf_set(idf_references, java)
    frequencies, documents = idf.frequencies, idf.documents
    extra = [gts[i] for i in gts if i not in idf.ids]
    if extra:  # scored images outside the idf set still count as documents of it
        frequencies = _Frequencies(frequencies)
        _add_documents(frequencies, extra)
        documents += len(extra)
    scorer = _IdfCiderScorer(frequencies, documents)
    for i, refs in gts.items():
        scorer += (res[i][0], refs)
    return scorer.compute_score()


class _Meteor(Meteor):
    """pycocoevalcap's Meteor with a close() that always ends its Java process."""

    def close(self) -> None:
        """Kill the METEOR process and close its pipes; safe to call twice."""
        process = getattr(self, "meteor_p", None)
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout, process.stderr):
            try:
                stream.close()
            except OSError:  # a broken pipe while flushing to a dead process
                pass

    def __del__(self) -> None:
        # The parent's __del__ waits on a lock that a failed compute_score still holds.
        self.close()


def _meteor(gts: dict[int, list[str]], res: dict[int, list[str]]) -> tuple[float, list[float]]:
    """Run METEOR once (about 7-15 s of Java start-up) and stop its process."""
    meteor = _Meteor()
    try:
        return meteor.compute_score(gts, res)
    finally:
        meteor.close()


def score_captions(
    predictions: dict[int, str],
    references: dict[int, list[str]],
    *,
    meteor: bool | None = None,
    idf_references: dict[int, list[str]] | IdfSet | None = None,
) -> CaptionScores:
    """Score one generated caption per image against its reference captions.

    Args:
        predictions: image id -> generated caption; only these ids are scored.
        references: image id -> reference captions (usually 5); may hold more ids.
        meteor: None/True: METEOR if Java is there, else skip with a note; False: skip.
        idf_references: image id -> references to take CIDEr's document frequencies from
            (e.g. the whole split), so a page of images scores comparably to the split; or
            an `idf_set` of them, prepared once for many calls.

    Returns:
        CaptionScores with corpus and per-image BLEU-1..4, METEOR, ROUGE-L and CIDEr.
    """
    if not predictions:
        raise ValueError("no predictions to score")
    missing = [i for i in predictions if not references.get(i)]
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        shown = ", ".join(str(i) for i in missing[:5])
        raise ValueError(f"no reference captions for image ids {shown}{more}; every predicted image needs references")

    notes: list[str] = []
    java = java_available()
    captions = {("pred", i): [p] for i, p in predictions.items()}
    captions.update({("ref", i): list(references[i]) for i in predictions})
    tokens = _tokenize(captions, java, notes)
    res = {i: tokens[("pred", i)] for i in predictions}
    gts = {i: tokens[("ref", i)] for i in predictions}

    corpus: dict[str, float] = {}
    per_name: dict[str, list[float]] = {}
    bleu, bleu_per_image, bleu_counts = _bleu(gts, res)
    for k, name in enumerate(_BLEU_NAMES):
        corpus[name], per_name[name] = bleu[k], bleu_per_image[k]
    if meteor is not False:
        if not java:
            notes.append("METEOR skipped: Java was not found (install a JRE to get it).")
        else:
            # METEOR is a bonus: whatever goes wrong in it must not lose the others.
            try:
                corpus["METEOR"], per_name["METEOR"] = _meteor(gts, res)
            except Exception as error:  # noqa: BLE001
                notes.append(f"METEOR failed and was skipped ({type(error).__name__}: {error}).")
    corpus["ROUGE-L"], per_name["ROUGE-L"] = Rouge().compute_score(gts, res)
    corpus["CIDEr"], per_name["CIDEr"] = _cider(gts, res, idf_references, java)

    names = [n for n in METRIC_NAMES if n in corpus]
    per_image = {i: {n: float(per_name[n][k]) for n in names} for k, i in enumerate(gts)}
    return CaptionScores({n: float(corpus[n]) for n in names}, per_image, notes, len(gts), bleu_counts)


def _bleu(
    gts: dict[int, list[str]], res: dict[int, list[str]]
) -> tuple[list[float], list[list[float]], dict[int, list[float]]]:
    """pycocoevalcap's BLEU-1..4 as its `Bleu` scores them (closest reference length), with each image's counts."""
    scorer = BleuScorer(n=4)
    for i in gts:
        scorer += (res[i][0], gts[i])
    corpus, per_image = scorer.compute_score(option="closest", verbose=0)
    counts = {}
    for i, comps in zip(gts, scorer.ctest, strict=True):
        reflen = scorer._single_reflen(comps["reflen"], "closest", comps["testlen"])  # noqa: SLF001
        counts[i] = [comps["testlen"], reflen, *comps["guess"], *comps["correct"]]
    return corpus, per_image, counts
