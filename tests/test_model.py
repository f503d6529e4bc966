"""Generator invariants over every preset, torchvision compatibility, the memory-efficient mode."""

import pytest
import torch
import torchvision

from dsearch import PRESETS, ModelConfig, build_model

TINY = ModelConfig(variant="densenet-bc", depth=22, growth_rate=6)   # 3 blocks of 3 layers


@pytest.mark.parametrize("torchvision_name", ["densenet121", "densenet161", "densenet169", "densenet201"])
def test_torchvision_weights_load_strictly_and_give_the_same_outputs(torchvision_name):
    reference = getattr(torchvision.models, torchvision_name)(weights=None).eval()
    ours = build_model(torchvision_name).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=0, atol=1e-5)


def test_module_names_follow_torchvision():
    names = dict(build_model("densenet_bc100_k12").named_modules())
    for name in ["features.conv0", "features.denseblock1.denselayer1.norm1",
                 "features.denseblock1.denselayer16.conv2", "features.transition2.conv",
                 "features.denseblock3", "features.norm5", "classifier"]:
        assert name in names


@pytest.mark.parametrize("name", [n for n in PRESETS if PRESETS[n].stem == "cifar"][:4])
@pytest.mark.parametrize("side", [32, 28])
def test_cifar_presets_output_shape_for_32_and_28_pixel_inputs(name, side):
    model = build_model(name, in_channels=1 if side == 28 else 3).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1 if side == 28 else 3, side, side))
    assert out.shape == (1, 10)


@pytest.mark.slow
def test_imagenet_preset_output_shape_at_224():
    with torch.no_grad():
        assert build_model("densenet121").eval()(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


@pytest.mark.parametrize("config", [
    TINY,
    TINY.with_overrides(variant="densenet", depth=13),
    TINY.with_overrides(stem="imagenet", block_layers=(2, 3, 1, 2), growth_rate=(4, 6, 8, 5)),
    TINY.with_overrides(dropout=0.2, compression=0.3, bottleneck_width=2, in_channels=1),
])
def test_every_parameter_receives_a_finite_gradient(config):
    model = build_model(config).train()
    side = 64 if config.stem == "imagenet" else 32
    model(torch.randn(4, config.in_channels, side, side)).logsumexp(1).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_init_is_he_normal_fan_out_with_unit_bn_and_zero_bias():
    model = build_model("densenet_bc100_k12")
    conv = model.features.denseblock2.denselayer3.conv2          # 3×3, 48 → 12 maps
    expected_std = (2.0 / (9 * 12)) ** 0.5                       # fan-out = k·k·out
    assert abs(conv.weight.std().item() - expected_std) / expected_std < 0.05
    bn = model.features.denseblock1.denselayer1.norm1
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    assert torch.all(model.classifier.bias == 0)


def test_dropout_follows_every_conv_but_the_first():
    model = build_model(TINY, dropout=0.2).train()
    calls = []
    handle = torch.nn.functional.dropout
    torch.nn.functional.dropout = lambda x, *a, **k: (calls.append(x.shape[1]), handle(x, *a, **k))[1]
    try:
        model(torch.randn(2, 3, 32, 32))
    finally:
        torch.nn.functional.dropout = handle
    # 3 blocks × 3 layers × (bottleneck 1×1 → 24 maps, 3×3 → 6 maps); transitions ⌊(12+18)/2⌋, ⌊(15+18)/2⌋
    assert calls == [24, 6] * 3 + [15] + [24, 6] * 3 + [16] + [24, 6] * 3
    assert sum(isinstance(m, torch.nn.Dropout) for m in model.modules()) == 2


def _train_step(model, x):
    out = model(x)
    (out * torch.arange(out.shape[1], dtype=out.dtype)).sum().backward()
    return out


@pytest.mark.parametrize("config", [
    TINY,
    TINY.with_overrides(variant="densenet", depth=13),
    TINY.with_overrides(dropout=0.2),
    TINY.with_overrides(block_layers=(2, 4), growth_rate=(3, 7), compression=0.7, in_channels=1,
                        dropout=0.1),
])
def test_memory_efficient_mode_gives_the_same_outputs_gradients_and_bn_statistics(config, monkeypatch):
    """The efficient layer draws each dropout mask once in forward and reuses it in backward.

    The normal model is then run with the masks the efficient one drew, so the two agree whatever
    the RNG does; a backward that drew a fresh mask would give other gradients.
    """
    import dsearch.net.efficient as E

    normal = build_model(config).train()
    efficient = build_model(config, memory_efficient=True).train()
    efficient.load_state_dict(normal.state_dict())
    x = torch.randn(8, config.in_channels, 32, 32)

    drawn, draw = [], E._dropout_mask

    def record(t, p):
        drawn.append(draw(t, p))
        return drawn[-1]

    monkeypatch.setattr(E, "_dropout_mask", record)
    out_efficient = _train_step(efficient, x)
    masks = [m for m in drawn if m is not None]

    replayed = iter(masks)

    def replay(t, p=0.5, training=True, inplace=False):
        mask = next(replayed)
        assert training and mask.shape == t.shape
        return t * mask / (1.0 - p)                                 # the efficient layer's scaling

    monkeypatch.setattr(torch.nn.functional, "dropout", replay)    # DenseLayer's and nn.Dropout's
    out_normal = _train_step(normal, x)
    # 3 blocks × 3 bottleneck layers × 2 convs + 2 transitions = 20 sites; (2, 4) blocks: 12 + 1 = 13
    sites = {0.0: 0, 0.2: 20, 0.1: 13}[config.dropout]
    assert len(masks) == sites and next(replayed, None) is None   # every mask used, in draw order
    # ≥ 8·6·8·8 = 3072 units a mask: all kept has probability ≤ 0.9^3072 ≈ 1e-141
    assert all(0 < m.float().mean() < 1 for m in masks)

    # float32 reassociation (recomputed BN, conv backward on recomputed inputs) is the only difference
    torch.testing.assert_close(out_efficient, out_normal, rtol=1e-5, atol=1e-5)
    for (name, a), b in zip(normal.named_parameters(), efficient.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-5, msg=name)
    for (name, a), b in zip(normal.named_buffers(), efficient.buffers()):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6, msg=name)   # incl. num_batches_tracked


