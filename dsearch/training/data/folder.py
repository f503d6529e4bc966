"""ImageNet-style data: an ImageFolder tree as file lists, decoded and augmented by DataLoader workers."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Iterator

import torch
from torch import Tensor

from ..config import DataConfig
from .base import SplitInfo, batch_seed, cut_holes, draw_centres
from .locate import find_files
from .splits import stratified_split

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the ImageNet train split's statistics, as torchvision uses
IMAGENET_STD = (0.229, 0.224, 0.225)


class _Samples(torch.utils.data.Dataset):
    def __init__(self, samples: list[tuple[str, int]], transform) -> None:
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        from PIL import Image

        path, label = self.samples[i]
        with Image.open(path) as im:
            return self.transform(im.convert("RGB")), label


@dataclass
class FolderData(SplitInfo):
    """ImageNet-style data as file lists, decoded and augmented by DataLoader workers; a TrainingData like Data."""

    name: str
    train_samples: list[tuple[str, int]]
    eval_samples: list[tuple[str, int]]
    num_classes: int
    augment: bool
    num_workers: int
    eval_split: str = "val"
    image_size: int = 224
    in_channels: int = 3
    flip: bool = True
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    roots: tuple[str, ...] = ()      # the folders the file lists were read from
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    num_train = property(lambda self: len(self.train_samples))
    num_eval = property(lambda self: len(self.eval_samples))

    def missing_files(self) -> str | None:
        """The first of its folders (or first files) this machine lacks, or None: file lists travel, files don't."""
        for root in self.roots:
            if not os.path.isdir(root):
                return f"folder {root}"
        for samples in (self.train_samples, self.eval_samples):
            if samples and not os.path.isfile(samples[0][0]):
                return f"file {samples[0][0]}"
        return None

    def to(self, device: torch.device | str) -> "FolderData":
        return replace(self, device=torch.device(device))

    def _loader(self, samples, transform, batch_size: int, order: Tensor | None, seed: int):
        loader = torch.utils.data.DataLoader(
            _Samples(samples, transform), batch_size=batch_size, sampler=None if order is None else order.tolist(),
            num_workers=self.num_workers, pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(seed))
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def train_batches(self, batch_size: int, *, epoch: int, seed: int = 0,
                      cutout: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Shuffled batches: random-resized crop + flip (or the eval transform without augmentation).

        cutout > 0 zeroes one cutout×cutout hole per image on the device, after normalisation; the
        centres come from the same (seed, epoch) generator as the order, drawn batch by batch after it.
        """
        import torchvision.transforms as T

        g = torch.Generator().manual_seed(batch_seed(seed, epoch))
        aug = [T.RandomResizedCrop(self.image_size), T.RandomHorizontalFlip()] if self.augment else \
            [T.Resize(self.image_size * 8 // 7), T.CenterCrop(self.image_size)]
        tf = T.Compose(aug + [T.ToTensor(), T.Normalize(self.mean, self.std)])
        batches = self._loader(self.train_samples, tf, batch_size, torch.randperm(self.num_train, generator=g),
                               batch_seed(seed, epoch))
        for x, y in batches:
            if cutout:
                x = cut_holes(x, draw_centres(len(y), x.shape[-2], x.shape[-1], g).to(self.device), cutout)
            yield x, y

    def eval_batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Resize to 8/7 of the size (256 for 224), centre crop, normalise."""
        import torchvision.transforms as T

        tf = T.Compose([T.Resize(self.image_size * 8 // 7), T.CenterCrop(self.image_size), T.ToTensor(),
                        T.Normalize(self.mean, self.std)])
        yield from self._loader(self.eval_samples, tf, batch_size, None, 0)


def load_folder(cfg: DataConfig, *, final: bool = False) -> FolderData:
    """ImageNet as file lists: a stratified val split of train/, or (final) all of train/ and val/ as test."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    files = find_files(cfg, final=final)
    classes, to_idx = find_classes(str(files["train"]))
    samples = make_dataset(str(files["train"]), to_idx, extensions=IMG_EXTENSIONS)
    labels = torch.tensor([s[1] for s in samples])
    g = torch.Generator().manual_seed(cfg.seed)
    if final:
        train = samples
        evals = make_dataset(str(files["val"]), to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    else:
        val_idx, train_idx = stratified_split(labels, cfg.resolved_val_size, g)
        train, evals = [samples[i] for i in train_idx], [samples[i] for i in val_idx]
        if cfg.val_subset is not None and cfg.val_subset < len(evals):
            keep, _ = stratified_split(labels[val_idx], cfg.val_subset, g)
            evals = [evals[i] for i in keep]
    if cfg.train_subset is not None and cfg.train_subset < len(train):
        keep, _ = stratified_split(torch.tensor([s[1] for s in train]), cfg.train_subset, g)
        train = [train[i] for i in keep]
    workers = cfg.num_workers if cfg.num_workers is not None else min(8, os.cpu_count() or 1)
    roots = tuple(str(files[k]) for k in (("train", "val") if final else ("train",)))
    return FolderData(cfg.name, train, evals, max(cfg.info.num_classes, len(classes)), cfg.augment, workers,
                      eval_split="test" if final else "val", roots=roots)
