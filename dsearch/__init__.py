"""dsearch: search DenseNet architectures and training hyperparameters.

The public API is imported lazily, so `import dsearch.search.io` (and the CLI's start) doesn't pay for torch.
"""

from importlib import import_module
from typing import Any

_API = {
    "ModelConfig": "net.config",
    "count_macs": "net.cost", "count_params": "net.cost",
    "DenseNet": "net.model", "build_model": "net.model",
    "PRESETS": "net.presets",
    "DataConfig": "training.config", "RunConfig": "training.config", "TrainConfig": "training.config",
    "UserError": "errors",
    "load_model": "analysis.export",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(import_module(f".{_API[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dsearch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
