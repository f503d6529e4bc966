"""dsearch: search DenseNet architectures and training hyperparameters."""

from .config import DataConfig, ModelConfig, RunConfig, TrainConfig
from .cost import count_macs, count_params
from .errors import UserError
from .export import load_model
from .model import DenseNet, build_model
from .presets import PRESETS

__all__ = ["DataConfig", "DenseNet", "ModelConfig", "PRESETS", "RunConfig", "TrainConfig",
           "UserError", "build_model", "load_model", "count_macs", "count_params"]
