"""Closed-form parameter and MAC counts of a DenseNet config, without building it.

params: trainable parameters (conv weights, BN γ/β, linear weight + bias; no running stats).
MACs: multiply-accumulates of convs and the linear layer at batch 1 (FLOPs = 2 × MACs).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..errors import ConfigError
from .config import ModelConfig
from .presets import resolve_config


class Stage(NamedTuple):
    """One row of the stage table: spatial size after the stage, channels in → out, params, MACs."""

    name: str
    layers: int
    size: tuple[int, int]
    in_channels: int
    out_channels: int
    params: int
    macs: int


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _layer_cost(m: int, k: int, bottleneck: bool, width: int) -> tuple[int, int]:
    """(params, MACs per output pixel) of one dense layer with m input maps."""
    if bottleneck:
        inter = width * k
        return 2 * m + m * inter + 2 * inter + 9 * inter * k, m * inter + 9 * inter * k
    return 2 * m + 9 * m * k, 9 * m * k


def stages(config: ModelConfig | str, input_size: tuple[int, int, int] | None = None) -> list[Stage]:
    """The network stage by stage (stem, blocks, transitions, head); sizes after each stage."""
    c = resolve_config(config)
    cin, h, w = input_size = tuple(input_size or c.default_input_size())
    if cin != c.in_channels:
        raise ConfigError(f"input has {cin} channels but model.in_channels is {c.in_channels}")
    m = c.init_features
    out: list[Stage] = []
    if c.stem == "imagenet":
        h, w = _conv_out(h, 7, 2, 3), _conv_out(w, 7, 2, 3)
        macs = h * w * 49 * cin * m
        h, w = _conv_out(h, 3, 2, 1), _conv_out(w, 3, 2, 1)
        out.append(Stage("stem (7×7/2 conv, 3×3/2 max-pool)", 1, (h, w), cin, m, 49 * cin * m + 2 * m, macs))
    else:
        out.append(Stage("stem (3×3 conv)", 1, (h, w), cin, m, 9 * cin * m, h * w * 9 * cin * m))
    if h < 1 or w < 1:
        raise ConfigError(f"stem: input {input_size} shrinks below 1×1; use a larger input or the cifar stem")
    last = len(c.block_layers) - 1
    for i, (n, k) in enumerate(zip(c.block_layers, c.growth_rates)):
        params = macs = 0
        for j in range(n):
            p, mac = _layer_cost(m + j * k, k, c.bottleneck, c.bottleneck_width)
            params, macs = params + p, macs + mac * h * w
        out.append(Stage(f"denseblock{i + 1}", n, (h, w), m, m + n * k, params, macs))
        m += n * k
        if i < last:
            t = int(c.compression * m)
            if h < 2 or w < 2:
                raise ConfigError(f"transition{i + 1} (after denseblock{i + 1}): the {h}×{w} feature "
                                  f"map would shrink below 1×1 at input {'x'.join(map(str, input_size))}; "
                                  "use fewer blocks or a larger input")
            out.append(Stage(f"transition{i + 1}", 1, (h // 2, w // 2), m, t, 2 * m + m * t, h * w * m * t))
            h, w, m = h // 2, w // 2, t
    out.append(Stage("head (BN-ReLU-pool-linear)", 1, (1, 1), m, c.num_classes,
                     2 * m + m * c.num_classes + c.num_classes, m * c.num_classes))
    return out


def count_params(config: ModelConfig | str, **overrides: Any) -> int:
    """Trainable parameters, closed form."""
    c = resolve_config(config, **overrides)
    # Params don't depend on the input size; a large one keeps every block above 1×1.
    return sum(s.params for s in stages(c, (c.in_channels, 4096, 4096)))


def count_macs(config: ModelConfig | str, input_size: tuple[int, int, int] | None = None,
               **overrides: Any) -> int:
    """Multiply-accumulates at batch 1 (convs + linear); input_size (C, H, W), stem default."""
    return sum(s.macs for s in stages(resolve_config(config, **overrides), input_size))
