"""Bit kernels of packed inference: pack, unpack, popcount, packed activations and the
XNOR-popcount convolution, in plain PyTorch (the reference).

Channels are packed into words of ``word_bits`` (8: one uint8; 64: one int64),
1 = +1 and 0 = -1; a packed activation carries a second bit plane, ``valid``, so
that zeros (padding, sign ties) contribute 0 to a dot product.

The reference convolution is plain PyTorch: im2col of the packed words
(``Tensor.unfold``, since ``F.unfold`` only accepts floating tensors), then
XOR, AND and a SWAR popcount on 64-bit lanes of each window's bytes (int64
bit tricks; uint8 shifts and lookup tables are several times slower in
PyTorch). It is a correctness reference, not a fast kernel: packed models run
the native kernels of :mod:`bnn_helpers.bitconv_native` (XOR + popcount on
64-bit words, built on first use; ``BNN_NATIVE=0`` or
``bitconv_native.use_reference()`` forces this reference) and fall back to it
with one warning where no C++ compiler is available; the tests check the two
bit for bit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["WORD_BITS", "check_word_bits", "pack_bits", "unpack_bits", "popcount", "PackedActivation",
           "packed_conv2d"]

#: Supported word sizes (bits per channel word) and their dtype.
WORD_BITS = {8: torch.uint8, 64: torch.int64}
# Largest (rows x bytes) slab the reference conv materialises at once.
_CHUNK_BYTES = 1 << 25


# --------------------------------------------------------------------------
# bits
# --------------------------------------------------------------------------
def check_word_bits(word_bits: int) -> torch.dtype:
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
    check_word_bits(word_bits)
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
