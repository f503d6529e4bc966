"""A trial's price before training: its share of a device, the memory path `train.memory_efficient: auto`
picks for it, memory as a metric and a constraint, and how packed GPU trials are described (fake device sizes:
this machine has no GPU)."""

import pytest
import torch

from dsearch import ModelConfig, build_model
from dsearch.net.cost import FIT_MARGIN, choose_memory_path, count_memory
from dsearch.net.model import set_memory_efficient
from dsearch.search import pricing
from dsearch.search.io import load_space
from dsearch.search.pricing import (Share, check_constraints, describe_share, dtype_name, over_budget, price,
                                    trial_share)
from dsearch.search.sampling import resolve
from dsearch.search.schema import Resources
from pathlib import Path

SPACES = Path(__file__).resolve().parent.parent / "spaces"

GIB = 1024 ** 3
BC100 = ModelConfig(variant="densenet-bc", depth=100, growth_rate=12)


@pytest.mark.parametrize("gpu, per_gpu, share", [(1, 1, 80 * GIB), (0.5, 2, 40 * GIB), (0.25, 4, 20 * GIB),
                                                 (0.125, 8, 10 * GIB), (2, 1, 80 * GIB)])
def test_a_gpu_trial_gets_its_fraction_of_one_gpu(gpu, per_gpu, share):
    s = trial_share(Resources(cpu=1, gpu=gpu), gpu_bytes=80 * GIB, host_bytes=None, host_cpus=None)
    assert (s.device, s.per_gpu, s.bytes) == ("cuda", per_gpu, share)


def test_a_cpu_trial_gets_its_cores_share_of_the_host():
    s = trial_share(Resources(cpu=2), gpu_bytes=None, host_bytes=64 * GIB, host_cpus=16)
    assert (s.device, s.bytes) == ("cpu", 8 * GIB)
    assert trial_share(Resources(cpu=1, gpu=0.5), gpu_bytes=None, host_bytes=None, host_cpus=None).bytes is None


def test_resources_gpu_memory_gib_is_the_fake_device_the_driver_prices_for():
    s = pricing.local_share(Resources(cpu=1, gpu=0.25, gpu_memory_gib=16))
    assert (s.device, s.bytes, s.per_gpu) == ("cuda", 4 * GIB, 4)
    line = describe_share(Resources(cpu=1, gpu=0.25, gpu_memory_gib=16))
    assert line.startswith("GPU packing: 4 trials share each GPU (resources.gpu 0.25), each capped at 25% of its "
                           "memory: 4.0 GiB")


def test_auto_keeps_the_normal_path_while_it_fits_and_switches_when_it_does_not():
    size, batch = (3, 32, 32), 64
    normal = count_memory(BC100, size, batch, "bf16", False, device="cuda", channels_last=True).peak_bytes
    efficient = count_memory(BC100, size, batch, "bf16", True, device="cuda", channels_last=True).peak_bytes
    assert efficient < normal / 2
    roomy = int(normal / FIT_MARGIN) + 1
    on, why, mem = choose_memory_path(BC100, size, batch, "bf16", share_bytes=roomy, device="cuda",
                                      channels_last=True)
    assert (on, mem.peak_bytes) == (False, normal) and why.startswith("auto: normal path")
    on, why, mem = choose_memory_path(BC100, size, batch, "bf16", share_bytes=roomy - 2, device="cuda",
                                      channels_last=True)
    assert (on, mem.peak_bytes) == (True, efficient) and "exceeds 90% of its" in why
    # A constraint below the normal path's need turns the efficient path on too; forcing wins over both.
    assert choose_memory_path(BC100, size, batch, "bf16", limit_bytes=normal - 1, device="cuda")[0]
    assert not choose_memory_path(BC100, size, batch, "bf16", setting=False, share_bytes=1)[0]
    assert choose_memory_path(BC100.with_overrides(memory_efficient=False), size, batch, "bf16",
                              share_bytes=1)[1] == "model.memory_efficient: false"


