"""Hand-made in-memory datasets for the batch and augmentation tests."""

from __future__ import annotations

import torch

from dsearch.training.data.tensors import Data


def white_data(n: int = 64, flip: bool = True) -> Data:
    """n all-255 12×12 images; normalised with mean 0.5, std 0.25 they read 2, the crop's padding −2."""
    x = torch.full((n, 3, 12, 12), 255, dtype=torch.uint8)
    y = torch.zeros(n, dtype=torch.long)
    return Data("t", x, y, x, y, 10, (0.5,) * 3, (0.25,) * 3, flip=flip, augment=True)
