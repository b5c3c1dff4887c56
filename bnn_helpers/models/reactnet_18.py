"""ReActNet-18 (Bi-Real-18 shaped binary ResNet) in the three modes of the paper.

A block::

    out = alpha * norm(conv3x3(sign(x*beta + s0))) + shortcut(x*beta)
    out = RPReLU(out)

``shortcut`` is the identity, or ``avgpool2x2 -> conv1x1 (-> BN in bn mode)``
when the block changes shape; that conv is of the block's kind (binary weights
in step 2, real in step 1, scaled-WS in bf) and sees the real-valued ``x*beta``,
not a sign. Following DESIGN.md §2 literally, the identity shortcut also
carries ``x*beta`` (``beta`` is 1 in bn/none, so only bf is affected).

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
    """``beta`` for every block.

    ``published``: ``ev = 1`` after the stem; a block gets ``1/sqrt(ev)``; a block
    with a shortcut conv resets ``ev`` to 1 without counting its own branch,
    every other block adds ``alpha**2``. ``nf``: the reset block counts its
    branch too (``ev = 1 + alpha**2``), as in NF-ResNets.
    """
    check_choice("beta_schedule", schedule, BETA_SCHEDULES)
    a2, ev, betas = alpha * alpha, 1.0, []
    for shortcut_conv in has_shortcut_conv:
        betas.append(1.0 / math.sqrt(ev))
        if shortcut_conv:
            ev = 1.0 if schedule == "published" else 1.0 + a2
        else:
            ev += a2
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
        return self.rprelu(branch + self.shortcut(x_scaled))

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
