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


def _output_side(module: nn.Module, side: int) -> int:
    """Output side of a square map through a Conv2d / MaxPool2d / AvgPool2d (PyTorch's formula)."""
    pair = lambda v: v[0] if isinstance(v, (tuple, list)) else v  # noqa: E731 (square maps only)
    kernel, stride, padding = pair(module.kernel_size), pair(module.stride), pair(module.padding)
    dilation = pair(getattr(module, "dilation", 1))
    return (side + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


_SPATIAL = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


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
        # norm_mode, not norm: a block's ``norm`` is its BN module (or Identity placeholder)
        self.norm_mode, self.binary_weights, self.in_chans = norm, binary_weights, in_chans
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

    def feature_map_sizes(self, size: int) -> list[int]:
        """Side of the square feature map after the stem and after every block, for
        ``size`` x ``size`` input images; ``ValueError`` saying why when they do not fit.

        A stride-2 block halves its input on two paths at once (a strided 3x3 conv and a
        2x2 average-pool shortcut), which agree only on even sides: on an odd side they
        differ by a pixel, an error, or a silent broadcast when one of them is 1x1.
        """
        side = size
        for module in self.stem.modules():
            if isinstance(module, _SPATIAL):
                side = _output_side(module, side)
        name = type(self).__name__
        if side < 1:
            raise ValueError(f"{name} cannot take {size}x{size} images: the stem leaves no pixels")
        sides = [side]
        for i, block in enumerate(self.blocks):
            halved = {_output_side(m, side) for m in block.modules()
                      if isinstance(m, _SPATIAL) and _output_side(m, 1 << 20) < 1 << 20}
            if halved and min(halved) < 1:
                raise ValueError(f"{name} cannot take {size}x{size} images: blocks[{i}] gets a "
                                 f"{side}x{side} map, too small to stride")
            if len(halved) > 1:
                raise ValueError(f"{name} cannot take {size}x{size} images: blocks[{i}] gets an odd "
                                 f"{side}x{side} map, which its conv and pooling shortcut halve "
                                 f"differently ({' vs '.join(map(str, sorted(halved)))})")
            side = halved.pop() if halved else side
            sides.append(side)
        return sides

    def fits_input_size(self, size: int) -> bool:
        try:
            self.feature_map_sizes(size)
        except ValueError:
            return False
        return True

    def min_input_size(self) -> int:
        """The smallest side of square images the network takes (e.g. 31 for ReActNet-A)."""
        return next(n for n in range(1, 1 << 16) if self.fits_input_size(n))

    def check_input_size(self, size: int) -> None:
        """``ValueError`` naming the minimum and the nearest sizes that fit, unless ``size`` fits."""
        try:
            self.feature_map_sizes(size)
        except ValueError as exc:
            smallest = self.min_input_size()
            below = next((n for n in range(size - 1, smallest - 1, -1) if self.fits_input_size(n)), None)
            above = next(n for n in range(max(size, smallest), 1 << 16) if self.fits_input_size(n))
            near = [str(n) for n in (below, above) if n is not None]
            raise ValueError(f"{exc}; its smallest input is {smallest} px, the nearest "
                             f"{'sizes that fit are' if len(near) > 1 else 'size that fits is'} "
                             f"{' and '.join(near)}") from None

    def _check_input(self, x):
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"{type(self).__name__} expects images of shape "
                             f"(N, {self.in_chans}, H, W), got {tuple(x.shape)}")
