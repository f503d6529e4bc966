"""The domain rules of a search space: known destinations, value types, `when` order, seeds, and
that the space can produce at least one valid network. Raises ValueError(`key: rule`), one line.
"""

from __future__ import annotations

import functools
from itertools import islice
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter, ValidationError

from ..errors import ConfigError, did_you_mean
from ..metrics import VAL_LOSS
from ..training.config import DataConfig
from .sampling import (DATA_KEYS, DESTINATIONS, GRID_LIMIT, condition_holds, grid_size, grid_values, resolve,
                       same_value)

if TYPE_CHECKING:
    from .schema import SearchSpace

NOT_SEARCHABLE = {
    "model.in_channels": "comes from the dataset (data.name); it can't be searched or fixed",
    "model.num_classes": "comes from the dataset (data.name); it can't be searched or fixed",
    "train.epochs": "set by budget.max_epochs (the full budget of a trial); it can't be searched or fixed",
}
# Fields whose combinations decide whether a network exists at all; enumerated jointly.
ARCH_KEYS = frozenset({"model.variant", "model.bottleneck", "model.compression", "model.depth",
                       "model.num_blocks", "model.block_layers"})
MAX_PROBES = 10_000      # architecture combinations tried before giving up on proving infeasibility
MAX_INT_VALUES = 2_000   # int architecture ranges wider than this are probed at their ends only


def check_space(space: "SearchSpace") -> None:
    """Every rule that needs more than one section of the file; raises ValueError naming the key."""
    if not space.params:
        raise ValueError("params: nothing to search (add at least one parameter)")
    metrics = [o.metric for o in space.objectives]
    for m in metrics:
        if metrics.count(m) > 1:
            raise ValueError(f"objectives: metric {m!r} listed twice")
    if space.scheduler == "moasha" and VAL_LOSS in metrics:
        raise ValueError("budget.scheduler: moasha ranks a rung on val_acc, params and macs (what is known at "
                         "every epoch); with val_loss as an objective use scheduler: asha")
    for key, value in space.fixed.items():
        check_destination(f"fixed.{key}", key)
        check_type(f"fixed.{key}", key, value, "value")
    for key, p in space.params.items():
        check_destination(f"params.{key}", key)
        if key in space.fixed:
            raise ValueError(f"params.{key}: also in fixed (a key is either fixed or searched)")
        for what, value in _ends(p):
            check_type(f"params.{key}", key, value, what)
        if p.type == "float" and not _accepts(key, 0.5):
            raise ValueError(f"params.{key}: {key} takes no fractional values; use type: int or categorical")
    _check_conditions(space)
    if space.sampler.type == "grid":
        _check_grid(space)
    if space.sampler.type == "ehvi" and space.ehvi_refusal:
        raise ValueError(f"sampler.type: ehvi models one trained objective and prices params and MACs to minimise; "
                         f"this space has {space.ehvi_refusal}: use tpe")
    _check_feasible(space)
    for i, seed in enumerate(space.seed_trials):
        _check_seed(space, i, seed)


def _check_grid(space: "SearchSpace") -> None:
    """A grid needs finite params (categorical, int, float with a step) and a grid of at most GRID_LIMIT points."""
    for key, p in space.params.items():
        if grid_values(p) is None:
            raise ValueError(f"params.{key}: sampler.type grid needs finite values (categorical, int without "
                             "log, or float with a step)")
    if grid_size(space) > GRID_LIMIT:
        raise ValueError(f"sampler: the grid has {grid_size(space):,} points, over {GRID_LIMIT:,}; use fewer values "
                         "or another sampler")


def searchable_keys() -> list[str]:
    """Every `model.*` / `train.*` destination, and data.cutout, that a space may search or fix."""
    return [f"{d}.{f}" for d, cls in DESTINATIONS.items() for f in cls.model_fields
            if f"{d}.{f}" not in NOT_SEARCHABLE] + sorted(DATA_KEYS)


