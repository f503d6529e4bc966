"""Small-image datasets on the device: one uint8 tensor per split, augmented there in batches."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import SplitInfo, batch_seed, cut_holes, draw_centres

PAD = 4  # pixels of zero padding before the random crop (paper's "+" augmentation)


def augment(x: Tensor, offsets: Tensor, flips: Tensor | None, pad: int = PAD) -> Tensor:
    """Zero-pad by `pad` px, crop back to H×W at per-image (dy, dx) offsets, flip where flips; uint8 in/out."""
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = offsets[:, 0:1] + ar_h                                  # B×H
    cols_src = ar_w.expand(b, w) if flips is None else torch.where(flips[:, None], ar_w.flip(0), ar_w)
    cols = offsets[:, 1:2] + cols_src                              # B×W
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


@dataclass
class Data(SplitInfo):
    """A dataset split into train and eval ("val" or "test") tensors; uint8 images, int64 labels."""

    name: str
    train_x: Tensor
    train_y: Tensor
    eval_x: Tensor
    eval_y: Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool
    augment: bool
    eval_split: str = "val"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[-1])

    @property
    def num_train(self) -> int:
        return len(self.train_y)

    @property
    def num_eval(self) -> int:
        return len(self.eval_y)

    def to(self, device: torch.device | str) -> "Data":
        """A copy with the tensors on `device` (the images stay uint8: 1 byte per pixel)."""
        d = torch.device(device)
        return replace(self, train_x=self.train_x.to(d), train_y=self.train_y.to(d),
                       eval_x=self.eval_x.to(d), eval_y=self.eval_y.to(d), device=d)

    def normalize(self, x: Tensor) -> Tensor:
        """uint8 images → float32, minus the train split's channel mean, over its std."""
        cache = self.__dict__.setdefault("_affine", {})
        key = (x.device, self.mean, self.std)
        if key not in cache:  # made once per device: no host-to-device copy per batch
            scale = torch.tensor([1 / (255 * s) for s in self.std], device=x.device).view(1, -1, 1, 1)
            shift = torch.tensor([m / s for m, s in zip(self.mean, self.std)], device=x.device).view(1, -1, 1, 1)
            cache[key] = (scale, shift)
        scale, shift = cache[key]
        return x.float() * scale - shift

    def train_batches(self, batch_size: int, *, epoch: int, seed: int = 0,
                      cutout: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Shuffled, augmented, normalised (x, y) batches; draws depend only on (seed, epoch).

        cutout > 0 zeroes one cutout×cutout hole per image after normalisation (also without augment).
        """
        g = torch.Generator().manual_seed(batch_seed(seed, epoch))
        n = self.num_train
        perm = torch.randperm(n, generator=g).to(self.device)
        offsets = torch.randint(0, 2 * PAD + 1, (n, 2), generator=g).to(self.device)
        flips = (torch.rand(n, generator=g) < 0.5).to(self.device) if self.flip else None
        # Drawn after the others, so cutout 0 leaves every earlier draw (and batch) as it was.
        centres = draw_centres(n, self.image_size, self.image_size, g).to(self.device) if cutout else None
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            x = self.train_x[idx]
            if self.augment:
                x = augment(x, offsets[i:i + batch_size], None if flips is None else flips[i:i + batch_size])
            x = self.normalize(x)
            if centres is not None:
                x = cut_holes(x, centres[i:i + batch_size], cutout)
            yield x, self.train_y[idx]

    def eval_batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Un-augmented, normalised (x, y) batches of the eval split, in order."""
        for i in range(0, self.num_eval, batch_size):
            yield self.normalize(self.eval_x[i:i + batch_size]), self.eval_y[i:i + batch_size]
