"""ReActNet-18 (Bi-Real-18 shaped binary ResNet) in the three modes of the paper.

A block::

    out = alpha * norm(conv3x3(sign(x*beta + s0))) + shortcut
    out = RPReLU(out)

``shortcut`` is the plain ``x``, or ``conv1x1(avgpool2x2(x*beta)) (-> BN in bn
mode)`` when the block changes shape; that conv is of the block's kind (binary
weights in step 2, real in step 1, scaled-WS in bf) and sees the real-valued
``x*beta``, not a sign. Only that conv sees ``beta``: the identity shortcut
carries ``x`` unscaled, as in the published network.

``stem="imagenet"``: 7x7 stride-2 conv and 3x3 max-pool; ``stem="cifar"``:
3x3 stride-1 conv, no pool (the published code used the ImageNet stem on
CIFAR by mistake).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..layers import RPReLU, RSign, make_conv
from ._common import (BETA_SCHEDULES, BinaryNet, ClassifierHead, Stem,
                      check_choice, norm_or_identity, round_channels)

__all__ = ["ReActNet18", "ReActBlock18", "reactnet_18", "beta_schedule_18", "STAGES", "STEMS"]

STAGES = (64, 128, 256, 512)
BLOCKS_PER_STAGE = 4
STEMS = ("imagenet", "cifar")


def beta_schedule_18(has_shortcut_conv, alpha: float, schedule: str = "published"):
    """``beta`` for every block from an expected-variance recurrence (``v = 1`` after the stem).

    ``published`` (the constants of the paper's code; with alpha = 0.2 and
    written as ``v``: stage 1 1.00, 1.00, 1.04, 1.08; stages 2-4 1.12, 1.00,
    1.04, 1.08): every block takes ``beta = 1/sqrt(v)``; the first block of
    stage adds nothing to ``v``: the network's first block, which follows the
    stem, keeps ``v``, and a block with a shortcut conv (every other stage
    opening) resets it to 1. Every remaining block adds ``alpha**2``.

    ``nf`` (the NF-ResNet bookkeeping): every block adds its branch,
    ``alpha**2``; a block with a shortcut conv (whose output has unit
    variance) resets ``v`` to ``1 + alpha**2``. With alpha = 0.2 as ``v``:
    1.00, 1.04, 1.08, 1.12 in stage 1; 1.16, 1.04, 1.08, 1.12 in stages 2-4.
    """
    check_choice("beta_schedule", schedule, BETA_SCHEDULES)
    a2, v, betas = alpha * alpha, 1.0, []
    for index, shortcut_conv in enumerate(has_shortcut_conv):
        betas.append(1.0 / math.sqrt(v))
        if schedule == "nf":
            v = 1.0 + a2 if shortcut_conv else v + a2
        elif shortcut_conv:
            v = 1.0
        elif index > 0:
            v += a2
    return betas


class ReActBlock18(nn.Module):
    """One ReActNet-18 block; see the module docstring."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm: str,
                 binary_weights: bool, alpha: float = 1.0, beta: float = 1.0,
                 estimator: str = "approx"):
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.alpha, self.beta = alpha, beta
        self.act = RSign(in_channels, estimator)
        self.conv = make_conv(norm, binary_weights, in_channels, out_channels, 3, stride, 1)
        self.norm = norm_or_identity(norm, out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.AvgPool2d(2, 2) if stride != 1 else nn.Identity(),
                make_conv(norm, binary_weights, in_channels, out_channels, 1),
                norm_or_identity(norm, out_channels),
            )
        else:
            self.shortcut = nn.Identity()
        self.rprelu = RPReLU(out_channels)

    @property
    def has_shortcut_conv(self) -> bool:
        return not isinstance(self.shortcut, nn.Identity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_scaled = x * self.beta if self.beta != 1.0 else x
        branch = self.norm(self.conv(self.act(x_scaled)))
        if self.alpha != 1.0:
            branch = self.alpha * branch
        # Only the shortcut conv sees x*beta; the identity shortcut carries x.
        shortcut = self.shortcut(x_scaled) if self.has_shortcut_conv else x
        return self.rprelu(branch + shortcut)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}->{self.out_channels}, stride={self.stride}, "
                f"alpha={self.alpha:g}, beta={self.beta:.4f}")


class ReActNet18(BinaryNet):
    """ReActNet-18; ``norm`` picks the paper's mode, ``binary_weights`` the training step."""

    def __init__(self, norm: str = "bf", binary_weights: bool = True, num_classes: int = 1000,
                 alpha: float = 0.2, beta_schedule: str = "published", width_mult: float = 1.0,
                 in_chans: int = 3, stem: str = "imagenet", estimator: str = "approx"):
        super().__init__()
        self._configure(norm, binary_weights, num_classes, alpha, beta_schedule,
                        width_mult, in_chans)
        check_choice("stem", stem, STEMS)
        self.stem_kind = stem

        widths = [round_channels(c * width_mult) for c in STAGES]
        if stem == "imagenet":
            self.stem = Stem(norm, in_chans, widths[0], 7, 2, max_pool=True)
        else:
            self.stem = Stem(norm, in_chans, widths[0], 3, 1)
        plan, channels = [], widths[0]
        for stage, width in enumerate(widths):
            for j in range(BLOCKS_PER_STAGE):
                stride = 2 if (stage > 0 and j == 0) else 1
                plan.append((channels, width, stride))
                channels = width
        shortcut_conv = [s != 1 or i != o for i, o, s in plan]
        betas = (beta_schedule_18(shortcut_conv, self.alpha, beta_schedule) if norm == "bf"
                 else [1.0] * len(plan))
        self.blocks = nn.ModuleList(
            ReActBlock18(i, o, s, norm, binary_weights, self.alpha, b, estimator)
            for (i, o, s), b in zip(plan, betas))
        self.num_features = channels
        self.head = ClassifierHead(channels, num_classes)

    def forward(self, x):
        self._check_input(x)
        return super().forward(x)


def reactnet_18(norm: str = "bf", binary_weights: bool = True, num_classes: int = 1000,
                alpha: float = 0.2, beta_schedule: str = "published", width_mult: float = 1.0,
                in_chans: int = 3, stem: str = "imagenet", estimator: str = "approx") -> ReActNet18:
    """Build ReActNet-18. ``stem="cifar"`` for 32x32 inputs."""
    return ReActNet18(norm, binary_weights, num_classes, alpha, beta_schedule, width_mult,
                      in_chans, stem, estimator)
