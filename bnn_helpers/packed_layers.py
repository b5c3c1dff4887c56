"""Packed layers of a deployed binary network, each folding its constants on creation:
signs as threshold compares (:class:`PackedSign`), binary convs as bits and one scale per
channel (:class:`PackedBinaryConv2d`), RPReLU with the folded BN shift, the real stem
with its BN folded, the classifier. :mod:`bnn_helpers.deploy` explains the folding and
assembles the layers into networks.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import bitconv_native as _native
from .bitkernels import PackedActivation, check_word_bits, pack_bits, packed_conv2d, unpack_bits
from .layers import RSign, is_binary_conv

__all__ = ["exact_sign_thresholds", "PackedSign", "PackedBinaryConv2d", "PackedWeightConv2d",
           "PackedRPReLU", "PackedStem", "PackedHead", "Packer"]


# --------------------------------------------------------------------------
# signs
# --------------------------------------------------------------------------
def _float_order_key(x: torch.Tensor) -> torch.Tensor:
    """int64 key, monotone in the float32 value (-0 and +0 both map to 0)."""
    i = x.contiguous().view(torch.int32).to(torch.int64)
    return torch.where(i >= 0, i, -(i & 0x7FFFFFFF))


def _float_from_key(key: torch.Tensor) -> torch.Tensor:
    bits = torch.where(key >= 0, key, (-key) | -(1 << 31))
    return bits.to(torch.int32).view(torch.float32)


def exact_sign_thresholds(beta: float, bias: torch.Tensor):
    """Per-channel ``(lower, upper)`` with ``sign(x*beta + bias)`` (float32, as the
    model computes it) equal to ``+1`` iff ``x > upper``, ``0`` iff
    ``lower <= x <= upper`` and ``-1`` iff ``x < lower``.

    Real arithmetic gives ``lower = upper = -bias/beta``; float rounding moves
    the boundary by an ulp or two, so the floats around ``-bias/beta`` are
    evaluated with the simulation's own expression (16 ulps each side, widened
    if that does not bracket the change of sign). When no float maps to
    exactly 0, ``lower`` is the float just above ``upper``.
    """
    if not (isinstance(beta, (int, float)) and beta > 0 and math.isfinite(beta)):
        raise ValueError(f"folding beta into the sign threshold needs a finite beta > 0, got {beta!r}")
    b = bias.detach().reshape(-1).to(torch.float32)
    if not torch.isfinite(b).all():
        raise ValueError("RSign bias has non-finite values; cannot derive thresholds")
    centre = _float_order_key(-b / beta)
    max_key = int(_float_order_key(torch.tensor([torch.finfo(torch.float32).max])))
    for window in (16, 1024, 1 << 20):
        keys = (centre[:, None] + torch.arange(-window, window + 1)).clamp(-max_key, max_key)
        cand = _float_from_key(keys)                                 # (C, 2w+1), sorted
        scaled = cand * beta if beta != 1.0 else cand                # same ops as the blocks
        s = torch.sign(scaled + b[:, None])
        if (s[:, 0] < 0).all() and (s[:, -1] > 0).all():
            break
    else:
        raise RuntimeError("could not bracket the sign threshold (bias too large for float32?)")
    upper = torch.where(s <= 0, cand, torch.full_like(cand, -math.inf)).amax(1)
    lower = torch.where(s >= 0, cand, torch.full_like(cand, math.inf)).amin(1)
    return lower, upper


class PackedSign(nn.Module):
    """RSign with beta folded in: compares with per-channel thresholds, emits packed bits."""

    def __init__(self, lower: torch.Tensor, upper: torch.Tensor, word_bits: int = 8):
        super().__init__()
        check_word_bits(word_bits)
        self.word_bits = word_bits
        self.register_buffer("lower", lower.reshape(-1).clone().float())
        self.register_buffer("upper", upper.reshape(-1).clone().float())

    @classmethod
    def from_rsign(cls, rsign: RSign, beta: float, word_bits: int = 8) -> "PackedSign":
        lower, upper = exact_sign_thresholds(beta, rsign.shift.bias)
        return cls(lower, upper, word_bits)

    def forward(self, x: torch.Tensor) -> PackedActivation:
        native = _native.pack_signs(self, x)
        if native is not None:
            return native
        nhwc = x.permute(0, 2, 3, 1)
        positive = nhwc > self.upper
        valid = positive | (nhwc < self.lower)
        return PackedActivation(pack_bits(positive, self.word_bits),
                                pack_bits(valid, self.word_bits), x.shape[1], self.word_bits)

    def extra_repr(self) -> str:
        return f"{self.upper.numel()}, word_bits={self.word_bits}"


# --------------------------------------------------------------------------
# convolutions
# --------------------------------------------------------------------------
def _split_binary_weight(conv: nn.Conv2d):
    """``(signs, magnitude)`` of a binary conv's effective weight ``c * sign``, per channel.

    Read from ``effective_weight()`` itself, so it holds for any gain sign.
    Returns the ±1/0 signs, ``c >= 0`` of shape (out,), and the ``(K, 4)``
    indices of zero signs in channels with ``c > 0`` (what one bit cannot store).
    """
    with torch.no_grad():
        w = conv.effective_weight().detach().float()
    size = w.abs().flatten(1)
    magnitude = size.amax(1, keepdim=True)
    if not torch.all((size == magnitude) | (size == 0)):
        raise ValueError(f"{type(conv).__name__} does not have two-valued weights per channel")
    signs = torch.sign(w)
    zeros = torch.nonzero((signs == 0) & (magnitude.view(-1, 1, 1, 1) > 0))
    return signs, magnitude.reshape(-1), zeros


def _pack_weight_signs(signs: torch.Tensor, word_bits: int) -> torch.Tensor:
    """(out, in, k, k) signs -> uint8 (out, k, k, channel bytes); 0 is stored as +1."""
    return pack_bits((signs >= 0).permute(0, 2, 3, 1), word_bits)


class PackedBinaryConv2d(nn.Module):
    """Binary conv on packed activations: ``scale[c] * dot`` (see :func:`packed_conv2d`).

    ``zero_weights`` lists the ``(out, in, ky, kx)`` positions whose weight is
    exactly 0 (stored as +1 in the bits); usually empty. When not, the dot is
    corrected by the activations those weights see, so it stays exact.
    """

    def __init__(self, weight_bits: torch.Tensor, scale: torch.Tensor, in_channels: int,
                 kernel_size: int, stride: int, padding: int, word_bits: int,
                 zero_weights: torch.Tensor | None = None):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, weight_bits.shape[0]
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.word_bits = word_bits
        self.register_buffer("weight_bits", weight_bits.contiguous())
        self.register_buffer("scale", scale.reshape(-1).float().clone())
        if zero_weights is None:
            zero_weights = torch.zeros(0, 4, dtype=torch.int64)
        self.register_buffer("zero_weights", zero_weights.reshape(-1, 4).to(torch.int64))

    def _zero_indicator(self) -> torch.Tensor:
        mask = torch.zeros(self.out_channels, self.in_channels, self.kernel_size,
                           self.kernel_size, device=self.scale.device)
        mask[tuple(self.zero_weights.T)] = 1.0
        return mask

    def integer_forward(self, act: PackedActivation) -> torch.Tensor:
        if act.channels != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {act.channels}")
        native = _native.conv2d(self, act)  # zero weights included
        if native is not None:
            return native
        dot = packed_conv2d(act, self.weight_bits, self.kernel_size, self.stride, self.padding)
        if self.zero_weights.numel():
            # the bits hold +1 where the weight is 0: take back what those positions added
            extra = F.conv2d(act.to_ternary(), self._zero_indicator(), None, self.stride,
                             self.padding)
            dot = dot - extra.round().to(torch.int32)
        return dot

    def forward(self, act: PackedActivation) -> torch.Tensor:
        return self.integer_forward(act).float() * self.scale.view(1, -1, 1, 1)

    def signs(self) -> torch.Tensor:
        """The weights as -1/0/+1 floats ``(out, in, k, k)``."""
        bits = unpack_bits(self.weight_bits, self.in_channels)
        signs = (bits.float() * 2 - 1).permute(0, 3, 1, 2).contiguous()
        if self.zero_weights.numel():
            signs = signs * (1 - self._zero_indicator())
        return signs

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, word_bits={self.word_bits}")


class PackedWeightConv2d(PackedBinaryConv2d):
    """Binary weights on a *real* input (ReActNet-18's shortcut): additions only.

    The reference unpacks the bits to ±1 and uses ``F.conv2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x, self.signs(), None, self.stride, self.padding)
        return out * self.scale.view(1, -1, 1, 1)