def test_a_packed_gpu_trial_is_priced_on_its_quarter_of_the_device():
    space = load_space(SPACES / "cifar_bc.yaml")
    run = resolve(space, space.seed_trials[0])
    need = count_memory(run.model, (3, 32, 32), run.train.batch_size, "bf16", False, device="cuda",
                        channels_last=True).peak_bytes
    gpu = int(need / FIT_MARGIN * 4) + 4 * 1024   # a GPU whose quarter just holds the normal path
    fits = price(space, resolve(space, space.seed_trials[0]),
                 trial_share(Resources(gpu=0.25), gpu_bytes=gpu, host_bytes=None, host_cpus=None))
    assert not fits.memory_efficient and fits.memory == need
    tight = resolve(space, space.seed_trials[0])
    cost = price(space, tight, trial_share(Resources(gpu=0.25), gpu_bytes=gpu // 2, host_bytes=None,
                                           host_cpus=None))
    assert cost.memory_efficient and cost.memory < need / 2
    assert tight.model.memory_efficient and tight.train.memory_efficient is True   # the trial trains that way


def test_max_memory_rejects_what_even_the_efficient_path_cannot_fit():
    space = load_space(SPACES / "quickstart.yaml")
    share = Share("cpu", 8 * GIB)
    small = {"model.depth": 10, "model.growth_rate": 6, "model.compression": 0.4, "train.lr": 0.1}
    large = {"model.depth": 16, "model.growth_rate": 9, "model.compression": 0.7, "train.lr": 0.1}
    big = price(space, resolve(space, large), share)
    tiny = price(space, resolve(space, small), share)
    assert not big.memory_efficient and big.memory > tiny.memory
    dtype = dtype_name(resolve(space, large), "cpu")          # fp32 here; bf16 as on a CPU with bf16 units
    efficient = count_memory(resolve(space, large).model, (1, 28, 28), 64, dtype, True).peak_bytes
    assert efficient < big.memory
    space.constraints.max_memory = (efficient + big.memory) / 2    # the efficient path fits, the normal one not
    cost = price(space, resolve(space, large), share)
    assert cost.memory_efficient and cost.memory == efficient and not over_budget(space, cost)
    # Half the largest candidate's need: on a CPU (oneDNN's reorders, the stem and head) even the efficient
    # path of the largest net needs more (~69%), so it is rejected before training, with the reason.
    space.constraints.max_memory = big.memory / 2
    reason = over_budget(space, price(space, resolve(space, large), share))
    assert reason.startswith(f"memory {efficient:,} B") and "> constraints.max_memory" in reason
    assert check_constraints(space, resolve(space, small)) is None


def test_switching_a_built_network_to_the_efficient_path_computes_the_same_function():
    torch.manual_seed(0)
    model = build_model(ModelConfig(block_layers=(2, 2), growth_rate=4, bottleneck=True, compression=0.5,
                                    init_features=8)).train()
    x = torch.randn(4, 3, 16, 16)
    model(x).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    set_memory_efficient(model, True)
    assert model.config.memory_efficient
    before = count_memory(model.config, (3, 16, 16), 4).saved_bytes
    assert before == count_memory(model.config.with_overrides(memory_efficient=True), (3, 16, 16), 4).saved_bytes
    model(x).sum().backward()
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-5)


def test_a_cpu_trial_is_priced_in_the_dtype_it_will_train_in(monkeypatch):
    space = load_space(SPACES / "quickstart.yaml")
    run = resolve(space, space.seed_trials[0])
    monkeypatch.setenv("DSEARCH_ASSUME_NATIVE_BF16", "0")
    assert dtype_name(run, "cpu") == "fp32" and dtype_name(run, "cuda") == "bf16"
    fp32 = price(space, resolve(space, space.seed_trials[0]), Share("cpu", 8 * GIB)).memory
    monkeypatch.setenv("DSEARCH_ASSUME_NATIVE_BF16", "1")        # as on a CPU with AVX-512 BF16 / AMX
    assert dtype_name(run, "cpu") == "bf16"
    bf16 = price(space, resolve(space, space.seed_trials[0]), Share("cpu", 8 * GIB)).memory
    assert bf16 == count_memory(run.model, (1, 28, 28), 64, "bf16").peak_bytes < fp32
