"""An ensemble of decoders over one encoder pass: at every word, the members' probabilities are averaged.

The members must share the backbone (the image is encoded once) and the vocabulary (the same word ids). A
pooled member (Show and Tell) reads the mean of the grid an attention member reads, which is exactly its own
pooled feature. The ensemble has the decoders' step interface, so greedy and beam search, the repeat rules and
guidance work unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn

State = dict[str, torch.Tensor]


class EnsembleDecoder(nn.Module):
    """Several decoders, one state dict: member i's state entries are stored under "i.name"."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two decoders")
        self.members = nn.ModuleList(members)
        self.feature_kind = "grid" if any(m.feature_kind == "grid" for m in members) else "pooled"

    def _features(self, member: nn.Module, feats: torch.Tensor) -> torch.Tensor:
        return feats.mean(dim=1) if member.feature_kind == "pooled" and feats.dim() == 3 else feats  # (B, C)

    def init_state(self, feats: torch.Tensor) -> State:
        state = {}
        for i, member in enumerate(self.members):
            state.update({f"{i}.{k}": v for k, v in member.init_state(self._features(member, feats)).items()})
        return state

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State, torch.Tensor | None]:
        """tokens (B,) -> log of the members' mean probabilities (B, V), new state, mean attention (B, N)."""
        log_probs, alphas, out = [], [], {}
        for i, member in enumerate(self.members):
            prefix = f"{i}."
            own = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            lp, own, alpha = member.step(tokens, own)
            log_probs.append(lp)
            if alpha is not None:
                alphas.append(alpha)
            out.update({prefix + k: v for k, v in own.items()})
        mean = torch.logsumexp(torch.stack(log_probs), dim=0) - math.log(len(log_probs))  # (B, V)
        return mean, out, torch.stack(alphas).mean(dim=0) if alphas else None


def check_members(configs: list, vocabs: list, sources: list[str]) -> None:
    """A ValueError naming the first member whose backbone or vocabulary differs from the first one's."""
    for cfg, vocab, source in zip(configs[1:], vocabs[1:], sources[1:]):
        if cfg.backbone != configs[0].backbone:
            raise ValueError(
                f"{source} uses backbone {cfg.backbone}, {sources[0]} {configs[0].backbone}: an ensemble's members "
                "must share the encoder"
            )
        if vocab.itos != vocabs[0].itos:
            raise ValueError(
                f"{source} has another vocabulary than {sources[0]}: an ensemble's members must share it (train "
                "them on the same split with the same --vocab-threshold)"
            )


class FlipDecoder(nn.Module):
    """Test-time flip: one decoder reading an image and its mirror, their word probabilities averaged at every
    step. `init_state` takes features (B, 2, ...): each image's own and its mirror's. The attention returned is
    the image's own (the mirror's points at mirrored places)."""

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder
        self.feature_kind = decoder.feature_kind

    def init_state(self, feats: torch.Tensor) -> State:
        state = {}
        for view in range(2):
            state.update({f"{view}.{k}": v for k, v in self.decoder.init_state(feats[:, view]).items()})
        return state

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State, torch.Tensor | None]:
        log_probs, out, own_alpha = [], {}, None
        for view in range(2):
            prefix = f"{view}."
            lp, own, alpha = self.decoder.step(tokens, {k[2:]: v for k, v in state.items() if k.startswith(prefix)})
            log_probs.append(lp)
            own_alpha = alpha if view == 0 else own_alpha
            out.update({prefix + k: v for k, v in own.items()})
        return torch.logsumexp(torch.stack(log_probs), dim=0) - math.log(2), out, own_alpha
