"""What `fit` and `evaluate` need of a dataset (the `TrainingData` protocol), and what its two kinds share."""

from __future__ import annotations

from typing import Iterator, Protocol

import torch
from torch import Tensor


class TrainingData(Protocol):
    """A dataset split into train and eval ("val" or "test") parts that serves normalised batches."""

    name: str
    num_classes: int
    eval_split: str
    device: torch.device

    @property
    def num_train(self) -> int: ...
    @property
    def num_eval(self) -> int: ...
    @property
    def in_channels(self) -> int: ...
    @property
    def image_size(self) -> int: ...

    def to(self, device: torch.device | str) -> "TrainingData": ...
    def steps_per_epoch(self, batch_size: int) -> int: ...
    def describe(self) -> str: ...
    def train_batches(self, batch_size: int, *, epoch: int, seed: int = 0) -> Iterator[tuple[Tensor, Tensor]]: ...
    def eval_batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]: ...


class SplitInfo:
    """Counting, describing and pickling, shared by the in-memory and the folder dataset (both dataclasses).

    Pickled with the device as a string, so a dataset travels through Ray's object store to any node.
    """

    name: str
    num_classes: int
    eval_split: str
    num_train: int
    num_eval: int
    in_channels: int
    image_size: int

    def steps_per_epoch(self, batch_size: int) -> int:
        return -(-self.num_train // batch_size)

    def describe(self) -> str:
        return (f"{self.name}: {self.num_train} train / {self.num_eval} {self.eval_split} images, "
                f"{self.in_channels}×{self.image_size}×{self.image_size}, {self.num_classes} classes")

    def __getstate__(self) -> dict:
        state = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        return {**state, "device": str(self.__dict__["device"])}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, device=torch.device(state["device"]))


def batch_seed(seed: int, epoch: int) -> int:
    """The seed of an epoch's shuffling and augmentation draws: a function of (seed, epoch) only."""
    return (seed * 1_000_003 + epoch * 7_919 + 12_345) % (2 ** 63)
