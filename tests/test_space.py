"""Search spaces: the shipped files, sampling, resolving to a RunConfig, and one-line errors."""

from __future__ import annotations

import copy
from pathlib import Path

import optuna
import pytest
import yaml

from dsearch.errors import ConfigError
from dsearch.search.io import SpaceError, diff_spaces, dump_space, load_space, parse_space
from dsearch.search import pricing
from dsearch.search.pricing import check_constraints
from dsearch.search.sampling import (decode_params, encode_params, resolve, seed_params,
                                     suggest)

SPACES = Path(__file__).resolve().parents[1] / "spaces"
SHIPPED = sorted(SPACES.glob("*.yaml"))


class FakeTrial:
    """Optuna's define-by-run methods, deterministic: `pick` by name, else the low end / first choice."""

    def __init__(self, pick: dict | None = None):
        self.pick, self.asked = pick or {}, {}

    def suggest_int(self, name, low, high, *, step=1, log=False):
        assert isinstance(low, int) and isinstance(high, int) and low <= high
        self.asked[name] = ("int", low, high, step, log)
        return self.pick.get(name, low)

    def suggest_float(self, name, low, high, *, step=None, log=False):
        self.asked[name] = ("float", low, high, step, log)
        return self.pick.get(name, low)

    def suggest_categorical(self, name, choices):
        # Optuna's rule: choices are None, bool, int, float or str.
        assert all(c is None or isinstance(c, (bool, int, float, str)) for c in choices), choices
        self.asked[name] = ("categorical", list(choices))
        return self.pick.get(name, choices[0])


def quickstart_dict() -> dict:
    return yaml.safe_load((SPACES / "quickstart.yaml").read_text())


