"""dsearch: search DenseNet architectures and training hyperparameters.

The public API is imported lazily, so `import dsearch.space` (and the CLI's start) doesn't pay for torch.
"""

from importlib import import_module
from typing import Any

_API = {
    "DataConfig": "config", "ModelConfig": "config", "RunConfig": "config", "TrainConfig": "config",
    "count_macs": "cost", "count_params": "cost",
    "UserError": "errors",
    "load_model": "export",
    "DenseNet": "model", "build_model": "model",
    "PRESETS": "presets",
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
