"""What `fit` and `evaluate` need of a dataset (the `TrainingData` protocol), and what its two kinds share."""

from __future__ import annotations

from typing import Iterator, Protocol

import torch
from torch import Tensor


class TrainingData(Protocol):
    """A dataset split into train and eval ("val" or "test") parts that serves normalised batches.

    train_batches' cutout (hole side in pixels, 0: off) is an argument, not state: one dataset object is
    shared by every trial of a search, and trials may differ in it.
    """

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
    def train_batches(self, batch_size: int, *, epoch: int, seed: int = 0,
                      cutout: int = 0) -> Iterator[tuple[Tensor, Tensor]]: ...
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


def cut_holes(x: Tensor, centres: Tensor, size: int) -> Tensor:
    """Cutout (DeVries & Taylor 2017): zero a size×size square per image at its (row, col) centre, clipped.

    x: B×C×H×W normalised images (0 is the channel mean); centres: B×2 pixel indices on x's device. The
    hole spans rows cy - size // 2 … cy - size // 2 + size - 1 (likewise columns), so an odd size is
    exactly size pixels wide (DeVries & Taylor's code gives size - 1 there).
    """
    h, w = x.shape[-2:]
    top_left = centres - size // 2                                           # B×2, may be negative
    rows = torch.arange(h, device=x.device) - top_left[:, 0:1]               # B×H, offset into the hole
    cols = torch.arange(w, device=x.device) - top_left[:, 1:2]               # B×W
    in_rows = (rows >= 0) & (rows < size)
    in_cols = (cols >= 0) & (cols < size)
    hole = in_rows[:, None, :, None] & in_cols[:, None, None, :]             # B×1×H×W
    return x.masked_fill(hole, 0)


def draw_centres(n: int, height: int, width: int, g: torch.Generator) -> Tensor:
    """n hole centres (row, col), uniform over the image's pixels, drawn from g (on the CPU)."""
    return torch.stack([torch.randint(0, height, (n,), generator=g),
                        torch.randint(0, width, (n,), generator=g)], dim=1)
