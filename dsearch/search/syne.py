"""Syne Tune's multi-objective ASHA (`MOASHA`) as a rung rule: the `syne-moasha` anchor of `dsearch replay`.

The anchor is what a user gets who wires Syne Tune by hand, so the library's own class decides, through its
public scheduler interface (`on_trial_add`, `on_trial_result` → CONTINUE / STOP), with its defaults: one bracket,
non-dominated sort then an ε-net inside a front (`NonDominatedPriority`), rungs at grace · rf^k below max_t.
Nothing of its rule is rewritten here. Syne Tune is optional (`pip install syne-tune`) and imported lazily.

Known behaviour of Syne Tune 0.16.0 (see tests/test_syne.py and DESIGN.md): its `Bracket.on_result` takes the
ordering `nondominated_sort` returns (trial indices, best first) as per-trial scores, so the new trial's decision
is read from the *index of the rung's worst trial*, not from its own place. A trial that dominates every vector
at its rung can be stopped; one dominated by all others is stopped (as it is last). Decisions also depend on the
order trials reached the rung (their index), so `rebuild` replays lines in number order, the arrival order of a
search that runs one trial at a time.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Iterable

from ..errors import UserError
from ..metrics import EPOCH, MACS, MAXIMIZE, PARAMS, VAL_ACC

if TYPE_CHECKING:
    from .schema import SearchSpace

RUNG_METRICS = (VAL_ACC, PARAMS, MACS)     # what a rung rule is told: val_acc per epoch, params and MACs fixed
_CREATED = datetime(1970, 1, 1)            # Syne Tune's Trial wants a creation time; MOASHA never reads it


class SyneMOASHA:
    """Syne Tune's own `MOASHA` on the space's objectives (val_acc at the trial's current epoch, params, MACs),
    its rungs at grace · rf^k below max_epochs (Syne Tune's placement: 300/10/3 gives 10, 30, 90 and 270).

    MOASHA minimises every metric (`do_minimize` is one flag), so maximised objectives are told negated.
    The grace period is the space's first rung, as for Ray's ASHA anchor (no rung: the full budget)."""

    def __init__(self, space: "SearchSpace") -> None:
        try:
            from syne_tune.backend.trial_status import Trial
            from syne_tune.optimizer.scheduler import SchedulerDecision
            from syne_tune.optimizer.schedulers.multiobjective.moasha import MOASHA
        except ImportError as e:
            raise ImportError(f"the syne-moasha rung rule needs Syne Tune ({e}); install it with "
                              "`pip install syne-tune` (or `pip install 'dsearch[bench]'`)") from e

        unknown = [o.metric for o in space.objectives if o.metric not in RUNG_METRICS]
        if unknown:
            raise UserError(f"syne-moasha ranks rungs on {', '.join(RUNG_METRICS)} only; the space's objectives "
                            f"include {', '.join(unknown)}: drop them or use another method")
        b = space.budget
        self.metrics = [o.metric for o in space.objectives]
        self.signs = [-1.0 if o.direction == MAXIMIZE else 1.0 for o in space.objectives]
        grace = b.milestones[0] if b.milestones else b.max_epochs
        # random_seed given: an unseeded TrialScheduler draws its seed from numpy's global generator.
        self.scheduler = MOASHA(config_space={}, metrics=self.metrics, do_minimize=True, time_attr=EPOCH,
                                max_t=b.max_epochs, grace_period=grace, reduction_factor=b.reduction_factor,
                                brackets=1, random_seed=0)
        self._trial, self._go = Trial, SchedulerDecision.CONTINUE
        self.trials: dict[int, Any] = {}       # line → Syne Tune Trial

    def result(self, curve: list[float], fixed: dict[str, float]) -> dict[str, float]:
        """The report Syne Tune is told for epoch len(curve): every objective in minimisation form."""
        values = {VAL_ACC: curve[-1], **fixed}
        return {EPOCH: len(curve), **{m: s * float(values[m]) for m, s in zip(self.metrics, self.signs)}}

    def on_report(self, line: int, curve: list[float], fixed: dict[str, float]) -> bool:
        trial = self.trials.get(line)
        if trial is None:
            import numpy as np

            trial = self.trials[line] = self._trial(trial_id=line, config={}, creation_time=_CREATED)
            # on_trial_add draws the bracket from numpy's global generator (even with one bracket): leave the
            # global state as it was, so that the rule draws nothing other code (a sampler, a replay) may share.
            state = np.random.get_state()
            try:
                self.scheduler.on_trial_add(trial)
            finally:
                np.random.set_state(state)
        return self.scheduler.on_trial_result(trial, self.result(curve, fixed)) == self._go

    def rebuild(self, trials: Iterable[tuple[int, list[float], dict[str, float]]]) -> None:
        """Tell Syne Tune every epoch of the trials that ran before, line by line in the order given (the study's
        line order), as they were reported."""
        for line, curve, fixed in trials:
            for epoch in range(1, len(curve) + 1):
                if curve[epoch - 1] is None:
                    break
                self.on_report(line, list(curve[:epoch]), fixed)