class PackedRPReLU(nn.Module):
    """``shift_out + PReLU(x + shift_in)``; ``shift_in`` also holds folded BN shifts."""

    def __init__(self, shift_in, slope, shift_out):
        super().__init__()
        for name, value in (("shift_in", shift_in), ("slope", slope), ("shift_out", shift_out)):
            self.register_buffer(name, value.detach().reshape(-1).float().clone())

    @classmethod
    def from_rprelu(cls, rprelu, extra_shift_in=None) -> "PackedRPReLU":
        shift_in = rprelu.shift_in.bias.detach().reshape(-1)
        if extra_shift_in is not None:
            shift_in = shift_in + extra_shift_in
        return cls(shift_in, rprelu.prelu.weight, rprelu.shift_out.bias)

    def forward(self, x):
        x = F.prelu(x + self.shift_in.view(1, -1, 1, 1), self.slope)
        return x + self.shift_out.view(1, -1, 1, 1)


def _bn_affine(bn: nn.Module, channels: int):
    """Eval-mode BN as ``(scale, shift)``; identity for a placeholder."""
    if isinstance(bn, nn.Identity):
        return torch.ones(channels), torch.zeros(channels)
    if not isinstance(bn, nn.BatchNorm2d) or not bn.affine or bn.running_var is None:
        raise ValueError(f"cannot fold {type(bn).__name__}: expected an affine BatchNorm2d "
                         "with running statistics")
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias.detach() - bn.running_mean * scale


