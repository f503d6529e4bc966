"""Memory-efficient dense layer (Pleiss et al. 2017): keep conv outputs, recompute concat/BN/ReLU.

A dense layer in the normal mode keeps, per layer, the concatenated input (m maps), its BN-ReLU
output (m maps), the bottleneck output and its BN-ReLU output (2·w·k maps) — m grows with depth, so
the total is quadratic in depth. This autograd Function keeps only the bottleneck conv's output
(w·k maps, post-dropout) and its BN statistics; concatenation, BN and ReLU (cheap, no convolution)
are recomputed in backward from the earlier layers' outputs, which are alive anyway. The convs are
not run again: their backward is called directly on the recomputed inputs. BN running statistics
are updated once, in forward, exactly as nn.BatchNorm2d does.

Under autocast (bf16 or fp16) the feature maps stay in their low precision as the normal path keeps them:
concatenation, BN (low-precision input and output, fp32 weights and statistics, as nn.BatchNorm2d runs under
autocast), ReLU and their recomputation in backward never build an fp32 copy of the earlier maps. Without
autocast everything is fp32 as before.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

aten = torch.ops.aten


def _bn_momentum(bn: nn.BatchNorm2d) -> float:
    """nn.BatchNorm2d's momentum rule, with its num_batches_tracked side effect."""
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            momentum = 1.0 / float(bn.num_batches_tracked)
    return momentum


def _bn_training(bn: nn.BatchNorm2d) -> bool:
    return bn.training or bn.running_mean is None


def _bn_forward(bn: nn.BatchNorm2d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor):
    """BN output, the statistics it used, and whether they were the batch's (train mode).

    The mode is read here, at forward, and backward gets it from ctx: a model put in eval mode between
    forward and backward must still get the gradient of what forward computed. The statistics are
    (batch mean, batch invstd) in train mode, copies of (running_mean, running_var) in eval mode.
    """
    training = _bn_training(bn)
    momentum = _bn_momentum(bn)
    y, mean, invstd = aten.native_batch_norm(x, weight, bias, bn.running_mean, bn.running_var,
                                             training, momentum, bn.eps)
    if not training:
        mean, invstd = bn.running_mean.clone(), bn.running_var.clone()
    return y, mean, invstd, training


def _bn_recompute(bn: nn.BatchNorm2d, x: torch.Tensor, weight, bias, mean, invstd_or_var,
                  training: bool) -> torch.Tensor:
    """The BN output again, from the statistics forward used (see _bn_forward).

    A low-precision x goes through native BN in its inference form with the same mean and variance, which
    computes in fp32 per element and writes x's dtype: no fp32 copy of x.
    """
    if x.dtype != torch.float32:
        var = invstd_or_var.pow(-2) - bn.eps if training else invstd_or_var
        return aten.native_batch_norm(x, weight, bias, mean, var, False, 0.0, bn.eps)[0]
    invstd = invstd_or_var if training else torch.rsqrt(invstd_or_var + bn.eps)
    shape = (1, -1, 1, 1)
    scale = (invstd * weight).reshape(shape)
    return torch.addcmul((bias - mean * invstd * weight).reshape(shape), x, scale)


def _bn_backward(bn: nn.BatchNorm2d, grad: torch.Tensor, x: torch.Tensor, weight, mean, invstd_or_var,
                 training: bool):
    """Gradients of BN's input, weight and bias, in the mode forward ran in (see _bn_forward).

    The arguments as autograd passes them: in train mode the batch statistics as save_mean/save_invstd; in
    eval mode the running statistics, and empty save_mean/save_invstd (as native_batch_norm returns them
    in eval mode; CUDA's kernels expect them defined).
    """
    if training:
        return aten.native_batch_norm_backward(grad, x, weight, bn.running_mean, bn.running_var, mean,
                                               invstd_or_var, True, bn.eps, [True, True, True])
    empty = mean.new_empty(0)
    return aten.native_batch_norm_backward(grad, x, weight, mean, invstd_or_var, empty, empty, False, bn.eps,
                                           [True, True, True])


def _conv_args(conv: nn.Conv2d) -> tuple:
    return (conv.stride, conv.padding, conv.dilation)


