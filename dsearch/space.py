"""YAML → SearchSpace: the typed, validated description of one search (study, data, budget, params).

Every problem in a space file is reported before anything starts, as one line naming the file,
the key and the rule. Sampling a trial and resolving it to a RunConfig live in sampling.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator,
                      model_validator)

from .config import ConfigError, DataConfig
from .errors import UserError
from .sampling import (check_constraints, decode_params, encode_params, input_size, resolve,  # noqa: F401
                       seed_params, suggest)
from .space_check import check_space, did_you_mean

VAL_ACC, VAL_LOSS, PARAMS, MACS = "val_acc", "val_loss", "params", "macs"
METRICS = (VAL_ACC, VAL_LOSS, PARAMS, MACS)
SAMPLERS = ("tpe", "nsga2", "random", "gp")


class SpaceError(UserError, ValueError):
    """A search-space file that breaks a rule: `file: key: rule`, one line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Objective(_Strict):
    """One objective of the multi-objective study."""

    metric: str
    direction: Literal["maximize", "minimize"]
    reference: float | None = None      # hypervolume reference value (raw units); None: dsearch pareto's default

    @field_validator("metric")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in METRICS:
            raise ValueError(f"unknown metric {v!r} (allowed: {', '.join(METRICS)}{did_you_mean(v, METRICS)})")
        return v


DEFAULT_OBJECTIVES = [Objective(metric=VAL_ACC, direction="maximize"),
                      Objective(metric=PARAMS, direction="minimize"),
                      Objective(metric=MACS, direction="minimize")]


class Budget(_Strict):
    """Epochs of a full-budget trial, trials in all, and ASHA's rungs (epochs)."""

    max_epochs: int = Field(ge=1)
    num_samples: int = Field(ge=1)
    grace_period: int = Field(1, ge=1)
    reduction_factor: int | float = 3
    max_concurrent_trials: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _rungs(self) -> "Budget":
        if self.reduction_factor < 2:
            raise ValueError(f"reduction_factor: must be ≥ 2 (ASHA keeps 1/reduction_factor "
                             f"of the trials at each rung), got {self.reduction_factor:g}")
        if self.grace_period > self.max_epochs:
            raise ValueError(f"grace_period: {self.grace_period} > max_epochs {self.max_epochs} "
                             "(ASHA's first rung must come no later than the full budget)")
        return self


class Resources(_Strict):
    """Per trial: CPU cores and GPUs (fractions share a device)."""

    cpu: int | float = Field(1, gt=0)
    gpu: int | float = Field(0, ge=0)

    @model_validator(mode="after")
    def _whole(self) -> "Resources":
        if self.gpu > 1 and self.gpu != int(self.gpu):
            raise ValueError(f"gpu: above 1 it must be a whole number of GPUs, got {self.gpu:g}")
        return self


class SamplerConfig(_Strict):
    """Optuna sampler that proposes the trials."""

    type: Literal["tpe", "nsga2", "random", "gp"] = "tpe"
    seed: int | None = 0


class Constraints(_Strict):
    """Trials over these are rejected before training (closed-form count)."""

    max_params: float | None = Field(None, gt=0)
    max_macs: float | None = Field(None, gt=0)


class _Param(_Strict):
    when: dict[str, list[Any]] | None = None

    @field_validator("when", mode="before")
    @classmethod
    def _listy(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: a if isinstance(a, list) else [a] for k, a in v.items()}
        return v


class IntParam(_Param):
    """Integers low..high inclusive, every `step`-th; `log` samples uniformly in log space."""

    type: Literal["int"]
    low: StrictInt
    high: StrictInt
    step: StrictInt = Field(1, ge=1)
    log: bool = False

    @model_validator(mode="after")
    def _range(self) -> "IntParam":
        _check_range(self.low, self.high, self.step if self.step != 1 else None, self.log)
        if (self.high - self.low) % self.step:
            raise ValueError(f"step: {self.step} doesn't fit low..high ({self.high} - {self.low} = "
                             f"{self.high - self.low} is not a multiple of {self.step})")
        return self


