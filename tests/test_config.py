"""ModelConfig: the paper's shorthand, derivation after overrides, and errors that name field and rule."""

import re

import pytest
from pydantic import ValidationError

from dsearch import PRESETS, ModelConfig, build_model
from dsearch.strict import format_validation_error
from dsearch.errors import UserError
from dsearch.net.presets import resolve_config


def test_shorthand_derives_block_layers_with_the_papers_formula():
    assert ModelConfig(variant="densenet", depth=40).block_layers == (12, 12, 12)       # (L-4)/3
    assert ModelConfig(variant="densenet-bc", depth=100).block_layers == (16, 16, 16)   # (L-4)/6
    assert ModelConfig(variant="densenet-b", depth=77, num_blocks=4).block_layers == (9, 9, 9, 9)  # (L-5)/8


def test_variant_sets_bottleneck_compression_and_init_features():
    bc = ModelConfig(variant="densenet-bc", depth=100, growth_rate=12)
    assert (bc.bottleneck, bc.compression, bc.init_features) == (True, 0.5, 24)
    basic = ModelConfig(variant="densenet", depth=40, growth_rate=12)
    assert (basic.bottleneck, basic.compression, basic.init_features) == (False, 1.0, 16)
    c = ModelConfig(variant="densenet-c", depth=40, growth_rate=12)
    assert (c.bottleneck, c.compression, c.init_features) == (False, 0.5, 24)
    assert ModelConfig(variant="densenet-bc", depth=100, init_features=32).init_features == 32


def test_overrides_derive_again():
    config = resolve_config("densenet_bc100_k12", depth=40, growth_rate=8)
    assert config.block_layers == (6, 6, 6) and config.init_features == 16
    assert resolve_config("densenet_bc100_k12", block_layers=[2, 3]).depth == 13
    assert resolve_config("densenet121", num_classes=10).block_layers == (6, 12, 24, 16)


def test_a_resolved_dump_validates_again_to_the_same_config():
    for config in PRESETS.values():
        assert ModelConfig(**config.model_dump()) == config


@pytest.mark.parametrize("fields, field, rule", [
    (dict(variant="densenet-bc", depth=100, compression=0), "compression", r"\(0, 1\]"),
    (dict(variant="densenet-bc", depth=100, compression=1.5), "compression", r"\(0, 1\]"),
    (dict(block_layers=(4, 0, 4)), "block_layers", "≥ 1 layer"),
    (dict(block_layers=(4, -2, 4)), "block_layers", "≥ 1 layer"),
    (dict(variant="densenet-bc", depth=101), "depth", r"\(L - B - 1\) / \(B \* 2\).*100, 106"),
    (dict(variant="densenet", depth=41), "depth", r"\(L - B - 1\) / \(B \* 1\).*40, 43"),
    (dict(variant="densenet-bc", depth=100, bottleneck=False), "bottleneck", "contradicts variant"),
    (dict(variant="densenet", depth=40, compression=0.5), "compression", "contradicts variant"),
    (dict(variant="densenet-bc", depth=100, growth_rate=(12, 12)), "growth_rate", "one per block"),
    (dict(block_layers=(1,) * 7), "block_layers", "1 to 6 blocks"),
    (dict(block_layers=(2, 2), in_channels=2), "in_channels", "1 or 3"),
    (dict(growth_rate=12), "block_layers", "depth with variant"),
])
def test_bad_configs_name_the_field_and_the_rule(fields, field, rule):
    with pytest.raises(ValidationError) as info:
        ModelConfig(**fields)
    message = format_validation_error(info.value)
    assert f"model.{field}" in message
    assert re.search(rule, message), message


def test_unknown_key_is_an_error_naming_it():
    with pytest.raises(ValidationError) as info:
        ModelConfig(variant="densenet", depth=40, grwoth_rate=12)
    assert format_validation_error(info.value) == "grwoth_rate: unknown key"


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(UserError, match=r"unknown preset 'densenet122' \(known presets: densenet40_k12, .*\); did you mean densenet121\?"):
        build_model("densenet122")


def test_an_unknown_key_comes_before_the_error_it_causes():
    # `nme` leaves no name: two errors, pydantic lists the missing one first; the typo is the one to fix.
    from dsearch.training.config import DataConfig

    with pytest.raises(ValidationError) as info:
        DataConfig(nme="cifar10")
    assert [e["type"] for e in info.value.errors()] == ["missing", "extra_forbidden"]
    assert format_validation_error(info.value) == "nme: unknown key (and 1 more)"
    fields = list(DataConfig.model_fields)
    assert format_validation_error(info.value, prefix=("data",), fields_at=lambda loc: fields) == (
        f"data.nme: unknown key (allowed: {', '.join(fields)}; did you mean name?) (and 1 more)")


# --- RunConfig: the dataset's defaults ----------------------------------------------------------

def test_run_config_fills_defaults_in_a_copy_so_a_train_config_can_be_reused():
    from dsearch.training.config import DataConfig, RunConfig, TrainConfig

    train = TrainConfig()
    model = ModelConfig(variant="densenet-bc", depth=10, growth_rate=4)
    cifar = RunConfig(model=model, train=train, data=DataConfig(name="cifar10"))
    svhn = RunConfig(model=model, train=train, data=DataConfig(name="svhn"))
    assert (cifar.train.epochs, svhn.train.epochs) == (300, 40)
    assert (train.epochs, train.batch_size, train.lr_milestones) == (None, None, None)
    assert cifar.train is not train and cifar.train.model_fields_set == train.model_fields_set == set()


def test_an_empty_milestone_list_is_kept_as_a_constant_lr():
    from dsearch.training.config import RunConfig
    from dsearch.training.schedule import schedule_lr

    run = RunConfig(model=dict(variant="densenet-bc", depth=10), train=dict(lr_milestones=[]),
                    data=dict(name="svhn"))
    assert run.train.lr_milestones == ()
    assert {schedule_lr(e, run.train) for e in range(run.train.epochs)} == {0.1}
    paper = RunConfig(model=dict(variant="densenet-bc", depth=10), data=dict(name="svhn"))
    assert paper.train.lr_milestones == (0.5, 0.75) and schedule_lr(39, paper.train) == pytest.approx(0.001)