def check_destination(where: str, key: str) -> None:
    """A flat dotted key must name a ModelConfig or TrainConfig field that may be set, or data.cutout."""
    if key in NOT_SEARCHABLE:
        raise ValueError(f"{where}: {NOT_SEARCHABLE[key]}")
    dest = key.partition(".")[0]
    if dest == "data" and key not in DATA_KEYS:
        raise ValueError(f"{where}: data.* can't be searched or fixed (one dataset per study); "
                         "set it in the `data` section")
    keys = searchable_keys()
    if key in keys:
        return
    hint = did_you_mean(key, keys)
    if dest in DESTINATIONS:
        fields = ", ".join(k.partition(".")[2] for k in keys if k.startswith(dest + "."))
        raise ValueError(f"{where}: unknown parameter ({dest} fields: {fields}{hint})")
    raise ValueError(f"{where}: unknown destination {dest!r}: keys are model.<field> or train.<field>{hint}")


def check_type(where: str, key: str, value: Any, what: str) -> None:
    """The value must be of the destination field's type (e.g. a variant name, a list of ints)."""
    try:
        _adapter(key).validate_python(value)
    except ValidationError as e:
        msg = e.errors()[0]["msg"]
        raise ValueError(f"{where}: {what} {value!r} is not a valid {key} ({msg})") from None


@functools.cache
def _adapter(key: str) -> TypeAdapter:
    dest, _, field = key.partition(".")
    cls = DataConfig if dest == "data" else DESTINATIONS[dest]
    return TypeAdapter(cls.model_fields[field].annotation)


def _accepts(key: str, value: Any) -> bool:
    try:
        _adapter(key).validate_python(value)
        return True
    except ValidationError:
        return False


def _ends(p: Any) -> list[tuple[str, Any]]:
    """The values of a parameter worth checking on their own: its bounds, or every choice."""
    if p.type == "categorical":
        return [("choice", c) for c in p.choices]
    return [("low", p.low), ("high", p.high)] if p.low != p.high else [("low", p.low)]


def _check_conditions(space: "SearchSpace") -> None:
    earlier: list[str] = []
    for key, p in space.params.items():
        for ck, allowed in (p.when or {}).items():
            where = f"params.{key}.when.{ck}"
            if not allowed:
                raise ValueError(f"{where}: no allowed values (give a list of values)")
            if ck in space.fixed:
                if not any(same_value(space.fixed[ck], a) for a in allowed):
                    raise ValueError(f"{where}: never holds (fixed {ck} is {space.fixed[ck]!r}, "
                                     f"not one of {allowed!r}), so {key} would never be sampled")
                continue
            if ck not in space.params:
                hint = did_you_mean(ck, list(space.fixed) + list(space.params))
                raise ValueError(f"{where}: unknown key (conditions refer to fixed or searched keys{hint})")
            if ck not in earlier:
                raise ValueError(f"{where}: {ck} must come before {key} in params "
                                 "(a condition looks at values sampled earlier)")
            q = space.params[ck]
            for a in allowed:
                if not _in_domain(q, a):
                    raise ValueError(f"{where}: {a!r} is not a value {ck} can take")
        earlier.append(key)


def _in_domain(p: Any, v: Any) -> bool:
    """Whether v is a value the parameter can produce (choice, or in bounds and on the step grid)."""
    if p.type == "categorical":
        return any(same_value(v, c) for c in p.choices)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not p.low <= v <= p.high:
        return False
    if p.type == "int":
        return isinstance(v, int) and (v - p.low) % p.step == 0
    if p.step is None:
        return True
    r = (v - p.low) / p.step
    return abs(r - round(r)) <= 1e-9 * max(1.0, r)


def _probe_values(key: str, p: Any) -> list[Any]:
    if p.type == "categorical":
        return list(p.choices)
    if p.type == "int" and key in ARCH_KEYS and (p.high - p.low) // p.step < MAX_INT_VALUES:
        return list(range(p.low, p.high + 1, p.step))
    return [v for _, v in _ends(p)]


