"""Readers for the real on-disk formats (uint8 N×C×H×W images, int64 labels): CIFAR python pickles,
SVHN .mat, MNIST-style IDX (gz or raw), and a seeded learnable synthetic set for tests.
"""

from __future__ import annotations

import gzip
import pickle
import struct
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import UserError
from ..config import DataConfig
from .locate import LAYOUTS


# What a truncated or corrupt file raises while it is read: gzip and zlib, pickle, struct, numpy.
_CORRUPT = (EOFError, gzip.BadGzipFile, zlib.error, pickle.UnpicklingError, struct.error, ValueError,
            KeyError, IndexError, TypeError, AttributeError)


def _corrupt(path: Path, what: str, e: BaseException) -> UserError:
    detail = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
    detail = f"{e.__class__.__name__}: {detail[:120]}" if detail else e.__class__.__name__
    return UserError(f"{path}: truncated or corrupt {what} ({detail}); delete it and download it again "
                     "(--download, or from the dataset's site)")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or raw) as a numpy array of its dims; unsigned bytes only."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise _corrupt(path, "gzip file", e) from None
    if len(raw) < 4:
        raise UserError(f"{path}: truncated IDX file ({len(raw)} bytes, no header); delete it and download it again")
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != 0x08:
        raise UserError(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    if len(raw) < 4 + 4 * ndim:
        raise UserError(f"{path}: truncated IDX file (header cut short); delete it and download it again")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    arr = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise UserError(f"{path}: truncated IDX file ({arr.size} bytes for dims {dims}); delete it and "
                        "download it again")
    return arr.reshape(dims)


def _read_cifar(paths: Sequence[Path], label_key: str) -> tuple[Tensor, Tensor]:
    xs, ys = [], []
    for p in paths:
        try:
            with open(p, "rb") as f:
                d = pickle.load(f, encoding="latin1")
            xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d[label_key], dtype=np.int64))
        except _CORRUPT as e:
            raise _corrupt(p, "CIFAR batch", e) from None
        if len(xs[-1]) != len(ys[-1]):
            raise UserError(f"{p}: corrupt CIFAR batch ({len(xs[-1])} images, {len(ys[-1])} labels); "
                            "delete it and download it again")
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def _read_svhn(paths: Sequence[Path]) -> tuple[Tensor, Tensor]:
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    xs, ys = [], []
    for p in paths:
        try:
            m = loadmat(str(p))
            xs.append(np.ascontiguousarray(m["X"].transpose(3, 2, 0, 1)))  # 32×32×3×N → N×3×32×32
            ys.append(m["y"].reshape(-1).astype(np.int64) % 10)        # label 10 is the digit 0
        except (MatReadError, *_CORRUPT) as e:
            raise _corrupt(p, "SVHN .mat file", e) from None
        except OSError as e:
            if e.errno is not None:      # a real I/O error (permissions, ...), not scipy's "could not read bytes"
                raise
            raise _corrupt(p, "SVHN .mat file", e) from None
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def _read_idx_pair(images: Path, labels: Path) -> tuple[Tensor, Tensor]:
    x = read_idx(images)
    return torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(read_idx(labels).astype(np.int64))


def read_split(cfg: DataConfig, files: dict[str, Path], split: str) -> tuple[Tensor, Tensor]:
    """The raw train or test split of a small-image dataset (SVHN train includes extra)."""
    train, test, _, _ = LAYOUTS[cfg.name]
    names = train if split == "train" else test
    paths = [files[n] for n in names]
    if cfg.name == "cifar10":
        return _read_cifar(paths, "labels")
    if cfg.name == "cifar100":
        return _read_cifar(paths, "fine_labels")
    if cfg.name == "svhn":
        return _read_svhn(paths)
    return _read_idx_pair(*paths)


def synthetic(cfg: DataConfig, n: int, stream: int) -> tuple[Tensor, Tensor]:
    """Seeded learnable images: a per-class colour and smooth pattern plus noise; uint8."""
    g = torch.Generator().manual_seed(cfg.seed)
    c, s, k = cfg.synthetic_channels, cfg.synthetic_image_size, cfg.synthetic_classes
    colour = torch.rand(k, c, 1, 1, generator=g) * 150 + 50
    pattern = F.interpolate(torch.rand(k, c, 4, 4, generator=g) * 80 - 40, size=(s, s),
                            mode="bilinear", align_corners=False)
    g2 = torch.Generator().manual_seed(cfg.seed * 7919 + 17 + stream)
    y = torch.arange(n) % k
    y = y[torch.randperm(n, generator=g2)]
    x = colour[y] + pattern[y] + torch.randn(n, c, s, s, generator=g2) * 25
    return x.round().clamp(0, 255).to(torch.uint8), y.long()
