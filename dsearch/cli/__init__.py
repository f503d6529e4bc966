"""The `dsearch` command line: one module per sub-command, each registering itself on the typer app."""

from . import dashboard, export, model, pareto, replay, reuse, run, status, train  # noqa: F401  (registers commands)
from .app import app, main

__all__ = ["app", "main"]
