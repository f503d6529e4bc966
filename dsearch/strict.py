"""The pydantic base of every config (an unknown key is an error), and how its errors read: one line.

`format_validation_error` is the one formatter: the first error as `key: rule` (plus "(and N more)"),
unknown keys first: a misspelt key also makes the key it was meant to be "missing", and the typo is the
error to fix.
A caller that knows more about where an error sits (which keys are allowed there) passes `fields_at`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pydantic import BaseModel, ConfigDict

from .errors import ConfigError, did_you_mean

FieldsAt = Callable[[Sequence[str]], Sequence[str]]
_FIELD_MSG = re.compile(r"^[A-Za-z_]\w*: ")


class StrictModel(BaseModel):
    """extra="forbid": a typo in a key is an error naming it; defaults are validated too."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


def describe_error(e: dict, *, prefix: Sequence[str] = (), fields_at: FieldsAt | None = None) -> str:
    """One pydantic error dict as `dotted.key: rule`; `prefix` is prepended to its location."""
    loc = [*prefix, *(str(p) for p in e.get("loc", ()))]
    where, kind = ".".join(loc), e.get("type", "")
    msg = str(e.get("msg", "")).removeprefix("Value error, ")
    inner = (e.get("ctx") or {}).get("error")
    if isinstance(inner, ConfigError):      # our own rules already name their key
        text = str(inner)
        return text if not loc or text.startswith(loc[0] + ".") else f"{where}: {text}"
    if kind == "extra_forbidden":
        fields = list(fields_at(loc)) if fields_at else []
        return (f"{where}: unknown key (allowed: {', '.join(fields)}{did_you_mean(loc[-1], fields)})"
                if fields else f"{where}: unknown key")
    if kind == "missing":
        return f"{where}: missing (required)"
    if _FIELD_MSG.match(msg) and where:      # a validator's `field: rule` below this location
        return f"{where}.{msg}"
    got = e.get("input")
    if kind != "value_error" and isinstance(got, (str, int, float, bool, type(None))):
        msg += f" (got {got!r})"
    return f"{where}: {msg}" if where else msg


def format_validation_error(exc: Exception, source: str = "", *, prefix: Sequence[str] = (),
                            fields_at: FieldsAt | None = None,
                            describe: Callable[[dict], str] | None = None) -> str:
    """A ValidationError (or any exception) as one line: `source: key: rule (and N more)`."""
    where = f"{source}: " if source else ""
    errors = exc.errors() if callable(getattr(exc, "errors", None)) else None
    if not errors:
        return where + str(exc)
    describe = describe or (lambda e: describe_error(e, prefix=prefix, fields_at=fields_at))
    errors = sorted(errors, key=lambda e: e.get("type") != "extra_forbidden")   # stable: typos first
    more = len({tuple(e.get("loc", ())) for e in errors}) - 1
    return where + describe(errors[0]) + (f" (and {more} more)" if more > 0 else "")
