"""The generator and the closed-form cost model reproduce the paper's and torchvision's networks."""

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from pydantic import ValidationError
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from dsearch import PRESETS, ModelConfig, build_model, count_macs, count_params
from dsearch.net.cost import stages

# DESIGN.md's reference table: (params, MACs) at the stem's default input.
REFERENCE = {
    "densenet40_k12": (1_019_722, 264_812_928),
    "densenet100_k12": (6_979_642, 1_769_516_448),
    "densenet100_k24": (27_249_082, 6_889_347_744),
    "densenet_bc100_k12": (769_162, 287_929_692),
    "densenet_bc250_k24": (15_324_406, 5_418_785_724),
    "densenet_bc190_k40": (25_624_430, 9_301_945_740),
    "densenet121": (7_978_856, 2_834_161_664),
    "densenet169": (14_149_480, 3_359_843_328),
    "densenet201": (20_013_928, 4_291_365_888),
    "densenet161": (28_681_000, 7_727_907_072),
    "densenet264": (33_337_704, 5_751_653_376),
}


def built_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flop_counter_macs(model: torch.nn.Module, input_size) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros(1, *input_size))
    return counter.get_total_flops() // 2   # FlopCounterMode counts 2 FLOPs per MAC


def test_every_preset_is_in_the_reference_table():
    assert set(PRESETS) == set(REFERENCE)


@pytest.mark.parametrize("name", list(REFERENCE))
def test_preset_params_and_macs_match_the_reference_table(name):
    params, macs = REFERENCE[name]
    assert count_params(name) == params
    assert count_macs(name) == macs
    assert built_params(build_model(name)) == params


def test_densenet_bc_100_k12_has_769162_params_and_800032_with_100_classes():
    assert count_params("densenet_bc100_k12") == 769_162
    assert count_params("densenet_bc100_k12", num_classes=100) == 800_032
    assert count_macs("densenet_bc100_k12", num_classes=100) == 287_960_472
    assert built_params(build_model("densenet_bc100_k12", num_classes=100)) == 800_032


def test_bc100_k12_macs_by_hand():
    # Stem 3×3 conv 3→24 at 32×32, then per layer (m·48 + 9·48·12)·HW, transitions m·⌊m/2⌋·HW, linear.
    def block(m0, hw):
        return sum(((m0 + 12 * j) * 48 + 9 * 48 * 12) * hw for j in range(16))
    total = (32 * 32 * 9 * 3 * 24 + block(24, 1024) + 1024 * 216 * 108 + block(108, 256)
             + 256 * 300 * 150 + block(150, 64) + 342 * 10)
    assert total == 287_929_692 == count_macs("densenet_bc100_k12")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(REFERENCE))
def test_macs_agree_with_flop_counter_mode(name):
    config = PRESETS[name]
    # Small inputs keep the test fast; every layer is still counted, at its own spatial size.
    size = (3, 64, 64) if config.stem == "imagenet" else (3, 16, 16)
    assert flop_counter_macs(build_model(name), size) == count_macs(name, size)


@st.composite
def random_configs(draw):
    blocks = draw(st.integers(1, 4))
    per_block_k = draw(st.booleans())
    stem = draw(st.sampled_from(["cifar", "imagenet"]))
    fields = dict(
        stem=stem,
        block_layers=tuple(draw(st.lists(st.integers(1, 4), min_size=blocks, max_size=blocks))),
        growth_rate=(tuple(draw(st.lists(st.integers(1, 9), min_size=blocks, max_size=blocks)))
                     if per_block_k else draw(st.integers(1, 9))),
        bottleneck=draw(st.booleans()),
        bottleneck_width=draw(st.integers(1, 6)),
        compression=draw(st.sampled_from([1.0, 0.5, 0.3, 0.75, 0.9])),
        num_classes=draw(st.integers(1, 20)),
        in_channels=draw(st.sampled_from([1, 3])),
        dropout=draw(st.sampled_from([0.0, 0.2])),
    )
    if draw(st.booleans()):
        fields["init_features"] = draw(st.integers(1, 24))
    try:
        return ModelConfig(**fields)
    except ValidationError:      # e.g. ⌊θ·m⌋ = 0: a rule tested in test_config.py
        assume(False)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_configs())
def test_closed_form_params_equal_built_params_on_random_configs(config):
    assert count_params(config) == built_params(build_model(config))


@settings(max_examples=25, deadline=None)
@given(random_configs(), st.sampled_from([28, 32, 40]))
def test_closed_form_macs_equal_flop_counter_on_random_configs(config, side):
    size = (config.in_channels, side * (4 if config.stem == "imagenet" else 1),
            side * (4 if config.stem == "imagenet" else 1))
    assert count_macs(config, size) == flop_counter_macs(build_model(config), size)


def test_stage_table_tracks_channels_like_the_paper():
    rows = stages("densenet_bc100_k12")
    assert [(r.name, r.in_channels, r.out_channels, r.size) for r in rows[1:6]] == [
        ("denseblock1", 24, 216, (32, 32)), ("transition1", 216, 108, (16, 16)),
        ("denseblock2", 108, 300, (16, 16)), ("transition2", 300, 150, (8, 8)),
        ("denseblock3", 150, 342, (8, 8))]


def test_feature_map_shrinking_below_1x1_names_the_block():
    config = ModelConfig(block_layers=(1, 1, 1, 1, 1, 1), growth_rate=4)
    with pytest.raises(ValueError, match=r"transition5 \(after denseblock5\).*below 1×1"):
        count_macs(config, (3, 16, 16))
    assert count_macs(config, (3, 32, 32)) > 0
