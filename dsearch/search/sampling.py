"""From a validated search space to one trial: sample, encode for Optuna, resolve to a RunConfig.

Duck-typed over Optuna's define-by-run trial (suggest_int / suggest_float / suggest_categorical);
imports neither Optuna nor Ray.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import ValidationError

from ..errors import ConfigError
from ..net.config import ModelConfig
from ..strict import format_validation_error
from ..training.config import DataConfig, RunConfig, TrainConfig

if TYPE_CHECKING:
    from .schema import SearchSpace

DESTINATIONS = {"model": ModelConfig, "train": TrainConfig}
# The data.* fields a trial may differ in: augmentation applied per call, not the dataset loaded once per study.
DATA_KEYS = frozenset({"data.cutout"})


class TrialLike(Protocol):
    """What suggest() needs from a trial: Optuna's define-by-run methods."""

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int: ...
    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float: ...
    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


def encode_choice(value: Any) -> Any:
    """A categorical choice as Optuna stores it: lists become strings like "[6, 12, 24, 16]"."""
    return json.dumps(list(value)) if isinstance(value, (list, tuple)) else value


def same_value(a: Any, b: Any) -> bool:
    """Equality that treats lists and tuples alike (YAML gives lists, configs hold tuples), bools apart."""
    norm = lambda v: tuple(v) if isinstance(v, (list, tuple)) else v
    return norm(a) == norm(b) and isinstance(a, bool) == isinstance(b, bool)


def condition_holds(when: dict[str, list] | None, values: dict[str, Any]) -> bool:
    """True if every `when` key is present in values with one of its allowed values."""
    for key, allowed in (when or {}).items():
        if key not in values or not any(same_value(values[key], a) for a in allowed):
            return False
    return True


def suggest(space: "SearchSpace", trial: TrialLike) -> dict[str, Any]:
    """Sample the searched parameters in file order, honouring `when`; values decoded (lists as lists)."""
    sampled: dict[str, Any] = {}
    for key, p in space.params.items():
        if not condition_holds(p.when, {**space.fixed, **sampled}):
            continue
        if p.type == "int":
            sampled[key] = trial.suggest_int(key, p.low, p.high, step=p.step, log=p.log)
        elif p.type == "float":
            sampled[key] = trial.suggest_float(key, p.low, p.high, step=p.step, log=p.log)
        else:
            encoded = trial.suggest_categorical(key, [encode_choice(c) for c in p.choices])
            sampled[key] = _decode(p, encoded)
    return sampled


def encode_params(space: "SearchSpace", values: dict[str, Any]) -> dict[str, Any]:
    """Values → Optuna's form (list choices as strings); keys that aren't parameters pass through."""
    return {k: encode_choice(v) if _is_categorical(space, k) else v for k, v in values.items()}


def decode_params(space: "SearchSpace", params: dict[str, Any]) -> dict[str, Any]:
    """Optuna's form → values (list choices back to lists); idempotent."""
    return {k: _decode(space.params[k], v) if _is_categorical(space, k) else v for k, v in params.items()}


def seed_params(space: "SearchSpace") -> list[dict[str, Any]]:
    """The seed_trials in Optuna's form, ready for study.enqueue_trial()."""
    return [encode_params(space, seed) for seed in space.seed_trials]


GRID_LIMIT = 100_000     # grid points a `sampler: {type: grid}` space may have


def grid_values(p: Any) -> list[Any] | None:
    """Every value a finite parameter takes (categorical; int; float with a step), low to high; None if continuous."""
    if p.type == "categorical":
        return list(p.choices)
    if p.type == "int" and not p.log:
        return list(range(p.low, p.high + 1, p.step))
    if p.type == "float" and p.step is not None:
        n = int(round((p.high - p.low) / p.step))
        return [float(round(p.low + i * p.step, 12)) for i in range(n + 1)]
    return None


def grid_params(space: "SearchSpace") -> list[dict[str, Any]]:
    """The grid sampler's trials in Optuna's form: every combination of the params (`when` honoured), shuffled
    by the sampler seed, each `sampler.repeats` times in a row."""
    import random

    points: list[dict[str, Any]] = []

    def walk(keys: list[str], acc: dict[str, Any]) -> None:
        if not keys:
            points.append(dict(acc))
            return
        p = space.params[keys[0]]
        if not condition_holds(p.when, {**space.fixed, **acc}):
            walk(keys[1:], acc)
            return
        for v in grid_values(p) or []:
            acc[keys[0]] = v
            walk(keys[1:], acc)
            del acc[keys[0]]

    walk(list(space.params), {})
    random.Random(space.sampler.seed).shuffle(points)
    return [encode_params(space, p) for p in points for _ in range(space.sampler.repeats)]


def grid_size(space: "SearchSpace") -> int:
    """Points in the grid (before repeats), counted without listing them; `when` is ignored (an upper bound)."""
    n = 1
    for p in space.params.values():
        n *= len(grid_values(p) or [None])
    return n


def nest(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Flat dotted keys (`model.depth`) → {"model": {"depth": ...}, "train": {...}, "data": {...}}."""
    out: dict[str, dict[str, Any]] = {d: {} for d in (*DESTINATIONS, "data")}
    for key, value in values.items():
        dest, field = key.split(".", 1)
        out[dest][field] = list(value) if isinstance(value, tuple) else value
    return out


def resolve(space: "SearchSpace", params: dict[str, Any]) -> RunConfig:
    """Fixed + sampled values → a validated RunConfig; raises ConfigError naming the rule broken."""
    unknown = [k for k in params if k not in space.params]
    if unknown:
        raise ConfigError(f"{unknown[0]}: not a parameter of space {space.name!r}")
    nested = nest({**space.fixed, **decode_params(space, params)})
    nested["train"]["epochs"] = space.budget.max_epochs
    info = space.data.info
    nested["model"].update(in_channels=info.in_channels, num_classes=info.num_classes)
    parts = {}
    for dest, cls in DESTINATIONS.items():
        try:
            parts[dest] = cls(**nested[dest])
        except ValidationError as e:
            raise ConfigError(format_validation_error(e, prefix=[dest])) from None
    data = space.data
    if nested["data"]:   # a trial's data.cutout: the space's data section with it replaced
        try:
            data = DataConfig(**{**space.data.model_dump(exclude_unset=True), **nested["data"]})
        except ValidationError as e:
            raise ConfigError(format_validation_error(e, prefix=["data"])) from None
    return RunConfig(model=parts["model"], train=parts["train"], data=data)


def input_size(data: DataConfig) -> tuple[int, int, int]:
    """(C, H, W) the network sees for this dataset, in pixels."""
    info = data.info
    return (info.in_channels, info.image_size, info.image_size)


def _is_categorical(space: "SearchSpace", key: str) -> bool:
    p = space.params.get(key)
    return p is not None and p.type == "categorical"


def _decode(p: Any, value: Any) -> Any:
    for c in p.choices:
        if value == encode_choice(c) or same_value(value, c):
            return c
    return value
