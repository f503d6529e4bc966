"""What a deployed network needs besides its weights: a format other runtimes read, a check, the preprocessing.

`dsearch export` (analysis/export.py) picks the trial (`choose_trial`: a number, the knee of the full-budget front
or its best val_acc), takes a batch of the trial's own validation images (`check_batch`; random inputs of the right
shape where the data can't be loaded here), writes the network as ONNX (torch.onnx's torch.export-based exporter,
checked with onnxruntime) or TorchScript (torch.jit.trace, checked after torch.jit.load), and describes the input
in a manifest: per-channel mean and std, C×H×W, class names, format, opset, and the check's largest logit difference.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from ..errors import UserError, did_you_mean
from ..metrics import VAL_ACC

if TYPE_CHECKING:
    import numpy as np
    import optuna
    import torch

STATE_DICT, ONNX, TORCHSCRIPT = "state_dict", "onnx", "torchscript"
FORMATS = (STATE_DICT, ONNX, TORCHSCRIPT)
KNEE, BEST = "knee", "best"
ONNX_OPSET = 18          # asked of the exporter; the manifest records the opset the file declares (≥ 17)
INPUT_NAME, OUTPUT_NAME = "images", "logits"
CHECK_IMAGES = 16        # validation images the exported file is checked on
TOLERANCE = 1e-4         # largest |logit difference| between the exported file and the PyTorch network
INSTALL_HINT = "pip install 'dsearch[export]'"
EXPORT_PACKAGES = ("onnx", "onnxscript", "onnxruntime")    # exporter (onnxscript builds on onnx) and the check

# How the datasets number their classes (the label is the index). MNIST and SVHN labels are the digits themselves
# (SVHN's 10 is read as 0); the synthetic set, and any set without names, gets "0".."n-1".
_DIGITS = tuple(str(i) for i in range(10))
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    "cifar100": (
        "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
        "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
        "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
        "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
        "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
        "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck",
        "pine_tree", "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
        "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider", "squirrel",
        "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
        "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm"),
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"),
    "mnist": _DIGITS,
    "svhn": _DIGITS,
}
# How the images are brought to the network's input size before normalising, where that isn't the identity.
RESIZE = {"imagenet": "resize the shorter side to 8/7 of the input size (256 for 224), then centre-crop"}


# --- which trial ------------------------------------------------------------------------------

def choose_trial(study: "optuna.Study", which: str) -> tuple[int, str]:
    """`--trial`: a trial number, `knee` (the knee of the full-budget front over the study's objectives, as
    `dsearch pareto` reports it) or `best` (the full-budget trial with the highest val_acc; ties: lowest number).

    Returns the trial number and how it was picked ("" for a number). UserError for anything else, or when the
    study has no COMPLETE trial trained to its full budget.
    """
    text = str(which).strip()
    if text.isdigit():
        return int(text), ""
    if text not in (KNEE, BEST):
        raise UserError(f"--trial {which!r}: expected a trial number, {KNEE!r} or {BEST!r}"
                        f"{did_you_mean(text, (KNEE, BEST))}")
    from .plots import DOMINATED, FRONT, classify_trials, compute_plot_data
    from .report import count_states, prepare_frame, select_objectives

    frame = prepare_frame(study)
    objectives = select_objectives(study, None)
    counts = count_states(frame)[0] if len(frame) else {}
    missing = [o.metric for o in objectives if o.metric not in frame]
    if len(frame) and missing:
        raise UserError(f"--trial {text}: study {study.study_name!r} records no {missing[0]} for its trials; pass a "
                        "trial number")
    usable = frame[classify_trials(frame, objectives).isin((FRONT, DOMINATED))] if len(frame) else frame
    if usable.empty:
        states = ", ".join(f"{n} {s}" for s, n in counts.items()) or "no trials"
        raise UserError(f"--trial {text}: study {study.study_name!r} has no COMPLETE trial trained to its full "
                        f"budget yet ({states}); pass a trial number")
    if text == KNEE:
        knee = compute_plot_data(frame, objectives).knee
        assert knee is not None          # a non-empty usable set has a front, and the front a knee
        return knee, f"the knee of the full-budget front over {', '.join(o.metric for o in objectives)}"
    if VAL_ACC not in usable or usable[VAL_ACC].isna().all():
        raise UserError(f"--trial {BEST}: study {study.study_name!r} records no {VAL_ACC}; pass a trial number "
                        f"or {KNEE!r}")
    ranked = usable.sort_values("trial", kind="stable")
    row = ranked[VAL_ACC].astype(float).idxmax()
    return int(ranked.at[row, "trial"]), (f"the best {VAL_ACC} ({ranked.at[row, VAL_ACC]:.4f}) of "
                                          f"{len(usable)} full-budget trial{'s' * (len(usable) != 1)}")


# --- what it is checked on --------------------------------------------------------------------

class CheckBatch(NamedTuple):
    """The inputs an export is checked on, and the preprocessing that made them.

    images: N×C×H×W float32, normalised as in training ((pixel / 255 - mean) / std per channel). mean, std: per
    channel in units of [0, 1] intensity, the training split's exact statistics; None when the data can't be loaded
    here (random inputs) and the dataset has no fixed ones. classes: one name per output, in label order.
    """

    images: "torch.Tensor"
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    source: str          # "validation" or "random"
    what: str            # for the printed line: "16 synthetic validation images", "16 random inputs (...)"
    classes: tuple[str, ...]


def class_names(dataset: str, num_classes: int, folders: tuple[str, ...] = ()) -> tuple[str, ...]:
    """One name per class in label order: the dataset's (CLASS_NAMES), an ImageNet folder's class folders, else
    "0".."n-1"."""
    for names in (CLASS_NAMES.get(dataset, ()), folders):
        if len(names) == num_classes:
            return tuple(names)
    return tuple(str(i) for i in range(num_classes))


def _class_folders(data: Any) -> tuple[str, ...]:
    """The class folders of an ImageFolder dataset (sorted, as torchvision numbers them), or () for tensors."""
    import os

    roots = getattr(data, "roots", ())
    if not roots:
        return ()
    return tuple(sorted(e.name for e in os.scandir(roots[0]) if e.is_dir()))


def check_batch(data: dict[str, Any], shape: tuple[int, int, int], num_classes: int,
                n: int = CHECK_IMAGES) -> CheckBatch:
    """The first n images of the trial's own validation split (data: the trial config's data section), normalised
    as in training; if they can't be loaded here (files elsewhere, no download), n seeded N(0, 1) inputs of `shape`
    (C, H, W)."""
    import torch

    from ..training.config import DataConfig
    from ..training.data import load_data
    from ..training.data.folder import IMAGENET_MEAN, IMAGENET_STD

    name = str(data.get("name", "?"))
    try:
        # Never download at export, and read ImageNet's few images in this process.
        cfg = DataConfig.model_validate({**data, "download": False, "num_workers": 0})
        loaded = load_data(cfg)
        images, _ = next(iter(loaded.eval_batches(n)))
        if tuple(images.shape[1:]) != tuple(shape):
            raise UserError(f"its images are {tuple(images.shape[1:])}, the network takes {tuple(shape)}")
        return CheckBatch(images.float().cpu(), tuple(map(float, loaded.mean)), tuple(map(float, loaded.std)),
                          "validation", f"{len(images)} {name} validation images",
                          class_names(name, num_classes, _class_folders(loaded)))
    except Exception as e:  # any reason the data isn't here: missing files, a foreign root, a corrupt file
        lines = str(e).strip().splitlines()
        why = lines[0] if lines else e.__class__.__name__
        why = why if len(why) <= 160 else why[:159] + "…"
    known = name == "imagenet"               # FolderData normalises with ImageNet's fixed statistics
    images = torch.randn(n, *shape, generator=torch.Generator().manual_seed(0))
    return CheckBatch(images, IMAGENET_MEAN if known else None, IMAGENET_STD if known else None, "random",
                      f"{n} random N(0, 1) inputs ({name} validation data not loadable here: {why})",
                      class_names(name, num_classes))


# --- writing and reading the formats ----------------------------------------------------------

def require_export_packages() -> None:
    """UserError naming the extra to install if onnx, onnxscript or onnxruntime is missing."""
    import importlib

    for name in EXPORT_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            raise UserError(f"--format {ONNX} needs {name}, which is not installed: {INSTALL_HINT}") from None


def _failed(what: str, e: BaseException) -> UserError:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    detail = f"{e.__class__.__name__}: {lines[0][:200]}" if lines else e.__class__.__name__
    return UserError(f"{what} failed ({detail})")


def write_onnx(model: "torch.nn.Module", example: "torch.Tensor", path: Path) -> int:
    """Write `model` (eval mode) as one ONNX file with a dynamic batch axis; returns the opset the file declares.

    torch.onnx's torch.export-based exporter (dynamo=True, onnxscript): the TorchScript-based one is deprecated.
    `example` is a batch of at least 2 (a batch of 1 would be specialised); weights are kept inside the file.
    """
    import onnx
    import torch

    try:
        program = torch.onnx.export(
            model, (example,), dynamo=True, opset_version=ONNX_OPSET, input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME], dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
        program.save(str(path), external_data=False)
    except OSError:
        raise
    except Exception as e:  # torch.export and onnxscript raise many types
        raise _failed(f"ONNX export (torch.onnx, opset {ONNX_OPSET})", e) from None
    declared = onnx.load(str(path), load_external_data=False).opset_import
    return next((int(o.version) for o in declared if o.domain in ("", "ai.onnx")), ONNX_OPSET)


def run_onnx(path: Path, images: "torch.Tensor") -> "np.ndarray":
    """The logits onnxruntime computes from the ONNX file at `path` (CPU, this process's torch thread count)."""
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3          # errors only: no per-session warnings on stderr
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0]
    except Exception as e:  # onnxruntime's errors are its own types
        raise _failed("the onnxruntime check", e) from None


