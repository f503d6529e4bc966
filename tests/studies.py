"""Hand-made studies for tests: empty Optuna studies shaped as `dsearch run` makes them."""

import warnings

import optuna

METRICS = ["val_acc", "params", "macs"]
DIRECTIONS = ["maximize", "minimize", "minimize"]


def new_study(name: str | None = None, storage: str | None = None) -> optuna.Study:
    """An empty study with dsearch's three objectives (val_acc ↑, params ↓, macs ↓) and their metric names."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, directions=DIRECTIONS, storage=storage)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(METRICS)
    return study
