"""ModelConfig: a DenseNet as a validated config, with the paper's shorthand and its derivation rules.

Pure pydantic; no torch import, so spaces can be validated and networks priced without building anything.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import model_validator

from ..errors import ConfigError
from ..strict import StrictModel

VARIANTS = ("densenet", "densenet-b", "densenet-c", "densenet-bc")
PAPER_COMPRESSION = 0.5


def bottleneck_of(variant: str) -> bool:
    return variant in ("densenet-b", "densenet-bc")


def compressed(variant: str) -> bool:
    return variant in ("densenet-c", "densenet-bc")


def layers_per_block(depth: int, num_blocks: int, bottleneck: bool) -> int | None:
    """N = (L - B - 1) / (B * c) layers per block, c = 2 with a bottleneck; None if L doesn't fit."""
    c = 2 if bottleneck else 1
    rest = depth - num_blocks - 1
    if rest <= 0 or rest % (num_blocks * c):
        return None
    return rest // (num_blocks * c)


def depth_of(block_layers: tuple[int, ...], bottleneck: bool) -> int:
    """Paper depth L: convs in the layers + transitions + stem conv + classifier."""
    return sum(block_layers) * (2 if bottleneck else 1) + len(block_layers) + 1


def nearest_depths(depth: int, num_blocks: int, bottleneck: bool) -> list[int]:
    """The valid depths just below and above L (one if L is below the smallest)."""
    step = num_blocks * (2 if bottleneck else 1)
    smallest = num_blocks + 1 + step
    if depth <= smallest:
        return [smallest]
    lo = smallest + step * ((depth - smallest) // step)
    return [lo, lo + step]


class ModelConfig(StrictModel):
    """A DenseNet. Shorthand (depth + variant + num_blocks) or explicit block_layers."""

    stem: Literal["cifar", "imagenet"] = "cifar"
    block_layers: tuple[int, ...] | None = None
    growth_rate: int | tuple[int, ...] = 12
    bottleneck: bool | None = None
    bottleneck_width: int = 4
    compression: float | None = None
    init_features: int | None = None
    dropout: float = 0.0
    num_classes: int = 10
    in_channels: int = 3
    memory_efficient: bool = False
    depth: int | None = None
    variant: Literal["densenet", "densenet-b", "densenet-c", "densenet-bc"] | None = None
    num_blocks: int = 3

    @model_validator(mode="after")
    def _derive(self) -> "ModelConfig":
        explicit = self.model_fields_set

        def fail(field: str, rule: str) -> None:
            raise ConfigError(f"model.{field}: {rule}")

        def put(name: str, value: Any) -> None:
            # Derived values are stored without marking them as set, so overrides re-derive them.
            object.__setattr__(self, name, value)

        if self.compression is not None and not 0.0 < self.compression <= 1.0:
            fail("compression", f"θ must be in (0, 1], got {self.compression}")
        if self.variant is not None:
            vb, vc = bottleneck_of(self.variant), compressed(self.variant)
            if self.bottleneck is None:
                put("bottleneck", vb)
            elif self.bottleneck != vb:
                fail("bottleneck", f"{self.bottleneck} contradicts variant {self.variant} "
                     f"(B variants have a bottleneck, others don't)")
            if self.compression is None:
                put("compression", PAPER_COMPRESSION if vc else 1.0)
            elif vc and self.compression >= 1.0:
                fail("compression", f"{self.compression} contradicts variant {self.variant} "
                     "(C variants compress: 0 < θ < 1)")
            elif not vc and self.compression != 1.0:
                fail("compression", f"{self.compression} contradicts variant {self.variant} "
                     "(only C variants compress; use densenet-c or densenet-bc)")
        if self.bottleneck is None:
            put("bottleneck", False)
        if self.compression is None:
            put("compression", 1.0)
        if not 0.0 < self.compression <= 1.0:
            fail("compression", f"θ must be in (0, 1], got {self.compression}")
        if not 1 <= self.num_blocks <= 6:
            fail("num_blocks", f"must be 1..6, got {self.num_blocks}")

        # A depth that matches explicit block_layers (a resolved dump, a re-validated instance) is consistent.
        consistent = (self.block_layers is not None
                      and self.depth == depth_of(tuple(self.block_layers), self.bottleneck))
        if self.depth is not None and not consistent:
            n = layers_per_block(self.depth, self.num_blocks, self.bottleneck)
            if n is None or n < 1:
                c = 2 if self.bottleneck else 1
                near = ", ".join(map(str, nearest_depths(self.depth, self.num_blocks, self.bottleneck)))
                fail("depth", f"L={self.depth} doesn't fit: N = (L - B - 1) / (B * {c}) must be a "
                     f"positive integer for B={self.num_blocks} blocks "
                     f"{'with' if self.bottleneck else 'without'} bottleneck; nearest valid depths: {near}")
            derived = (n,) * self.num_blocks
            if self.block_layers is None:
                put("block_layers", derived)
            elif tuple(self.block_layers) != derived:
                fail("block_layers", f"{list(self.block_layers)} contradicts depth {self.depth} "
                     f"(which gives {list(derived)}); set one of them")
        if self.block_layers is None:
            fail("block_layers", "give block_layers, or depth with variant (paper shorthand)")
        if not 1 <= len(self.block_layers) <= 6:
            fail("block_layers", f"1 to 6 blocks, got {len(self.block_layers)}")
        if any(n < 1 for n in self.block_layers):
            fail("block_layers", f"every block needs ≥ 1 layer, got {list(self.block_layers)}")
        if "num_blocks" in explicit and self.num_blocks != len(self.block_layers):
            fail("num_blocks", f"{self.num_blocks} contradicts block_layers {list(self.block_layers)}")
        put("num_blocks", len(self.block_layers))
        if self.depth is None:
            put("depth", depth_of(self.block_layers, self.bottleneck))

        if isinstance(self.growth_rate, tuple):
            if len(self.growth_rate) != len(self.block_layers):
                fail("growth_rate", f"one value, or one per block ({len(self.block_layers)}), "
                     f"got {list(self.growth_rate)}")
        ks = self.growth_rates
        if any(k < 1 for k in ks):
            fail("growth_rate", f"must be ≥ 1, got {self.growth_rate}")
        if self.bottleneck_width < 1:
            fail("bottleneck_width", f"must be ≥ 1, got {self.bottleneck_width}")
        if self.init_features is None:
            paper = 2 * ks[0] if (self.bottleneck or self.compression < 1.0) else 16
            put("init_features", paper)
        if self.init_features < 1:
            fail("init_features", f"must be ≥ 1, got {self.init_features}")
        if not 0.0 <= self.dropout < 1.0:
            fail("dropout", f"must be in [0, 1), got {self.dropout}")
        if self.num_classes < 1:
            fail("num_classes", f"must be ≥ 1, got {self.num_classes}")
        if self.in_channels not in (1, 3):
            fail("in_channels", f"must be 1 or 3, got {self.in_channels}")
        for i, m in enumerate(self.channel_schedule()[:-1], start=1):
            if int(self.compression * m) < 1:
                fail("compression", f"transition{i} would have 0 output channels (⌊θ·{m}⌋)")
        return self

    @property
    def growth_rates(self) -> tuple[int, ...]:
        n = len(self.block_layers or ())
        return self.growth_rate if isinstance(self.growth_rate, tuple) else (self.growth_rate,) * n

    def channel_schedule(self) -> list[int]:
        """Channels at the end of each dense block (before its transition)."""
        m, out = self.init_features, []
        for i, (n, k) in enumerate(zip(self.block_layers, self.growth_rates)):
            m += n * k
            out.append(m)
            if i < len(self.block_layers) - 1:
                m = int(self.compression * m)
        return out

    def default_input_size(self) -> tuple[int, int, int]:
        side = 32 if self.stem == "cifar" else 224
        return (self.in_channels, side, side)

    def with_overrides(self, **overrides: Any) -> "ModelConfig":
        """A new config: this one's explicit fields, then overrides; derived fields derived again."""
        base = self.model_dump(exclude_unset=True)
        if "block_layers" in overrides and "depth" not in overrides:
            base.pop("depth", None)
            base.pop("num_blocks", None)
        if "depth" in overrides or "num_blocks" in overrides:
            base.pop("block_layers", None)
        if "variant" in overrides:
            for f in ("bottleneck", "compression"):
                if f not in overrides:
                    base.pop(f, None)
        return ModelConfig(**{**base, **overrides})
