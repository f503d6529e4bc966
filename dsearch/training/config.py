"""The training side of a run: DataConfig (which images), TrainConfig (the paper's protocol), RunConfig.

Pure pydantic; no torch import. Dataset facts (channels, classes, the paper's epochs and milestones)
live in DATASETS, so a RunConfig fills in what the paper uses for its dataset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import Field, model_validator

from ..errors import ConfigError
from ..net.config import ModelConfig
from ..strict import StrictModel


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


class DataConfig(StrictModel):
    """Which images, where, how many, how augmented. Sizes in images."""

    name: Literal["cifar10", "cifar100", "svhn", "imagenet", "fashion_mnist", "mnist", "synthetic"]
    root: Path | None = None
    download: bool = False
    augment: bool = True
    val_size: int | None = None          # None: the dataset's paper value (DATASETS)
    train_subset: int | None = None      # training images drawn after the validation split
    val_subset: int | None = None        # not used to shrink val_size; a cap for fast evaluation
    seed: int = 0
    num_workers: int | None = None       # imagenet only: DataLoader workers; None: the run's CPU threads, ≤ 8
    synthetic_size: int = 1200           # synthetic only: images in the train split
    synthetic_classes: int = 10
    synthetic_image_size: int = 16
    synthetic_channels: int = 3
    # Cutout (DeVries & Taylor 2017): side in pixels of one square hole per training image, 0: off.
    # Applied after normalisation (the hole is the channel mean), also when augment is off.
    cutout: int = 0

    @model_validator(mode="after")
    def _check(self) -> "DataConfig":
        for f in ("val_size", "train_subset", "val_subset"):
            v = getattr(self, f)
            if v is not None and v < 1:
                raise ConfigError(f"data.{f}: must be ≥ 1, got {v}")
        size = self.info.image_size
        if not 0 <= self.cutout <= size:
            raise ConfigError(f"data.cutout: must be in [0, {size}] pixels (0: off; at most the image "
                              f"size), got {self.cutout}")
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


class TrainConfig(StrictModel):
    """The paper's protocol; None means the dataset's paper default (resolved in RunConfig).

    The recipe knobs default to the paper: lr_schedule "cosine" decays lr to 0 at `epochs` per step and
    ignores lr_milestones / lr_gamma; warmup_epochs > 0 ramps the lr linearly per step from warmup_start
    (None: lr / 10) before either schedule; label_smoothing applies to the training loss only (val_loss
    and test_loss stay the plain cross-entropy, so trials with different smoothing compare).
    """

    epochs: int | None = None
    batch_size: int | None = None
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    lr_milestones: tuple[float, ...] | None = None   # fractions of the epochs
    lr_gamma: float = 0.1
    lr_schedule: Literal["step", "cosine"] = "step"   # step: milestones × gamma; cosine: to 0 at epochs
    warmup_epochs: float = 0                          # epochs (fractional) of linear warm-up, per step
    warmup_start: float | None = None                 # lr at the start of warm-up; None: lr / 10
    label_smoothing: float = 0.0                      # ε of the training loss's smoothed targets
    seed: int = 0
    # auto: cuda if available, else cpu (a search trial: cuda only if Ray gave it a GPU). On cuda, cudnn.benchmark
    # picks convolution algorithms by timing, per process: a resumed GPU run is close to, not bitwise, a straight one.
    device: str = "auto"
    # auto: bf16 where the hardware has it natively (GPU with bf16, else fp16; CPU with AVX-512 BF16 or AMX), else
    # off (fp32); a resumed run keeps its checkpoint's. None: channels_last on GPU; on CPU the faster layout in a
    # short probe, once per study in a search (training/precision.py).
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    channels_last: bool | None = None
    compile: bool = False
    num_threads: int | None = None                    # torch threads on CPU
    # auto: the memory-efficient path (Pleiss et al.) only when the normal path's predicted peak would not fit the
    # run's share of its device (net/cost.choose_memory_path); true / false force it. A search decides in the driver.
    memory_efficient: bool | Literal["auto"] = "auto"

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
        _check_warmup(self)
        if self.warmup_start is not None and not 0 < self.warmup_start <= self.lr:
            raise ConfigError(f"train.warmup_start: must be in (0, train.lr = {self.lr:g}], "
                              f"got {self.warmup_start:g}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"train.label_smoothing: must be in [0, 1), got {self.label_smoothing:g}")
        return self


def _check_warmup(t: TrainConfig) -> None:
    """warmup_epochs is ≥ 0 and, once epochs is known, less than it (the schedule needs epochs after it)."""
    if t.warmup_epochs < 0:
        raise ConfigError(f"train.warmup_epochs: must be ≥ 0, got {t.warmup_epochs:g}")
    if t.epochs is not None and t.warmup_epochs >= t.epochs:
        raise ConfigError(f"train.warmup_epochs: must be less than train.epochs ({t.epochs}), "
                          f"got {t.warmup_epochs:g}")


class RunConfig(StrictModel):
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
        # A copy: the TrainConfig given may be reused for another dataset, whose defaults differ.
        # An explicit `lr_milestones: []` is a constant lr, kept as it is; only None takes the paper's.
        info = self.data.info
        t = self.train
        fill = {name: value for name, value, unset in (
            ("epochs", info.epochs, t.epochs is None),
            ("batch_size", info.batch_size, t.batch_size is None),
            ("lr_milestones", info.milestones, t.lr_milestones is None)) if unset}
        if fill:
            resolved = t.model_copy()
            for name, value in fill.items():
                object.__setattr__(resolved, name, value)   # not model_copy(update=): fields_set unchanged
            object.__setattr__(self, "train", resolved)
            _check_warmup(resolved)   # epochs may have just become known
        return self