class FloatParam(_Param):
    """Reals in [low, high]; `step` discretises, `log` samples uniformly in log space."""

    type: Literal["float"]
    low: float
    high: float
    step: float | None = Field(None, gt=0)
    log: bool = False

    @model_validator(mode="after")
    def _range(self) -> "FloatParam":
        _check_range(self.low, self.high, self.step, self.log)
        if self.step is not None:
            r = (self.high - self.low) / self.step
            if abs(r - round(r)) > 1e-9 * max(1.0, r):
                raise ValueError(f"step: {self.step:g} doesn't fit low..high ({self.high:g} - {self.low:g} "
                                 f"is not a multiple of {self.step:g})")
        return self


class CategoricalParam(_Param):
    """One of `choices`: scalars, or lists of scalars (e.g. block_layers)."""

    type: Literal["categorical"]
    choices: list[Any] = Field(min_length=1)

    @field_validator("choices")
    @classmethod
    def _scalars(cls, v: list[Any]) -> list[Any]:
        scalar = (type(None), bool, int, float, str)
        seen: list[Any] = []
        for c in v:
            if not (isinstance(c, scalar) or isinstance(c, list) and all(isinstance(x, scalar) for x in c)):
                raise ValueError(f"choice {c!r} must be a number, string, bool, null or a list of those")
            if any(c == s and type(c) is type(s) for s in seen):
                raise ValueError(f"choice {c!r} is listed twice")
            seen.append(c)
        return v


Param = Annotated[IntParam | FloatParam | CategoricalParam, Field(discriminator="type")]
PARAM_TYPES = {"int": IntParam, "float": FloatParam, "categorical": CategoricalParam}


class SearchSpace(_Strict):
    """A whole search: study name, dataset, objectives, budget, sampler, fixed and searched values."""

    name: str
    data: DataConfig
    objectives: list[Objective] = Field(default_factory=lambda: list(DEFAULT_OBJECTIVES), min_length=1)
    budget: Budget
    resources: Resources = Field(default_factory=Resources)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    constraints: Constraints = Field(default_factory=Constraints)
    fixed: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, Param]
    seed_trials: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _dir_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", v):
            raise ValueError(f"{v!r} must be usable as a directory name (letters, digits, _ . -)")
        return v

    @model_validator(mode="after")
    def _rules(self) -> "SearchSpace":
        check_space(self)
        return self

    @property
    def directions(self) -> list[str]:
        """Optuna directions in objective order."""
        return [o.direction for o in self.objectives]

    @property
    def metrics(self) -> list[str]:
        """Objective metric names in order."""
        return [o.metric for o in self.objectives]


def _check_range(low: float, high: float, step: float | None, log: bool) -> None:
    if low > high:
        raise ValueError(f"low: empty range, low {low:g} > high {high:g} (bounds are inclusive)")
    if log and low <= 0:
        raise ValueError(f"log: log scale needs low > 0, got low {low:g}")
    if log and step is not None:
        raise ValueError("log: can't be combined with step (Optuna samples log ranges without a step)")


# --- reading and writing -------------------------------------------------------------------

