"""Deploy a trained binary network: packed bits, XNOR-popcount convolutions, folded constants.

``pack(model)`` turns a step-2 ReActNet-A or ReActNet-18 (``binary_weights=True``,
any of the ``bf`` / ``bn`` / ``none`` modes) into an inference-only
:class:`PackedBinaryNet` that reproduces the float simulation's logits::

    packed = pack(model)                       # eval semantics, no autograd
    logits = packed(images)
    save_packed(packed, "model.safetensors")   # safetensors + JSON header, no pickle
    packed = load_packed("model.safetensors")  # checksum-verified
    packed_size_bytes(packed), float_size_bytes(model)

What is stored
--------------
* Every binary conv keeps its weights as bits (1 = +1, 0 = -1), channels
  packed into words of ``word_bits`` (8: one uint8; 64: one int64 — the
  channel count is padded to a whole word, so narrow layers waste less with
  8), laid out ``(out, ky, kx, channel words)`` and saved as bytes, plus ONE
  real scale per output channel.
* Activations entering a binary conv are packed the same way, per pixel along
  the channels (``(N, H, W, channel words)``), as two bit planes: the sign and
  a validity mask (see *zeros* below).

What is folded (all exact algebra; only float rounding changes)
----------------------------------------------------------------
Write ``dot`` for the integer XNOR-popcount result of a binary conv and
``c = gain * mean|w_hat|`` (bf) or ``c = mean|w|`` (bn/none) for the per-channel
magnitude of its effective weight ``c * sign(w_hat)``.

* Conv output: ``alpha * conv(...) = (alpha * c) * dot`` -> scale ``alpha*c``.
* BatchNorm after a binary conv (eval): ``BN(z) = z*g/sqrt(v+eps) + (b - m*g/sqrt(v+eps))``,
  so ``alpha*BN(c*dot) = s*dot + t`` with ``s = alpha*c*g/sqrt(v+eps)`` and
  ``t = alpha*(b - m*g/sqrt(v+eps))``. It stays an *affine* map, not a pure
  threshold, because the result is added to a real residual before the next
  sign. The shift ``t`` needs no op of its own: the sum feeds an RPReLU whose
  first step adds a per-channel bias, so ``t`` is added into that bias
  (``RPReLU(x' + s*dot + t) = b_out + P(x' + s*dot + (t + b_in))``). After
  folding, a bn block does exactly the real ops of a bf block.
* BatchNorm after the real stem conv folds into its weights and a bias.
* RSign with the block's beta: ``sign(x*beta + b) = sign(x - (-b/beta))`` for
  ``beta > 0`` -> a per-channel threshold comparison, no multiply, no add.
  Rounding could make ``fl(fl(x*beta) + b)`` and ``x - (-b/beta)`` disagree for
  ``x`` within a few ulps of the threshold, so the thresholds are not just
  ``-b/beta``: :func:`exact_sign_thresholds` searches the floats around it for
  the interval that the float simulation maps to 0, and the packed sign uses
  it. The packed signs equal the float simulation's signs bit for bit.
* Reduction shortcut ``avgpool(x*beta1)`` = ``sum2x2(x) * (beta1/4)``.
  (ReActNet-18's shortcut conv sees ``avgpool(x*beta)``: beta joins that conv's scale.)

Not folded here, though possible: RPReLU's output bias ``b_out`` could move
into the next thresholds and the next RPReLU's input bias (and the last one
into the classifier bias), saving one add per element; see
:func:`inference_op_table` for what is left.

Zeros: padding and ties
-----------------------
The published network pads the sign activations with 0, which is neither +1
nor -1, and ``torch.sign`` gives 0 when an RSign input sits exactly on its
threshold (measure-zero in real arithmetic, possible in float; count them with
:func:`count_sign_ties`). Both are handled exactly with a validity bit per
activation: padded positions and ties have valid = 0 and contribute 0, so over
the unfolded window ::

    dot = popcount(valid) - 2 * popcount((act XOR weight) AND valid)

which equals ``conv2d(sign activations, sign(weights))`` exactly (integers).
A weight exactly at 0 (``sign(w_hat) = 0`` with a non-zero scale) cannot be
stored in one bit either. It is rare but real (random latent weights give
about one per 2**24: a full-size network at initialisation has one or two),
so each packed conv also lists those positions (``zero_weights``, usually
empty); their bits say +1 and the dot is corrected by a small conv of the
activations over just those positions, which keeps it exact.

How close the packed model is
-----------------------------
Exact: the integer dots, and every sign given the same real input. Not
exact: the real parts. The float simulation convolves with float weights
``c * sign`` and rounds while it accumulates; the packed model multiplies an
exact integer by one scale; pooling order differs slightly. Each block agrees
to ~1e-7 relative. A binary network can amplify that: an activation within
an ulp of its threshold may take the other sign and the change propagates.
Measured on random non-trivial weights at width 0.25, 32x32, batch 64:
ReActNet-A bf/bn/none and ReActNet-18 bf/bn agree to max|diff| / max|logit|
< 5e-7 with identical argmax; one ReActNet-18 ``none`` network (logits ~600,
nothing normalizes it) had one such flip and 1.4 % of the logit scale. So
compare with a tolerance and by argmax, as for the float simulation across
batch sizes.

The reference convolution is plain PyTorch: im2col of the packed words
(``Tensor.unfold``, since ``F.unfold`` only accepts floating tensors), then
XOR, AND and a SWAR popcount on 64-bit lanes of each window's bytes (int64
bit tricks; uint8 shifts and lookup tables are several times slower in
PyTorch). It is a correctness reference, not a fast kernel: packed models run
the native kernels of :mod:`bnn_helpers.bitconv_native` (XOR + popcount on
64-bit words, built on first use; ``BNN_NATIVE=0`` or
``bitconv_native.use_reference()`` forces this reference) and fall back to it
with one warning where no C++ compiler is available.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import bitconv_native as _native
from .layers import RSign, is_binary_conv
from .models import create_model
from .models.reactnet_18 import ReActBlock18, ReActNet18
from .models.reactnet_a import ReActBlockA, ReActNetA

__all__ = [
    "WORD_BITS", "pack_bits", "unpack_bits", "popcount", "PackedActivation",
    "exact_sign_thresholds", "PackedSign", "PackedBinaryConv2d", "PackedWeightConv2d",
    "packed_conv2d", "PackedRPReLU", "PackedStem", "PackedHead", "PackedBlockA",
    "PackedBlock18", "PackedBinaryNet", "pack", "save_packed", "load_packed",
    "packed_size_bytes", "float_size_bytes", "count_sign_ties", "inference_op_table",
]

#: Supported word sizes (bits per channel word) and their dtype.
WORD_BITS = {8: torch.uint8, 64: torch.int64}
FORMAT_NAME = "bnn_helpers.packed"
FORMAT_VERSION = 1
# Largest (rows x bytes) slab the reference conv materialises at once.
_CHUNK_BYTES = 1 << 25


# --------------------------------------------------------------------------
# bits
# --------------------------------------------------------------------------
def _check_word_bits(word_bits: int) -> torch.dtype:
    if word_bits not in WORD_BITS:
        raise ValueError(f"word_bits must be one of {sorted(WORD_BITS)}, got {word_bits!r}")
    return WORD_BITS[word_bits]


def pack_bits(bits: torch.Tensor, word_bits: int = 8) -> torch.Tensor:
    """Pack a boolean tensor along its last dim into bytes, padded to whole words.

    Returns ``uint8`` of shape ``(..., ceil(n / word_bits) * word_bits / 8)``; bit
    ``i`` of the row is bit ``i % 8`` of byte ``i // 8``; padding bits are 0.
    With ``word_bits=64`` every eight bytes are one int64 word
    (``result.view(torch.int64)``).
    """
    _check_word_bits(word_bits)
    if bits.dtype != torch.bool:
        raise ValueError(f"pack_bits expects a bool tensor, got {bits.dtype}")
    n = bits.shape[-1]
    padded = math.ceil(n / word_bits) * word_bits
    if padded != n:
        bits = F.pad(bits, (0, padded - n))
    grouped = bits.reshape(*bits.shape[:-1], padded // 8, 8).to(torch.uint8)
    packed = grouped[..., 0].clone()
    for i in range(1, 8):
        packed |= grouped[..., i] << i
    return packed


def unpack_bits(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``n`` bits of each row, as bool."""
    if packed.dtype != torch.uint8:
        raise ValueError(f"unpack_bits expects uint8 bytes, got {packed.dtype}")
    if n > packed.shape[-1] * 8:
        raise ValueError(f"cannot unpack {n} bits from rows of {packed.shape[-1]} bytes")
    shifts = torch.arange(8, device=packed.device, dtype=torch.uint8)
    bits = (packed.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(*packed.shape[:-1], -1)[..., :n].bool()


_M1, _M2, _M4, _H01 = (0x5555555555555555, 0x3333333333333333, 0x0F0F0F0F0F0F0F0F,
                      0x0101010101010101)


def _popcount64_(x: torch.Tensor) -> torch.Tensor:
    """In place: replace every int64 word by its number of set bits (SWAR bit tricks).

    Relies on int64 arithmetic wrapping around (two's complement), as PyTorch's
    CPU and CUDA kernels do; the tests check words with the sign bit set.
    """
    x.sub_((x >> 1).bitwise_and_(_M1))
    x.copy_((x & _M2).add_((x >> 2).bitwise_and_(_M2)))
    x.add_(x >> 4).bitwise_and_(_M4)
    return x.mul_(_H01).bitwise_right_shift_(56).bitwise_and_(0xFF)


def popcount(words: torch.Tensor) -> torch.Tensor:
    """Number of set bits of every ``uint8`` / ``int64`` word, as int64."""
    if words.dtype not in WORD_BITS.values():
        raise ValueError(f"popcount expects uint8 or int64 words, got {words.dtype}")
    return _popcount64_(words.to(torch.int64, copy=True))


# --------------------------------------------------------------------------
# activations
# --------------------------------------------------------------------------
@dataclass
class PackedActivation:
    """Packed ternary activations: ``bits`` (1 = +1) and ``valid`` (0 = the value is 0).

    Both are ``uint8`` of shape ``(N, H, W, channel bytes)``; ``channels`` is the
    real channel count, ``word_bits`` the word size the bytes were padded to.
    """

    bits: torch.Tensor
    valid: torch.Tensor
    channels: int
    word_bits: int

    @classmethod
    def from_ternary(cls, x: torch.Tensor, word_bits: int = 8) -> "PackedActivation":
        """Pack an ``(N, C, H, W)`` tensor of -1/0/+1 values."""
        nhwc = x.permute(0, 2, 3, 1)
        return cls(pack_bits(nhwc > 0, word_bits), pack_bits(nhwc != 0, word_bits),
                   x.shape[1], word_bits)

    def to_ternary(self) -> torch.Tensor:
        """Back to ``(N, C, H, W)`` float -1/0/+1 (for tests and inspection)."""
        sign = unpack_bits(self.bits, self.channels).float() * 2 - 1
        valid = unpack_bits(self.valid, self.channels).float()
        return (sign * valid).permute(0, 3, 1, 2).contiguous()


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
        _check_word_bits(word_bits)
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
def _unfold_words(words: torch.Tensor, kernel_size: int, stride: int, padding: int):
    """im2col of ``(N, H, W, Cw)`` words -> ``(N, Ho, Wo, k*k*Cw)``, zero-padded."""
    if padding:
        words = F.pad(words, (0, 0, padding, padding, padding, padding))
    cols = words.unfold(1, kernel_size, stride).unfold(2, kernel_size, stride)
    n, ho, wo, cw = cols.shape[:4]
    return cols.permute(0, 1, 2, 4, 5, 3).reshape(n, ho, wo, kernel_size * kernel_size * cw)


def _as_int64_rows(packed: torch.Tensor) -> torch.Tensor:
    """Zero-pad the last (byte) dim to a multiple of 8 and view it as int64 lanes."""
    extra = -packed.shape[-1] % 8
    if extra:
        packed = F.pad(packed, (0, extra))
    return packed.contiguous().view(torch.int64)


def packed_conv2d(act: PackedActivation, weight_bits: torch.Tensor, kernel_size: int,
                  stride: int = 1, padding: int = 0) -> torch.Tensor:
    """Integer conv of packed activations with packed ±1 weights (XNOR-popcount).

    ``weight_bits``: uint8 ``(out, k, k, channel bytes)`` from :func:`pack_bits`
    with the activation's ``word_bits``. Returns int32 ``(N, out, Ho, Wo)`` equal
    to ``conv2d(ternary activations, ±1 weights, padding with 0)``: per window,
    ``popcount(valid) - 2 * popcount((act XOR weight) AND valid)``.

    Each unfolded window (``k*k`` pixels of channel words) is processed as one
    row of bytes in 64-bit lanes, zero-padded to whole lanes; the padding has
    valid = 0 so it adds nothing.
    """
    if weight_bits.shape[-1] != act.bits.shape[-1] or weight_bits.shape[1:3] != (kernel_size,) * 2:
        raise ValueError(f"weights {tuple(weight_bits.shape)} do not match activations with "
                         f"{act.bits.shape[-1]} channel bytes and kernel {kernel_size}")
    x = _as_int64_rows(_unfold_words(act.bits, kernel_size, stride, padding))
    v = _as_int64_rows(_unfold_words(act.valid, kernel_size, stride, padding))
    w = _as_int64_rows(weight_bits.reshape(weight_bits.shape[0], -1))
    n, ho, wo, lanes = x.shape
    x, v = x.reshape(-1, 1, lanes), v.reshape(-1, 1, lanes)
    n_valid = _popcount64_(v.clone()).sum(-1)                                # (rows, 1)
    rows_per_chunk = max(1, _CHUNK_BYTES // (8 * w.numel()))
    mismatches = []
    for start in range(0, x.shape[0], rows_per_chunk):
        xor = torch.bitwise_xor(x[start:start + rows_per_chunk], w)          # (rows, out, lanes)
        xor.bitwise_and_(v[start:start + rows_per_chunk])
        mismatches.append(_popcount64_(xor).sum(-1))
    dot = (n_valid - 2 * torch.cat(mismatches)).to(torch.int32)
    return dot.reshape(n, ho, wo, -1).permute(0, 3, 1, 2).contiguous()


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


class _Packer:
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


class PackedBlockA(nn.Module):
    """ReActNet-A block with every constant folded (see the module docstring)."""

    def __init__(self, block: ReActBlockA, packer: _Packer):
        super().__init__()
        alpha = block.alpha
        self.stride = block.stride
        self.sign1 = PackedSign.from_rsign(block.act1, block.beta1, packer.word_bits)
        self.conv3x3, shift1 = packer.conv(block.conv3x3, block.norm1, alpha)
        # avgpool(x*beta1) = sum2x2(x) * beta1/4
        self.register_buffer("pool_scale", torch.tensor(block.beta1 / 4.0))
        self.rprelu1 = PackedRPReLU.from_rprelu(block.rprelu1, shift1)
        self.sign2 = PackedSign.from_rsign(block.act2, block.beta2, packer.word_bits)
        convs, shifts = zip(*(packer.conv(c, n, alpha) for c, n in zip(block.conv1x1, block.norm2)))
        self.conv1x1 = nn.ModuleList(convs)
        self.rprelu2 = PackedRPReLU.from_rprelu(block.rprelu2, torch.cat(shifts))

    def forward(self, x):
        h = self.conv3x3(self.sign1(x))
        if self.stride == 2:
            shortcut = F.avg_pool2d(x, 2, 2, divisor_override=1) * self.pool_scale
        else:
            shortcut = x
        y = self.rprelu1(shortcut + h)
        g = self.sign2(y)
        out = torch.cat([conv(g) + y for conv in self.conv1x1], dim=1)
        return self.rprelu2(out)


class PackedBlock18(nn.Module):
    """ReActNet-18 block with every constant folded; the shortcut conv sees real input."""

    def __init__(self, block: ReActBlock18, packer: _Packer):
        super().__init__()
        self.stride = block.stride
        self.sign = PackedSign.from_rsign(block.act, block.beta, packer.word_bits)
        self.conv, shift = packer.conv(block.conv, block.norm, block.alpha)
        if block.has_shortcut_conv:
            pool, conv, norm = block.shortcut
            self.pool = isinstance(pool, nn.AvgPool2d)
            # shortcut(x*beta) = beta * conv(avgpool(x)): beta joins the conv's scale
            self.shortcut, sc_shift = packer.conv(conv, norm, block.beta, PackedWeightConv2d)
            shift = shift + sc_shift
        else:
            self.pool, self.shortcut = False, None
        self.register_buffer("shortcut_scale", torch.tensor(float(block.beta)))
        self.rprelu = PackedRPReLU.from_rprelu(block.rprelu, shift)

    def forward(self, x):
        branch = self.conv(self.sign(x))
        if self.shortcut is not None:
            shortcut = self.shortcut(F.avg_pool2d(x, 2, 2) if self.pool else x)
        else:
            shortcut = x * self.shortcut_scale
        return self.rprelu(branch + shortcut)


class PackedBinaryNet(nn.Module):
    """Inference-only packed network; ``config`` rebuilds its skeleton (see :func:`load_packed`)."""

    def __init__(self, stem: PackedStem, blocks, head: PackedHead, config: dict):
        super().__init__()
        self.stem, self.blocks, self.head = stem, nn.ModuleList(blocks), head
        self.config = dict(config)
        super().train(False)

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError("a packed model is inference-only; train the float model "
                               "and call bnn_helpers.deploy.pack again")
        return super().train(False)

    @torch.no_grad()
    def forward(self, x):
        in_chans = self.config["in_chans"]
        if x.dim() != 4 or x.shape[1] != in_chans:
            raise ValueError(f"expected images of shape (N, {in_chans}, H, W), got {tuple(x.shape)}")
        x = self.stem(x.float())
        native = _native.run_blocks(self.blocks, x)  # ReActNet-A: one native call per block
        if native is not None:
            return self.head(native)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def _model_config(model) -> dict:
    if isinstance(model, ReActNetA):
        arch, extra = "reactnet_a", {}
    elif isinstance(model, ReActNet18):
        arch, extra = "reactnet_18", {"stem": model.stem_kind}
    else:
        raise ValueError(f"pack supports ReActNetA and ReActNet18 models, got {type(model).__name__}")
    return {"arch": arch, "norm": model.norm, "num_classes": model.num_classes,
            "width_mult": model.width_mult, "in_chans": model.in_chans,
            "alpha": model.alpha, "beta_schedule": model.beta_schedule, **extra}


def pack(model: nn.Module, word_bits: int = 8) -> PackedBinaryNet:
    """Fold and bit-pack a step-2 ReActNet-A / ReActNet-18 (eval semantics) for inference.

    ``word_bits`` 8 packs channels into uint8 words, 64 into int64 words (channel
    counts are padded to a whole word). The float model is not modified.
    """
    _check_word_bits(word_bits)
    config = {**_model_config(model), "word_bits": word_bits}
    if not model.binary_weights:
        raise ValueError("pack needs a step-2 model (binary_weights=True); step-1 models "
                         "have real weights")
    packer = _Packer(word_bits)
    block_cls = PackedBlockA if config["arch"] == "reactnet_a" else PackedBlock18
    with torch.no_grad():
        blocks = [block_cls(b, packer) for b in model.blocks]
        packed = PackedBinaryNet(PackedStem.from_stem(model.stem), blocks,
                                 PackedHead(model.get_classifier()), config)
    return packed


# --------------------------------------------------------------------------
# file format
# --------------------------------------------------------------------------
def _tensor_digest(tensors: dict) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _state_tensors(packed: PackedBinaryNet) -> dict:
    return {k: v.detach().cpu().contiguous() for k, v in packed.state_dict().items()}


def save_packed(packed: PackedBinaryNet, path) -> None:
    """Write ``packed`` as safetensors; the metadata holds the config and a sha256."""
    from safetensors.torch import save_file

    if not isinstance(packed, PackedBinaryNet):
        raise ValueError("save_packed expects the result of bnn_helpers.deploy.pack(model)")
    tensors = _state_tensors(packed)
    header = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "config": packed.config,
              "sha256": _tensor_digest(tensors)}
    save_file(tensors, os.fspath(path), metadata={"bnn_helpers": json.dumps(header)})


def _skeleton(config: dict) -> PackedBinaryNet:
    kwargs = {k: config[k] for k in ("num_classes", "width_mult", "in_chans", "alpha",
                                     "beta_schedule")}
    if config["arch"] == "reactnet_18":
        kwargs["stem"] = config["stem"]
    model = create_model(f"{config['arch']}_{config['norm']}", binary_weights=True, **kwargs)
    return pack(model.eval(), config["word_bits"])


def load_packed(path) -> PackedBinaryNet:
    """Read a file written by :func:`save_packed`; fails if any tensor was changed."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    path = os.fspath(path)
    fix = "re-export it with bnn_helpers.deploy.save_packed(pack(model), path)"
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err}); {fix}") from None
    try:
        header = json.loads(meta["bnn_helpers"])
        config, expected = header["config"], header["sha256"]
    except (KeyError, TypeError, json.JSONDecodeError):
        raise ValueError(f"{path}: no bnn_helpers packed-model header; {fix}") from None
    if header.get("format") != FORMAT_NAME or header.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format {header.get('format')!r} v{header.get('version')} is "
                         f"not {FORMAT_NAME!r} v{FORMAT_VERSION}; {fix}")
    if _tensor_digest(tensors) != expected:
        raise ValueError(f"{path}: sha256 of the tensors does not match the header (file "
                         f"modified or corrupted); {fix}")
    packed = _skeleton(config)
    for name, module in packed.named_modules():
        key = f"{name}.zero_weights"
        if isinstance(module, PackedBinaryConv2d) and key in tensors:
            module.zero_weights = torch.zeros_like(tensors[key])   # variable length
    reference = packed.state_dict()
    missing, unexpected = sorted(set(reference) - set(tensors)), sorted(set(tensors) - set(reference))
    wrong = [k for k in reference if k in tensors and tensors[k].shape != reference[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(f"{path}: tensors do not fit the {config['arch']} config (missing "
                         f"{missing[:3]}, unexpected {unexpected[:3]}, wrong shape {wrong[:3]}); {fix}")
    packed.load_state_dict(tensors, strict=True)
    return packed


def packed_size_bytes(model: nn.Module, word_bits: int = 8) -> int:
    """Bytes of all tensors of the packed model (packs a float model first)."""
    packed = model if isinstance(model, PackedBinaryNet) else pack(model, word_bits)
    return sum(t.numel() * t.element_size() for t in packed.state_dict().values())


def float_size_bytes(model: nn.Module) -> int:
    """Bytes of the float32 checkpoint (parameters and buffers of the state dict)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


# --------------------------------------------------------------------------
# measurements for the notebook
# --------------------------------------------------------------------------
@torch.no_grad()
def count_sign_ties(model: nn.Module, images: torch.Tensor) -> dict:
    """How many RSign outputs are exactly 0 (input on the threshold) on ``images``."""
    counts = {"sign_outputs": 0, "zeros": 0}

    def hook(module, inputs, output):
        counts["sign_outputs"] += output.numel()
        counts["zeros"] += int((output == 0).sum())

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, RSign)]
    was_training = model.training
    try:
        model.eval()
        model(images)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    counts["fraction"] = counts["zeros"] / max(1, counts["sign_outputs"])
    return counts


