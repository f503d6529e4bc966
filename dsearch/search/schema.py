"""SearchSpace: the typed description of one search (study, data, objectives, budget, params).

Each section validates itself (types, ranges, steps); rules that need more than one section
(destinations, `when` order, feasibility, seeds) live in rules.py and run when a file is loaded
(io.load_space). Sampling a trial and resolving it to a RunConfig live in sampling.py.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, StrictInt, field_validator, model_validator

from ..errors import did_you_mean
from ..metrics import DEFAULT_OBJECTIVES, MACS, MAXIMIZE, MEMORY, OBJECTIVE_METRICS, PARAMS, VAL_ACC, Objective
from ..strict import StrictModel
from ..training.config import DataConfig
from .rungs import after_first_drop, chance_floor, milestones


class SpaceObjective(Objective):
    """An objective of a search: its metric must be one that every trial reports."""

    @field_validator("metric")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in OBJECTIVE_METRICS:
            raise ValueError(f"unknown metric {v!r} (allowed: {', '.join(OBJECTIVE_METRICS)}"
                             f"{did_you_mean(v, OBJECTIVE_METRICS)})")
        return v


class Budget(StrictModel):
    """Epochs of a full-budget trial, trials in all, and the successive-halving scheduler and its rungs.

    scheduler: moasha ranks a rung on every objective (Pareto-aware), asha on val_acc alone; by default
    moasha when the space has two or more objectives. rungs: the epochs of the rungs; by default one rung, one
    epoch after the first drop of a step lr schedule (SearchSpace.milestones: where accuracy starts to rank
    trials as the full budget will); with grace_period given (or no step drop in the lr) at grace_period · reduction_factor^k
    (grace 1 by default), with no rung where rung × reduction_factor > max_epochs.
    tie_break: how moasha orders trials inside one front (crowding distance, or an ε-net order).
    """

    max_epochs: int = Field(ge=1)
    num_samples: int = Field(ge=1)
    grace_period: int | None = Field(None, ge=1)       # None: rungs placed after the lr drops
    reduction_factor: int | float = 3
    max_concurrent_trials: int = Field(1, ge=1)
    scheduler: Literal["moasha", "asha"] | None = None
    rungs: list[int] | None = None
    tie_break: Literal["crowding", "epsilon"] = "crowding"

    @model_validator(mode="after")
    def _rungs(self) -> "Budget":
        if self.reduction_factor < 2:
            raise ValueError(f"reduction_factor: must be ≥ 2 (ASHA keeps 1/reduction_factor "
                             f"of the trials at each rung), got {self.reduction_factor:g}")
        if self.grace_period is not None and self.grace_period > self.max_epochs:
            raise ValueError(f"grace_period: {self.grace_period} > max_epochs {self.max_epochs} "
                             "(ASHA's first rung must come no later than the full budget)")
        if self.rungs is not None:
            if any(b <= a for a, b in zip(self.rungs, self.rungs[1:])) or not all(
                    1 <= r < self.max_epochs for r in self.rungs):
                raise ValueError(f"rungs: {self.rungs} must be increasing epochs from 1 to max_epochs - 1 "
                                 f"({self.max_epochs - 1})")
        return self

    @property
    def milestones(self) -> list[int]:
        """The rung epochs as listed, or at grace_period · reduction_factor^k (SearchSpace.milestones places
        the default ones with the lr schedule in mind)."""
        return milestones(self.max_epochs, self.grace, self.reduction_factor, self.rungs)

    @property
    def grace(self) -> int:
        """The first geometric rung: grace_period, 1 when not given."""
        return self.grace_period or 1


class Resources(StrictModel):
    """Per trial: CPU cores and GPUs (fractions share a device)."""

    cpu: int | float = Field(1, gt=0)
    gpu: int | float = Field(0, ge=0)
    # Memory of one of the GPUs the trials run on (GiB); None: the driver's own GPU's, if it has one.
    gpu_memory_gib: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _whole(self) -> "Resources":
        if self.gpu > 1 and self.gpu != int(self.gpu):
            raise ValueError(f"gpu: above 1 it must be a whole number of GPUs, got {self.gpu:g}")
        return self


class SamplerConfig(StrictModel):
    """Optuna sampler that proposes the trials.

    ehvi: expected hypervolume improvement with a GP on the one trained objective and the exact params and
    MACs (search/ehvi.py); the default for two or more objectives of which one is trained. tpe otherwise.

    grid: every combination of the (finite) params, in an order shuffled by `seed`, each `repeats` times in a
    row (each run with its own training seed, the trial number): a learning-curve table for `dsearch replay`.
    """

    type: Literal["ehvi", "tpe", "nsga2", "random", "gp", "grid"] | None = None   # None: SearchSpace.sampler_type
    seed: int | None = 0
    repeats: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _repeats(self) -> "SamplerConfig":
        if self.repeats != 1 and self.type != "grid":
            raise ValueError(f"repeats: only a grid sampler repeats its points (type is {self.type})")
        return self


class Constraints(StrictModel):
    """Trials over these are rejected before training (closed-form count)."""

    max_params: float | None = Field(None, gt=0)
    max_macs: float | None = Field(None, gt=0)
    max_memory: float | None = Field(None, gt=0)     # bytes: a training step's predicted peak (net/cost.count_memory)


class Tracking(StrictModel):
    """Where the search is logged besides its study: an MLflow tracking URI (http://host:5000, file:./mlruns,
    databricks, ...) and the experiment (default: the study's name). See search/tracking.py."""

    mlflow: str | None = None
    experiment: str | None = None


class _Param(StrictModel):
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
KNOWN_BEFORE_TRAINING = (PARAMS, MACS, MEMORY)     # closed-form (net/cost.py): priced before a trial trains

PARAM_TYPES = {"int": IntParam, "float": FloatParam, "categorical": CategoricalParam}


class SearchSpace(StrictModel):
    """A whole search: study name, dataset, objectives, budget, sampler, fixed and searched values."""

    name: str
    data: DataConfig
    objectives: list[SpaceObjective] = Field(
        default_factory=lambda: [SpaceObjective(**o.model_dump()) for o in DEFAULT_OBJECTIVES], min_length=1)
    budget: Budget
    resources: Resources = Field(default_factory=Resources)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    constraints: Constraints = Field(default_factory=Constraints)
    fixed: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, Param]
    seed_trials: list[dict[str, Any]] = Field(default_factory=list)
    tracking: Tracking = Field(default_factory=Tracking)

    @field_validator("name")
    @classmethod
    def _dir_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", v):
            raise ValueError(f"{v!r} must be usable as a directory name (letters, digits, _ . -)")
        return v

    @property
    def directions(self) -> list[str]:
        """Optuna directions in objective order."""
        return [o.direction for o in self.objectives]

    @property
    def metrics(self) -> list[str]:
        """Objective metric names in order."""
        return [o.metric for o in self.objectives]

    @property
    def scheduler(self) -> str:
        """The scheduler this space runs: budget.scheduler, or moasha with two or more objectives."""
        return self.budget.scheduler or ("moasha" if len(self.objectives) >= 2 else "asha")

    @property
    def trained_objectives(self) -> list[str]:
        """The objectives only training measures (val_acc, val_loss); params, MACs and memory are closed-form."""
        return [m for m in self.metrics if m not in KNOWN_BEFORE_TRAINING]

    @property
    def ehvi_refusal(self) -> str | None:
        """Why the EHVI proposer (search/ehvi.py) can't search this space, None if it can: it models exactly one
        trained objective and takes params and MACs as costs to minimise."""
        trained = self.trained_objectives
        if len(trained) != 1:
            return "two trained objectives" if trained else "no trained objective (val_acc or val_loss)"
        maximised = [o.metric for o in self.objectives if o.metric in KNOWN_BEFORE_TRAINING and o.direction == MAXIMIZE]
        if maximised:
            return f"{maximised[0]} is maximised (costs are minimised)"
        costs = [m for m in self.metrics if m in KNOWN_BEFORE_TRAINING]
        return f"three costs ({', '.join(costs)}); it takes at most two" if len(costs) > 2 else None

    @property
    def sampler_type(self) -> str:
        """sampler.type, or the default: ehvi for two or more objectives that it can search, tpe otherwise."""
        if self.sampler.type is not None:
            return self.sampler.type
        return "ehvi" if len(self.objectives) >= 2 and self.ehvi_refusal is None else "tpe"

    @property
    def sampler_why(self) -> str:
        """Why this sampler, in a few words."""
        if self.sampler.type is not None:
            return "sampler.type in the space"
        if self.sampler_type == "ehvi":
            return ("the default for several objectives: params and MACs are known before training, so only "
                    f"{self.trained_objectives[0]} is modelled")
        return "the default: one objective" if len(self.objectives) < 2 else \
            "the default: more than one objective is only known after training"

    @property
    def lr_drops(self) -> tuple[float, ...] | None:
        """Fractions of the budget where every trial's lr drops (one step schedule, not searched); None when
        the schedule is cosine, constant, or searched."""
        if {"train.lr_schedule", "train.lr_milestones", "train.lr_gamma"} & set(self.params):
            return None
        if self.fixed.get("train.lr_schedule", "step") != "step" or self.fixed.get("train.lr_gamma", 0.1) == 1:
            return None
        drops = self.fixed.get("train.lr_milestones")
        return tuple(self.data.info.milestones if drops is None else drops) or None

    @property
    def milestones(self) -> list[int]:
        """The rung epochs: budget.rungs as listed; else one epoch after the first lr drop
        (`rungs.after_first_drop`), unless budget.grace_period is given or the schedule has no drop: then
        grace_period · rf^k."""
        b = self.budget
        drops = self.lr_drops
        if b.rungs is not None or b.grace_period is not None or drops is None:
            return b.milestones
        return after_first_drop(b.max_epochs, drops)

    @property
    def rung_placement(self) -> str:
        """Why the rungs are where they are, in a few words."""
        b = self.budget
        if b.rungs is not None:
            return "as listed in budget.rungs"
        geometric = f"grace_period {b.grace} · reduction_factor^k"
        if b.grace_period is not None:
            return f"{geometric} (budget.grace_period is given)"
        if self.lr_drops is None:
            return f"{geometric} (the lr schedule has no fixed step drop)"
        return (f"one epoch after the first lr drop (at {min(self.lr_drops):.0%} of {b.max_epochs} epochs), where "
                "val_acc starts to rank trials as the full budget will")

    @property
    def chance_floor(self) -> float:
        """The val_acc of guessing, plus three binomial standard deviations over the validation images."""
        d, info = self.data, self.data.info
        images = d.val_subset or d.val_size or info.val_size
        return chance_floor(info.num_classes, images)

    @property
    def rung_objectives(self) -> list[tuple[str, str]]:
        """(metric, direction) the scheduler ranks a rung on: every objective (moasha) or val_acc (asha)."""
        if self.scheduler == "asha":
            return [(VAL_ACC, MAXIMIZE)]
        return [(o.metric, o.direction) for o in self.objectives]


def _check_range(low: float, high: float, step: float | None, log: bool) -> None:
    if low > high:
        raise ValueError(f"low: empty range, low {low:g} > high {high:g} (bounds are inclusive)")
    if log and low <= 0:
        raise ValueError(f"log: log scale needs low > 0, got low {low:g}")
    if log and step is not None:
        raise ValueError("log: can't be combined with step (Optuna samples log ranges without a step)")
