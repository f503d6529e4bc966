"""The `dsearch` typer app, `--set` parsing, and `main`: every failure becomes one line on stderr.

Each sub-command lives in the module of its name (cli/model.py, cli/train.py, ...), which registers
itself on `app`; cli/__init__.py imports them all.

Exit status: 0 done; 2 bad input (UserError, a config's ValidationError, a bad flag, a path that can't
be used: `dsearch: error: <what, where, how to fix>`); 1 anything else, which is a bug or an unexpected
failure (one line naming the exception and the log file that holds its traceback; `dsearch --verbose
COMMAND` prints the traceback instead), or a run whose every trial failed, or whose database stopped answering
(one line saying how to continue); 3 a run that lost its study's lease to another driver (LeaseLost);
130 interrupted (Ctrl-C); 128 + N a run stopped by signal N.
"""

from __future__ import annotations

import errno
import sys
import traceback

import typer

from ..errors import DatabaseUnreachable, LeaseLost, RunFailed, RunInterrupted, UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Search DenseNet architectures and training hyperparameters.")

try:  # typer ≥ 0.20 vendors click
    from typer._click import exceptions as _click_exc
except ImportError:  # pragma: no cover
    from click import exceptions as _click_exc

_options: dict = {"verbose": False, "argv": []}   # set by main and the root callback

# OSErrors about a path the user named (a folder that is a file, no permission, a full disk): bad input.
_PATH_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR,
                errno.EISDIR, errno.EEXIST, errno.ENOENT, errno.ENAMETOOLONG, errno.ELOOP}


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose",
                                       help="on an unexpected error, print its traceback (not only the log "
                                            "file's path)")) -> None:
    """Search DenseNet architectures and training hyperparameters; see README.md."""
    _options["verbose"] = verbose


def parse_sets(sets: list[str] | None, default_prefix: str = "") -> dict:
    """`key=value` pairs, values parsed as YAML 1.2 (as space files are: `off` is a string, `1e-4` a
    number); a bare key gets `default_prefix`."""
    import yaml

    from ..search.io import load_yaml    # YAML 1.2, as the space files

    out: dict = {}
    for item in sets or []:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected key=value (e.g. --set growth_rate=12)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise UserError(f"--set {item!r}: the key is empty; expected key=value (e.g. --set growth_rate=12)")
        if default_prefix and "." not in key:
            key = default_prefix + key
        try:
            out[key] = load_yaml(raw)
        except yaml.YAMLError as e:
            problem = " ".join(str(getattr(e, "problem", None) or e.__class__.__name__).split())
            raise UserError(f"--set {item!r}: value is not valid YAML ({problem}); quote it for a string, "
                            f"e.g. --set '{key}=\"...\"'") from None
    return out


def _one_line(e: BaseException) -> str:
    """`Type: first line of the message` (at most 300 characters)."""
    text = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _unexpected(e: BaseException) -> int:
    """Not the user's fault: one line naming the exception and where its traceback is; exit 1.

    The traceback goes to a new file in the system's temp folder (dsearch-XXXX.log), or with --verbose to
    stderr, above the line.
    """
    import tempfile

    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    what = f"dsearch: error: {_one_line(e)} (a bug or an unexpected failure; the traceback is"
    if not _options["verbose"]:
        try:
            fd, log = tempfile.mkstemp(prefix="dsearch-", suffix=".log")
            with open(fd, "w") as f:
                f.write(f"dsearch {' '.join(_options['argv'])}\n\n{tb}")
        except OSError:
            what += " above; no log file could be written"
        else:
            print(f"{what} in {log})", file=sys.stderr)
            return 1
    else:
        what += " above"
    sys.stderr.write(tb)
    print(f"{what})", file=sys.stderr)
    return 1


def _interrupted(e: BaseException | None) -> bool:
    """Whether an exception is, or was raised because of, Ctrl-C."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def _invoke(argv: list[str] | None) -> int:
    """Parse and run the command. Not `app(...)`: click's `main` turns EOFError into Abort (after
    printing an empty line on stderr) and KeyboardInterrupt into a silent exit code; here both reach
    `main` as what they are."""
    command = typer.main.get_command(app)
    args = _options["argv"] = list(sys.argv[1:] if argv is None else argv)
    try:
        with command.make_context("dsearch", args) as ctx:
            command.invoke(ctx)
    except typer.Exit as e:           # --help, ctx.exit(code)
        return e.exit_code
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the app; every failure is one line on stderr (see the module docstring)."""
    from pydantic import ValidationError

    from ..strict import format_validation_error

    _options["verbose"] = False
    try:
        return _invoke(argv)
    except UserError as e:
        print(f"dsearch: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except ValidationError as e:
        print(f"dsearch: error: {format_validation_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dsearch: error: interrupted", file=sys.stderr)
        return 130
    except RunInterrupted as e:       # `dsearch run` stopped on a signal, its study in order
        print(f"dsearch: interrupted by {e}", file=sys.stderr)
        return e.exit_code
    except LeaseLost as e:            # another driver runs the study now: this one stopped, touching nothing
        print(f"dsearch: error: {e}", file=sys.stderr)
        return e.exit_code
    except (RunFailed, DatabaseUnreachable) as e:    # the study is in order; the setup, or the database, is not
        print(f"dsearch: error: {e}", file=sys.stderr)
        return 1
    except typer.Abort as e:          # raised by a command (e.g. a declined prompt), not by Ctrl-C
        if _interrupted(e):
            print("dsearch: error: interrupted", file=sys.stderr)
            return 130
        print("dsearch: error: aborted", file=sys.stderr)
        return 1
    except _click_exc.ClickException as e:
        if type(e).__name__ == "NoArgsIsHelpError":
            print(e.format_message())
            return 0
        hint = f"dsearch {e.ctx.info_name} --help" if getattr(e, "ctx", None) else "dsearch --help"
        hint = hint.replace("dsearch dsearch", "dsearch")
        message = " ".join(e.format_message().split())
        print(f"dsearch: error: {message} (see {hint})", file=sys.stderr)
        return 2
    except BrokenPipeError:           # `dsearch model --list | head`: the reader went away
        try:
            sys.stdout = open("/dev/null", "w")   # so the interpreter's final flush doesn't fail too
        except OSError:
            pass
        return 1
    except OSError as e:
        if e.errno in _PATH_ERRNOS and e.filename is not None:
            where = f"{e.filename} → {e.filename2}" if e.filename2 else str(e.filename)
            print(f"dsearch: error: {where}: {e.strerror or _one_line(e)} (check the path and its "
                  "permissions)", file=sys.stderr)
            return 2
        return _unexpected(e)
    except Exception as e:
        return _unexpected(e)


if __name__ == "__main__":
    sys.exit(main())