def _combos(space: "SearchSpace", keys: list[str], acc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Architecture parameters over all their probe values, the others at their first; `when` honoured."""
    if not keys:
        yield dict(acc)
        return
    key, rest = keys[0], keys[1:]
    p = space.params[key]
    if not condition_holds(p.when, {**space.fixed, **acc}):
        yield from _combos(space, rest, acc)
        return
    values = _probe_values(key, p)
    for v in values if key in ARCH_KEYS else values[:1]:
        acc[key] = v
        yield from _combos(space, rest, acc)
        del acc[key]


def _reason(space: "SearchSpace", values: dict[str, Any]) -> str | None:
    try:
        resolve(space, values)
        return None
    except ConfigError as e:
        return str(e)


def _key_of(reason: str) -> str:
    return reason.split(":", 1)[0]


def _check_feasible(space: "SearchSpace") -> None:
    """At least one architecture combination is valid; then each other value on its own."""
    first_fail, base, tried = None, None, 0
    for combo in islice(_combos(space, list(space.params), {}), MAX_PROBES):
        tried += 1
        reason = _reason(space, combo)
        if reason is None or _key_of(reason) not in ARCH_KEYS:
            base = combo
            break
        first_fail = first_fail or (combo, reason)
    if base is None:
        if tried >= MAX_PROBES:
            return  # too many to prove anything; each trial is still checked before training
        combo, reason = first_fail
        searched = [k for k in space.params if k in ARCH_KEYS]
        where = (f"params.{searched[0]}" if len(searched) == 1 else "params" if searched
                 else f"fixed.{_key_of(reason)}")
        arch = {k: v for k, v in combo.items() if k in ARCH_KEYS}
        example = f"e.g. {_assign(arch)} gives: " if arch else ""
        over = f" over {tried} combination{'s' * (tried > 1)} of {', '.join(searched)}" if searched else ""
        raise ValueError(f"{where}: no valid network in this space{over}; {example}{reason}")
    for key, p in space.params.items():
        if key in ARCH_KEYS or key not in base:
            continue
        for what, v in _ends(p):
            reason = _reason(space, {**base, key: v})
            if reason is not None and _key_of(reason) == key:
                raise ValueError(f"params.{key}: {what} {v!r} is invalid: {reason}")
    reason = _reason(space, base)
    if reason is not None and _key_of(reason) in space.fixed:
        raise ValueError(f"fixed.{_key_of(reason)}: {reason}")


def _check_seed(space: "SearchSpace", i: int, seed: dict[str, Any]) -> None:
    where = f"seed_trials[{i}]"
    for key, v in seed.items():
        if key not in space.params:
            why = ("is fixed, not searched" if key in space.fixed else
                   f"not a searched parameter{did_you_mean(key, space.params)}")
            raise ValueError(f"{where}.{key}: {why}")
        p = space.params[key]
        if not _in_domain(p, v):
            dom = (f"one of {p.choices!r}" if p.type == "categorical" else
                   f"{p.type} in [{p.low}, {p.high}]" + (f" step {p.step}" if p.step not in (None, 1) else ""))
            raise ValueError(f"{where}.{key}: {v!r} is outside the space (must be {dom})")
    active, values = [], dict(space.fixed)
    for key, p in space.params.items():
        holds = condition_holds(p.when, values)
        if key in seed and not holds:
            raise ValueError(f"{where}.{key}: given, but its `when` doesn't hold for this seed")
        if holds:
            active.append(key)
            if key in seed:
                values[key] = seed[key]
    if all(k in seed for k in active):  # complete seeds are checked like a trial; partial ones are sampled
        reason = _reason(space, {k: seed[k] for k in active})
        if reason is not None:
            raise ValueError(f"{where}: invalid trial: {reason}")


def _assign(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())
