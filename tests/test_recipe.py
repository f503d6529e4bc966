"""Training recipes since the paper: cosine lr, linear warm-up, label smoothing, cutout; off by default."""

import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from dsearch.metrics import TRAIN_LOSS, VAL_LOSS
from dsearch.net.config import ModelConfig
from dsearch.net.model import build_model
from dsearch.search.io import SpaceError, parse_space
from dsearch.search.rules import searchable_keys
from dsearch.search.sampling import resolve
from dsearch.strict import format_validation_error
from dsearch.training.config import DataConfig, RunConfig, TrainConfig
from dsearch.training.data import FolderData, load_data
from dsearch.training.data.base import cut_holes
from dsearch.training.loop import evaluate, fit
from dsearch.training.schedule import lr_at, schedule_lr

from batches import white_data
from spaces import tiny_space

# A 2-block DenseNet-BC with dropout (RNG for resume to get right), as tests/test_train.py's.
TINY = dict(block_layers=(2, 2), growth_rate=4, bottleneck=True, compression=0.5, init_features=8, dropout=0.1)


def paper_lr(epoch, epochs, lr=0.1, milestones=(0.5, 0.75), gamma=0.1):
    """The schedule as it was before the recipe knobs: lr × gamma^(milestones passed)."""
    return lr * gamma ** sum(1 for m in milestones if epoch >= m * epochs - 1e-9)


# ------------------------------------------------------------------ the schedule

def test_defaults_are_the_papers_0_1_then_0_01_at_epoch_150_and_0_001_at_225_of_300():
    t = TrainConfig(epochs=300)
    assert (t.lr_schedule, t.warmup_epochs, t.label_smoothing) == ("step", 0, 0.0)
    assert [schedule_lr(e, t) for e in (0, 149, 150, 224, 225, 299)] == \
        pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_the_step_schedule_is_bitwise_the_old_formula_at_every_step_of_an_epoch():
    for epochs, ms, gamma in ((300, (0.5, 0.75), 0.1), (90, (1 / 3, 2 / 3), 0.1), (4, (0.5, 0.75), 0.2),
                              (3, (0.5,), 0.1)):
        t = TrainConfig(epochs=epochs, lr=0.05, lr_milestones=ms, lr_gamma=gamma)
        for e in range(epochs):
            old = paper_lr(e, epochs, 0.05, ms, gamma)
            # The step schedule moves at epoch starts only (3 epochs, milestone 1.5: epoch 1 keeps lr).
            assert {schedule_lr(e, t, s, 7) for s in range(7)} == {old} == {lr_at(e, epochs, lr=0.05,
                                                                              milestones=ms, gamma=gamma)}


def test_cosine_is_lr_at_the_start_half_of_it_half_way_and_0_at_the_end():
    t = TrainConfig(epochs=100, lr=0.2, lr_schedule="cosine", lr_milestones=(0.5,))   # milestones: ignored
    assert schedule_lr(0, t) == 0.2
    assert schedule_lr(50, t) == pytest.approx(0.1, abs=1e-15)          # ½(1 + cos π/2) = ½
    assert schedule_lr(25, t) == pytest.approx(0.2 * (1 + math.sqrt(0.5)) / 2)   # ½(1 + cos π/4)
    assert lr_at(100, 100, lr=0.2, schedule="cosine") == pytest.approx(0, abs=1e-15)   # cos π = -1
    # Per step: the last step of the last epoch (progress 99.9) is small but not 0, and falls step by step.
    last = schedule_lr(99, t, 9, 10)
    assert last == pytest.approx(0.2 * (1 + math.cos(math.pi * 0.999)) / 2) and 0 < last < 1e-5
    within = [schedule_lr(10, t, s, 4) for s in range(4)]
    assert within == sorted(within, reverse=True) and len(set(within)) == 4


def test_cosine_after_warm_up_is_half_the_lr_half_way_through_the_span_after_warm_up():
    t = TrainConfig(epochs=100, lr=0.1, lr_schedule="cosine", warmup_epochs=10)
    assert schedule_lr(10, t) == pytest.approx(0.1)                      # p = 0 when warm-up ends
    assert schedule_lr(55, t) == pytest.approx(0.05)                     # p = (55 - 10) / 90 = ½
    assert lr_at(100, 100, lr=0.1, schedule="cosine", warmup_epochs=10) == pytest.approx(0, abs=1e-15)


