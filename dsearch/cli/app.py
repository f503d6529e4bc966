"""The `dsearch` typer app, `--set` parsing, and `main`: errors become one line and exit 2.

Each sub-command lives in the module of its name (cli/model.py, cli/train.py, ...), which registers
itself on `app`; cli/__init__.py imports them all.
"""

from __future__ import annotations

import sys

import typer

from ..errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Search DenseNet architectures and training hyperparameters.")

try:  # typer ≥ 0.20 vendors click
    from typer._click import exceptions as _click_exc
except ImportError:  # pragma: no cover
    from click import exceptions as _click_exc


@app.callback()
def _root() -> None:
    """Search DenseNet architectures and training hyperparameters; see README.md."""


def parse_sets(sets: list[str] | None, default_prefix: str = "") -> dict:
    """`key=value` pairs, values parsed as YAML; a bare key gets `default_prefix`."""
    import yaml

    out: dict = {}
    for item in sets or []:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected key=value (e.g. --set growth_rate=12)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if default_prefix and "." not in key:
            key = default_prefix + key
        try:
            out[key] = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise UserError(f"--set {item!r}: value is not valid YAML ({e.__class__.__name__})") from None
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the app; UserError / validation errors → `dsearch: error: ...`, exit 2."""
    from pydantic import ValidationError

    from ..strict import format_validation_error

    try:
        app(args=argv, standalone_mode=False, prog_name="dsearch")
    except UserError as e:
        print(f"dsearch: error: {e}", file=sys.stderr)
        return 2
    except ValidationError as e:
        print(f"dsearch: error: {format_validation_error(e)}", file=sys.stderr)
        return 2
    except typer.Abort:
        print("dsearch: error: aborted", file=sys.stderr)
        return 130
    except _click_exc.ClickException as e:
        if type(e).__name__ == "NoArgsIsHelpError":
            print(e.format_message())
            return 0
        hint = f"dsearch {e.ctx.info_name} --help" if getattr(e, "ctx", None) else "dsearch --help"
        hint = hint.replace("dsearch dsearch", "dsearch")
        print(f"dsearch: error: {e.format_message()} (see {hint})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dsearch: error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
