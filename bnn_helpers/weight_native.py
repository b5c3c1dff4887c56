"""Native BN-free weight path (``csrc/weight_path.cpp``) for :mod:`bnn_helpers.binarize`.

``binarize_standardized_weight`` and ``standardize_weight`` call it for float32,
contiguous CPU weights: one output channel at a time, so each channel's row
(at most 36 KB in ReActNet-A) stays in cache while its statistics, output and
gradient are computed. Forward reads the weights once and writes the output once;
backward reads weights and upstream gradient once and writes the gradient once.
Statistics and the backward arithmetic run in double, rounded to float32 once.
Channels are split over ``torch.get_num_threads()`` threads (one thread below
64K weights), run on torch's own OpenMP pool when the library was built with
OpenMP (``bitconv_native.info()["openmp"]``), else on threads it starts; every channel is computed by one thread in a fixed order, so the
bits do not depend on the thread count.

It shares the library, the build and the switch of :mod:`bnn_helpers.bitconv_native`:
``BNN_NATIVE=0`` or ``bitconv_native.use_reference()`` selects the torch path;
``BNN_NATIVE=1`` / ``use_native()`` raises if the library cannot be built; by
default a failed build means the torch path, silently (the results agree to
float32 rounding). Any other dtype, device or layout always takes the torch path.
"""
from __future__ import annotations

import torch

from . import bitconv_native

__all__ = ["lib_for", "forward", "backward", "simd", "SIMD_LEVELS", "calls"]

#: How many times each native entry point ran in this process (tests check that the
#: native path, not the fallback, is what they exercised).
calls = {"forward": 0, "backward": 0}


def lib_for(w: torch.Tensor, gain: torch.Tensor | None):
    """The library to run this weight natively, or None (torch path)."""
    if w.device.type != "cpu" or w.dtype != torch.float32 or w.dim() < 1 or w.numel() == 0 \
            or not w.is_contiguous():
        return None
    if gain is not None and (gain.device.type != "cpu" or gain.dtype != torch.float32
                             or gain.numel() != w.shape[0]):
        return None
    m = bitconv_native.mode()
    if m == "off":
        return None
    lib = bitconv_native._try_load()
    if lib is None and m == "on":
        raise RuntimeError(f"{bitconv_native.ENV}=1 / use_native(), but the native library is "
                           f"unavailable: {bitconv_native.info()['error']}")
    return lib


def _ptr(t: torch.Tensor | None):
    return None if t is None else t.data_ptr()


def _gain(gain: torch.Tensor | None) -> torch.Tensor | None:
    return None if gain is None else gain.detach().reshape(-1).contiguous()


def forward(lib, w: torch.Tensor, gain: torch.Tensor | None, eps: float, binarize: bool):
    """``(out, stats)``; ``stats`` is float64 ``(out_channels, 4)``: mean, std, std + eps,
    scale (the float32 ``mean|w_hat|`` the binary output uses; 0 when not binarizing)."""
    rows = w.shape[0]
    out = torch.empty_like(w)
    stats = torch.empty(rows, 4, dtype=torch.float64)
    g = _gain(gain)
    lib.bnn_ws_forward(w.data_ptr(), rows, w.numel() // rows, float(eps), _ptr(g), int(binarize),
                       out.data_ptr(), stats.data_ptr(), torch.get_num_threads())
    calls["forward"] += 1
    return out, stats


def backward(lib, w: torch.Tensor, grad: torch.Tensor, stats: torch.Tensor,
             gain: torch.Tensor | None, binarize: bool, need_w: bool, need_gain: bool):
    """``(grad_w or None, grad_gain or None)`` from the saved ``w``, ``stats`` and ``gain``."""
    rows = w.shape[0]
    grad = grad.to(torch.float32).contiguous()
    grad_w = torch.empty_like(w) if need_w else None
    grad_gain = torch.empty(rows, dtype=torch.float32) if need_gain else None
    g = _gain(gain)
    lib.bnn_ws_backward(w.data_ptr(), grad.data_ptr(), rows, w.numel() // rows, stats.data_ptr(),
                        _ptr(g), int(binarize), _ptr(grad_w), _ptr(grad_gain),
                        torch.get_num_threads())
    calls["backward"] += 1
    if grad_gain is not None:
        grad_gain = grad_gain.view(gain.shape)
    return grad_w, grad_gain


#: The builds of the loops, by ``bnn_ws_simd`` level.
SIMD_LEVELS = ("baseline", "avx2", "avx512")


def simd(lib, level: str | None = None) -> str:
    """The build of the loops that runs (``"baseline"``, ``"avx2"`` or ``"avx512"``).

    ``level`` selects one (capped at what the CPU supports); ``"best"`` restores the
    default. Every build gives the same bits; the tests compare them.
    """
    code = -1 if level is None else 3 if level == "best" else SIMD_LEVELS.index(level)
    return SIMD_LEVELS[lib.bnn_ws_simd(code)]

