"""Seeded stratified splits and exact channel statistics."""

from __future__ import annotations

import torch
from torch import Tensor

from ...errors import UserError


def stratified_split(labels: Tensor, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Indices of n items with the class proportions kept (largest remainder), and of the rest; sorted."""
    total = len(labels)
    if not 0 < n < total:
        raise UserError(f"cannot draw {n} of {total} images: need 0 < n < {total}")
    classes, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    quota = counts.double() * n / total
    k = quota.floor().long()
    short = n - int(k.sum())
    if short:
        k[torch.argsort(-(quota - k), stable=True)[:short]] += 1
    perm = torch.randperm(total, generator=generator)
    cls = inverse[perm]
    order = torch.sort(cls, stable=True).indices                 # perm order kept within a class
    start = torch.cumsum(counts, 0) - counts
    rank = torch.empty(total, dtype=torch.long)
    rank[order] = torch.arange(total) - start[cls[order]]
    take = torch.zeros(total, dtype=torch.bool)
    take[perm[rank < k[cls]]] = True
    return take.nonzero().squeeze(1), (~take).nonzero().squeeze(1)


def channel_stats(x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std of uint8 images N×C×H×W, in units of [0, 1] intensity."""
    means, stds = [], []
    levels = torch.arange(256, dtype=torch.float64) / 255
    for c in range(x.shape[1]):
        hist = torch.bincount(x[:, c].reshape(-1), minlength=256).double()
        p = hist / hist.sum()
        m = float((p * levels).sum())
        means.append(m)
        stds.append(max(float((p * (levels - m) ** 2).sum()) ** 0.5, 1e-6))
    return tuple(means), tuple(stds)
