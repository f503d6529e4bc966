"""Typed, validated configuration: ModelConfig, TrainConfig, DataConfig, RunConfig.

Pure pydantic; no torch import, so spaces can be validated without building anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .errors import UserError

VARIANTS = ("densenet", "densenet-b", "densenet-c", "densenet-bc")
PAPER_COMPRESSION = 0.5


class ConfigError(UserError, ValueError):
    """A configuration that breaks a rule; the message names the field and the rule."""


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


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, validate_default=True)


class ModelConfig(_Strict):
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

    @field_validator("block_layers", mode="before")
    @classmethod
    def _listy(cls, v: Any) -> Any:
        return tuple(v) if isinstance(v, list) else v

    @field_validator("growth_rate", mode="before")
    @classmethod
    def _listy_k(cls, v: Any) -> Any:
        return tuple(v) if isinstance(v, list) else v

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


class DatasetInfo(NamedTuple):
    in_channels: int
    num_classes: int
    image_size: int
    val_size: int
    flip: bool
    epochs: int
    batch_size: int
    milestones: tuple[float, ...]


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(3, 10, 32, 5000, True, 300, 64, (0.5, 0.75)),
    "cifar100": DatasetInfo(3, 100, 32, 5000, True, 300, 64, (0.5, 0.75)),
    "svhn": DatasetInfo(3, 10, 32, 6000, False, 40, 64, (0.5, 0.75)),
    "imagenet": DatasetInfo(3, 1000, 224, 50000, True, 90, 256, (1 / 3, 2 / 3)),
    "fashion_mnist": DatasetInfo(1, 10, 28, 5000, True, 300, 64, (0.5, 0.75)),
    "mnist": DatasetInfo(1, 10, 28, 5000, False, 300, 64, (0.5, 0.75)),
    "synthetic": DatasetInfo(3, 10, 16, 200, True, 4, 64, (0.5, 0.75)),
}


class DataConfig(_Strict):
    """Which images, where, how many, how augmented. Sizes in images."""

    name: Literal["cifar10", "cifar100", "svhn", "imagenet", "fashion_mnist", "mnist", "synthetic"]
    root: Path | None = None
    download: bool = False
    augment: bool = True
    val_size: int | None = None          # None: the dataset's paper value (DATASETS)
    train_subset: int | None = None      # training images drawn after the validation split
    val_subset: int | None = None        # not used to shrink val_size; a cap for fast evaluation
    seed: int = 0
    num_workers: int | None = None       # imagenet only: DataLoader workers; None: min(8, CPUs)
    synthetic_size: int = 1200           # synthetic only: images in the train split
    synthetic_classes: int = 10
    synthetic_image_size: int = 16
    synthetic_channels: int = 3

    @model_validator(mode="after")
    def _check(self) -> "DataConfig":
        for f in ("val_size", "train_subset", "val_subset"):
            v = getattr(self, f)
            if v is not None and v < 1:
                raise ConfigError(f"data.{f}: must be ≥ 1, got {v}")
        return self

    @property
    def info(self) -> DatasetInfo:
        d = DATASETS[self.name]
        if self.name == "synthetic":
            d = d._replace(in_channels=self.synthetic_channels, num_classes=self.synthetic_classes,
                           image_size=self.synthetic_image_size)
        return d

    @property
    def resolved_val_size(self) -> int:
        return self.val_size if self.val_size is not None else self.info.val_size


class TrainConfig(_Strict):
    """The paper's protocol; None means the dataset's paper default (resolved in RunConfig)."""

    epochs: int | None = None
    batch_size: int | None = None
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    lr_milestones: tuple[float, ...] | None = None   # fractions of the epochs
    lr_gamma: float = 0.1
    seed: int = 0
    device: str = "auto"                              # auto: cuda if available, else cpu
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"  # auto: bf16 on GPU, off on CPU
    channels_last: bool | None = None                 # None: on for GPU, off for CPU
    compile: bool = False
    num_threads: int | None = None                    # torch threads on CPU

    @field_validator("lr_milestones", mode="before")
    @classmethod
    def _listy(cls, v: Any) -> Any:
        return tuple(v) if isinstance(v, list) else v

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"train.epochs: must be ≥ 1, got {self.epochs}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"train.batch_size: must be ≥ 1, got {self.batch_size}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr: must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"train.momentum: must be in [0, 1), got {self.momentum}")
        if self.nesterov and self.momentum == 0:
            raise ConfigError("train.nesterov: Nesterov needs momentum > 0")
        if self.weight_decay < 0:
            raise ConfigError(f"train.weight_decay: must be ≥ 0, got {self.weight_decay}")
        if self.lr_milestones is not None:
            ms = self.lr_milestones
            if any(not 0 < m < 1 for m in ms) or list(ms) != sorted(ms):
                raise ConfigError(f"train.lr_milestones: increasing fractions in (0, 1), got {list(ms)}")
        if not 0 < self.lr_gamma <= 1:
            raise ConfigError(f"train.lr_gamma: must be in (0, 1], got {self.lr_gamma}")
        return self


class RunConfig(_Strict):
    """One training run: model + train + data, with dataset-dependent defaults filled in."""

    model: ModelConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    data: DataConfig

    @model_validator(mode="before")
    @classmethod
    def _fit_model_to_data(cls, values: Any) -> Any:
        # in_channels and num_classes come from the dataset.
        if isinstance(values, dict) and isinstance(values.get("data"), (dict, DataConfig)):
            data = values["data"] if isinstance(values["data"], DataConfig) else DataConfig(**values["data"])
            model = values.get("model", {})
            fields = model.model_dump(exclude_unset=True) if isinstance(model, ModelConfig) else dict(model)
            fields["in_channels"] = data.info.in_channels
            fields["num_classes"] = data.info.num_classes
            values = {**values, "data": data, "model": ModelConfig(**fields)}
        return values

    @model_validator(mode="after")
    def _defaults(self) -> "RunConfig":
        info = self.data.info
        t = self.train
        if t.epochs is None:
            object.__setattr__(t, "epochs", info.epochs)
        if t.batch_size is None:
            object.__setattr__(t, "batch_size", info.batch_size)
        if t.lr_milestones is None:
            object.__setattr__(t, "lr_milestones", info.milestones)
        return self


def format_validation_error(exc: Exception, source: str = "") -> str:
    """One line naming the key and the rule, from a pydantic ValidationError or ConfigError."""
    where = f"{source}: " if source else ""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        parts = []
        for e in errors():
            loc = ".".join(str(p) for p in e.get("loc", ()))
            msg = e.get("msg", "")
            if e.get("type") == "extra_forbidden":
                msg = "unknown key"
            ctx = e.get("ctx") or {}
            if isinstance(ctx.get("error"), ConfigError):
                msg = str(ctx["error"])
                loc = ""
            elif msg.startswith("Value error, "):
                msg = msg[len("Value error, "):]
            parts.append(f"{loc}: {msg}" if loc else msg)
        return where + "; ".join(parts)
    return where + str(exc)