def space_from(d: dict, tmp_path: Path, name: str = "x.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return load_space(path)


# --- shipped spaces ---------------------------------------------------------------------------

def test_the_five_spaces_are_shipped():
    assert {p.name for p in SHIPPED} >= {"cifar_bc.yaml", "cifar_basic.yaml", "svhn.yaml",
                                         "imagenet_bc.yaml", "quickstart.yaml"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_space_loads_and_its_seeds_resolve(path):
    space = load_space(path)
    assert parse_space(dump_space(space)) == space
    for seed in space.seed_trials:
        resolve(space, seed)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_suggest_at_either_end_of_every_range_gives_params_inside_the_space(path):
    space = load_space(path)
    for end in ("low", "high"):
        trial = FakeTrial({k: (p.choices[-1] if p.type == "categorical" else getattr(p, end))
                           for k, p in space.params.items()})
        trial.pick = encode_params(space, trial.pick)
        params = suggest(space, trial)
        assert set(params) <= set(space.params)
        assert set(params) == set(trial.asked)


def test_cifar_bc_is_study_c10_with_the_paper_protocol():
    space = load_space(SPACES / "cifar_bc.yaml")
    assert space.name == "c10"
    assert space.data.name == "cifar10" and space.data.augment
    assert space.budget.max_epochs == 300
    assert (space.resources.cpu, space.resources.gpu) == (4, 1)
    assert space.metrics == ["val_acc", "params", "macs"]
    assert space.directions == ["maximize", "minimize", "minimize"]
    assert space.seed_trials[0]["model.depth"] == 100 and space.seed_trials[0]["model.growth_rate"] == 12


def test_quickstart_is_a_small_cpu_search_on_fashion_mnist():
    space = load_space(SPACES / "quickstart.yaml")
    assert space.data.name == "fashion_mnist"
    assert (space.resources.cpu, space.resources.gpu) == (1, 0)
    assert space.budget.max_concurrent_trials == 2
    # Pareto-aware, one rung, and it comes after the first lr drop: it ranks on less noise than before it.
    from dsearch.training.schedule import schedule_lr

    assert space.scheduler == "moasha" and space.milestones == [2] and space.sampler_type == "ehvi"
    run = resolve(space, {"model.depth": 16, "model.growth_rate": 8, "train.lr": 0.1})
    assert [schedule_lr(e, run.train) for e in range(4)] == pytest.approx([0.1, 0.01, 0.01, 0.001])


def test_cifar_bc_rungs_leave_no_trial_stopped_at_90_percent_of_its_budget():
    space = load_space(SPACES / "cifar_bc.yaml")
    assert space.milestones == [151]                        # one epoch after the first lr drop, at 150 of 300
    grace = parse_space((SPACES / "cifar_bc.yaml").read_text().replace("num_samples: 64,", "num_samples: 64, "
                                                                         "grace_period: 10,"))
    assert grace.milestones == [10, 30, 90]                 # grace · 3^k; Ray's ASHA would add 270 of 300


def test_exponent_floats_without_a_dot_or_sign_are_numbers():
    # PyYAML (YAML 1.1) reads `2.0e6` and `1e-4` as strings; spaces read them as YAML 1.2 does.
    text = (SPACES / "quickstart.yaml").read_text()
    text = text.replace("max_params: 1.0e5", "max_params: 2.0e6").replace("low: 0.05", "low: 5e-2")
    assert yaml.safe_load(text)["constraints"]["max_params"] == "2.0e6"
    space = parse_space(text)
    assert space.constraints.max_params == 2.0e6
    assert space.params["train.lr"].low == 0.05


# --- sampling and resolving -------------------------------------------------------------------

def test_fixed_densenet_bc_depth_100_k12_resolves_to_three_blocks_of_16():
    space = load_space(SPACES / "cifar_bc.yaml")
    run = resolve(space, {"model.depth": 100, "model.growth_rate": 12, "model.compression": 0.5,
                          "model.bottleneck_width": 4, "train.lr": 0.1, "train.weight_decay": 1e-4})
    assert run.model.block_layers == (16, 16, 16)
    assert run.model.bottleneck and run.model.compression == 0.5 and run.model.init_features == 24
    assert run.train.epochs == 300 and run.train.batch_size == 64 and run.train.lr == 0.1
    assert (run.model.in_channels, run.model.num_classes) == (3, 10)


def test_dataset_gives_input_channels_and_classes():
    run = resolve(load_space(SPACES / "quickstart.yaml"), {"model.depth": 16, "model.growth_rate": 8})
    assert (run.model.in_channels, run.model.num_classes) == (1, 10)
    assert run.model.block_layers == (2, 2, 2)


def test_params_are_sampled_in_file_order_with_their_distributions():
    space = load_space(SPACES / "cifar_bc.yaml")
    trial = FakeTrial()
    suggest(space, trial)
    assert list(trial.asked) == list(space.params)
    assert trial.asked["model.depth"] == ("int", 40, 250, 6, False)
    assert trial.asked["train.lr"] == ("float", 0.02, 0.3, None, True)


def test_conditional_params_are_skipped_when_their_condition_is_false():
    space = load_space(SPACES / "svhn.yaml")
    basic = suggest(space, FakeTrial({"model.variant": "densenet"}))
    assert "model.compression" not in basic and "model.bottleneck_width" not in basic
    bc = suggest(space, FakeTrial({"model.variant": "densenet-bc"}))
    assert {"model.compression", "model.bottleneck_width"} <= set(bc)
    assert resolve(space, bc).model.bottleneck


def test_a_depth_that_doesnt_fit_the_sampled_variant_is_rejected_with_the_rule(tmp_path):
    d = quickstart_dict()
    d["fixed"].pop("model.variant")
    d["params"] = {"model.variant": {"type": "categorical", "choices": ["densenet", "densenet-bc"]},
                   "model.depth": {"type": "int", "low": 10, "high": 13}}
    d["seed_trials"] = []
    space = space_from(d, tmp_path)
    assert resolve(space, {"model.variant": "densenet", "model.depth": 13}).model.block_layers == (3, 3, 3)
    with pytest.raises(ConfigError, match=r"model\.depth: L=13 doesn't fit.*nearest valid depths: 10, 16"):
        resolve(space, {"model.variant": "densenet-bc", "model.depth": 13})


def test_compression_of_one_contradicts_a_compressing_variant(tmp_path):
    d = quickstart_dict()
    d["params"]["model.compression"]["high"] = 1.0
    space = space_from(d, tmp_path)
    with pytest.raises(ConfigError, match="model.compression: 1.0 contradicts variant densenet-bc"):
        resolve(space, {"model.depth": 16, "model.compression": 1.0})


def test_list_choices_reach_optuna_as_strings_and_come_back_as_lists():
    space = load_space(SPACES / "imagenet_bc.yaml")
    trial = FakeTrial({"model.block_layers": "[6, 12, 32, 32]"})
    params = suggest(space, trial)
    assert trial.asked["model.block_layers"][1][0] == "[6, 12, 24, 16]"
    assert params["model.block_layers"] == [6, 12, 32, 32]
    run = resolve(space, encode_params(space, params))  # Optuna's form resolves too
    assert run.model.block_layers == (6, 12, 32, 32) and run.model.stem == "imagenet"
    assert run.model.depth == 169


def test_seed_trials_round_trip_through_an_optuna_study():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space(SPACES / "imagenet_bc.yaml")
    encoded = seed_params(space)
    assert encoded[0]["model.block_layers"] == "[6, 12, 24, 16]"
    assert decode_params(space, encoded[0]) == space.seed_trials[0]
    study = optuna.create_study(directions=space.directions)
    for params in encoded:
        study.enqueue_trial(params)
    for seed in space.seed_trials:
        assert suggest(space, study.ask()) == seed


def test_unknown_param_in_resolve_is_refused():
    space = load_space(SPACES / "quickstart.yaml")
    with pytest.raises(ConfigError, match="model.grwth_rate: not a parameter"):
        resolve(space, {"model.grwth_rate": 8})


def test_constraints_report_what_is_over_budget(monkeypatch):
    monkeypatch.setattr(pricing, "count_params", lambda model: 150_000)
    monkeypatch.setattr(pricing, "count_macs", lambda model, input_size: 10 * input_size[0])
    space = load_space(SPACES / "quickstart.yaml")
    run = resolve(space, {"model.depth": 16})
    assert check_constraints(space, run) == "params 150,000 > constraints.max_params 100,000"
    space.constraints.max_params = 200_000
    assert check_constraints(space, run) is None


def test_densenet_bc_100_k12_is_over_a_700k_param_budget():
    space = load_space(SPACES / "cifar_bc.yaml")
    space.constraints.max_params, space.constraints.max_macs = 7.0e5, 3.0e8
    run = resolve(space, space.seed_trials[0])
    assert check_constraints(space, run) == "params 769,162 > constraints.max_params 700,000"


def test_diff_names_each_changed_key():
    a = load_space(SPACES / "cifar_bc.yaml")
    b = a.model_copy(deep=True)
    assert diff_spaces(a, b) == []
    b.budget.max_epochs = 200
    b.params["model.growth_rate"].high = 40
    assert diff_spaces(a, b) == ["budget.max_epochs: 300 → 200", "params.model.growth_rate.high: 48 → 40"]


# --- one-line errors --------------------------------------------------------------------------

def _set(path: str, value):
    """A mutation: set a (possibly nested) key; `params/model.depth/low` style paths."""
    def mutate(d):
        *parents, last = path.split("/")
        for p in parents:
            d = d[int(p)] if isinstance(d, list) else d[p]
        d[last] = value
    return mutate


def _drop(path: str):
    def mutate(d):
        *parents, last = path.split("/")
        for p in parents:
            d = d[p]
        del d[last]
    return mutate


BAD = [
    (_set("nmae", "x"), "nmae", "unknown key", "did you mean name?"),
    (_set("budget/max_epoch", 3), "budget.max_epoch", "unknown key", "did you mean max_epochs?"),
    (_set("resources/gpus", 1), "resources.gpus", "unknown key", "did you mean gpu?"),
    (_set("sampler/sed", 1), "sampler.sed", "unknown key", "did you mean seed?"),
    (_set("constraints/max_param", 1), "constraints.max_param", "unknown key", "did you mean max_params?"),
    (_set("objectives/0/goal", 1), "objectives.0.goal", "unknown key", "allowed: metric, direction"),
    (_set("params/model.depth/lw", 1), "params.model.depth.lw", "unknown key", "did you mean low?"),
    (_set("params/model.grwth_rate", {"type": "int", "low": 6, "high": 8}), "params.model.grwth_rate",
     "unknown parameter (model fields:", "did you mean model.growth_rate?"),
    (_set("params/train.lrr", {"type": "float", "low": 0.1, "high": 0.2}), "params.train.lrr",
     "unknown parameter (train fields:", "did you mean train.lr?"),
    (_set("params/data.val_size", {"type": "int", "low": 1, "high": 2}), "params.data.val_size",
     "can't be searched", "`data` section"),
    (_set("fixed/model.num_classes", 10), "fixed.model.num_classes", "comes from the dataset", ""),
    (_set("params/train.epochs", {"type": "int", "low": 1, "high": 2}), "params.train.epochs",
     "set by budget.max_epochs", ""),
    (_set("params/model.growth_rate/low", "six"), "params.model.growth_rate.low", "valid integer", "'six'"),
    (_set("params/model.growth_rate/low", 12), "params.model.growth_rate.low", "empty range", "12 > high 9"),
    (_set("params/train.lr/low", 0.0), "params.train.lr.log", "log scale needs low > 0", ""),
    (_set("params/train.lr/step", 0.01), "params.train.lr.log", "can't be combined with step", ""),
    (_set("params/model.depth/step", 4), "params.model.depth.step", "doesn't fit low..high", "6 is not a multiple of 4"),
    (_set("params/model.depth", {"type": "int", "low": 11, "high": 15}), "params",
     "no valid network", "L=11 doesn't fit"),
    (_set("objectives/0/metric", "val_accuracy"), "objectives.0.metric", "unknown metric", "did you mean val_acc?"),
    (_set("budget/grace_period", 9), "budget.grace_period", "9 > max_epochs 4", ""),
    (_set("budget/reduction_factor", 1), "budget.reduction_factor", "must be ≥ 2", ""),
    (_set("seed_trials/0/model.growth", 8), "seed_trials[0].model.growth", "not a searched parameter",
     "did you mean model.growth_rate?"),
    (_set("seed_trials/0/model.growth_rate", 40), "seed_trials[0].model.growth_rate", "outside the space",
     "int in [6, 9]"),
    (_set("params/model.compression/when", {"model.varaint": "densenet-bc"}),
     "params.model.compression.when.model.varaint", "unknown key", "did you mean model.variant?"),
    (_set("params/model.depth/when", {"model.growth_rate": 8}), "params.model.depth.when.model.growth_rate",
     "must come before", ""),
    (_set("params/model.dropout", {"type": "float", "low": 0.0, "high": 1.0}), "params.model.dropout",
     "high 1.0 is invalid", "must be in [0, 1)"),
    (_set("fixed/model.variant", "densenet-bcc"), "fixed.model.variant", "is not a valid model.variant", ""),
    (_set("params/model.init_features", {"type": "float", "low": 4, "high": 8}), "params.model.init_features",
     "takes no fractional values", "use type: int"),
    (_set("fixed/model.depth", 16), "params.model.depth", "also in fixed", ""),
    (_drop("params/model.depth/type"), "params.model.depth", "missing `type`", ""),
    (_set("params/model.depth/type", "integer"), "params.model.depth.type", "'integer' is not int", "did you mean int?"),
    (_set("params/model.dropout", 0.2), "params.model.dropout", "expected a spec", "goes under `fixed`"),
    (_drop("budget"), "budget", "missing", ""),
    (_set("sampler/type", "cmaes"), "sampler.type", "'tpe', 'nsga2', 'random', 'gp' or 'grid'", "'cmaes'"),
    (_set("data/augmnt", True), "data.augmnt", "unknown key", "did you mean augment?"),
    (_set("name", "a/b"), "name", "directory name", ""),
]


@pytest.mark.parametrize("mutate, key, rule, detail", BAD, ids=[b[1] + ":" + b[2] for b in BAD])
def test_a_bad_space_is_one_line_naming_file_key_and_rule(tmp_path, mutate, key, rule, detail):
    d = copy.deepcopy(quickstart_dict())
    mutate(d)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False, allow_unicode=True))
    with pytest.raises(SpaceError) as exc:
        load_space(path)
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: {key}"), msg
    assert rule in msg and detail in msg, msg


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: x\nbudget: {max_epochs: 3\nparams: {}\n")
    with pytest.raises(SpaceError, match=rf"^{path}:3: YAML: ") as exc:
        load_space(path)
    assert "\n" not in str(exc.value)


def test_duplicate_keys_are_refused_with_their_line(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: x\nbudget: {}\nname: y\n")
    with pytest.raises(SpaceError, match=rf"^{path}:3: YAML: duplicate key 'name'$"):
        load_space(path)


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(SpaceError, match=rf"^{tmp_path}/nope.yaml: no such file$"):
        load_space(tmp_path / "nope.yaml")


def test_a_space_error_is_a_user_error():
    from dsearch.errors import UserError

    assert issubclass(SpaceError, UserError)


@pytest.mark.parametrize("old, new, first", [
    ("budget", "budgett", "budgett: unknown key (allowed: name, data, objectives, budget, resources, sampler, "
                          "constraints, fixed, params, seed_trials, tracking; did you mean budget?) (and 1 more)"),
    ("params", "parms", "parms: unknown key (allowed: "),
])
def test_a_misspelt_key_is_reported_before_the_required_key_it_hides(tmp_path, old, new, first):
    """The typo makes `budget` missing too; the typo is the error to fix, so it comes first."""
    d = quickstart_dict()
    d = {new if k == old else k: v for k, v in d.items()}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False, allow_unicode=True))
    with pytest.raises(SpaceError) as exc:
        load_space(path)
    assert str(exc.value).startswith(f"{path}: {first}"), str(exc.value)
    if old == "params":
        assert "did you mean params?" in str(exc.value)