def _conv_forward(conv: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, dtype) -> torch.Tensor:
    stride, padding, dilation = _conv_args(conv)
    return torch.nn.functional.conv2d(x.to(dtype), weight.to(dtype), None, stride, padding, dilation)


def _conv_backward(conv: nn.Conv2d, grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                   dtype, need_input: bool):
    stride, padding, dilation = _conv_args(conv)
    g_in, g_w, _ = aten.convolution_backward(
        grad.to(dtype), x.to(dtype), weight.to(dtype), None, list(stride), list(padding),
        list(dilation), False, [0, 0], 1, [need_input, True, False])
    return g_in, g_w.to(weight.dtype)


def _dropout_mask(x: torch.Tensor, p: float) -> torch.Tensor | None:
    if p <= 0:
        return None
    return torch.empty_like(x, dtype=torch.bool).bernoulli_(1.0 - p)


def _apply_mask(x: torch.Tensor, mask: torch.Tensor | None, p: float) -> torch.Tensor:
    return x if mask is None else x * mask / (1.0 - p)


def _concat(feats) -> torch.Tensor:
    """The feature maps concatenated in their common dtype (fp32 when they differ)."""
    dtype = feats[0].dtype if all(f.dtype == feats[0].dtype for f in feats) else torch.float32
    return torch.cat([f.to(dtype) for f in feats], 1) if len(feats) > 1 else feats[0].to(dtype)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    dev = x.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return x.dtype


class _EfficientDenseLayer(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, layer: nn.Module, n: int, *args: torch.Tensor) -> torch.Tensor:
        feats, params = args[:n], args[n:]
        dt = _compute_dtype(feats[0])
        p = layer.dropout if layer.training else 0.0
        with torch.autocast(feats[0].device.type, enabled=False):
            x = _concat(feats)
            g1, b1, w1 = params[:3]
            y1, mean1, invstd1, train1 = _bn_forward(layer.norm1, x, g1, b1)
            del x
            out = _conv_forward(layer.conv1, y1.relu_(), w1, dt)
            del y1
            mask1 = _dropout_mask(out, p)
            out = _apply_mask(out, mask1, p)
            saved = [mean1, invstd1, *params]
            mask2 = mean2 = invstd2 = None
            train2 = False
            if layer.bottleneck:
                g2, b2, w2 = params[3:]
                d1 = out
                y2, mean2, invstd2, train2 = _bn_forward(layer.norm2, d1, g2, b2)
                out = _conv_forward(layer.conv2, y2.relu_(), w2, dt)
                del y2
                mask2 = _dropout_mask(out, p)
                out = _apply_mask(out, mask2, p)
                saved += [d1, mean2, invstd2]
        ctx.layer, ctx.n, ctx.p, ctx.dt = layer, n, p, dt
        ctx.bn_training = (train1, train2)
        ctx.feat_dtypes = [f.dtype for f in feats]
        # The masks go through save_for_backward too (None when no dropout), so saved-tensor hooks see them.
        ctx.save_for_backward(*feats, *saved, mask1, mask2)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        layer, n, p, dt = ctx.layer, ctx.n, ctx.p, ctx.dt
        train1, train2 = ctx.bn_training
        saved = ctx.saved_tensors
        feats, rest, (mask1, mask2) = saved[:n], saved[n:-2], saved[-2:]
        mean1, invstd1, g1, b1, w1 = rest[:5]
        dev = grad.device.type
        grads_params: list = []
        with torch.autocast(dev, enabled=False):
            if layer.bottleneck:
                g2, b2, w2, d1, mean2, invstd2 = rest[5:]
                r2 = _bn_recompute(layer.norm2, d1, g2, b2, mean2, invstd2, train2).relu_()
                g = _apply_mask(grad, mask2, p)
                g_r2, g_w2 = _conv_backward(layer.conv2, g, r2, w2, dt, True)
                g_y2 = aten.threshold_backward(g_r2.to(r2.dtype), r2, 0)
                del r2, g_r2
                g_d1, g_g2, g_b2 = _bn_backward(layer.norm2, g_y2, d1, g2, mean2, invstd2, train2)
                del g_y2
                grad = g_d1
                grads_params = [g_g2, g_b2, g_w2]
            g = _apply_mask(grad, mask1, p)
            x = _concat(feats)
            r1 = _bn_recompute(layer.norm1, x, g1, b1, mean1, invstd1, train1).relu_()
            g_r1, g_w1 = _conv_backward(layer.conv1, g, r1, w1, dt, True)
            g_y1 = aten.threshold_backward(g_r1.to(r1.dtype), r1, 0)
            del r1, g_r1
            g_x, g_g1, g_b1 = _bn_backward(layer.norm1, g_y1, x, g1, mean1, invstd1, train1)
            del x, g_y1
        g_feats = _split(g_x, feats, ctx.feat_dtypes, ctx.needs_input_grad[2:2 + n])
        return (None, None, *g_feats, g_g1, g_b1, g_w1, *grads_params)