def test_warm_up_rises_linearly_per_step_from_a_tenth_of_the_lr_to_the_lr():
    t = TrainConfig(epochs=10, lr=0.4, warmup_epochs=2)
    steps = 4
    ramp = [schedule_lr(e, t, s, steps) for e in (0, 1) for s in range(steps)]
    # 8 steps over 2 epochs: 0.04 + (0.4 − 0.04) · k / 8, k = 0 … 7.
    assert ramp == pytest.approx([0.04 + 0.36 * k / 8 for k in range(8)])
    assert ramp[0] == pytest.approx(0.04) and schedule_lr(2, t, 0, steps) == 0.4      # warm-up ends at lr
    assert schedule_lr(5, t) == pytest.approx(0.04) and schedule_lr(4, t, 3, steps) == 0.4   # then the steps
    started = TrainConfig(epochs=10, lr=0.4, warmup_epochs=2, warmup_start=0.1)
    assert schedule_lr(1, started, 0, steps) == pytest.approx(0.25)        # half way from 0.1 to 0.4


def test_a_fractional_warm_up_ends_mid_epoch_and_the_step_schedule_takes_over():
    t = TrainConfig(epochs=4, lr=0.1, warmup_epochs=0.5)
    assert [schedule_lr(0, t, s, 4) for s in range(4)] == pytest.approx([0.01, 0.055, 0.1, 0.1])


# ------------------------------------------------------------------ label smoothing

def test_training_loss_with_label_smoothing_is_the_hand_formula_and_val_loss_stays_plain(either_cpu):
    eps = 0.2
    model = ModelConfig(**{**TINY, "dropout": 0.0})                   # no dropout: one forward is the step's
    # fp32 and contiguous whatever `auto` picks (bf16 on a CPU with bf16 units; a probe's layout): the formula is
    # fp32 in the contiguous layout, to 1e-6
    run = RunConfig(model=model, data=DataConfig(name="synthetic", synthetic_size=64, val_size=32),
                    train=TrainConfig(epochs=1, batch_size=64, device="cpu", label_smoothing=eps,
                                      amp="off", channels_last=False))
    data = load_data(run.data)
    assert data.steps_per_epoch(64) == 1                                 # the epoch's mean is that one step
    (x, y), = list(data.train_batches(64, epoch=0, seed=0))
    torch.manual_seed(run.train.seed)                                    # fit's initial weights
    with torch.no_grad():
        logp = F.log_softmax(build_model(run.model).train()(x), dim=1).double()
    ce = -logp.gather(1, y[:, None]).mean()
    uniform = -logp.mean(1).mean()                                       # cross-entropy against 1/K
    expected = (1 - eps) * ce + eps * uniform
    assert abs(float(uniform - ce)) > 0.01                               # so the two formulas differ here
    result = fit(run, data)
    assert result.history[0][TRAIN_LOSS] == pytest.approx(float(expected), rel=1e-6)
    # Evaluation is the plain cross-entropy of the model fit returned, whatever the smoothing.
    val_loss, _ = evaluate(result.model, data)
    assert result.history[0][VAL_LOSS] == pytest.approx(val_loss, rel=1e-6)
    with torch.no_grad():
        plain = float(F.cross_entropy(result.model.eval()(data.normalize(data.eval_x)), data.eval_y))
    assert val_loss == pytest.approx(plain, rel=1e-5)


# ------------------------------------------------------------------ cutout

def test_a_hole_is_size_by_size_zeros_around_its_centre_clipped_at_the_border():
    x = torch.arange(1, 3 * 2 * 8 * 8 + 1, dtype=torch.float32).view(3, 2, 8, 8)   # no zero anywhere
    centres = torch.tensor([[4, 4], [0, 0], [7, 2]])
    out = cut_holes(x, centres, 4)
    expected = x.clone()
    expected[0, :, 2:6, 2:6] = 0                      # rows and cols 4 − 2 … 4 + 1
    expected[1, :, 0:2, 0:2] = 0                      # −2 … 1, clipped to 0 … 1: 2×2
    expected[2, :, 5:8, 0:4] = 0                      # rows 5 … 8 clipped to 7; cols 0 … 3: 3×4
    assert torch.equal(out, expected)
    assert [int((out[i, 0] == 0).sum()) for i in range(3)] == [16, 4, 12]
    odd = cut_holes(x, centres[:1], 3)                # an odd side is exactly 3 wide: rows 3 … 5
    assert int((odd[0, 0] == 0).sum()) == 9 and torch.equal(odd[0, :, 3:6, 3:6], torch.zeros(2, 3, 3))


