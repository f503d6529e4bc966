"""Closed-form parameter and MAC counts of a DenseNet config, without building it.

params: trainable parameters (conv weights, BN γ/β, linear weight + bias; no running stats).
MACs: multiply-accumulates of convs and the linear layer at batch 1 (FLOPs = 2 × MACs).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..errors import ConfigError
from .config import ModelConfig
from .presets import resolve_config


class Stage(NamedTuple):
    """One row of the stage table: spatial size after the stage, channels in → out, params, MACs."""

    name: str
    layers: int
    size: tuple[int, int]
    in_channels: int
    out_channels: int
    params: int
    macs: int


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _layer_cost(m: int, k: int, bottleneck: bool, width: int) -> tuple[int, int]:
    """(params, MACs per output pixel) of one dense layer with m input maps."""
    if bottleneck:
        inter = width * k
        return 2 * m + m * inter + 2 * inter + 9 * inter * k, m * inter + 9 * inter * k
    return 2 * m + 9 * m * k, 9 * m * k


def stages(config: ModelConfig | str, input_size: tuple[int, int, int] | None = None) -> list[Stage]:
    """The network stage by stage (stem, blocks, transitions, head); sizes after each stage."""
    c = resolve_config(config)
    cin, h, w = input_size = tuple(input_size or c.default_input_size())
    if cin != c.in_channels:
        raise ConfigError(f"input has {cin} channels but model.in_channels is {c.in_channels}")
    m = c.init_features
    out: list[Stage] = []
    if c.stem == "imagenet":
        h, w = _conv_out(h, 7, 2, 3), _conv_out(w, 7, 2, 3)
        macs = h * w * 49 * cin * m
        h, w = _conv_out(h, 3, 2, 1), _conv_out(w, 3, 2, 1)
        out.append(Stage("stem (7×7/2 conv, 3×3/2 max-pool)", 1, (h, w), cin, m, 49 * cin * m + 2 * m, macs))
    else:
        out.append(Stage("stem (3×3 conv)", 1, (h, w), cin, m, 9 * cin * m, h * w * 9 * cin * m))
    if h < 1 or w < 1:
        raise ConfigError(f"stem: input {input_size} shrinks below 1×1; use a larger input or the cifar stem")
    last = len(c.block_layers) - 1
    for i, (n, k) in enumerate(zip(c.block_layers, c.growth_rates)):
        params = macs = 0
        for j in range(n):
            p, mac = _layer_cost(m + j * k, k, c.bottleneck, c.bottleneck_width)
            params, macs = params + p, macs + mac * h * w
        out.append(Stage(f"denseblock{i + 1}", n, (h, w), m, m + n * k, params, macs))
        m += n * k
        if i < last:
            t = int(c.compression * m)
            if h < 2 or w < 2:
                raise ConfigError(f"transition{i + 1} (after denseblock{i + 1}): the {h}×{w} feature "
                                  f"map would shrink below 1×1 at input {'x'.join(map(str, input_size))}; "
                                  "use fewer blocks or a larger input")
            out.append(Stage(f"transition{i + 1}", 1, (h // 2, w // 2), m, t, 2 * m + m * t, h * w * m * t))
            h, w, m = h // 2, w // 2, t
    out.append(Stage("head (BN-ReLU-pool-linear)", 1, (1, 1), m, c.num_classes,
                     2 * m + m * c.num_classes + c.num_classes, m * c.num_classes))
    return out


def count_params(config: ModelConfig | str, **overrides: Any) -> int:
    """Trainable parameters, closed form."""
    c = resolve_config(config, **overrides)
    # Params don't depend on the input size; a large one keeps every block above 1×1.
    return sum(s.params for s in stages(c, (c.in_channels, 4096, 4096)))


def count_macs(config: ModelConfig | str, input_size: tuple[int, int, int] | None = None,
               **overrides: Any) -> int:
    """Multiply-accumulates at batch 1 (convs + linear); input_size (C, H, W), stem default."""
    return sum(s.macs for s in stages(resolve_config(config, **overrides), input_size))


# ---- training memory -------------------------------------------------------------------------------------------

DTYPES = {"fp32": 4, "bf16": 2, "fp16": 2}     # activation bytes per element under each autocast dtype
LOW_PRECISION_COPY = 2                          # a conv or linear weight cast by autocast, saved for backward


class Memory(NamedTuple):
    """Training memory of one step (bytes), closed form; see count_memory."""

    saved_bytes: int        # what autograd saves for backward: unique storages, not parameters or buffers
    state_bytes: int        # parameters, gradients, optimizer state (momentum) and BN buffers
    peak_bytes: int         # estimate of the step's peak: state + batch + saved alive + the largest transient
    batch_bytes: int        # the batch (fp32 images, int64 labels) where not already counted in saved_bytes
    stage_saved: tuple[int, ...] = ()    # saved_bytes by row of stages() (stem, blocks, transitions, head)


class _Op(NamedTuple):
    """One stage of the step in forward order: the storages it saves, and what its backward adds at once."""

    saved: int
    backward: int           # at its backward's largest: transient bytes, less its own saved bytes freed by then
    stage: int              # index of its row in stages()


def count_memory(config: ModelConfig | str, input_size: tuple[int, int, int] | None = None, batch_size: int = 64,
                 dtype: str = "fp32", memory_efficient: bool | None = None, *, device: str = "cpu",
                 channels_last: bool = False, label_smoothing: bool = False, momentum: bool = True) -> Memory:
    """Bytes of one training step (SGD, cross-entropy), without building the network.

    saved_bytes is exact: it equals the unique storages that autograd saves (torch.autograd.graph.saved_tensors_hooks)
    for model(x) under autocast `dtype` and F.cross_entropy(out.float(), y), parameters and buffers excluded. The
    paper's quadratic term is here: in the normal path every dense layer saves its concatenated input and its
    BN-ReLU output; the memory-efficient path (Pleiss et al. 2017) saves each feature map once, and BN statistics.
    device: "cuda" saves dropout masks as bytes (native_dropout), "cpu" saves the noise in the activation dtype.
    state_bytes: parameters, their gradients and (momentum=True) SGD's momentum buffers in fp32, and BN buffers.
    peak_bytes: state + batch + the most the step has alive at once, walking backward through the network with
    each stage's saved tensors still alive and its transient (gradients of its input and output, and in the
    efficient path the recomputed concatenation and BN-ReLU maps) on top: an estimate, not a bound.
    """
    c = resolve_config(config)
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be ≥ 1, got {batch_size}")
    efficient = c.memory_efficient if memory_efficient is None else memory_efficient
    rows = stages(c, input_size)               # checks the input and the spatial sizes
    cin, h, w = tuple(input_size or c.default_input_size())
    ops = _ops(c, cin, h, w, batch_size, DTYPES[dtype], dtype != "fp32", efficient, device == "cpu", device == "cuda",
               device == "cpu" and not channels_last, label_smoothing)
    params = sum(s.params for s in rows)
    n_bn = sum(1 for _ in _bn_channels(c))
    buffers = 2 * 4 * sum(_bn_channels(c)) + 8 * n_bn          # running mean and var (fp32), num_batches_tracked
    state = params * 4 * (3 if momentum else 2) + buffers
    images = batch_size * cin * h * w * 4
    batch = batch_size * 8 + (images if dtype != "fp32" else 0)  # fp32: the images are saved (conv0's input)
    saved = sum(op.saved for op in ops)
    alive, peak = saved, saved
    for op in reversed(ops):          # backward: this op's saved tensors are still alive while it runs
        peak = max(peak, alive + op.backward)
        alive -= op.saved
    by_stage = [0] * len(rows)
    for op in ops:
        by_stage[op.stage] += op.saved
    return Memory(saved, state, state + batch + peak, batch, tuple(by_stage))


def _bn_channels(c: ModelConfig):
    """Channels of every BatchNorm2d, in forward order."""
    m = c.init_features
    if c.stem == "imagenet":
        yield m
    last = len(c.block_layers) - 1
    for i, (n, k) in enumerate(zip(c.block_layers, c.growth_rates)):
        for j in range(n):
            yield m + j * k
            if c.bottleneck:
                yield c.bottleneck_width * k
        m += n * k
        if i < last:
            yield m
            m = int(c.compression * m)
    yield m


def _ops(c: ModelConfig, cin: int, h: int, w: int, batch: int, act: int, amp: bool, efficient: bool,
         cpu: bool, cuda: bool, reorders: bool, label_smoothing: bool) -> list[_Op]:
    """The stages of one training step with what each saves (see count_memory); act: activation bytes/element."""
    b = batch
    drop = c.dropout > 0
    noise = 1 if cuda else act                      # the normal path's dropout: a mask (CUDA) or the noise (CPU)
    copy = LOW_PRECISION_COPY if amp else 0         # autocast's saved low-precision weight copy, per weight

    def maps(ch: int, hh: int, ww: int, size: int = act) -> int:
        return b * ch * hh * ww * size

    def stats(ch: int) -> int:
        return 2 * ch * 4                           # BN's saved batch mean and invstd, fp32

    def scratch(ch: int, hh: int, ww: int) -> int:
        # oneDNN on a CPU reorders a contiguous (NCHW) conv's input and gradient into its blocked layout.
        return maps(ch, hh, ww) if reorders else 0

    def recomputed(ch: int, hh: int, ww: int) -> int:
        # A channels_last CPU conv backward on the efficient path's recomputed input copies it once (measured).
        return maps(ch, hh, ww) if cpu and not reorders else 0

    ops: list[_Op] = []
    m = c.init_features
    # Stem: conv0 saves its input (the images, or autocast's low-precision copy of them) and its weight copy.
    if c.stem == "imagenet":
        h1, w1 = _conv_out(h, 7, 2, 3), _conv_out(w, 7, 2, 3)
        h2, w2 = _conv_out(h1, 3, 2, 1), _conv_out(w1, 3, 2, 1)
        saved = (maps(cin, h, w) + copy * 49 * cin * m + 2 * maps(m, h1, w1) + stats(m)
                 + maps(m, h2, w2, 8))              # norm0's input, relu0's output, the max-pool's int64 indices
        ops.append(_Op(saved, 2 * maps(m, h1, w1) + scratch(cin + m, h1, w1), 0))
        h, w = h2, w2
    else:
        ops.append(_Op(maps(cin, h, w) + copy * 9 * cin * m, maps(m, h, w) + scratch(cin + m, h, w), 0))
    last = len(c.block_layers) - 1
    for i, (n, k) in enumerate(zip(c.block_layers, c.growth_rates)):
        inter = c.bottleneck_width * k
        first = c.bottleneck and inter or k          # channels of the layer's first conv
        for j in range(n):
            mj = m + j * k
            g = first                               # the gradient into the first conv's output
            held = maps(mj + k, h, w)                    # gradients of the layer's input features and its output
            if efficient:
                # Each feature map once (the block input at the first layer, else the previous layer's output),
                # BN statistics, dropout masks (bool), and the bottleneck conv's output.
                saved = (maps(m if j == 0 else k, h, w) + stats(mj) + (maps(first, h, w, 1) if drop else 0))
                if c.bottleneck:
                    saved += maps(inter, h, w) + stats(inter) + (maps(k, h, w, 1) if drop else 0)
                # Backward recomputes the concatenation and BN-ReLU (x, r1), then the first conv's backward makes
                # the gradient of r1 (and, on a CPU in the contiguous layout, reorders its input and gradient).
                back = held + maps(3 * mj + g, h, w) + scratch(mj + g, h, w) + recomputed(mj, h, w)
                if c.bottleneck:
                    back = max(back, held + maps(2 * inter + k, h, w) + scratch(inter + k, h, w))
            else:
                # norm1 saves the (concatenated) input, relu1/conv1 its output; conv1 the weight copy.
                noise1 = maps(first, h, w, noise) if drop else 0
                noise2 = maps(k, h, w, noise) if drop and c.bottleneck else 0
                saved = 2 * maps(mj, h, w) + stats(mj) + copy * mj * first * (1 if c.bottleneck else 9) + noise1
                tail = noise2                        # what the layer's backward frees before conv1's backward
                if c.bottleneck:
                    tail += 2 * maps(inter, h, w) + stats(inter) + copy * inter * k * 9
                saved += tail
                back = held + maps(mj + g, h, w) + scratch(mj + g, h, w) - tail - noise1
                if c.bottleneck:
                    back = max(back, held + maps(inter + k, h, w) + scratch(inter + k, h, w) - noise2)
            ops.append(_Op(saved, back, 2 * i + 1))
        m += n * k
        if i < last:
            t = int(c.compression * m)
            held = maps(t, h // 2, w // 2)               # the gradient of the transition's output
            if efficient:
                # The last layer's output (the only feature not saved by a layer), statistics, the dropout mask.
                saved = maps(k, h, w) + stats(m) + (maps(t, h, w, 1) if drop else 0)
                # x, r, the gradient of r; the pool's gradient
                back = held + maps(3 * m + t, h, w) + scratch(m + t, h, w) + recomputed(m, h, w)
            else:
                # The pool's input and the dropout noise are freed before the conv's backward runs.
                tail = maps(t, h, w) + (maps(t, h, w, noise) if drop else 0)
                saved = 2 * maps(m, h, w) + stats(m) + copy * m * t + tail
                back = held + maps(m + t, h, w) + scratch(m + t, h, w) - tail
            ops.append(_Op(saved, back, 2 * i + 2))
            h, w, m = h // 2, w // 2, t
    # Head: norm5 saves the concatenated block output, relu/pool its output; the linear saves the pooled
    # features and its weight copy; cross-entropy saves log-softmax (fp32), the labels and its total weight.
    saved = (2 * maps(m, h, w) + stats(m) + maps(m, 1, 1) + copy * m * c.num_classes
             + b * c.num_classes * 4 + b * 8 + 4 + ((b + 8) if label_smoothing else 0))
    ops.append(_Op(saved, maps(2 * m, h, w), 2 * last + 2))
    return ops


FIT_MARGIN = 0.9        # memory_efficient auto: the normal path must fit in this fraction of the trial's share


def format_bytes(n: float) -> str:
    """1536 → '1.5 KiB' (binary units)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def choose_memory_path(config: ModelConfig, input_size: tuple[int, int, int], batch_size: int, dtype: str, *,
                       setting: bool | str = "auto", share_bytes: int | None = None,
                       limit_bytes: float | None = None, device: str = "cpu",
                       channels_last: bool = False) -> tuple[bool, str, Memory]:
    """`train.memory_efficient`: (efficient, why, the chosen path's Memory).

    auto: the normal path when its predicted peak fits in FIT_MARGIN of the trial's share of its device and within
    limit_bytes (constraints.max_memory), else the memory-efficient path (same function, ~15–20% slower steps).
    A config with model.memory_efficient set explicitly keeps it. share_bytes None: the share is unknown (normal).
    """
    def memory(efficient: bool) -> Memory:
        return count_memory(config, input_size, batch_size, dtype, efficient, device=device,
                            channels_last=channels_last)

    if setting != "auto":
        return bool(setting), f"train.memory_efficient: {str(bool(setting)).lower()}", memory(bool(setting))
    if "memory_efficient" in config.model_fields_set:
        on = config.memory_efficient
        return on, f"model.memory_efficient: {str(on).lower()}", memory(on)
    normal = memory(False)
    room = [(FIT_MARGIN * share_bytes, f"{FIT_MARGIN:.0%} of its {format_bytes(share_bytes)} share of the device")
            ] if share_bytes else []
    if limit_bytes is not None:
        room.append((limit_bytes, f"constraints.max_memory {format_bytes(limit_bytes)}"))
    over = [why for cap, why in room if normal.peak_bytes > cap]
    if not over:
        fits = f"fits in {room[0][1]}" if room else "the device's share is unknown"
        return False, f"auto: normal path, peak ≈ {format_bytes(normal.peak_bytes)} ({fits})", normal
    efficient = memory(True)
    return True, (f"auto: memory-efficient path, the normal path's peak ≈ {format_bytes(normal.peak_bytes)} "
                  f"exceeds {over[0]}; efficient ≈ {format_bytes(efficient.peak_bytes)}"), efficient
