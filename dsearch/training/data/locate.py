"""Where a dataset's files are: its on-disk layout, the folders searched, and the download fallback."""

from __future__ import annotations

import os
from pathlib import Path

from ...errors import UserError
from ..config import DataConfig


class MissingDataError(UserError):
    """The dataset's files are not in any place looked at; says where and how to get them."""


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