def test_cutout_zeroes_one_hole_per_image_and_leaves_every_other_draw_as_it_was():
    d = white_data()
    (plain, _), = list(d.train_batches(64, epoch=0, seed=0))
    (off, _), = list(d.train_batches(64, epoch=0, seed=0, cutout=0))
    assert torch.equal(plain, off)
    (cut, _), = list(d.train_batches(64, epoch=0, seed=0, cutout=4))
    hole = cut == 0
    # Same shuffle, crops and flips: the batches differ only inside the holes, which are 0 (the mean).
    assert torch.equal(torch.where(hole, plain, cut), plain) and not hole[plain == 0].any()
    assert torch.equal(hole, hole[:, :1].expand_as(hole))                 # one hole through all channels
    sizes = hole[:, 0].sum((1, 2))
    assert sizes.max() == 16 and sizes.min() >= 4                          # 4×4, at worst clipped to 2×2
    # A function of (seed, epoch) alone: again the same, another epoch or seed not.
    (again, _), = list(d.train_batches(64, epoch=0, seed=0, cutout=4))
    (later, _), = list(d.train_batches(64, epoch=1, seed=0, cutout=4))
    (other, _), = list(d.train_batches(64, epoch=0, seed=1, cutout=4))
    assert torch.equal(cut, again) and not torch.equal(cut, later) and not torch.equal(cut, other)


def test_folder_data_cuts_holes_on_its_batches_by_seed_and_epoch(tmp_path):
    from PIL import Image

    samples = []
    for i in range(4):
        Image.new("RGB", (20, 20), (200, 150, 100)).save(tmp_path / f"{i}.png")
        samples.append((str(tmp_path / f"{i}.png"), i % 2))
    d = FolderData("imagenet", samples, samples, 2, augment=False, num_workers=0, image_size=16)
    batches = lambda **kw: torch.cat([x for x, _ in d.train_batches(4, epoch=0, **kw)])
    plain, cut = batches(), batches(cutout=6)
    hole = cut == 0
    assert torch.equal(plain, batches(cutout=0)) and torch.equal(cut, batches(cutout=6))
    assert torch.equal(torch.where(hole, plain, cut), plain) and (plain != 0).all()
    assert hole[:, 0].sum((1, 2)).max() <= 36 and hole[:, 0].sum((1, 2)).min() >= 9   # 6×6, ≥ 3×3 clipped


# ------------------------------------------------------------------ fit and resume

SMALL = dict(name="synthetic", synthetic_size=128, val_size=32, synthetic_image_size=8)   # 4 steps of 32


def recipe_run(epochs=2):
    return RunConfig(model=ModelConfig(**TINY), data=DataConfig(**SMALL, cutout=4),
                     train=TrainConfig(epochs=epochs, batch_size=32, lr_schedule="cosine", warmup_epochs=0.5,
                                       label_smoothing=0.1))


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resume_with_cosine_warm_up_smoothing_and_cutout_is_bitwise_an_uninterrupted_run(tmp_path):
    data = load_data(recipe_run().data)
    straight = fit(recipe_run(), data)
    # First-step lrs: warm-up starts at 0.1 / 10; epoch 2 starts at p = (1 − 0.5) / 1.5 = ⅓: ½(1 + cos π/3).
    assert [h["lr"] for h in straight.history] == pytest.approx([0.01, 0.075])
    ck = tmp_path / "ck.pt"
    first = fit(recipe_run(), data, checkpoint_path=ck, callback=lambda m: "stop")
    assert first.epochs_trained == 1
    torch.manual_seed(1234)                                              # a fresh process's RNG would differ
    resumed = fit(recipe_run(), data, checkpoint_path=ck, resume=True)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert same_weights(straight.model, resumed.model)
    assert resumed.history[1]["train_loss"] == straight.history[1]["train_loss"]
    # The knobs do act: one epoch of the paper's recipe on the same data trains other weights.
    paper = RunConfig(model=ModelConfig(**TINY), data=DataConfig(**SMALL), train=TrainConfig(epochs=1, batch_size=32))
    assert not same_weights(first.model, fit(paper, data).model)


# ------------------------------------------------------------------ config errors

