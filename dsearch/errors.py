"""The one exception type the CLI turns into `dsearch: error: ...` and exit status 2."""


class UserError(Exception):
    """Bad input: a message that says what, where, and how to fix it, in one line."""
