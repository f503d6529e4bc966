"""Datasets, seeded stratified splits, and fast loaders (small images live on the device as uint8).

Readers for the real on-disk formats: CIFAR python pickles, SVHN .mat, MNIST-style IDX (gz or raw),
an ImageFolder tree for ImageNet, and a seeded learnable synthetic set for tests.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .config import DataConfig
from .errors import UserError

PAD = 4  # pixels of zero padding before the random crop (paper's "+" augmentation)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the ImageNet train split's statistics, as torchvision uses
IMAGENET_STD = (0.229, 0.224, 0.225)


class MissingDataError(UserError):
    """The dataset's files are not in any place looked at; says where and how to get them."""


# ---------------------------------------------------------------- where the files are

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

# name -> (train files, test files, sub-folders tried below each base, how to get them)
LAYOUTS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], str]] = {
    "cifar10": (tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                ("cifar-10-batches-py", "cifar10", "CIFAR10"), "pass --download, or extract "
                "cifar-10-python.tar.gz into --data-dir"),
    "cifar100": (("train",), ("test",), ("cifar-100-python", "cifar100", "CIFAR100"),
                 "pass --download, or extract cifar-100-python.tar.gz into --data-dir"),
    "svhn": (("train_32x32.mat", "extra_32x32.mat"), ("test_32x32.mat",), ("svhn", "SVHN"),
             "pass --download, or put the cropped-digit .mat files (format 2) in --data-dir"),
    "mnist": (IDX_FILES[:2], IDX_FILES[2:], ("MNIST/raw", "mnist", "MNIST"),
              "pass --download, or put the four IDX files (.gz or not) in --data-dir"),
    "fashion_mnist": (IDX_FILES[:2], IDX_FILES[2:], ("FashionMNIST/raw", "fashion-mnist", "fashion_mnist"),
                      "apt install dataset-fashion-mnist, pass --download, or put the four IDX "
                      "files (.gz or not) in --data-dir"),
    "imagenet": (("train",), ("val",), ("imagenet", "ImageNet", "ILSVRC2012"),
                 "point --data-dir at a folder holding train/CLASS/*.JPEG and val/CLASS/*.JPEG "
                 "(ImageFolder layout; no download)"),
}

# Places where distributions install data; Debian's dataset-fashion-mnist puts the IDX files here.
SYSTEM_DIRS: dict[str, tuple[str, ...]] = {
    "fashion_mnist": ("/usr/share/datasets/fashion-mnist",),
    "mnist": ("/usr/share/datasets/mnist",),
}


def standard_dirs(name: str) -> list[Path]:
    """Standard places after --data-dir and $DSEARCH_DATA: ~/.cache/dsearch, ./data, system dirs."""
    return [Path.home() / ".cache" / "dsearch", Path.cwd() / "data"] + [Path(p) for p in SYSTEM_DIRS.get(name, ())]


def search_dirs(cfg: DataConfig) -> list[Path]:
    """Base folders in the order they are searched: --data-dir, $DSEARCH_DATA, standard places."""
    out = [Path(cfg.root).expanduser()] if cfg.root else []
    if os.environ.get("DSEARCH_DATA"):
        out.append(Path(os.environ["DSEARCH_DATA"]).expanduser())
    return out + standard_dirs(cfg.name)


def _present(folder: Path, fname: str) -> Path | None:
    for cand in (folder / fname, folder / (fname + ".gz")):
        if cand.exists():
            return cand
    return None


def find_files(cfg: DataConfig, *, final: bool = False) -> dict[str, Path]:
    """Paths of the files the split needs; MissingDataError naming what was looked for where."""
    train, test, subdirs, how = LAYOUTS[cfg.name]
    want = train + (test if final else ())
    tried: list[Path] = []
    for base in search_dirs(cfg):
        for folder in [base] + [base / s for s in subdirs]:
            if folder in tried:
                continue
            tried.append(folder)
            found = {f: _present(folder, f) for f in want}
            if all(found.values()):
                return found  # type: ignore[return-value]
    gz = "[.gz]" if cfg.name in ("mnist", "fashion_mnist") else ""
    where = ", ".join(str(t) for t in tried)
    raise MissingDataError(f"{cfg.name} data not found: looked for {', '.join(f + gz for f in want)} "
                           f"in {where}; to get it: {how}")


def download(cfg: DataConfig) -> None:
    """Fetch the dataset with torchvision's downloaders into --data-dir, $DSEARCH_DATA or ~/.cache/dsearch."""
    import torchvision.datasets as tvd

    root = search_dirs(cfg)[0]
    root.mkdir(parents=True, exist_ok=True)
    if cfg.name == "imagenet":
        raise MissingDataError(f"imagenet cannot be downloaded; {LAYOUTS['imagenet'][3]}")
    if cfg.name == "svhn":
        for split in ("train", "extra", "test"):
            tvd.SVHN(str(root), split=split, download=True)
        return
    cls = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100, "mnist": tvd.MNIST,
           "fashion_mnist": tvd.FashionMNIST}[cfg.name]
    for train in (True, False):
        cls(str(root), train=train, download=True)


