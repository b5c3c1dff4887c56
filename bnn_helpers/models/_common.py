"""Pieces shared by the model definitions: modes, width rounding, stem, head."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..layers import make_conv

NORMS = ("bf", "bn", "none")
BETA_SCHEDULES = ("published", "nf")


def check_choice(what: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(map(str, choices))}")


def round_channels(channels: float, divisor: int = 8) -> int:
    """Round to the nearest multiple of ``divisor`` (at least ``divisor``)."""
    return max(divisor, int(channels + divisor / 2) // divisor * divisor)


def norm_or_identity(norm: str, channels: int) -> nn.Module:
    """BatchNorm2d in ``bn`` mode; an ``nn.Identity`` placeholder otherwise.

    The placeholder keeps a hook point at the exact place BN would sit, so the
    diagnostics read the residual branch before ``alpha`` in every mode.
    """
    return nn.BatchNorm2d(channels) if norm == "bn" else nn.Identity()


class Stem(nn.Module):
    """Real-valued first convolution (scaled-WS in ``bf``), BN in ``bn`` mode, optional max-pool."""

    def __init__(self, norm, in_chans, out_chans, kernel_size, stride, max_pool=False):
        super().__init__()
        self.conv = make_conv(norm, False, in_chans, out_chans, kernel_size, stride,
                              kernel_size // 2)
        self.norm = norm_or_identity(norm, out_chans)
        self.pool = nn.MaxPool2d(3, 2, 1) if max_pool else nn.Identity()

    def forward(self, x):
        return self.pool(self.norm(self.conv(x)))


class ClassifierHead(nn.Module):
    """Global average pool, flatten, real-valued linear classifier with bias."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(x), 1))


class BinaryNet(nn.Module):
    """Stem, an ordered ``nn.ModuleList`` of blocks, and a head.

    Diagnostics hook ``model.stem``, every ``model.blocks[i]`` and ``model.head``
    without knowing the architecture.
    """

    stem: nn.Module
    blocks: nn.ModuleList
    head: ClassifierHead

    def _configure(self, norm, binary_weights, num_classes, alpha, beta_schedule,
                   width_mult, in_chans):
        """Validate the shared knobs and store them; bn/none use no residual scaling."""
        check_choice("norm mode", norm, NORMS)
        check_choice("beta_schedule", beta_schedule, BETA_SCHEDULES)
        if not (isinstance(num_classes, int) and num_classes > 0):
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        if not width_mult > 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult!r}")
        self.norm, self.binary_weights, self.in_chans = norm, binary_weights, in_chans
        self.num_classes, self.width_mult, self.beta_schedule = num_classes, width_mult, beta_schedule
        self.alpha = alpha if norm == "bf" else 1.0

    def forward_features(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return x

    def forward(self, x):
        return self.head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        return self.head.fc

    def _check_input(self, x):
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"{type(self).__name__} expects images of shape "
                             f"(N, {self.in_chans}, H, W), got {tuple(x.shape)}")