OP_KINDS = ("scale", "shift", "sign", "prelu", "residual_add", "pooling", "real_macs")


def _record_shapes(model, input_size):
    shapes = {}
    hooks = [m.register_forward_hook(
        lambda mod, inp, out, key=name: shapes.__setitem__(key, (tuple(inp[0].shape[1:]),
                                                                 tuple(out.shape[1:]))))
        for name, m in [("stem", model.stem)] + [(f"blocks.{i}", b) for i, b in enumerate(model.blocks)]]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_size))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return shapes


def _block_ops(block, shape_in, shape_out, norm: str, folded: bool) -> dict:
    """Real ops and BOPs of one block, per image (see :func:`inference_op_table`)."""
    bn = norm == "bn" and not folded
    ops = dict.fromkeys(OP_KINDS, 0)
    c_in, h_in, w_in = shape_in
    c_out, h_out, w_out = shape_out
    e_in, e_out, px_out = c_in * h_in * w_in, c_out * h_out * w_out, h_out * w_out
    if isinstance(block, ReActBlockA):
        e_mid = c_in * px_out
        conv_outs = e_mid + e_out                       # conv3x3 outputs + all 1x1 outputs
        ops["bops"] = c_in * c_in * 9 * px_out + len(block.conv1x1) * c_in * c_in * px_out
        ops["sign"] = e_in + e_mid
        ops["prelu"] = e_mid + e_out
        ops["residual_add"] = e_mid + e_out
        ops["pooling"] = 4 * e_mid if block.stride == 2 else 0
        ops["shift"] = 2 * (e_mid + e_out) + (0 if folded else e_in + e_mid)
        if folded:
            ops["scale"] = conv_outs
        else:
            ops["scale"] = (conv_outs * (1 + (block.alpha != 1.0))
                            + e_in * (block.beta1 != 1.0) + e_mid * (block.beta2 != 1.0))
        if bn:
            ops["scale"] += conv_outs
            ops["shift"] += conv_outs
    else:
        ops["bops"] = c_in * c_out * 9 * px_out
        ops["sign"] = e_in
        ops["prelu"] = ops["residual_add"] = e_out
        sc = block.has_shortcut_conv
        ops["real_macs"] = c_in * c_out * px_out if sc else 0     # ±1 weights: additions
        ops["pooling"] = 4 * c_in * px_out if sc and block.stride != 1 else 0
        ops["shift"] = 2 * e_out + (0 if folded else e_in)
        beta_mul = block.beta != 1.0
        if folded:
            ops["scale"] = e_out * (1 + sc) + e_in * (beta_mul and not sc)
        else:
            ops["scale"] = e_out * (1 + (block.alpha != 1.0) + sc) + e_in * beta_mul
        if bn:
            ops["scale"] += e_out * (1 + sc)
            ops["shift"] += e_out * (1 + sc)
    return ops