@pytest.mark.parametrize("make, key", [
    (lambda: TrainConfig(epochs=10, warmup_epochs=10), "train.warmup_epochs"),
    (lambda: RunConfig(model=ModelConfig(**TINY), data=DataConfig(name="synthetic"),       # epochs 4 from the dataset
                       train=TrainConfig(warmup_epochs=4)), "train.warmup_epochs"),
    (lambda: TrainConfig(warmup_epochs=-1), "train.warmup_epochs"),
    (lambda: TrainConfig(lr=0.1, warmup_start=0.2), "train.warmup_start"),
    (lambda: TrainConfig(warmup_start=0), "train.warmup_start"),
    (lambda: TrainConfig(label_smoothing=1.0), "train.label_smoothing"),
    (lambda: TrainConfig(label_smoothing=-0.1), "train.label_smoothing"),
    (lambda: TrainConfig(lr_schedule="linear"), "lr_schedule"),
    (lambda: DataConfig(name="cifar10", cutout=33), "data.cutout"),
    (lambda: DataConfig(name="cifar10", cutout=-1), "data.cutout"),
    (lambda: DataConfig(name="synthetic", synthetic_image_size=8, cutout=9), "data.cutout"),
])
def test_a_bad_recipe_is_one_line_naming_the_key(make, key):
    with pytest.raises(ValidationError) as info:
        make()
    message = format_validation_error(info.value)
    assert "\n" not in message and message.startswith(key), message


def test_cutout_may_be_the_whole_image():
    assert DataConfig(name="cifar10", cutout=32).cutout == 32


# ------------------------------------------------------------------ search spaces

CUTOUT = "  data.cutout: {type: int, low: 0, high: 4, step: 2}\n"
TRIAL = {"model.depth": 10, "model.growth_rate": 6, "train.lr": 0.1}


def test_a_space_searches_data_cutout_and_a_trial_resolves_to_it():
    assert "data.cutout" in searchable_keys() and "data.name" not in searchable_keys()
    space = parse_space(tiny_space(num=4, conc=1).replace("params:\n", "params:\n" + CUTOUT))
    run = resolve(space, {**TRIAL, "data.cutout": 4})
    assert run.data.cutout == 4 and space.data.cutout == 0            # the space's data is not changed
    assert run.data.model_dump() == {**space.data.model_dump(), "cutout": 4}
    assert resolve(space, {**TRIAL, "data.cutout": 0}).data.cutout == 0


def test_a_space_fixes_data_cutout_and_refuses_other_data_keys_and_holes_wider_than_the_image():
    fixed = tiny_space(num=4, conc=1).replace("fixed: {", "fixed: {data.cutout: 2, ")
    assert resolve(parse_space(fixed), TRIAL).data.cutout == 2
    named = tiny_space(num=4, conc=1).replace(
        "params:\n", "params:\n  data.name: {type: categorical, choices: [synthetic, mnist]}\n")
    with pytest.raises(SpaceError, match=r"^<space>: params\.data\.name: data\.\* can't be searched or fixed"):
        parse_space(named)
    wide = tiny_space(num=4, conc=1).replace("params:\n", "params:\n" + CUTOUT.replace("high: 4", "high: 10"))
    with pytest.raises(SpaceError, match=r"^<space>: params\.data\.cutout: high 10 is invalid: data\.cutout"):
        parse_space(wide)
    fractional = tiny_space(num=4, conc=1).replace(
        "params:\n", "params:\n  data.cutout: {type: float, low: 0, high: 4}\n")
    with pytest.raises(SpaceError, match=r"takes no fractional values"):
        parse_space(fractional)


def test_resume_under_other_epochs_is_refused_for_cosine_even_after_one_epoch(tmp_path):
    """Cosine's lr depends on the epochs at every step past warm-up: epoch 1's middle differs between 2 and 4
    epochs (cos(π/4)… vs cos(π/8)…) although both start at lr; the step schedule's epoch 1 is the same."""
    from dsearch.cli.train import check_resumable
    from dsearch.errors import UserError

    def state(schedule):
        run = RunConfig(model=TINY, train=dict(epochs=2, lr_schedule=schedule), data=dict(name="synthetic"))
        return {"config": run.model_dump(mode="json"), "history": [{"val_acc": 0.5}], "epoch": 1}

    longer = dict(model=TINY, data=dict(name="synthetic"))
    with pytest.raises(UserError, match=r"train.epochs 2 → 4 changes the lr of epoch 1, already trained "
                                        r"\(0.0853553 → 0.096194\)"):
        check_resumable(state("cosine"), RunConfig(**longer, train=dict(epochs=4, lr_schedule="cosine")),
                        tmp_path / "checkpoint.pt", final=False)
    check_resumable(state("step"), RunConfig(**longer, train=dict(epochs=4)), tmp_path / "checkpoint.pt",
                    final=False)