def write_torchscript(model: "torch.nn.Module", example: "torch.Tensor", path: Path) -> None:
    """Write `model` (eval mode) traced with torch.jit.trace on `example` (deprecated in torch, still supported)."""
    import torch

    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", FutureWarning)      # torch.jit's deprecation notices
            torch.jit.save(torch.jit.trace(model, example), str(path))
    except OSError:
        raise
    except Exception as e:  # the tracer raises several types
        raise _failed("TorchScript export (torch.jit.trace)", e) from None


def load_torchscript(source: "str | Path | Any") -> "torch.nn.Module":
    """torch.jit.load of a path or a file-like object, on the CPU, without torch's deprecation notices."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(source, map_location="cpu")


def max_difference(a: Any, b: Any) -> float:
    """Largest absolute difference between two arrays of logits of one shape (inf if the shapes differ)."""
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b))) if a.shape == b.shape and a.size else float("inf")


def manifest(fmt: str, file: str, opset: int | None, batch: CheckBatch, difference: float, checked_with: str,
             data: dict[str, Any], provenance: dict[str, Any]) -> dict[str, Any]:
    """What inference needs besides the model file: input and output, preprocessing, classes, and the check."""
    import torch

    c, h, w = (int(s) for s in batch.images.shape[1:])
    return {
        "format": fmt, "file": file, "opset": opset,
        "input": {"name": INPUT_NAME, "shape": ["batch", c, h, w], "dtype": "float32"},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", len(batch.classes)], "meaning": "logits (softmax → "
                   "class probabilities)"},
        "input_size": [c, h, w],
        "dataset": data.get("name"),
        "mean": None if batch.mean is None else list(batch.mean),
        "std": None if batch.std is None else list(batch.std),
        "normalization": "per channel: (pixel / 255 - mean) / std, pixels 0..255, channels first (RGB or grey)"
                         if batch.mean is not None else
                         "unknown: the training data could not be loaded at export, so its channel statistics are "
                         "not known; export again where the data is",
        "resize": RESIZE.get(str(data.get("name")), f"none: the images are {h}×{w} as in training"),
        "classes": list(batch.classes),
        "check": {"max_abs_diff": difference, "tolerance": TOLERANCE, "with": checked_with,
                  "inputs": batch.source, "images": int(batch.images.shape[0]), "what": batch.what},
        "study": provenance.get("study"), "trial": provenance.get("trial"), "picked": provenance.get("picked"),
        "torch": torch.__version__,
    }