# ---------------------------------------------------------------- readers (uint8 N×C×H×W, int64 labels)

def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or raw) as a numpy array of its dims; unsigned bytes only."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != 0x08:
        raise UserError(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    arr = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise UserError(f"{path}: truncated IDX file ({arr.size} bytes for dims {dims})")
    return arr.reshape(dims)


def _read_cifar(paths: Sequence[Path], label_key: str) -> tuple[Tensor, Tensor]:
    xs, ys = [], []
    for p in paths:
        with open(p, "rb") as f:
            d = pickle.load(f, encoding="latin1")
        xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(d[label_key], dtype=np.int64))
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def _read_svhn(paths: Sequence[Path]) -> tuple[Tensor, Tensor]:
    from scipy.io import loadmat

    xs, ys = [], []
    for p in paths:
        m = loadmat(str(p))
        xs.append(np.ascontiguousarray(m["X"].transpose(3, 2, 0, 1)))  # 32×32×3×N → N×3×32×32
        ys.append(m["y"].reshape(-1).astype(np.int64) % 10)        # label 10 is the digit 0
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


# ---------------------------------------------------------------- splits and statistics

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


# ---------------------------------------------------------------- augmentation on the device

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
class Data:
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

    def steps_per_epoch(self, batch_size: int) -> int:
        return -(-self.num_train // batch_size)

    def describe(self) -> str:
        return (f"{self.name}: {self.num_train} train / {self.num_eval} {self.eval_split} images, "
                f"{self.in_channels}×{self.image_size}×{self.image_size}, {self.num_classes} classes")

    def to(self, device: torch.device | str) -> "Data":
        """A copy with the tensors on `device` (the images stay uint8: 1 byte per pixel)."""
        d = torch.device(device)
        return replace(self, train_x=self.train_x.to(d), train_y=self.train_y.to(d),
                       eval_x=self.eval_x.to(d), eval_y=self.eval_y.to(d), device=d)

    def __getstate__(self) -> dict:
        state = {k: v for k, v in self.__dict__.items() if k != "_affine"}
        return {**state, "device": str(self.device)}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, device=torch.device(state["device"]))

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

    def train_batches(self, batch_size: int, *, epoch: int, seed: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Shuffled, augmented, normalised (x, y) batches; draws depend only on (seed, epoch)."""
        g = torch.Generator().manual_seed(_mix(seed, epoch))
        n = self.num_train
        perm = torch.randperm(n, generator=g).to(self.device)
        offsets = torch.randint(0, 2 * PAD + 1, (n, 2), generator=g).to(self.device)
        flips = (torch.rand(n, generator=g) < 0.5).to(self.device) if self.flip else None
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            x = self.train_x[idx]
            if self.augment:
                x = augment(x, offsets[i:i + batch_size], None if flips is None else flips[i:i + batch_size])
            yield self.normalize(x), self.train_y[idx]

    def eval_batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Un-augmented, normalised (x, y) batches of the eval split, in order."""
        for i in range(0, self.num_eval, batch_size):
            yield self.normalize(self.eval_x[i:i + batch_size]), self.eval_y[i:i + batch_size]


def _mix(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + 12_345) % (2 ** 63)


# ---------------------------------------------------------------- entry point

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


# ---------------------------------------------------------------- ImageNet: an ImageFolder tree, read by workers

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
class FolderData:
    """ImageNet-style data as file lists, decoded and augmented by DataLoader workers; same interface as Data."""

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
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    num_train = property(lambda self: len(self.train_samples))
    num_eval = property(lambda self: len(self.eval_samples))
    steps_per_epoch = Data.steps_per_epoch
    describe = Data.describe
    __getstate__ = Data.__getstate__
    __setstate__ = Data.__setstate__

    def to(self, device: torch.device | str) -> "FolderData":
        return replace(self, device=torch.device(device))

    def _loader(self, samples, transform, batch_size: int, order: Tensor | None, seed: int):
        loader = torch.utils.data.DataLoader(
            _Samples(samples, transform), batch_size=batch_size, sampler=None if order is None else order.tolist(),
            num_workers=self.num_workers, pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(seed))
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def train_batches(self, batch_size: int, *, epoch: int, seed: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Shuffled batches: random-resized crop + flip (or the eval transform without augmentation)."""
        import torchvision.transforms as T

        g = torch.Generator().manual_seed(_mix(seed, epoch))
        aug = [T.RandomResizedCrop(self.image_size), T.RandomHorizontalFlip()] if self.augment else \
            [T.Resize(self.image_size * 8 // 7), T.CenterCrop(self.image_size)]
        tf = T.Compose(aug + [T.ToTensor(), T.Normalize(self.mean, self.std)])
        yield from self._loader(self.train_samples, tf, batch_size, torch.randperm(self.num_train, generator=g),
                                _mix(seed, epoch))

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
    return FolderData(cfg.name, train, evals, max(cfg.info.num_classes, len(classes)), cfg.augment, workers,
                      eval_split="test" if final else "val")