def inference_op_table(model: nn.Module, input_size=(3, 224, 224)) -> pd.DataFrame:
    """Binary ops and real-valued operations left at inference, per block, per image.

    One row per (part, stage): ``stage="float"`` counts what the float
    simulation does around each binary conv (beta multiplies, RSign biases,
    the weight magnitude and alpha as separate multiplies, BN as a scale and a
    shift per element); ``stage="folded"`` counts what :func:`pack` leaves (one
    scale per conv output, BN shifts inside the RPReLU bias, sign as a
    threshold compare, beta inside the thresholds and the pool constant).
    Columns: ``bops`` (XNOR-popcount MACs), ``scale`` (multiplies by a
    constant), ``shift`` (adds of a constant), ``sign`` (compares), ``prelu``,
    ``residual_add``, ``pooling`` (4 per 2x2 average output, 8 per 3x3 max
    output, adds for the global pool), ``real_macs`` (stem, classifier, and the
    additions of ReActNet-18's binary-weight shortcut on real input) and
    ``real_ops`` (their sum, everything except ``bops``).
    """
    if not isinstance(model, (ReActNetA, ReActNet18)) or not model.binary_weights:
        raise ValueError("inference_op_table needs a step-2 ReActNetA or ReActNet18 "
                         "(binary_weights=True)")
    input_size = tuple(input_size)
    if len(input_size) != 3:
        raise ValueError(f"input_size must be (C, H, W), got {input_size}")
    shapes = _record_shapes(model, input_size)
    rows = []
    for stage in ("float", "folded"):
        (c0, h0, w0), (cs, hs, ws) = shapes["stem"]
        conv = model.stem.conv
        h_conv = (h0 + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1
        w_conv = (w0 + 2 * conv.padding[1] - conv.kernel_size[1]) // conv.stride[1] + 1
        e_conv = cs * h_conv * w_conv
        stem = dict.fromkeys(OP_KINDS, 0)
        stem["bops"] = 0
        stem["real_macs"] = e_conv * c0 * conv.kernel_size[0] * conv.kernel_size[1]
        if model.norm == "bn":
            stem["shift"] = e_conv
            stem["scale"] = 0 if stage == "folded" else e_conv
        stem["pooling"] = 8 * cs * hs * ws if isinstance(model.stem.pool, nn.MaxPool2d) else 0
        rows.append({"part": "stem", "stage": stage, **stem})
        for i, block in enumerate(model.blocks):
            shape_in, shape_out = shapes[f"blocks.{i}"]
            rows.append({"part": f"block{i + 1}", "stage": stage,
                         **_block_ops(block, shape_in, shape_out, model.norm, stage == "folded")})
        c, h, w = shapes[f"blocks.{len(model.blocks) - 1}"][1]
        fc = model.get_classifier()
        head = dict.fromkeys(OP_KINDS, 0)
        head.update(bops=0, pooling=c * h * w, real_macs=fc.in_features * fc.out_features,
                    shift=fc.out_features)
        rows.append({"part": "head", "stage": stage, **head})
    df = pd.DataFrame(rows, columns=["part", "stage", "bops", *OP_KINDS])
    df["real_ops"] = df[list(OP_KINDS)].sum(axis=1)
    df.insert(0, "norm", model.norm)
    return df
