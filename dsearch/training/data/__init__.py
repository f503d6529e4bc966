"""Datasets for training: locate the files, read them, split them, and serve batches.

`load_data` is the entry point; what `fit` needs of its result is the `TrainingData` protocol.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...errors import UserError
from ..config import DataConfig
from .base import TrainingData
from .folder import FolderData, load_folder
from .locate import MissingDataError, download, find_files
from .readers import read_split, synthetic
from .splits import channel_stats, stratified_split
from .tensors import Data

__all__ = ["Data", "FolderData", "MissingDataError", "TrainingData", "load_data"]


def load_data(cfg: DataConfig, *, final: bool = False) -> Data:
    """Load and split a dataset into CPU tensors: train/val (search) or train+val/test (final)."""
    if cfg.name == "imagenet":
        return load_folder(cfg, final=final)  # type: ignore[return-value]
    info = cfg.info
    if cfg.name == "synthetic":
        x, y = synthetic(cfg, cfg.synthetic_size + cfg.resolved_val_size, stream=0)
        test = synthetic(cfg, cfg.resolved_val_size, stream=1) if final else None
    else:
        try:
            files = find_files(cfg, final=final)
        except MissingDataError:
            if not cfg.download:
                raise
            download(cfg)
            files = find_files(cfg, final=final)
        x, y = read_split(cfg, files, "train")
        test = read_split(cfg, files, "test") if final else None
    _check(cfg, x, y, info.num_classes)

    g = torch.Generator().manual_seed(cfg.seed)
    val_idx, train_idx = stratified_split(y, cfg.resolved_val_size, g)
    if final:
        train_x, train_y = x, y
        eval_x, eval_y = test  # type: ignore[misc]
        _check(cfg, eval_x, eval_y, info.num_classes)
    else:
        train_x, train_y, eval_x, eval_y = x[train_idx], y[train_idx], x[val_idx], y[val_idx]
        if cfg.val_subset is not None and cfg.val_subset < len(eval_y):
            keep, _ = stratified_split(eval_y, cfg.val_subset, g)
            eval_x, eval_y = eval_x[keep], eval_y[keep]
    if cfg.train_subset is not None:
        if cfg.train_subset > len(train_y):
            raise UserError(f"data.train_subset: {cfg.train_subset} is more than the {len(train_y)} "
                            f"training images of {cfg.name} after the validation split")
        if cfg.train_subset < len(train_y):
            keep, _ = stratified_split(train_y, cfg.train_subset, g)
            train_x, train_y = train_x[keep], train_y[keep]
    mean, std = channel_stats(train_x)
    return Data(cfg.name, train_x.contiguous(), train_y, eval_x.contiguous(), eval_y, info.num_classes,
                mean, std, flip=info.flip, augment=cfg.augment, eval_split="test" if final else "val")


def _check(cfg: DataConfig, x: Tensor, y: Tensor, num_classes: int) -> None:
    info = cfg.info
    want = (info.in_channels, info.image_size, info.image_size)
    if tuple(x.shape[1:]) != want or len(x) != len(y):
        raise UserError(f"{cfg.name}: images are {tuple(x.shape)} with {len(y)} labels; expected N×"
                        f"{'×'.join(map(str, want))} with one label each")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise UserError(f"{cfg.name}: labels span {int(y.min())}..{int(y.max())}; expected 0..{num_classes - 1}")
