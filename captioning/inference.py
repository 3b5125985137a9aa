"""`Captioner`: load a checkpoint once, caption PIL images (or uploaded files) with greedy or beam search."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from PIL import Image

from captioning import concepts, naming
from captioning.checkpoint import load_checkpoint, model_from_checkpoint
from captioning.data import ImageLoadError, load_image, to_rgb
from captioning.decoding import Hypothesis, check_decoding, decode
from captioning.device import resolve_device
from captioning.ensemble import EnsembleDecoder, check_members
from captioning.guidance import guide_bonus
from captioning.model import CaptionModel
from captioning.vocab import Vocabulary, detokenize

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "default.pt"


@dataclass
class Caption:
    """A caption of one image, with what the UI needs to explain it."""

    text: str
    words: list[str]  # the generated words, aligned with word_probs
    word_probs: list[float]
    logprob: float
    score: float
    alternatives: list[Hypothesis] = field(default_factory=list, repr=False)  # beam results, best first
    attention: list[torch.Tensor] | None = field(default=None, repr=False)  # (h, w) per word
    grid_size: tuple[int, int] | None = None
    tags: list[tuple[str, float]] = field(default_factory=list)  # what the encoder sees: top ImageNet classes
    named: tuple[str, float] | None = None  # the ImageNet class that named the subject (`naming`), its probability


class Captioner:
    """A loaded model ready to caption. Safe to share between threads: inference reads only."""

    def __init__(
        self,
        model: CaptionModel,
        vocab: Vocabulary,
        device: str | torch.device = "auto",
        info: dict | None = None,
        decoder: torch.nn.Module | None = None,
    ) -> None:
        """`decoder`, when given, decodes instead of the model's own (an `EnsembleDecoder` that holds it)."""
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.decoder = (decoder or model.decoder).to(self.device).eval()
        self.vocab = vocab
        self.preprocess = model.spec.preprocess
        self.info = info or {}
        self._known = frozenset(vocab.itos)  # the words the decoder can say

    @classmethod
    def from_checkpoint(cls, path: Path | str = DEFAULT_CHECKPOINT, device: str = "auto") -> Captioner:
        ckpt = load_checkpoint(Path(path))
        model, vocab = model_from_checkpoint(ckpt, source=str(path))
        info = {k: ckpt.get(k, {}) for k in ("model_config", "metrics", "provenance", "concept_words")}
        info["path"] = str(path)
        return cls(model, vocab, device, info)

    @classmethod
    def from_checkpoints(cls, paths: list[Path | str], device: str = "auto") -> Captioner:
        """One checkpoint, or an ensemble of several (see `ensemble`) that share a backbone and a vocabulary."""
        if len(paths) == 1:
            return cls.from_checkpoint(paths[0], device)
        ckpts = [load_checkpoint(Path(p)) for p in paths]
        # the encoder runs once, for the first member that reads the grid (if any): pooled members take its mean
        first = next((i for i, c in enumerate(ckpts) if c["model_config"].get("decoder") == "attention"), 0)
        loaded = [
            model_from_checkpoint(c, source=str(p), with_backbone=i == first)
            for i, (c, p) in enumerate(zip(ckpts, paths))
        ]
        check_members([m.cfg for m, _ in loaded], [v for _, v in loaded], [str(p) for p in paths])
        model, vocab = loaded[first]
        decoder = EnsembleDecoder([m.decoder for m, _ in loaded])
        info = {k: ckpts[first].get(k, {}) for k in ("model_config", "metrics", "provenance", "concept_words")}
        info.update(path=str(paths[first]), members=[str(p) for p in paths])
        return cls(model, vocab, device, info, decoder)

    @property
    def can_guide(self) -> bool:
        """Whether guided decoding is possible: a map from classes to words, and an encoder head to use it."""
        return bool(self.info.get("concept_words")) and concepts.has_head(self.model.cfg.backbone)

    @torch.inference_mode()
    def features(self, images: list[Image.Image]) -> torch.Tensor:
        batch = torch.stack([self.preprocess(to_rgb(im)) for im in images]).to(self.device)
        return self.model.encode(batch)

    def caption(
        self,
        images: list[Image.Image],
        method: str = "beam",
        beam_size: int = 3,
        max_len: int = 20,
        batch_size: int = 16,
        block_repeats: bool = True,
        guide: float = 0.0,
        name_novel: bool = False,
    ) -> list[Caption]:
        """Caption each image; `method` is "greedy" or "beam" (beam size 1 equals greedy).

        `block_repeats` forbids echoes (see `decoding.decode`); `guide` > 0 adds that much log-probability to
        the words of a confident ImageNet class (see `guidance`; a ValueError when the checkpoint has no
        concept words); `name_novel` names the subject after a confident class the vocabulary lacks (see
        `naming`; nothing changes for a backbone without an ImageNet head).
        """
        check_decoding(method, beam_size, max_len)
        if guide and not self.can_guide:
            raise ValueError(
                "guided decoding needs a checkpoint with concept words (python -m captioning concept-words) "
                "and an EfficientNet-Lite encoder"
            )
        out: list[Caption] = []
        for start in range(0, len(images), batch_size):
            feats = self.features(images[start : start + batch_size])
            probs = self._class_probabilities(feats)  # computed once: the tags and the guidance read it
            hint = guide_bonus(probs, self.info["concept_words"], self.vocab, bonus=guide) if guide else None
            groups = decode(self.decoder, feats, self.vocab, method, beam_size, max_len, block_repeats, hint)
            grid = self._grid_size(feats)
            tags = concepts.top_concepts(probs, self.TAGS) if probs is not None else [[] for _ in groups]
            caps = [replace(self._to_caption(hyps, grid), tags=t) for hyps, t in zip(groups, tags, strict=True)]
            if name_novel and probs is not None:
                caps = [self._name_novel(c, p) for c, p in zip(caps, probs.tolist(), strict=True)]
            out += caps
        return out

    def _name_novel(self, cap: Caption, probs: list[float]) -> Caption:
        """`cap` with its subject named after a confident ImageNet class the vocabulary lacks, if there is one."""
        labels, related = concepts.imagenet_labels(), self.info.get("concept_words") or {}
        found = naming.novel_subject(cap.words, probs, labels, self._known, related)
        if found is None:
            return cap
        words = naming.apply(cap.words, found, *found.words)
        kept = cap.word_probs[found.start]  # the article's own probability; the noun's is the class's
        attention = cap.attention and naming.apply(
            cap.attention, found, cap.attention[found.start], cap.attention[found.end - 1]
        )
        return replace(
            cap,
            text=detokenize(words),
            words=words,
            word_probs=naming.apply(cap.word_probs, found, kept, found.prob),
            attention=attention,
            named=(found.label, found.prob),
        )

    TAGS = 5  # ImageNet classes shown per image

    def _class_probabilities(self, feats: torch.Tensor) -> torch.Tensor | None:
        """The encoder's own ImageNet class probabilities (B, 1000), None for a backbone without its head."""
        backbone = self.model.cfg.backbone
        return concepts.class_probabilities(feats, backbone) if concepts.has_head(backbone) else None

    def _grid_size(self, feats: torch.Tensor) -> tuple[int, int] | None:
        if feats.dim() != 3:
            return None
        n = feats.size(1)
        side = int(round(n**0.5))
        return (side, n // side)

    def _to_caption(self, hyps: list[Hypothesis], grid: tuple[int, int] | None) -> Caption:
        best = hyps[0]
        n = len(best.ids) - (1 if best.ids and best.ids[-1] == self.vocab.end_id else 0)
        words = [self.vocab.itos[i] for i in best.ids[:n]]
        attention = None
        if best.attention is not None and grid is not None:
            attention = [a.reshape(grid) for a in best.attention[:n]]
        return Caption(best.text, words, best.word_probs[:n], best.logprob, best.score, hyps, attention, grid)


THUMBNAIL = 1024  # longest side of the copy an upload keeps for display (a 40-megapixel decode is 120 MB)


@dataclass
class UploadResult:
    """One uploaded file: a display-sized copy of its image and its caption, or why it could not be captioned."""

    name: str
    image: Image.Image | None = None
    caption: Caption | None = None
    error: str | None = None


def caption_files(captioner: Captioner, files: list[tuple[str, bytes]], **decoding) -> list[UploadResult]:
    """Caption each file; one that cannot be read gets its own error message and the others still caption.

    Files are decoded one at a time and only a display-sized copy is kept, so memory does not grow with the
    number or size of the uploads.
    """
    results = []
    for name, data in files:
        try:
            image = load_image(data)
        except ImageLoadError as exc:
            results.append(UploadResult(name, error=str(exc).replace("the uploaded file", name, 1)))
            continue
        caption = captioner.caption([image], **decoding)[0]
        image.thumbnail((THUMBNAIL, THUMBNAIL), Image.Resampling.LANCZOS)
        results.append(UploadResult(name, image=image, caption=caption))
    return results
