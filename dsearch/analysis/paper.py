"""The DenseNet paper's CIFAR results (Huang et al., CVPR 2017, Table 2), priced by our cost model.

Errors in percent; "+" columns are with standard augmentation (flip + translation).
Params and MACs are not the paper's rounded "M" figures but our closed-form counts
(`dsearch.net.cost`) of the same preset at 32×32 input, batch 1, for the dataset's classes.
"""

from __future__ import annotations

from typing import NamedTuple

PAPER_COLUMNS = ("C10", "C10+", "C100", "C100+")

# Test error (%), columns PAPER_COLUMNS; None where the paper has no entry ("–").
PAPER_ERRORS: dict[str, tuple[float | None, float | None, float | None, float | None]] = {
    "densenet40_k12": (7.00, 5.24, 27.55, 24.42),
    "densenet100_k12": (5.77, 4.10, 23.79, 20.20),
    "densenet100_k24": (5.83, 3.74, 23.42, 19.25),
    "densenet_bc100_k12": (5.92, 4.51, 24.15, 22.27),
    "densenet_bc250_k24": (5.19, 3.62, 19.64, 17.60),
    "densenet_bc190_k40": (None, 3.46, None, 17.18),
}

_DATASET_COLUMNS = {"cifar10": "C10", "cifar100": "C100"}


class PaperPoint(NamedTuple):
    """One published network: preset name, accuracy (fraction), params (count), MACs (batch 1)."""

    name: str
    val_acc: float
    params: int
    macs: int


def paper_column(dataset: str, augment: bool) -> str | None:
    """The Table 2 column for a dataset ("C10+" for cifar10 with augmentation); None if not in the table."""
    column = _DATASET_COLUMNS.get(dataset)
    if column is None:
        return None
    return column + ("+" if augment else "")


def paper_points(dataset: str, augment: bool) -> list[PaperPoint]:
    """The paper's networks for cifar10 / cifar100 (else []), val_acc = 1 − error/100, in table order."""
    column = paper_column(dataset, augment)
    if column is None:
        return []
    from ..net.cost import count_macs, count_params
    from ..net.presets import PRESETS
    from ..training.config import DATASETS

    index = PAPER_COLUMNS.index(column)
    num_classes = DATASETS[dataset].num_classes
    points = []
    for name, errors in PAPER_ERRORS.items():
        error = errors[index]
        if error is None:
            continue
        config = PRESETS[name].with_overrides(num_classes=num_classes)
        points.append(
            PaperPoint(
                name=name,
                val_acc=round(1.0 - error / 100.0, 6),
                params=int(count_params(config)),
                macs=int(count_macs(config)),
            )
        )
    return points
