"""ReActNet-A (MobileNet-v1 shaped binary network) in the three modes of the paper.

One definition covers the published variants: ``norm`` in {bf, bn, none} ×
``binary_weights`` in {False (step 1), True (step 2)}. See docs/reference.md §2 and §4.

Each block has two residual halves::

    half 1:  h = conv3x3(sign(x*b1 + s11))          (stride 1 or 2)
             y = shortcut + alpha*h,  shortcut = avgpool2x2(x*b1) if stride 2 else x
             y = RPReLU1(y)
    half 2:  g = sign(y*b2 + s21)
             out = alpha*conv1x1(g) + y                        (C_out == C_in)
             out = cat(alpha*conv1x1_a(g) + y, alpha*conv1x1_b(g) + y)   (C_out == 2 C_in)
             out = RPReLU2(out)

In ``bn`` mode a BatchNorm follows every binary conv and alpha = b1 = b2 = 1;
``none`` is ``bn`` with the BatchNorms deleted; ``bf`` uses scaled weight
standardization, alpha = 0.2 and the beta constants of :func:`beta_schedule`.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..layers import RPReLU, RSign, make_conv
from ._common import (BETA_SCHEDULES, BinaryNet, ClassifierHead, Stem,
                      check_choice, norm_or_identity, round_channels)

__all__ = ["ReActNetA", "ReActBlockA", "reactnet_a", "beta_schedule_a",
           "BASE_STEM", "BASE_CHANNELS", "STRIDES"]

BASE_STEM = 32
BASE_CHANNELS = (64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)
# Fixed by position (1-based blocks 2, 4, 6, 12 reduce), not by channel count,
# so narrow networks stride the same blocks as the published one.
STRIDES = (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1)


def beta_schedule_a(strides, alpha: float, schedule: str = "published"):
    """``(beta1, beta2)`` for every block from an expected-variance recurrence.

    Both schedules track ``v``, the expected variance of the residual stream,
    start at ``v = 1`` and give a sign input ``beta = 1/sqrt(v)``.

    ``published`` (the constants of the paper's code; with alpha = 0.2 and
    written as ``v``: (1.00, 1.04), (1.08, 1.12), (1.00, 1.04), ...,
    (1.40, 1.44), (1.00, 1.04)): a block takes ``beta1 = 1/sqrt(v)``, then
    ``v += alpha**2`` and ``beta2 = 1/sqrt(v)``; after a stride-1 block
    ``v += alpha**2`` once more (its second half's addition); after a reduction
    block ``v`` restarts at 1.

    ``nf`` (the NF-ResNet bookkeeping): identical up to the first reduction
    block, where the restart happens *inside* the block, because its shortcut
    ``avgpool(x*beta1)`` already has unit variance: ``v = 1`` before its second
    half, so its ``beta2`` is ``1/sqrt(1 + alpha**2)`` and every later block
    counts the reduction block's second-half addition (``v`` enters the next
    block at ``1 + 2*alpha**2`` instead of 1).
    """
    check_choice("beta_schedule", schedule, BETA_SCHEDULES)
    a2 = alpha * alpha
    betas = []
    v = 1.0
    for stride in strides:
        beta1 = 1.0 / math.sqrt(v)
        if stride == 2 and schedule == "nf":
            v = 1.0
        v += a2
        betas.append((beta1, 1.0 / math.sqrt(v)))
        if stride == 2 and schedule == "published":
            v = 1.0
        else:
            v += a2
    return betas


class ReActBlockA(nn.Module):
    """One ReActNet-A block (both halves); see the module docstring."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm: str,
                 binary_weights: bool, alpha: float = 1.0, beta1: float = 1.0,
                 beta2: float = 1.0, estimator: str = "approx"):
        super().__init__()
        if out_channels not in (in_channels, 2 * in_channels):
            raise ValueError(f"ReActBlockA: out_channels must be in_channels or twice it, "
                             f"got {in_channels} -> {out_channels}")
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.alpha, self.beta1, self.beta2 = alpha, beta1, beta2

        self.act1 = RSign(in_channels, estimator)
        self.conv3x3 = make_conv(norm, binary_weights, in_channels, in_channels, 3, stride, 1)
        self.norm1 = norm_or_identity(norm, in_channels)
        self.shortcut1 = nn.AvgPool2d(2, 2) if stride == 2 else nn.Identity()
        self.rprelu1 = RPReLU(in_channels)

        self.act2 = RSign(in_channels, estimator)
        n_pw = out_channels // in_channels
        self.conv1x1 = nn.ModuleList(
            make_conv(norm, binary_weights, in_channels, in_channels, 1) for _ in range(n_pw))
        self.norm2 = nn.ModuleList(norm_or_identity(norm, in_channels) for _ in range(n_pw))
        self.rprelu2 = RPReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha
        x_scaled = x * self.beta1 if self.beta1 != 1.0 else x
        h = self.norm1(self.conv3x3(self.act1(x_scaled)))
        shortcut = self.shortcut1(x_scaled) if self.stride == 2 else x
        y = shortcut + (alpha * h if alpha != 1.0 else h)
        y = self.rprelu1(y)

        g = self.act2(y * self.beta2 if self.beta2 != 1.0 else y)
        outs = []
        for conv, norm in zip(self.conv1x1, self.norm2):
            branch = norm(conv(g))
            outs.append((alpha * branch if alpha != 1.0 else branch) + y)
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
        return self.rprelu2(out)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}->{self.out_channels}, stride={self.stride}, "
                f"alpha={self.alpha:g}, beta1={self.beta1:.4f}, beta2={self.beta2:.4f}")


class ReActNetA(BinaryNet):
    """ReActNet-A; ``norm`` picks the paper's mode, ``binary_weights`` the training step."""

    def __init__(self, norm: str = "bf", binary_weights: bool = True, num_classes: int = 1000,
                 alpha: float = 0.2, beta_schedule: str = "published", width_mult: float = 1.0,
                 in_chans: int = 3, estimator: str = "approx"):
        super().__init__()
        self._configure(norm, binary_weights, num_classes, alpha, beta_schedule,
                        width_mult, in_chans)
        betas = (beta_schedule_a(STRIDES, self.alpha, beta_schedule) if norm == "bf"
                 else [(1.0, 1.0)] * len(STRIDES))

        stem_channels = round_channels(BASE_STEM * width_mult)
        self.stem = Stem(norm, in_chans, stem_channels, 3, 2)
        blocks, channels, base_in = [], stem_channels, BASE_STEM
        for base_out, stride, (b1, b2) in zip(BASE_CHANNELS, STRIDES, betas):
            # Channel doubling follows the published pattern exactly, so every
            # width keeps out == in or out == 2*in.
            out = channels * base_out // base_in
            blocks.append(ReActBlockA(channels, out, stride, norm, binary_weights,
                                      self.alpha, b1, b2, estimator))
            channels, base_in = out, base_out
        self.blocks = nn.ModuleList(blocks)
        self.num_features = channels
        self.head = ClassifierHead(channels, num_classes)

    def forward(self, x):
        self._check_input(x)
        return super().forward(x)


def reactnet_a(norm: str = "bf", binary_weights: bool = True, num_classes: int = 1000,
               alpha: float = 0.2, beta_schedule: str = "published", width_mult: float = 1.0,
               in_chans: int = 3, estimator: str = "approx") -> ReActNetA:
    """Build ReActNet-A. ``width_mult=1`` and 1000 classes is the published network."""
    return ReActNetA(norm, binary_weights, num_classes, alpha, beta_schedule, width_mult,
                     in_chans, estimator)
