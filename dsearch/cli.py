"""The `dsearch` command: one thin function per sub-command; errors become one line and exit 2."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from .errors import UserError

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


@app.command()
def model(
    preset: Optional[str] = typer.Argument(None, help="preset name (see `dsearch model --list`)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="key=value model override (repeatable)"),
    input: Optional[str] = typer.Option(None, "--input", help="input size CxHxW, e.g. 3x32x32"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    list_: bool = typer.Option(False, "--list", help="list the presets"),
) -> None:
    """Architecture, channel schedule, params and MACs of a DenseNet."""
    from .describe import describe_command

    describe_command(preset, parse_sets(set_), input, as_json, list_)


@app.command()
def train(
    preset: Optional[str] = typer.Argument(None, help="preset name (optional; see `dsearch model --list`)"),
    dataset: str = typer.Option("cifar10", "--dataset", help="cifar10, cifar100, svhn, imagenet, fashion_mnist, "
                                "mnist or synthetic"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="folder holding the dataset's files, or a "
                                            "torchvision-style root (default: $DSEARCH_DATA, standard places)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="key=value, value as YAML; model.*, train.*, "
                                             "data.* (bare key: model.*), repeatable"),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="epochs (default: the paper's for the dataset)"),
    subset: Optional[int] = typer.Option(None, "--subset", help="training images, drawn stratified after the "
                                         "validation split"),
    final: bool = typer.Option(False, "--final", help="train on train+val, report test accuracy once"),
    resume: bool = typer.Option(False, "--resume", help="continue from OUT/checkpoint.pt"),
    out: Optional[Path] = typer.Option(None, "--out", help="output folder (default runs/PRESET-DATASET)"),
    download: bool = typer.Option(False, "--download", help="fetch missing data with torchvision's downloaders"),
) -> None:
    """Train one DenseNet under the paper's protocol; writes metrics.csv and summary.json."""
    from .progress import train_command

    train_command(preset, dataset, parse_sets(set_, default_prefix="model."), data_dir=data_dir, epochs=epochs,
                  subset=subset, final=final, resume=resume, out=out, download=download)


# Sub-commands of later modules are registered here (train, run, pareto, dashboard, export).


@app.command()
def pareto(
    study_dir: Path = typer.Argument(..., help="study directory, e.g. studies/c10"),
    objectives: Optional[str] = typer.Option(None, "--objectives",
                                             help="comma list, a subset of the study's (default: all)"),
    csv: Optional[Path] = typer.Option(None, "--csv", help="front as CSV (default: STUDY_DIR/pareto.csv)"),
    html: Optional[Path] = typer.Option(None, "--html", help="plots as HTML (default: STUDY_DIR/pareto.html)"),
    reference: Optional[str] = typer.Option(
        None, "--reference", help="hypervolume reference point, comma list in objective order (raw units; "
                                  "default: space.yaml's, else 0 / 1.1 × the largest)"),
    include_partial: bool = typer.Option(False, "--include-partial",
                                         help="add PRUNED trials at their last epoch"),
    storage: Optional[str] = typer.Option(None, "--storage", help="Optuna RDB URL (default: SQLite in the study dir)"),
) -> None:
    """The Pareto front of full-budget trials: table, hypervolume, CSV, HTML, dashboard figures."""
    from .report import pareto_command

    pareto_command(study_dir, storage, objectives, csv, html, reference, include_partial)


@app.command()
def dashboard(
    study_dir: Path = typer.Argument(..., help="study directory, e.g. studies/c10"),
    port: int = typer.Option(8080, "--port", help="port on 127.0.0.1"),
    storage: Optional[str] = typer.Option(None, "--storage", help="Optuna RDB URL (default: SQLite in the study dir)"),
) -> None:
    """Serve the study in optuna-dashboard on 127.0.0.1 (Ctrl-C stops it)."""
    from .report import dashboard_command

    dashboard_command(study_dir, storage, port)


@app.command()
def export(
    study_dir: Path = typer.Argument(..., help="study directory, e.g. studies/c10"),
    trial: int = typer.Option(..., "--trial", help="Optuna trial number"),
    out: Path = typer.Option(..., "--out", help="folder to write model.pt, config.json, trial.json"),
    storage: Optional[str] = typer.Option(None, "--storage", help="Optuna RDB URL (default: SQLite in the study dir)"),
) -> None:
    """A trial's weights and resolved config, loadable with dsearch.load_model(OUT)."""
    from .export import export_command

    export_command(study_dir, trial, out, storage)


@app.command()
def run(
    space: Path = typer.Argument(..., help="search space YAML, e.g. spaces/cifar_bc.yaml"),
    study_dir: Optional[Path] = typer.Option(None, "--study-dir", help="default: studies/<name>"),
    storage: Optional[str] = typer.Option(None, "--storage", help="Optuna RDB URL (default: SQLite in the study dir)"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="existing Ray cluster (default: local)"),
    cpus_per_trial: Optional[float] = typer.Option(None, "--cpus-per-trial", help="override resources.cpu"),
    gpus_per_trial: Optional[float] = typer.Option(None, "--gpus-per-trial", help="override resources.gpu"),
    quiet: bool = typer.Option(False, "--quiet", help="no live table"),
) -> None:
    """Run (or continue) a search: Ray Tune + ASHA trials recorded in an Optuna study."""
    from .search import print_summary, run_command

    print_summary(run_command(space, study_dir, storage, ray_address, cpus_per_trial, gpus_per_trial, quiet))


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the app; UserError / validation errors → `dsearch: error: ...`, exit 2."""
    from pydantic import ValidationError

    from .config import format_validation_error

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