class Packer:
    """Folds one binary conv (and its BN) at a time."""

    def __init__(self, word_bits: int):
        self.word_bits = word_bits

    def conv(self, conv, bn, factor: float, cls=PackedBinaryConv2d):
        """Binary conv followed by BN (or Identity), times ``factor`` -> (packed conv, shift)."""
        if not is_binary_conv(conv):
            raise ValueError("pack needs a step-2 model (binary_weights=True): "
                             f"found a real-weight {type(conv).__name__}")
        if conv.groups != 1 or conv.dilation != (1, 1) or conv.bias is not None:
            raise ValueError("pack supports bias-free, ungrouped, undilated binary convs only")
        signs, magnitude, zeros = _split_binary_weight(conv)
        bn_scale, bn_shift = _bn_affine(bn, conv.out_channels)
        packed = cls(_pack_weight_signs(signs, self.word_bits),
                     factor * magnitude * bn_scale, conv.in_channels, conv.kernel_size[0],
                     conv.stride[0], conv.padding[0], self.word_bits, zeros)
        return packed, factor * bn_shift


class PackedStem(nn.Module):
    """Real-valued stem conv with BN folded into weight and bias, optional max-pool."""

    def __init__(self, weight, bias, stride: int, padding: int, max_pool: bool):
        super().__init__()
        self.stride, self.padding, self.max_pool = stride, padding, max_pool
        self.register_buffer("weight", weight.detach().float().clone())
        self.register_buffer("bias", bias.detach().float().clone())

    @classmethod
    def from_stem(cls, stem) -> "PackedStem":
        conv = stem.conv
        with torch.no_grad():
            weight = conv.effective_weight() if hasattr(conv, "effective_weight") else conv.weight
        scale, shift = _bn_affine(stem.norm, conv.out_channels)
        return cls(weight * scale.view(-1, 1, 1, 1), shift, conv.stride[0], conv.padding[0],
                   isinstance(stem.pool, nn.MaxPool2d))

    def forward(self, x):
        x = F.conv2d(x, self.weight, self.bias, self.stride, self.padding)
        return F.max_pool2d(x, 3, 2, 1) if self.max_pool else x


class PackedHead(nn.Module):
    """Global average pool and the real classifier."""

    def __init__(self, fc: nn.Linear):
        super().__init__()
        self.register_buffer("weight", fc.weight.detach().float().clone())
        self.register_buffer("bias", fc.bias.detach().float().clone())

    def forward(self, x):
        return F.linear(F.adaptive_avg_pool2d(x, 1).flatten(1), self.weight, self.bias)