def test_a_misspelt_nested_key_comes_before_the_missing_one(tmp_path):
    text = (SPACES / "quickstart.yaml").read_text().replace("{type: int, low: 10, high: 16, step: 6}",
                                                            "{type: int, lw: 10, high: 16, step: 6}")
    with pytest.raises(SpaceError) as exc:
        parse_space(text, "q.yaml")
    assert str(exc.value).startswith("q.yaml: params.model.depth.lw: unknown key (allowed: "), str(exc.value)
    assert "did you mean low?" in str(exc.value) and str(exc.value).endswith("(and 1 more)")


def test_spaces_are_yaml_1_2_so_off_and_yes_are_strings():
    # YAML 1.1 (yaml.safe_load) reads `off` as false, which train.amp refuses; YAML 1.2 reads a string.
    text = (SPACES / "quickstart.yaml").read_text().replace(
        "  train.batch_size: 64\n", "  train.batch_size: 64\n  train.amp: off\n")
    assert yaml.safe_load(text)["fixed"]["train.amp"] is False
    space = parse_space(text)
    assert space.fixed["train.amp"] == "off"
    assert resolve(space, {"model.depth": 10, "model.growth_rate": 6, "model.compression": 0.5,
                           "train.lr": 0.1}).train.amp == "off"


def test_a_study_may_change_its_sampler_but_not_its_rungs():
    """A study started under TPE (dsearch ≤ 0.1's default) continues under the default sampler, EHVI; the rungs
    decide what is recorded, so grace_period (and with it where the rungs are) may not change."""
    from dsearch.errors import UserError
    from dsearch.search.io import refuse_different_space

    text = (SPACES / "quickstart.yaml").read_text()
    old = parse_space(text.replace("sampler: {seed: 0}", "sampler: {type: tpe, seed: 0}"))
    new = parse_space(text)
    assert (old.sampler_type, new.sampler_type) == ("tpe", "ehvi")
    refuse_different_space(old, new, "studies/quickstart", "")
    graced = parse_space(text.replace("reduction_factor: 2,", "grace_period: 1, reduction_factor: 2,"))
    assert graced.milestones == [1, 2] and new.milestones == [2]
    with pytest.raises(UserError, match=r"budget.grace_period: None → 1"):
        refuse_different_space(new, graced, "studies/quickstart", "")