def _saved_bytes(model, x) -> int:
    """Bytes of distinct storages autograd keeps for backward."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(storages.values())


def test_memory_efficient_mode_saves_linear_not_quadratic_feature_memory():
    x = torch.randn(2, 3, 16, 16)
    sizes = {}
    for n in (16, 32):
        config = ModelConfig(variant="densenet-bc", block_layers=(n,), growth_rate=12)
        sizes[n] = (_saved_bytes(build_model(config).train(), x),
                    _saved_bytes(build_model(config, memory_efficient=True).train(), x))
    normal_growth = sizes[32][0] / sizes[16][0]
    efficient_growth = sizes[32][1] / sizes[16][1]
    assert normal_growth > 3.0          # quadratic: doubling depth ~ quadruples the input maps kept
    assert efficient_growth < 2.2       # linear: doubling depth ~ doubles
    assert sizes[32][1] < 0.35 * sizes[32][0]


@pytest.mark.parametrize("config", [TINY, TINY.with_overrides(variant="densenet", depth=13)])
@pytest.mark.parametrize("forward_mode", ["train", "eval"])
def test_memory_efficient_backward_uses_the_bn_mode_of_its_forward(config, forward_mode):
    """BN's mode is recorded at forward: `model.eval()` between forward and backward changes nothing."""
    models = [build_model(config), build_model(config, memory_efficient=True)]
    models[1].load_state_dict(models[0].state_dict())
    warm = torch.randn(8, config.in_channels, 32, 32) * 3 + 1
    with torch.no_grad():                  # running statistics unlike the batch's, so the modes differ
        for m in models:
            m.train()(warm)
    x = torch.randn(8, config.in_channels, 32, 32)
    outs, grads = [], []
    for m in models:
        m.train(forward_mode == "train")
        xi = x.clone().requires_grad_()
        out = m(xi)
        m.train(forward_mode != "train")   # flipped between forward and backward
        (out * torch.arange(out.shape[1], dtype=out.dtype)).sum().backward()
        outs.append(out)
        grads.append([xi.grad] + [p.grad for p in m.parameters()])
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def _cat_dtypes(fn) -> list[torch.dtype]:
    """Dtypes of every concatenation fn runs (forward and backward), from the dispatcher."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.overloadpacket is torch.ops.aten.cat:
                seen.append(out.dtype)
            return out

    with Record():
        fn()
    return seen


@pytest.mark.parametrize("config", [TINY, TINY.with_overrides(variant="densenet", depth=13),
                                    TINY.with_overrides(block_layers=(2, 4), growth_rate=(3, 7), in_channels=1)])
def test_memory_efficient_mode_under_cpu_bf16_autocast_matches_the_normal_path_and_stays_bf16(config):
    """Equal outputs and gradients within bf16 rounding; every concatenation (forward and the recomputation in
    backward) is bf16, as the normal path's, with no fp32 copy of the earlier feature maps."""
    normal = build_model(config).train()
    efficient = build_model(config, memory_efficient=True).train()
    efficient.load_state_dict(normal.state_dict())
    x = torch.randn(8, config.in_channels, 32, 32)
    outs = {}
    for name, model in (("normal", normal), ("efficient", efficient)):
        def step(model=model, name=name):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                outs[name] = model(x)
            (outs[name].float() * torch.arange(outs[name].shape[1])).sum().backward()
        cats = _cat_dtypes(step)
        assert cats and set(cats) == {torch.bfloat16}, (name, cats)
    assert outs["efficient"].dtype == outs["normal"].dtype == torch.bfloat16
    # bf16 keeps 8 bits of mantissa (relative rounding 2^-8 ≈ 0.4 %); the two paths round in different places
    torch.testing.assert_close(outs["efficient"].float(), outs["normal"].float(), rtol=0.05, atol=0.05)
    for (name, a), b in zip(normal.named_parameters(), efficient.parameters()):
        assert b.grad.dtype == torch.float32
        scale = a.grad.abs().max().clamp_min(1e-6)
        assert ((b.grad - a.grad).abs().max() / scale).item() < 0.05, name
    for (name, a), b in zip(normal.named_buffers(), efficient.buffers()):
        torch.testing.assert_close(b.float(), a.float(), rtol=0.02, atol=0.02, msg=name)
    # and the fp32 path is unchanged: no autocast, no bf16 anywhere
    normal.zero_grad()
    assert set(_cat_dtypes(lambda: _train_step(normal, x))) == {torch.float32}
