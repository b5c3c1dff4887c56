"""Building blocks of binary networks with and without batch normalization.

* :class:`LearnableBias` – per-channel shift, the "move" of ReActNet.
* :class:`RSign` – learnable threshold then sign (ReActNet's RSign).
* :class:`RPReLU` – shift, per-channel PReLU, shift (ReActNet's RPReLU).
* :class:`ScaledStdConv2d` – real conv with scaled weight standardization.
* :class:`BinaryConv2d` – conv with ``mean|w| * sign(w)`` weights.
* :class:`BinaryScaledStdConv2d` – standardize, binarize, then ``gain``.

Every conv here is an ``nn.Conv2d`` whose ``effective_weight()`` is the weight
the convolution really uses, so ``layer(x) == F.conv2d(x, layer.effective_weight(), ...)``.

Why not timm's ``ScaledStdConv2d``: it normalizes with ``sqrt(var + eps)``
(eps 1e-6). The published BN-free network divides by ``std + 1e-5``; with
latent binary weights initialised in [0, 0.001) (std ~3e-4) the two differ by
a factor of ~3, so checkpoints trained with the published code would not
reproduce. The formula is a few lines in :mod:`bnn_helpers.binarize`.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .binarize import (
    WS_EPS,
    binarize_standardized_weight,
    binarize_weight,
    get_estimator,
    standardize_weight,
)

__all__ = [
    "LearnableBias",
    "RSign",
    "RPReLU",
    "ScaledStdConv2d",
    "BinaryConv2d",
    "BinaryScaledStdConv2d",
    "is_binary_conv",
    "make_conv",
]


def _check_channels(name: str, **sizes: int) -> None:
    for key, value in sizes.items():
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name}: {key} must be a positive integer, got {value!r}")


class LearnableBias(nn.Module):
    """Adds a learnable per-channel bias of shape ``(1, C, 1, 1)``, initialised to 0."""

    def __init__(self, channels: int):
        super().__init__()
        _check_channels("LearnableBias", channels=channels)
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias

    def extra_repr(self) -> str:
        return f"{self.bias.shape[1]}"


class RSign(nn.Module):
    """``sign(x + b)`` with a learnable per-channel threshold ``-b``."""

    def __init__(self, channels: int, estimator: str = "approx"):
        super().__init__()
        self.shift = LearnableBias(channels)
        self.estimator = estimator
        self._sign = get_estimator(estimator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._sign(self.shift(x))

    def extra_repr(self) -> str:
        return f"estimator={self.estimator!r}"


class RPReLU(nn.Module):
    """``b_out + PReLU(x + b_in)`` with per-channel slopes initialised to 0.25."""

    def __init__(self, channels: int):
        super().__init__()
        self.shift_in = LearnableBias(channels)
        self.prelu = nn.PReLU(channels, init=0.25)
        self.shift_out = LearnableBias(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shift_out(self.prelu(self.shift_in(x)))


class _TransformedWeightConv2d(nn.Conv2d):
    """A bias-free ``nn.Conv2d`` that convolves with ``effective_weight()``."""

    #: True when the effective weight takes two values per output channel.
    binary_weights = False
    #: True when the latent weight is standardized per output channel.
    standardized = False

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 stride: int = 1, padding: int = 0, groups: int = 1):
        _check_channels(type(self).__name__, in_channels=in_channels,
                        out_channels=out_channels, kernel_size=kernel_size,
                        stride=stride, groups=groups)
        if padding < 0:
            raise ValueError(f"{type(self).__name__}: padding must be >= 0, got {padding}")
        super().__init__(in_channels, out_channels, kernel_size, stride=stride,
                         padding=padding, groups=groups, bias=False)
        self._cache = None

    def effective_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def _cache_key(self):
        return tuple((p.data_ptr(), p._version) for p in self.parameters(recurse=False))

    def _weight_for_forward(self) -> torch.Tensor:
        # In eval mode without autograd the effective weight only changes when a
        # parameter does, so compute it once and reuse it (cheap inference).
        if self.training or torch.is_grad_enabled():
            self._cache = None
            return self.effective_weight()
        key = self._cache_key()
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self.effective_weight())
        return self._cache[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects input of shape (N, {self.in_channels}, H, W), "
                f"got {tuple(x.shape)}")
        return self._conv_forward(x, self._weight_for_forward(), None)


class ScaledStdConv2d(_TransformedWeightConv2d):
    """Real conv whose weight is ``gain * (w - mean) / (std + eps) / sqrt(fan_in)``.

    For unit-variance, zero-mean input the output has unit variance per channel
    at initialisation (``gain`` starts at 1).
    """

    standardized = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 groups=1, eps: float = WS_EPS):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, groups)
        self.eps = eps
        self.gain = nn.Parameter(torch.ones(out_channels, 1, 1, 1))

    def effective_weight(self) -> torch.Tensor:
        return standardize_weight(self.weight, self.gain, self.eps)


class BinaryConv2d(_TransformedWeightConv2d):
    """Conv with binary weights ``mean|w| * sign(w)`` per output channel.

    Latent weights start uniform in [0, 0.001), as in ReActNet; the gradient
    reaches them straight through ``clamp(w, -1, 1)``.
    """

    binary_weights = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, groups)
        with torch.no_grad():
            self.weight.uniform_(0.0, 1e-3)

    def effective_weight(self) -> torch.Tensor:
        return binarize_weight(self.weight)


class BinaryScaledStdConv2d(BinaryConv2d):
    """BN-free binary conv: standardize the latent weight, binarize it, scale by ``gain``."""

    standardized = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 groups=1, eps: float = WS_EPS):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, groups)
        self.eps = eps
        self.gain = nn.Parameter(torch.ones(out_channels, 1, 1, 1))

    def effective_weight(self) -> torch.Tensor:
        return binarize_standardized_weight(self.weight, self.gain, self.eps)


def is_binary_conv(module: nn.Module) -> bool:
    """True for convolutions whose effective weights are binary."""
    return isinstance(module, nn.Conv2d) and getattr(module, "binary_weights", False)



def make_conv(norm: str, binary_weights: bool, in_channels: int, out_channels: int,
              kernel_size: int, stride: int = 1, padding: int = 0) -> nn.Conv2d:
    """The convolution a block of normalization mode ``norm`` uses.

    ``bf`` standardizes its weights (binary or real); ``bn`` and ``none`` use
    plain binary convs (step 2) or plain real convs (step 1).
    """
    if binary_weights:
        cls = BinaryScaledStdConv2d if norm == "bf" else BinaryConv2d
        return cls(in_channels, out_channels, kernel_size, stride, padding)
    if norm == "bf":
        return ScaledStdConv2d(in_channels, out_channels, kernel_size, stride, padding)
    _check_channels("Conv2d", in_channels=in_channels, out_channels=out_channels,
                    kernel_size=kernel_size, stride=stride)
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
