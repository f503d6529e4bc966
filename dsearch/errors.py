"""The errors a user can fix, and the one "did you mean" hint they share.

The CLI turns a UserError into `dsearch: error: ...` and exit status 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Bad input: a message that says what, where, and how to fix it, in one line."""


class ConfigError(UserError, ValueError):
    """A configuration that breaks a rule; the message names the field and the rule (`model.depth: ...`)."""


def did_you_mean(word: object, options: Iterable[object]) -> str:
    """'; did you mean X?' for the closest option (difflib, cutoff 0.6), or ''; goes at the end of a message."""
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


class RunInterrupted(Exception):
    """A run stopped by a signal after putting its study in order; the CLI exits 128 + the signal number."""

    summary: dict | None = None        # the study's summary once it is in order (search/session.py sets it)

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class RunFailed(Exception):
    """A run in which every trial that trained failed (a broken setup, not bad luck); the CLI exits 1.

    The study is in order: the trials are recorded FAIL with their errors.
    """

    summary: dict | None = None        # the study's summary (search/session.py sets it)


class LeaseLost(Exception):
    """A run that lost its study's lease to another driver (or could not renew it for the lease's timeout): it
    stopped without touching the study's trials, which the other driver now runs; the CLI exits 3."""

    exit_code = 3


class DatabaseUnreachable(Exception):
    """The study's database did not answer for the whole retry window (or the run stopped waiting for it): the
    run stopped, and its unfinished trials stay RUNNING, queued again by the next run. Neither bad input nor a
    bug: the CLI prints the one line, which says how to continue, and exits 1."""