class _EfficientTransition(torch.autograd.Function):
    """concat-BN-ReLU-1×1 conv-(dropout)-2×2 avg pool, keeping nothing but BN statistics."""

    @staticmethod
    def forward(ctx: Any, trans: nn.Module, n: int, *args: torch.Tensor) -> torch.Tensor:
        feats, (g, b, w) = args[:n], args[n:]
        dt = _compute_dtype(feats[0])
        p = trans.drop.p if hasattr(trans, "drop") and trans.training else 0.0
        with torch.autocast(feats[0].device.type, enabled=False):
            x = _concat(feats)
            y, mean, invstd, bn_training = _bn_forward(trans.norm, x, g, b)
            del x
            out = _conv_forward(trans.conv, y.relu_(), w, dt)
            del y
            mask = _dropout_mask(out, p)
            ctx.conv_shape = out.shape
            out = trans.pool(_apply_mask(out, mask, p))
        ctx.trans, ctx.n, ctx.p, ctx.dt, ctx.bn_training = trans, n, p, dt, bn_training
        ctx.feat_dtypes = [f.dtype for f in feats]
        ctx.save_for_backward(*feats, mean, invstd, g, b, w, mask)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        trans, n, p, dt = ctx.trans, ctx.n, ctx.p, ctx.dt
        saved = ctx.saved_tensors
        feats, (mean, invstd, g, b, w, mask) = saved[:n], saved[n:]
        pool = trans.pool
        with torch.autocast(grad.device.type, enabled=False):
            shape_only = grad.new_empty(ctx.conv_shape)
            g_c = aten.avg_pool2d_backward(grad, shape_only, [pool.kernel_size] * 2, [pool.stride] * 2,
                                           [pool.padding] * 2, pool.ceil_mode, pool.count_include_pad, None)
            del shape_only
            g_c = _apply_mask(g_c, mask, p)
            x = _concat(feats)
            r = _bn_recompute(trans.norm, x, g, b, mean, invstd, ctx.bn_training).relu_()
            g_r, g_w = _conv_backward(trans.conv, g_c, r, w, dt, True)
            del g_c
            g_y = aten.threshold_backward(g_r.to(r.dtype), r, 0)
            del r, g_r
            g_x, g_g, g_b = _bn_backward(trans.norm, g_y, x, g, mean, invstd, ctx.bn_training)
        return (None, None, *_split(g_x, feats, ctx.feat_dtypes, ctx.needs_input_grad[2:2 + n]), g_g, g_b, g_w)


def _split(g_x: torch.Tensor, feats, dtypes, needs) -> list:
    """The concatenation's gradient, back to one gradient per input feature map."""
    sizes = [f.shape[1] for f in feats]
    return [gf.to(d) if need else None for gf, d, need in zip(torch.split(g_x, sizes, 1), dtypes, needs)]


def efficient_transition(trans: nn.Module, features: list[torch.Tensor]) -> torch.Tensor:
    """Run a Transition on a block's feature list without keeping the concatenation for backward."""
    return _EfficientTransition.apply(trans, len(features), *features, trans.norm.weight, trans.norm.bias,
                                      trans.conv.weight)


def efficient_layer(layer: nn.Module, features: list[torch.Tensor]) -> torch.Tensor:
    """Run a DenseLayer keeping only its conv outputs for backward (see module docstring)."""
    params = [layer.norm1.weight, layer.norm1.bias, layer.conv1.weight]
    if layer.bottleneck:
        params += [layer.norm2.weight, layer.norm2.bias, layer.conv2.weight]
    return _EfficientDenseLayer.apply(layer, len(features), *features, *params)
