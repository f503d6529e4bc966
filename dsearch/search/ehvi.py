"""A cost-aware proposer: the next configuration by expected hypervolume improvement (EHVI).

Only one objective must be learned by training (val_acc or val_loss); params and MACs are known in closed form
before training. So a Gaussian process models the trained objective alone, and the costs enter the
acquisition exactly: for a candidate with cost vector c and learned value A ~ N(μ, σ), the hypervolume it
would add is an integral over A of the part of its cost box [c, ref] that the front does not dominate at
that level. That part is constant between the front's levels, so EHVI is a short closed-form sum (`ehvi`).

The proposer rebuilds everything from the study at each ask (a resumed study behaves the same); only the
random generator and the last GP hyper-parameters (a warm start) live on it. Running trials stand on the
front at their posterior mean and condition the GP (kriging believer), so concurrent asks spread out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.linalg import cho_factor, cho_solve, solve_triangular
from scipy.optimize import minimize
from scipy.special import ndtr

from ..errors import UserError
from ..metrics import MAXIMIZE, MEMORY, VAL_ACC
from ..ranking import dominance
from . import record as st
from .pricing import over_budget, price
from .sampling import decode_params, encode_params, grid_params, grid_size, grid_values, resolve, same_value, suggest
from .schema import KNOWN_BEFORE_TRAINING
from .table import config_key

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from .schema import SearchSpace

GRID_CANDIDATES = 4096     # a finite space this small offers all its points as candidates
MARGIN = 0.1               # the reference point lies this share of each range beyond the worst value
COSTS = KNOWN_BEFORE_TRAINING      # params, MACs, memory: priced exactly (search/pricing.py)
SQRT5 = math.sqrt(5.0)


def supports(space: "SearchSpace") -> str | None:
    """None if the proposer can search this space; else why not, in one line (`SearchSpace.ehvi_refusal`, which
    the default sampler and the space's rules read too)."""
    return space.ehvi_refusal


# --- the acquisition ------------------------------------------------------------------------------------

def expected_excess(mu: np.ndarray, sigma: np.ndarray, x: np.ndarray) -> np.ndarray:
    """E[(A − x)^+] for A ~ N(μ, σ): σ[φ(z) − z(1 − Φ(z))], z = (x − μ)/σ (σ > 0)."""
    z = (x - mu) / sigma
    return np.maximum(sigma * (np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi) - z * ndtr(-z)), 0.0)


