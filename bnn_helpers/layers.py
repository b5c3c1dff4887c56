"""Building blocks of binary networks with and without batch normalization.

* :class:`LearnableBias` – per-channel shift, the "move" of ReActNet.
* :class:`RSign` – learnable threshold then sign (ReActNet's RSign).
* :class:`RPReLU` – shift, per-channel PReLU, shift (ReActNet's RPReLU).
* :class:`ScaledStdConv2d` – real conv with scaled weight standardization.
* :class:`BinaryConv2d` – conv with ``mean|w| * sign(w)`` weights.
* :class:`BinaryScaledStdConv2d` – standardize, binarize, then ``gain``.

Every conv here is an ``nn.Conv2d`` whose ``effective_weight()`` is the weight
the convolution really uses, so ``layer(x) == F.conv2d(x, layer.effective_weight(), ...)``
(up to float rounding where the CPU matmul path below is taken).

Speed (see ``benchmarks/README.md``): the effective weight is one fused
autograd Function (for the standardized convs on CPU float32, one native call
each way, :mod:`bnn_helpers.weight_native`); in eval mode under ``no_grad`` it
is cached until a parameter changes. On CPU a conv whose output has at most
``SMALL_OUTPUT_PIXELS`` pixels (the last stages of a 32x32 network) runs as
unfold + one matmul, skipping kernel taps that only ever see padding: oneDNN's
backward for such shapes is 3-6x slower. ``bnn_helpers.binarize.use_reference``
switches all of it back to the straightforward composition and ``F.conv2d``.

Why not timm's ``ScaledStdConv2d``: it normalizes with ``sqrt(var + eps)``
(eps 1e-6). The published BN-free network divides by ``std + 1e-5``; with
latent binary weights initialised in [0, 0.001) (std ~3e-4) the two differ by
a factor of ~3, so checkpoints trained with the published code would not
reproduce. The formula is a few lines in :mod:`bnn_helpers.binarize`.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .binarize import (
    REFERENCE_ESTIMATORS,
    WS_EPS,
    binarize_standardized_weight,
    binarize_weight,
    get_estimator,
    reference_binarize_standardized_weight,
    reference_binarize_weight,
    reference_enabled,
    reference_standardize_weight,
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
    "SMALL_OUTPUT_PIXELS",
]

#: CPU convs with at most this many output pixels (H_out * W_out) use unfold + matmul.
SMALL_OUTPUT_PIXELS = 4


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
        sign = REFERENCE_ESTIMATORS[self.estimator] if reference_enabled() else self._sign
        return sign(self.shift(x))

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
    #: Reuse the effective weight in eval mode under no_grad until a parameter
    #: changes (set False on an instance to recompute it at every forward; a
    #: cached weight is kept, and dropped at the next training forward).
    cache_eval_weight = True

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
        # optimizer.step(), load_state_dict() and any in-place edit bump _version;
        # .to()/.half() give new storage. Either invalidates the cached weight.
        return tuple((p.data_ptr(), p._version) for p in self.parameters(recurse=False))

    def _weight_for_forward(self) -> torch.Tensor:
        # In eval mode without autograd the effective weight only changes when a
        # parameter does, so compute it once and reuse it (cheap inference).
        if self.training or torch.is_grad_enabled():
            self._cache = None
            return self.effective_weight()
        if not self.cache_eval_weight:
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
        weight = self._weight_for_forward()
        if x.device.type == "cpu" and not reference_enabled():
            plan = self._small_output_plan(x.shape[-2:])
            if plan is not None:
                return _matmul_conv2d(x, weight, self.stride, self.dilation, plan)
        return self._conv_forward(x, weight, None)

    def _small_output_plan(self, size):
        """Kernel taps and padding for the matmul path, or None to use ``F.conv2d``."""
        if (self.groups != 1 or self.padding_mode != "zeros" or isinstance(self.padding, str)
                or self.kernel_size == (1, 1)):
            return None
        dims = list(zip(size, self.kernel_size, self.stride, self.padding, self.dilation))
        outs = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in dims]
        if min(outs) < 1 or outs[0] * outs[1] > SMALL_OUTPUT_PIXELS:
            return None
        plan = []
        for (n, k, s, p, d), n_out in zip(dims, outs):
            # Taps that read a real pixel for at least one output position.
            used = [t for t in range(k) if any(0 <= o * s - p + t * d < n for o in range(n_out))]
            if not used:
                return None
            first, last = used[0], used[-1]
            pad = p - first * d
            if pad < 0 or (n + 2 * pad - d * (last - first) - 1) // s + 1 != n_out:
                first, last, pad = 0, k - 1, p
            plan.append((n_out, first, last, pad))
        return tuple(plan)


def _matmul_conv2d(x, weight, stride, dilation, plan):
    """``F.conv2d`` as unfold + one matmul over the kernel taps in ``plan``.

    Taps that only ever read padding contribute zeros, so they are dropped (a
    3x3 conv on a 1x1 map is a 1x1 conv with the centre tap). Their weight
    gradient is zero, as in ``F.conv2d``.
    """
    (h_out, r0, r1, pad_h), (w_out, c0, c1, pad_w) = plan
    kernel = weight[:, :, r0:r1 + 1, c0:c1 + 1]
    n = x.shape[0]
    cols = F.unfold(x, kernel.shape[-2:], dilation=dilation, padding=(pad_h, pad_w),
                    stride=stride)                                 # N, C*kh*kw, L
    # One 2-D GEMM; a batched matmul would re-read the weight once per image.
    cols = cols.transpose(1, 2).reshape(n * h_out * w_out, -1)     # N*L, C*kh*kw
    out = torch.mm(cols, kernel.reshape(kernel.shape[0], -1).t())  # N*L, C_out
    return out.view(n, h_out * w_out, -1).transpose(1, 2).reshape(n, -1, h_out, w_out)


def _add_standardization(conv: nn.Conv2d, eps: float) -> None:
    """What both standardized convs carry: ``eps`` and a per-channel ``gain`` starting at 1."""
    conv.eps = eps
    conv.gain = nn.Parameter(torch.ones(conv.out_channels, 1, 1, 1))


class ScaledStdConv2d(_TransformedWeightConv2d):
    """Real conv whose weight is ``gain * (w - mean) / (std + eps) / sqrt(fan_in)``.

    For unit-variance, zero-mean input the output has unit variance per channel
    at initialisation (``gain`` starts at 1).
    """

    standardized = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 groups=1, eps: float = WS_EPS):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, groups)
        _add_standardization(self, eps)

    def effective_weight(self) -> torch.Tensor:
        fn = reference_standardize_weight if reference_enabled() else standardize_weight
        return fn(self.weight, self.gain, self.eps)


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
        fn = reference_binarize_weight if reference_enabled() else binarize_weight
        return fn(self.weight)


class BinaryScaledStdConv2d(BinaryConv2d):
    """BN-free binary conv: standardize the latent weight, binarize it, scale by ``gain``."""

    standardized = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 groups=1, eps: float = WS_EPS):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, groups)
        _add_standardization(self, eps)

    def effective_weight(self) -> torch.Tensor:
        fn = (reference_binarize_standardized_weight if reference_enabled()
              else binarize_standardized_weight)
        return fn(self.weight, self.gain, self.eps)


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