class _Loader(yaml.SafeLoader):
    """Safe YAML with YAML 1.2 floats (`1e-4`, `2.0e6` are numbers) and duplicate keys refused."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)(?:[eE][-+]?[0-9]+)?$"),
    list("-+0123456789."))


class _Dumper(yaml.SafeDumper):
    """Lists of scalars on one line (`[6, 12, 24, 16]`), as people write them."""


_Dumper.add_representer(list, lambda d, v: d.represent_sequence(
    "tag:yaml.org,2002:seq", v, flow_style=all(not isinstance(x, (list, dict)) for x in v)))


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a space file; SpaceError (one line: file, key, rule) if anything is wrong."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpaceError(f"{path}: no such file") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise SpaceError(f"{path}: can't read ({e.__class__.__name__})") from None
    return parse_space(text, source=str(path))


def parse_space(text: str, source: str = "<space>") -> SearchSpace:
    """Validate a space given as YAML text; `source` names it in errors."""
    try:
        raw = yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark else ""
        problem = " ".join(str(e.problem or e.context or "syntax error").split())
        raise SpaceError(f"{source}{line}: YAML: {problem}") from None
    except yaml.YAMLError as e:
        raise SpaceError(f"{source}: YAML: {' '.join(str(e).split())}") from None
    if not isinstance(raw, dict):
        raise SpaceError(f"{source}: expected a mapping with keys {', '.join(SearchSpace.model_fields)}")
    try:
        return SearchSpace.model_validate(raw)
    except ValidationError as e:
        raise SpaceError(f"{source}: {_one_line(e)}") from None


def dump_space(space: SearchSpace) -> str:
    """The resolved YAML copy (defaults written out) that is stored beside a study."""
    d = space.model_dump(mode="json")
    d["params"] = {k: p.model_dump(mode="json", exclude_none=True) for k, p in space.params.items()}
    return yaml.dump(d, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)


def diff_spaces(a: SearchSpace, b: SearchSpace) -> list[str]:
    """Human-readable differences, one per changed key: `budget.max_epochs: 300 → 200`."""
    fa, fb = _flatten(yaml.safe_load(dump_space(a))), _flatten(yaml.safe_load(dump_space(b)))
    out = []
    for key in list(fa) + [k for k in fb if k not in fa]:
        va, vb = fa.get(key, "(absent)"), fb.get(key, "(absent)")
        if va != vb:
            out.append(f"{key}: {va} → {vb}")
    return out


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict) or not d:
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


# --- one-line errors -----------------------------------------------------------------------

_FIELD_MSG = re.compile(r"^[A-Za-z_]\w*: ")
_SECTIONS = {"budget": Budget, "resources": Resources, "sampler": SamplerConfig,
             "constraints": Constraints, "data": DataConfig, "objectives": Objective}


def _one_line(exc: ValidationError) -> str:
    errors = exc.errors()
    first = errors[0]
    more = len({e["loc"] for e in errors}) - 1
    return _describe(first) + (f" (and {more} more)" if more > 0 else "")


def _describe(e: dict) -> str:
    loc = [str(p) for p in e["loc"]]
    if len(loc) >= 3 and loc[0] == "params" and loc[2] in PARAM_TYPES:
        tag = loc.pop(2)
    else:
        tag = None
    where, kind, msg = ".".join(loc), e["type"], e["msg"]
    inner = (e.get("ctx") or {}).get("error")
    if isinstance(inner, ConfigError):
        return str(inner) if str(inner).startswith(loc[0] + ".") else f"{where}: {inner}"
    if kind == "extra_forbidden":
        fields = _fields_at(loc, tag)
        return (f"{where}: unknown key (allowed: {', '.join(fields)}{did_you_mean(loc[-1], fields)})"
                if fields else f"{where}: unknown key")
    if kind == "missing":
        return f"{where}: missing (required)"
    if kind == "union_tag_not_found":
        return f"{where}: missing `type` (int, float or categorical)"
    if kind == "union_tag_invalid":
        t = (e.get("ctx") or {}).get("tag", "")
        return f"{where}.type: {t!r} is not int, float or categorical{did_you_mean(t, PARAM_TYPES)}"
    if kind == "model_attributes_type" and loc[0] == "params" and len(loc) == 2:
        return f"{where}: expected a spec like {{type: int, low: 1, high: 8}} (a single value goes under `fixed`)"
    msg = msg.removeprefix("Value error, ")
    if _FIELD_MSG.match(msg) and where:
        return f"{where}.{msg}"
    got = e.get("input")
    if kind != "value_error" and isinstance(got, (str, int, float, bool, type(None))):
        msg += f" (got {got!r})"
    return f"{where}: {msg}" if where else msg


def _fields_at(loc: list[str], tag: str | None) -> list[str]:
    if len(loc) == 1:
        return list(SearchSpace.model_fields)
    if loc[0] == "params" and tag:
        return list(PARAM_TYPES[tag].model_fields)
    model = _SECTIONS.get(loc[0])
    return list(model.model_fields) if model else []
