"""`Captioner`: load a checkpoint once, caption PIL images as a `DecodeConfig` says."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from PIL import Image

from captioning import concepts, constrained, doubt, naming
from captioning.checkpoint import default_checkpoint, load_checkpoint, model_from_checkpoint
from captioning.config import DecodeConfig
from captioning.data import to_rgb
from captioning.decoding import Hypothesis, decode
from captioning.device import resolve_device
from captioning.ensemble import EnsembleDecoder, FlipDecoder, check_members
from captioning.guidance import guide_bonus
from captioning.model import CaptionModel
from captioning.vocab import Vocabulary, detokenize

PRECISIONS = ("auto", "fp32", "int8")
ENCODERS = ("auto", "torch", "onnxruntime")


def int8_decoder(decoder: torch.nn.Module) -> torch.nn.Module:
    """The decoder with int8 weights in its Linear and LSTM layers (PyTorch's dynamic quantization), for the
    CPU: beam search waits on reading every weight at every word, and int8 reads a quarter of the bytes."""
    layers = {torch.nn.Linear, torch.nn.LSTMCell, torch.nn.LSTM}
    with warnings.catch_warnings():  # torch 2.14 warns quantized tensors will go; requirements pin < 2.15
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(decoder, layers).eval()


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
    named_at: int | None = None  # the index in `words` of the named noun, whose probability is the class's
    cut: bool = False  # the caption reached the maximum length, where decoding makes it end
    required: constrained.Target | None = None  # what constrained decoding made it say, where plain decoding did not
    doubts: list[str] = field(default_factory=list)  # why not to trust it, in plain words (`doubt`); [] when none

    @property
    def unsure(self) -> str:
        """The doubts as one line ("unsure: ..."), "" when there are none."""
        return doubt.summary(self.doubts)


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
        self._onnx = None  # the encoder in onnxruntime, when `_at` chose it

    @classmethod
    def from_checkpoint(
        cls, path: Path | str | None = None, device: str = "auto", precision: str = "auto", encoder: str = "auto"
    ) -> Captioner:
        """The model in `path` (default: `checkpoint.default_checkpoint()`). `precision`: "fp32", "int8" (the
        decoder's weights as int8 on the CPU, see `int8_decoder`), or "auto": what the checkpoint says it was
        measured to keep (its `inference.decoder`), else fp32. `encoder`: "torch", "onnxruntime" (on the CPU: the
        same network exported once into the cache, `export.cached_encoder`), or "auto": the checkpoint's
        `inference.encoder`, else torch."""
        path = path or default_checkpoint()
        ckpt = load_checkpoint(Path(path))
        model, vocab = model_from_checkpoint(ckpt, source=str(path))
        info = {k: ckpt.get(k, {}) for k in ("model_config", "metrics", "provenance", "concept_words")}
        info["path"] = str(path)
        return cls(model, vocab, device, info)._at(precision, ckpt, encoder)

    def _at(self, precision: str, ckpt: dict, encoder: str = "auto") -> Captioner:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        if encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {', '.join(ENCODERS)}, not {encoder!r}")
        said = ckpt.get("inference") if isinstance(ckpt.get("inference"), dict) else {}
        if precision == "auto":
            precision = "int8" if said.get("decoder") == "int8" else "fp32"
        if encoder == "auto":
            encoder = "onnxruntime" if said.get("encoder") == "onnxruntime" else "torch"
        if encoder == "onnxruntime" and self.device.type == "cpu" and getattr(self.model, "backbone", None) is not None:
            try:
                from captioning.export import cached_encoder

                self._onnx = cached_encoder(self.model)
            except Exception as exc:  # noqa: BLE001 (no onnxruntime, a read-only cache, an op it lacks: torch works)
                warnings.warn(f"the onnxruntime encoder is not available ({exc}); using PyTorch's", stacklevel=2)
                self._onnx = None
        self.info["encoder"] = "onnxruntime" if self._onnx is not None else "torch"
        if precision == "int8" and self.device.type == "cpu":  # int8 kernels are the CPU's; a GPU keeps fp32
            try:
                self.decoder = int8_decoder(self.decoder)
            except (AttributeError, RuntimeError, NotImplementedError):  # a torch without them: fp32 still works
                precision = "fp32"
        self.info["precision"] = precision if self.device.type == "cpu" else "fp32"
        return self

    @classmethod
    def from_checkpoints(
        cls, paths: list[Path | str], device: str = "auto", precision: str = "auto", encoder: str = "auto"
    ) -> Captioner:
        """One checkpoint, or an ensemble of several (see `ensemble`) that share a backbone and a vocabulary."""
        if len(paths) == 1:
            return cls.from_checkpoint(paths[0], device, precision, encoder)
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
        return cls(model, vocab, device, info, decoder)._at(precision, ckpts[first], encoder)

    @property
    def can_guide(self) -> bool:
        """Whether guided decoding is possible: a map from classes to words, and an encoder head to use it."""
        return bool(self.info.get("concept_words")) and concepts.has_head(self.model.cfg.backbone)

    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Features of preprocessed images (B, 3, S, S) (`loader` makes them): (B, C) or (B, N, C)."""
        if self._onnx is not None:
            return self._onnx.encode(pixels)
        return self.model.encode(pixels.to(self.device))

    def features(self, images: list[Image.Image]) -> torch.Tensor:
        return self.encode(torch.stack([self.preprocess(to_rgb(im)) for im in images]))

    def caption(
        self, images: list[Image.Image], decoding: DecodeConfig = DecodeConfig(), batch_size: int = 16
    ) -> list[Caption]:
        """Caption each image as `decoding` says (see `DecodeConfig`: its defaults are the CLI's and the app's).

        `decoding.guide` > 0 adds that much log-probability to the words of a confident ImageNet class (see
        `guidance`; a ValueError when the checkpoint has no concept words); `decoding.name_novel` names the
        subject after a confident class the vocabulary lacks (see `naming`; nothing changes for a backbone
        without an ImageNet head).
        """
        out: list[Caption] = []
        for start in range(0, len(images), batch_size):
            chunk = [to_rgb(im) for im in images[start : start + batch_size]]
            pixels = torch.stack([self.preprocess(im) for im in chunk])
            sizes = [im.size for im in chunk]
            out += self.caption_features(self.encode(pixels), decoding, pixels, sizes)
        return out

    def caption_features(
        self,
        feats: torch.Tensor,
        decoding: DecodeConfig,
        pixels: torch.Tensor | None = None,
        sizes: list[tuple[int, int] | None] | None = None,
    ) -> list[Caption]:
        """Captions of a batch of encoded images (`features`, `encode`). `pixels` (the preprocessed batch) and
        `sizes` (each image's width and height as read), where the caller has them, let the doubts say when an
        input is unlike a photo."""
        if decoding.guide and not self.can_guide:
            raise ValueError(
                "guided decoding needs a checkpoint with concept words (python -m captioning concept-words) and an "
                "EfficientNet-Lite encoder"
            )
        probs = self._class_probabilities(feats)  # computed once: the tags and the guidance read it
        hint = constraint = None
        if decoding.guide:
            hint = guide_bonus(probs, self.info["concept_words"], self.vocab, bonus=decoding.guide)
        needs: list[constrained.Target | None] = [None] * feats.size(0)
        if decoding.constrain and probs is not None:  # nothing to be sure of without an ImageNet head
            labels, words = concepts.imagenet_labels(), self.info.get("concept_words")
            needs = constrained.targets(probs, labels, self.vocab, decoding.constrain, words, decoding.name_novel)
            constraint = [list(t.ids) if t else [] for t in needs]
        decoder, views = self.decoder, feats
        if decoding.flip:  # the mirror's features beside each image's own (`ensemble.FlipDecoder`)
            if pixels is None:
                raise ValueError("test-time flip needs the images' pixels, not only their features")
            decoder, views = FlipDecoder(self.decoder), torch.stack([feats, self.encode(pixels.flip(-1))], dim=1)
        groups = decode(decoder, views, self.vocab, decoding, hint, constraint)
        grid = self._grid_size(feats)
        tags = concepts.top_concepts(probs, self.TAGS) if probs is not None else [[] for _ in groups]
        caps = [replace(self._to_caption(hyps, grid), tags=t) for hyps, t in zip(groups, tags, strict=True)]
        caps = [replace(c, cut=len(c.words) >= decoding.max_len) for c in caps]  # the decoder was made to end
        if decoding.name_novel and probs is not None:
            caps = [self._name_novel(c, p) for c, p in zip(caps, probs.tolist(), strict=True)]
        caps = [replace(c, required=t) if t and hyps[0].constrained and set(t.words) & set(c.words) else c
                for c, t, hyps in zip(caps, needs, groups, strict=True)]  # fmt: skip
        return [self._doubt(c, None if pixels is None else pixels[i], sizes[i] if sizes else None)
                for i, c in enumerate(caps)]  # fmt: skip

    def _doubt(self, cap: Caption, pixels: torch.Tensor | None, size: tuple[int, int] | None) -> Caption:
        reasons = doubt.input_reasons(pixels, size)
        if cap.named is None:  # a named subject is the encoder's class already
            found = doubt.encoder_reason(
                cap.words, cap.tags, concepts.imagenet_labels(), self.info.get("concept_words")
            )
            reasons += [found] if found else []
        low = doubt.decoder_reason(cap.word_probs)
        return replace(cap, doubts=reasons + ([low] if low else []))

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
            named_at=found.start + 1,
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
