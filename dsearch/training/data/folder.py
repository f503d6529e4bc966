"""ImageNet-style data: an ImageFolder tree as file lists, decoded and augmented by DataLoader workers.

One DataLoader per dataset object serves every epoch and every evaluation, its workers kept alive between them
(persistent_workers): one worker per CPU thread of the run (a trial's CPUs), at most 8, unless data.num_workers
says. Each image's random crop and flip are drawn from its own seed, a function of (seed, epoch, position), so a
batch is the same whichever worker decodes it and however many there are (a resumed trial on another node too).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator

import torch
from torch import Tensor

from ..config import DataConfig
from .base import SplitInfo, batch_seed, cut_holes, draw_centres
from .locate import find_files
from .splits import stratified_split

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the ImageNet train split's statistics, as torchvision uses
IMAGENET_STD = (0.229, 0.224, 0.225)


MAX_WORKERS = 8           # DataLoader workers when data.num_workers is null: the run's CPU threads, at most this


class _Samples(torch.utils.data.Dataset):
    """Both splits' files; an item is (split, index, seed): the image's transform draws from that seed alone."""

    def __init__(self, samples: dict[str, list[tuple[str, int]]], transforms: dict[str, Callable]) -> None:
        self.samples, self.transforms = samples, transforms

    def __len__(self) -> int:
        return sum(len(s) for s in self.samples.values())

    def __getitem__(self, item: tuple[str, int, int]) -> tuple[Tensor, int]:
        from PIL import Image

        split, i, seed = item
        path, label = self.samples[split][i]
        with Image.open(path) as im:
            image = im.convert("RGB")
        # torchvision's random transforms draw from the global stream: the worker's, or the training process's
        # when there are no workers, which fork_rng leaves as it was (dropout draws from it).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transforms[split](image), label


class _Batches:
    """The batch sampler of the one DataLoader: the batches of the next pass, set before each (train or eval)."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[str, int, int]]] = []

    def __iter__(self) -> Iterator[list[tuple[str, int, int]]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def sample_seed(base: int, position: int) -> int:
    """The seed of the image at `position` of a pass whose seed is base (batch_seed(seed, epoch))."""
    return (base * 2_654_435_761 + position * 97_531 + 1) % (2 ** 63)


@dataclass
class FolderData(SplitInfo):
    """ImageNet-style data as file lists, decoded and augmented by DataLoader workers; a TrainingData like Data."""

    name: str
    train_samples: list[tuple[str, int]]
    eval_samples: list[tuple[str, int]]
    num_classes: int
    augment: bool
    num_workers: int | None          # None: the run's CPU threads (torch.get_num_threads()), at most MAX_WORKERS
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

    def workers(self) -> int:
        """DataLoader worker processes: data.num_workers, else one per CPU thread of the run (fit sets those to
        train.num_threads, a trial's CPUs), at most MAX_WORKERS."""
        if self.num_workers is not None:
            return self.num_workers
        return max(1, min(MAX_WORKERS, torch.get_num_threads()))

    def _transforms(self) -> dict[str, Callable]:
        import torchvision.transforms as T

        norm = [T.ToTensor(), T.Normalize(self.mean, self.std)]
        plain = [T.Resize(self.image_size * 8 // 7), T.CenterCrop(self.image_size)]   # 256 → 224 for 224
        aug = [T.RandomResizedCrop(self.image_size), T.RandomHorizontalFlip()] if self.augment else plain
        return {"train": T.Compose(aug + norm), "eval": T.Compose(plain + norm)}

    def _batches(self, items: list[tuple[str, int, int]], batch_size: int):
        """items in batches, through the dataset's one DataLoader (made at the first pass, workers kept)."""
        cache: dict[str, Any] | None = self.__dict__.get("_cache")
        workers = self.workers()
        if cache is None or cache["workers"] != workers:
            sampler = _Batches()
            loader = torch.utils.data.DataLoader(
                _Samples({"train": self.train_samples, "eval": self.eval_samples}, self._transforms()),
                batch_sampler=sampler, num_workers=workers, persistent_workers=workers > 0,
                pin_memory=self.device.type == "cuda",
                generator=torch.Generator().manual_seed(0))   # its worker seeds: never from the training's stream
            cache = self.__dict__["_cache"] = {"workers": workers, "sampler": sampler, "loader": loader}
        cache["sampler"].batches = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
        for x, y in cache["loader"]:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def train_batches(self, batch_size: int, *, epoch: int, seed: int = 0,
                      cutout: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Shuffled batches: random-resized crop + flip (or the eval transform without augmentation).

        cutout > 0 zeroes one cutout×cutout hole per image on the device, after normalisation; the
        centres come from the same (seed, epoch) generator as the order, drawn batch by batch after it.
        """
        base = batch_seed(seed, epoch)
        g = torch.Generator().manual_seed(base)
        order = torch.randperm(self.num_train, generator=g).tolist()
        items = [("train", i, sample_seed(base, k)) for k, i in enumerate(order)]
        for x, y in self._batches(items, batch_size):
            if cutout:
                x = cut_holes(x, draw_centres(len(y), x.shape[-2], x.shape[-1], g).to(self.device), cutout)
            yield x, y

    def eval_batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Resize to 8/7 of the size (256 for 224), centre crop, normalise."""
        yield from self._batches([("eval", i, 0) for i in range(self.num_eval)], batch_size)


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
    roots = tuple(str(files[k]) for k in (("train", "val") if final else ("train",)))
    # num_workers null stays null: the trial that trains decides (its CPUs), not the driver that loads the lists.
    return FolderData(cfg.name, train, evals, max(cfg.info.num_classes, len(classes)), cfg.augment, cfg.num_workers,
                      eval_split="test" if final else "val", roots=roots)
