"""The DenseNet generator: torchvision's module names, every paper knob, a memory-efficient mode."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig
from .efficient import efficient_layer, efficient_transition
from .presets import resolve_config


class DenseLayer(nn.Module):
    """BN-ReLU-1×1 conv (bottleneck, width·k maps) - BN-ReLU-3×3 conv (k maps), or BN-ReLU-3×3 conv."""

    def __init__(self, in_features: int, growth_rate: int, bottleneck: bool, bottleneck_width: int,
                 dropout: float, memory_efficient: bool) -> None:
        super().__init__()
        self.bottleneck = bottleneck
        self.dropout = float(dropout)
        self.memory_efficient = memory_efficient
        if bottleneck:
            inter = bottleneck_width * growth_rate
            self.norm1 = nn.BatchNorm2d(in_features)
            self.relu1 = nn.ReLU(inplace=True)
            self.conv1 = nn.Conv2d(in_features, inter, kernel_size=1, stride=1, bias=False)
            self.norm2 = nn.BatchNorm2d(inter)
            self.relu2 = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(inter, growth_rate, kernel_size=3, stride=1, padding=1, bias=False)
        else:
            self.norm1 = nn.BatchNorm2d(in_features)
            self.relu1 = nn.ReLU(inplace=True)
            self.conv1 = nn.Conv2d(in_features, growth_rate, kernel_size=3, stride=1, padding=1,
                                   bias=False)

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, p=self.dropout, training=self.training) if self.dropout > 0 else x

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        if self.memory_efficient and torch.is_grad_enabled() and any(f.requires_grad for f in features):
            return efficient_layer(self, features)
        x = torch.cat(features, 1) if len(features) > 1 else features[0]
        out = self._drop(self.conv1(self.relu1(self.norm1(x))))
        if self.bottleneck:
            out = self._drop(self.conv2(self.relu2(self.norm2(out))))
        return out


class DenseBlock(nn.ModuleDict):
    """n layers; layer i sees the block input and the i-1 earlier outputs, concatenated."""

    def __init__(self, num_layers: int, in_features: int, growth_rate: int, bottleneck: bool,
                 bottleneck_width: int, dropout: float, memory_efficient: bool) -> None:
        super().__init__()
        for i in range(num_layers):
            self.add_module(f"denselayer{i + 1}", DenseLayer(
                in_features + i * growth_rate, growth_rate, bottleneck, bottleneck_width, dropout,
                memory_efficient))

    def forward_list(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The block input and every layer's new maps, not yet concatenated."""
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.forward_list(x), 1)


class Transition(nn.Sequential):
    """BN-ReLU-1×1 conv to ⌊θ·m⌋ maps (dropout after it when set) - 2×2 average pool."""

    def __init__(self, in_features: int, out_features: int, dropout: float) -> None:
        super().__init__()
        self.add_module("norm", nn.BatchNorm2d(in_features))
        self.add_module("relu", nn.ReLU(inplace=True))
        self.add_module("conv", nn.Conv2d(in_features, out_features, kernel_size=1, stride=1,
                                          bias=False))
        if dropout > 0:
            self.add_module("drop", nn.Dropout(dropout))
        self.add_module("pool", nn.AvgPool2d(kernel_size=2, stride=2))


class DenseNet(nn.Module):
    """DenseNet from a ModelConfig; `features` / `classifier` named as torchvision's."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        m = c.init_features
        if c.stem == "imagenet":
            stem = [("conv0", nn.Conv2d(c.in_channels, m, kernel_size=7, stride=2, padding=3,
                                        bias=False)),
                    ("norm0", nn.BatchNorm2d(m)),
                    ("relu0", nn.ReLU(inplace=True)),
                    ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1))]
        else:
            stem = [("conv0", nn.Conv2d(c.in_channels, m, kernel_size=3, stride=1, padding=1,
                                        bias=False))]
        self.features = nn.Sequential(OrderedDict(stem))
        last = len(c.block_layers) - 1
        for i, (n, k) in enumerate(zip(c.block_layers, c.growth_rates)):
            self.features.add_module(f"denseblock{i + 1}", DenseBlock(
                n, m, k, c.bottleneck, c.bottleneck_width, c.dropout, c.memory_efficient))
            m += n * k
            if i < last:
                out = int(c.compression * m)
                self.features.add_module(f"transition{i + 1}", Transition(m, out, c.dropout))
                m = out
        self.features.add_module("norm5", nn.BatchNorm2d(m))   # torchvision: norm5 whatever the block count
        self.num_features = m
        self.classifier = nn.Linear(m, c.num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He-normal (fan-out) convs as the official code; BN γ=1 β=0; linear bias 0."""
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(mod, nn.BatchNorm2d):
                nn.init.ones_(mod.weight)
                nn.init.zeros_(mod.bias)
            elif isinstance(mod, nn.Linear):
                nn.init.zeros_(mod.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.config.memory_efficient and torch.is_grad_enabled()):
            return self.features(x)
        # Memory-efficient: a block hands its feature list to the transition, which concatenates
        # inside an autograd Function that doesn't keep the (largest) concatenated tensor.
        feats = None
        for mod in self.features.children():
            if isinstance(mod, DenseBlock):
                feats = mod.forward_list(x)
            elif isinstance(mod, Transition):
                x, feats = efficient_transition(mod, feats), None
            else:
                x = mod(torch.cat(feats, 1) if feats is not None else x)
                feats = None
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(F.relu(x, inplace=True), 1)
        return self.classifier(torch.flatten(x, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def build_model(config: ModelConfig | str, **overrides: Any) -> DenseNet:
    """Build the DenseNet of a config or preset name (overrides are ModelConfig fields)."""
    return DenseNet(resolve_config(config, **overrides))


def set_memory_efficient(model: nn.Module, on: bool) -> None:
    """Switch a built DenseNet between the normal and the memory-efficient path (same parameters, same function)."""
    for mod in model.modules():
        if isinstance(mod, DenseLayer):
            mod.memory_efficient = on
        if isinstance(mod, DenseNet) and mod.config.memory_efficient != on:
            mod.config = mod.config.with_overrides(memory_efficient=on)