def union_area(corners: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """(n,) area of the union of the boxes [corner, ref] of each row of (n, k, 2) corners (all ≤ ref)."""
    order = np.argsort(corners[..., 0], axis=1, kind="stable")
    xs = np.take_along_axis(corners[..., 0], order, axis=1)
    ys = np.take_along_axis(corners[..., 1], order, axis=1)
    before = np.minimum.accumulate(np.concatenate([np.full((len(ys), 1), ref[1]), ys[:, :-1]], axis=1), axis=1)
    return np.sum((ref[0] - xs) * np.clip(before - ys, 0.0, None), axis=1)


def free_areas(cost: np.ndarray, points: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """(n, m + 1): the area of each candidate's cost box [c, ref] that the first k front points (k = 0..m,
    by falling accuracy) leave undominated (a length with one cost, 1 or 0 with none)."""
    n, d = cost.shape
    out = np.empty((n, len(points) + 1))
    out[:, 0] = np.prod(np.clip(ref - cost, 0.0, None), axis=1)
    if d == 0:
        out[:, 1:] = 0.0
    elif d == 1:
        best = np.minimum(np.minimum.accumulate(points[:, 0]), ref[0])
        out[:, 1:] = np.clip(best[None, :] - cost, 0.0, None)
    else:
        for k in range(1, len(points) + 1):
            corners = np.minimum(np.maximum(points[None, :k, :], cost[:, None, :]), ref)
            out[:, k] = out[:, 0] - union_area(corners, ref)
    return out


def ehvi(mu: Any, sigma: Any, cost: Any, front_acc: Any, front_cost: Any, ref: Any) -> np.ndarray:
    """(n,) expected hypervolume improvement of candidates with exact costs (n, d) (d = 0, 1 or 2; minimised)
    and a Gaussian accuracy N(mu, sigma) (maximised), over a front of (front_acc, front_cost).
    `ref` = (accuracy reference, cost references…). With no cost it is the expected improvement."""
    ref = np.asarray(ref, dtype=float)
    mu = np.asarray(mu, dtype=float).ravel()
    sigma = np.maximum(np.asarray(sigma, dtype=float).ravel(), 1e-12)
    cost = np.asarray(cost, dtype=float).reshape(len(mu), len(ref) - 1)
    acc = np.asarray(front_acc, dtype=float).ravel()
    points = np.asarray(front_cost, dtype=float).reshape(len(acc), len(ref) - 1)
    keep = acc > ref[0]
    order = np.argsort(-acc[keep], kind="stable")
    levels, points = acc[keep][order], points[keep][order]
    excess = expected_excess(mu[:, None], sigma[:, None], np.append(levels, ref[0])[None, :])
    excess = np.concatenate([np.zeros((len(mu), 1)), excess], axis=1)       # H(+∞) = 0
    return np.sum(free_areas(cost, points, ref[1:]) * np.diff(excess, axis=1), axis=1)


# --- the Gaussian process -------------------------------------------------------------------------------

LOG_BOUNDS = {"lengthscale": (math.log(0.03), math.log(30.0)), "signal": (math.log(0.05), math.log(20.0)),
              "noise": (math.log(1e-6), math.log(1.0))}


def matern52(r2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Matérn-5/2 correlation at squared scaled distances, and the factor (5/3)(1 + √5 r)e^{−√5 r} of its
    derivative with respect to a log lengthscale (times Δ²/ℓ²)."""
    r = np.sqrt(np.maximum(r2, 0.0))
    e = np.exp(-SQRT5 * r)
    return (1.0 + SQRT5 * r + 5.0 / 3.0 * r2) * e, 5.0 / 3.0 * (1.0 + SQRT5 * r) * e


def _factor(k: np.ndarray) -> Any:
    """Cholesky factor of a kernel matrix, adding jitter until it is positive definite."""
    for jitter in (0.0, 1e-8, 1e-6, 1e-4):
        try:
            return cho_factor(k + jitter * np.eye(len(k)), lower=True)
        except np.linalg.LinAlgError:
            continue
    raise np.linalg.LinAlgError("kernel matrix not positive definite")


def neg_log_likelihood(theta: np.ndarray, d2: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """−log marginal likelihood and its gradient in theta = (log ℓ…, log signal var, log noise var); the
    constant mean is profiled out (its generalised least-squares value)."""
    ell2, signal, noise = np.exp(2 * theta[:-2]), math.exp(theta[-2]), math.exp(theta[-1])
    corr, slope = matern52(d2 @ (1.0 / ell2))
    try:
        chol = _factor(signal * corr + noise * np.eye(len(y)))
    except np.linalg.LinAlgError:
        return 1e10, np.zeros_like(theta)
    ones = np.ones_like(y)
    mean = float(ones @ cho_solve(chol, y) / (ones @ cho_solve(chol, ones)))
    alpha = cho_solve(chol, y - mean)
    inverse = cho_solve(chol, np.eye(len(y)))
    nll = 0.5 * (y - mean) @ alpha + np.sum(np.log(np.diag(chol[0]))) + 0.5 * len(y) * math.log(2 * math.pi)
    w = np.outer(alpha, alpha) - inverse
    grad = np.empty_like(theta)
    grad[:-2] = -0.5 * signal * np.einsum("ij,ijk->k", w * slope, d2) / ell2
    grad[-2] = -0.5 * signal * np.sum(w * corr)
    grad[-1] = -0.5 * noise * np.trace(w)
    return float(nll), grad


@dataclass
class GP:
    """A fitted GP (Matérn-5/2 ARD, constant mean, Gaussian noise) on features in [0, 1] and standardised y."""

    x: np.ndarray
    y: np.ndarray
    theta: np.ndarray

    def __post_init__(self) -> None:
        ell2, self.signal, noise = np.exp(2 * self.theta[:-2]), math.exp(self.theta[-2]), math.exp(self.theta[-1])
        self.scale = 1.0 / np.sqrt(ell2)
        self.chol = _factor(self.signal * self._corr(self.x, self.x) + noise * np.eye(len(self.y)))
        ones = np.ones_like(self.y)
        self.mean = float(ones @ cho_solve(self.chol, self.y) / (ones @ cho_solve(self.chol, ones)))
        self.alpha = cho_solve(self.chol, self.y - self.mean)

    def _corr(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a, b = a * self.scale, b * self.scale
        r2 = np.sum(a * a, axis=1)[:, None] + np.sum(b * b, axis=1)[None, :] - 2 * a @ b.T
        return matern52(r2)[0]

    def predict(self, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation of the latent function at xs."""
        cross = self.signal * self._corr(xs, self.x)
        v = solve_triangular(self.chol[0], cross.T, lower=True)
        var = np.maximum(self.signal - np.sum(v * v, axis=0), 1e-12)
        return self.mean + cross @ self.alpha, np.sqrt(var)

    def believe(self, xs: np.ndarray) -> "GP":
        """The GP with xs observed at its own posterior mean (kriging believer): the mean stays, σ shrinks there."""
        if len(xs) == 0:
            return self
        return GP(np.vstack([self.x, xs]), np.append(self.y, self.predict(xs)[0]), self.theta)


def fit_gp(x: np.ndarray, y: np.ndarray, starts: list[np.ndarray]) -> GP:
    """The GP whose hyper-parameters maximise the marginal likelihood, L-BFGS-B from each start (best kept)."""
    d2 = (x[:, None, :] - x[None, :, :]) ** 2
    bounds = [LOG_BOUNDS["lengthscale"]] * x.shape[1] + [LOG_BOUNDS["signal"], LOG_BOUNDS["noise"]]
    best = None
    for start in starts:
        res = minimize(neg_log_likelihood, np.clip(start, *np.array(bounds).T), args=(d2, y), jac=True,
                       method="L-BFGS-B", bounds=bounds, options={"maxiter": 200})
        if best is None or res.fun < best.fun:
            best = res
    return GP(x, y, best.x)


def default_theta(width: int) -> np.ndarray:
    """Lengthscales 0.5 (features in [0, 1]), unit signal, a little noise: the first fit's start."""
    return np.array([math.log(0.5)] * width + [0.0, math.log(1e-2)])


# --- candidates and features ----------------------------------------------------------------------------

class _Draw:
    """A TrialLike that draws each parameter uniformly (log-uniformly where `log`) with a numpy generator."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        if log:
            return int(min(high, max(low, round(math.exp(self.rng.uniform(math.log(low), math.log(high)))))))
        return int(low + step * self.rng.integers(0, (high - low) // step + 1))

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float:
        if log:
            return float(math.exp(self.rng.uniform(math.log(low), math.log(high))))
        if step is not None:
            return float(round(low + step * self.rng.integers(0, int(round((high - low) / step)) + 1), 12))
        return float(self.rng.uniform(low, high))

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return choices[int(self.rng.integers(0, len(choices)))]


def _ordinal(p: Any) -> bool:
    """A categorical whose choices are all numbers (not bools) is ordered."""
    return all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in p.choices)


def param_features(space: "SearchSpace", params: dict[str, Any]) -> list[float]:
    """A configuration's parameters in [0, 1]: numbers min-max (log10 where `log`), numeric categoricals by rank,
    other categoricals one-hot; an absent parameter (its `when` false) is 0."""
    values = decode_params(space, {k: v for k, v in params.items() if k in space.params})
    row: list[float] = []
    for key, p in space.params.items():
        v = values.get(key)
        if p.type == "categorical" and not _ordinal(p):
            row.extend(1.0 if v is not None and same_value(v, c) else 0.0 for c in p.choices)
        elif p.type == "categorical":
            ranked = sorted(p.choices)
            row.append(0.0 if v is None or len(ranked) == 1 else ranked.index(v) / (len(ranked) - 1))
        elif v is None or p.high == p.low:
            row.append(0.0)
        else:
            f = math.log10 if p.log else float
            row.append((f(v) - f(p.low)) / (f(p.high) - f(p.low)))
    return row


def _price(space: "SearchSpace", params: dict[str, Any]) -> tuple[int, int, int, bool] | None:
    """(params, MACs, memory, within the constraints) of a configuration; None if it doesn't resolve."""
    try:
        cost = price(space, resolve(space, params))
        return cost.params, cost.macs, cost.memory, not over_budget(space, cost)
    except UserError:
        return None


@dataclass
class History:
    """What the study says, in the proposer's terms (configuration keys): observed ones with their accuracy-form
    values (and whether each stands on the front), running ones, and every one tried."""

    observed: list[str]
    values: list[float]
    on_front: list[bool]
    pending: list[str]
    tried: list[str]


def pruned_offsets(curves: list[list[float]], finals: list[float], max_epochs: int) -> list[float]:
    """offset[e − 1]: the median over full-budget curves of (final − value at epoch e); 0 if none."""
    out = []
    for e in range(1, max_epochs + 1):
        gains = [f - c[e - 1] for c, f in zip(curves, finals) if len(c) >= e]
        out.append(float(np.median(gains)) if gains else 0.0)
    return out


# --- the proposer ---------------------------------------------------------------------------------------

class CostAwareProposer:
    """Proposes the candidate of largest EHVI under a GP on the trained objective and the exact costs, after
    an initial design that spreads `n_init` configurations out (maximin distance in feature space)."""

    def __init__(self, space: "SearchSpace", seed: int | None, n_candidates: int = 512,
                 n_init: int | None = None) -> None:
        reason = supports(space)
        if reason:
            raise UserError(f"objectives: the cost-aware EHVI proposer can't search space {space.name!r}: {reason}")
        self.space, self.n_candidates = space, n_candidates
        self.rng = np.random.default_rng(seed)
        self.index = space.metrics.index(space.trained_objectives[0])
        self.sign = 1.0 if space.objectives[self.index].direction == MAXIMIZE else -1.0
        # The GP's cost features: log params and log MACs always, log memory when it is an objective.
        self.cost_metrics = [m for m in COSTS if m != MEMORY or m in space.metrics]
        self.costs = [self.cost_metrics.index(o.metric) for o in space.objectives if o.metric in COSTS]
        self.width = len(param_features(space, {})) + len(self.cost_metrics)
        self.n_init = n_init if n_init is not None else max(4, self.width // 2)
        self.finite = (all(grid_values(p) is not None for p in space.params.values())
                       and grid_size(space) <= GRID_CANDIDATES)
        self.configs: dict[str, dict[str, Any]] = {}                 # key → params (Optuna's form)
        self.prices: dict[str, tuple[int, int, int, bool] | None] = {}   # key → params, MACs, memory, feasible
        self.rows: dict[str, list[float]] = {}                        # key → features, log10 costs unscaled
        self.grid: list[str] | None = None
        self.theta: np.ndarray | None = None

    def ask(self, study: "optuna.Study") -> "optuna.Trial":
        """A new trial at the chosen configuration; queued trials (seed trials, requeued ones) go first."""
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        if not any(t.state == TrialState.WAITING for t in trials):
            study.enqueue_trial(self.choose(trials), user_attrs={st.PROPOSED_BY: "ehvi"})
        return study.ask()

    def told(self, number: int, state: str, metrics: dict[str, float]) -> None:
        """Nothing to do: each ask reads the study."""

    # --- choosing -------------------------------------------------------------------------------------------

    def choose(self, trials: "list[FrozenTrial]") -> dict[str, Any]:
        """The next configuration (Optuna's form) given the study's trials."""
        pool = self._candidates()
        if not pool:        # nothing feasible: a plain draw, which the engine rejects and counts
            return encode_params(self.space, suggest(self.space, _Draw(self.rng)))
        history = self._history(trials)
        taken = set(history.tried)
        fresh = [k for k in pool if k not in taken] or pool
        lo, hi = self._cost_bounds(pool)
        features = self._features(fresh, lo, hi)
        if len(history.observed) + len(history.pending) < self.n_init or len(history.observed) < 2:
            return self.configs[fresh[self._spread(features, self._features(history.tried, lo, hi))]]
        scores = self._scores(history, fresh, features, lo, hi)
        return self.configs[fresh[self._argmax(scores)]]

    def _candidates(self) -> list[str]:
        """Keys of every feasible grid point of a small finite space (priced once), else of n_candidates
        feasible draws."""
        if self.finite:
            if self.grid is None:
                once = self.space.model_copy(update={"sampler": self.space.sampler.model_copy(update={"repeats": 1})})
                self.grid = [k for k in map(self._know, grid_params(once)) if self._feasible(k)]
            return self.grid
        draws = [encode_params(self.space, suggest(self.space, _Draw(self.rng))) for _ in range(self.n_candidates)]
        return [k for k in map(self._know, draws) if self._feasible(k)]

    def _know(self, params: dict[str, Any]) -> str:
        """A configuration's key, its params, price and features remembered (priced once)."""
        key = config_key(params)
        if key not in self.configs:
            self.configs[key] = params
            self.prices[key] = _price(self.space, params)
            if self.prices[key] is not None:
                costs = [self.prices[key][COSTS.index(m)] for m in self.cost_metrics]
                self.rows[key] = param_features(self.space, params) + list(np.log10(costs))
        return key

    def _feasible(self, key: str) -> bool:
        price = self.prices[key]
        return price is not None and price[3]

    def _cost_bounds(self, pool: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Min and max of the log10 costs over the candidates: their normalisation."""
        logs = np.array([self.rows[k][-len(self.cost_metrics):] for k in pool])
        return logs.min(axis=0), logs.max(axis=0)

    def _features(self, keys: list[str], lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """(n, width): parameter features and the log costs min-max scaled (the GP may use capacity)."""
        x = np.array([self.rows[k] for k in keys], dtype=float).reshape(len(keys), self.width)
        n = len(self.cost_metrics)
        x[:, -n:] = (x[:, -n:] - lo) / np.where(hi > lo, hi - lo, 1.0)
        return x

    def _history(self, trials: "list[FrozenTrial]") -> History:
        """Observations: COMPLETE values; PRUNED curves plus the typical gain still to come (val_acc only);
        FAIL(error) at the worst value (off the front); RUNNING ones pending. Configurations that don't
        resolve are left out."""
        from optuna.trial import TrialState

        metric = self.space.objectives[self.index].metric
        complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None]
        finals = [t.values[self.index] for t in complete]
        curves = [list(t.user_attrs.get(st.CURVE) or []) for t in complete]
        offsets = pruned_offsets(curves, finals, self.space.budget.max_epochs)
        h = History([], [], [], [], [])
        errors = []
        for t in trials:
            key = self._know(t.params)
            if self.prices[key] is None:
                continue
            h.tried.append(key)
            curve = t.user_attrs.get(st.CURVE) or []
            if t.state == TrialState.COMPLETE and t.values is not None and math.isfinite(t.values[self.index]):
                self._observe(h, key, self.sign * t.values[self.index], True)
            elif (t.state == TrialState.PRUNED and metric == VAL_ACC and curve and curve[-1] is not None
                  and len(curve) <= len(offsets)):
                self._observe(h, key, self.sign * (curve[-1] + offsets[len(curve) - 1]), True)
            elif t.state == TrialState.FAIL and t.user_attrs.get(st.FAIL_REASON) == "error":
                errors.append(key)
            elif t.state == TrialState.RUNNING:
                h.pending.append(key)
        for key in errors if h.values else []:
            self._observe(h, key, min(h.values), False)
        return h

    @staticmethod
    def _observe(h: History, key: str, value: float, on_front: bool) -> None:
        h.observed.append(key)
        h.values.append(value)
        h.on_front.append(on_front)

    def _spread(self, features: np.ndarray, tried: np.ndarray) -> int:
        """The candidate farthest (its nearest neighbour) from every configuration tried; the first at random."""
        if len(tried) == 0:
            return int(self.rng.integers(0, len(features)))
        gaps = np.sqrt(((features[:, None, :] - tried[None, :, :]) ** 2).sum(axis=2)).min(axis=1)
        return self._argmax(gaps)

    def _argmax(self, scores: np.ndarray) -> int:
        """The index of the best score, ties broken at random."""
        best = np.flatnonzero(scores >= scores.max() - 1e-12 * max(1.0, abs(scores.max())))
        return int(self.rng.choice(best))

    def _fit(self, x: np.ndarray, y: np.ndarray) -> GP:
        """The GP on the observations, warm-started from the last fit (random restarts on the first)."""
        if self.theta is None or len(self.theta) != x.shape[1] + 2:
            lows, highs = np.array([LOG_BOUNDS["lengthscale"]] * x.shape[1] + [LOG_BOUNDS["signal"],
                                                                                LOG_BOUNDS["noise"]]).T
            starts = [default_theta(x.shape[1])] + [self.rng.uniform(lows, highs) for _ in range(2)]
        else:
            starts = [self.theta]
        gp = fit_gp(x, y, starts)
        self.theta = gp.theta
        return gp

    def _scores(self, h: History, fresh: list[str], features: np.ndarray, lo: np.ndarray,
                hi: np.ndarray) -> np.ndarray:
        """EHVI of each candidate, in normalised minimisation form (accuracy min-max over the observations,
        log costs min-max over the candidates, the reference 10 % beyond the worst)."""
        values = np.array(h.values)
        centre, spread = values.mean(), values.std() or 1.0
        low, span = values.min(), (values.max() - values.min()) or 1.0
        gp = self._fit(self._features(h.observed, lo, hi), (values - centre) / spread)
        pending = self._features(h.pending, lo, hi)
        mu, sd = gp.believe(pending).predict(features)
        to_unit = lambda m: (m * spread + centre - low) / span
        on_front = np.array(h.on_front, dtype=bool)
        front_acc = np.concatenate([(values[on_front] - low) / span,
                                    to_unit(gp.predict(pending)[0]) if len(pending) else []])
        cost_columns = [self.width - len(self.cost_metrics) + c for c in self.costs]
        front_cost = np.vstack([self._features(h.observed, lo, hi)[on_front], pending])[:, cost_columns]
        keep = ~dominance(np.column_stack([-front_acc, front_cost])).any(axis=0)
        ref = np.array([-MARGIN] + [1.0 + MARGIN] * len(self.costs))
        return ehvi(to_unit(mu), sd * spread / span, features[:, cost_columns], front_acc[keep], front_cost[keep], ref)
