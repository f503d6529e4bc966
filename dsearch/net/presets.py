"""The paper's and torchvision's DenseNets as named ModelConfigs (shorthand where the paper uses it)."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from ..errors import UserError, did_you_mean
from .config import ModelConfig


def _imagenet(block_layers: tuple[int, ...], growth_rate: int, init_features: int) -> ModelConfig:
    # torchvision's DenseNet-BC: bn_size 4, θ = 0.5, 7×7/2 stem + 3×3/2 max-pool.
    return ModelConfig(stem="imagenet", variant="densenet-bc", block_layers=block_layers,
                       growth_rate=growth_rate, init_features=init_features, num_classes=1000)


PRESETS = MappingProxyType({
    # Huang et al. 2017, Table 2 (CIFAR/SVHN): three equal blocks, 3×3 stem.
    "densenet40_k12": ModelConfig(variant="densenet", depth=40, growth_rate=12),
    "densenet100_k12": ModelConfig(variant="densenet", depth=100, growth_rate=12),
    "densenet100_k24": ModelConfig(variant="densenet", depth=100, growth_rate=24),
    "densenet_bc100_k12": ModelConfig(variant="densenet-bc", depth=100, growth_rate=12),
    "densenet_bc250_k24": ModelConfig(variant="densenet-bc", depth=250, growth_rate=24),
    "densenet_bc190_k40": ModelConfig(variant="densenet-bc", depth=190, growth_rate=40),
    # torchvision.models.densenet*, and the paper's ImageNet DenseNet-264.
    "densenet121": _imagenet((6, 12, 24, 16), 32, 64),
    "densenet161": _imagenet((6, 12, 36, 24), 48, 96),
    "densenet169": _imagenet((6, 12, 32, 32), 32, 64),
    "densenet201": _imagenet((6, 12, 48, 32), 32, 64),
    "densenet264": _imagenet((6, 12, 64, 48), 32, 64),
})


def get_preset(name: str) -> ModelConfig:
    """The preset's config; an unknown name is a UserError listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise UserError(f"unknown preset {name!r} (known presets: {', '.join(PRESETS)})"
                        f"{did_you_mean(name, PRESETS)}") from None


def resolve_config(config: ModelConfig | str, **overrides: Any) -> ModelConfig:
    """A preset name or config, with overrides applied and derived fields derived again."""
    base = get_preset(config) if isinstance(config, str) else config
    return base.with_overrides(**overrides) if overrides else base
