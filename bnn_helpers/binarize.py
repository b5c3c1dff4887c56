"""Sign functions and their straight-through estimators (STEs).

``sign`` has zero gradient almost everywhere, so binary networks train with a
surrogate gradient in the backward pass. Every function here is a custom
``torch.autograd.Function`` whose forward is exactly ``torch.sign`` (note
``sign(0) == 0``, as in the published network) and whose backward stores only
what it needs (the input, or a one-byte mask for ``sign_ste``), never the masks
and polynomials a plain autograd composition would keep alive.

Activations
    ``sign_identity``  backward ``grad``                      (plain STE)
    ``sign_ste``       backward ``grad * 1[|x| <= 1]``        (clipped identity)
    ``sign_approx``    backward ``grad * (2 - 2|x|) * 1[|x| < 1]``
                       (ApproxSign / Bi-Real: ``2+2x`` on [-1,0), ``2-2x`` on [0,1))

Weights (one per-output-channel scale ``a = mean|w|``, detached)
    ``binarize_weight(w)``                 ``a * sign(w)``, gradient straight
                                           through ``clamp(w, -1, 1)``
    ``binarize_standardized_weight(w, gain)``  the BN-free weight path fused in
                                           one Function: standardize, binarize,
                                           multiply by ``gain``; analytic backward
    ``standardize_weight(w, gain)``        the real scaled-WS weight, fused

The two standardized weight paths run natively for float32 contiguous CPU
weights (:mod:`bnn_helpers.weight_native`: forward reads the weights from memory
once, backward the weights and the gradient, statistics in double); every other case,
``BNN_NATIVE=0`` / ``bitconv_native.use_reference()``, or a library that cannot
be built takes the torch code here, which computes the same values to float32
rounding.

``reference_*`` functions are the straightforward autograd compositions of the
same formulas (what the notebooks build as toys); the tests check the fused
versions against them and the benchmarks time both. ``use_reference()``
switches every layer of :mod:`bnn_helpers.layers` to them (see
``benchmarks/README.md`` for what the fused path saves).
"""
from __future__ import annotations

import math

import torch

from . import weight_native

__all__ = [
    "sign_identity",
    "sign_ste",
    "sign_approx",
    "ESTIMATORS",
    "get_estimator",
    "binarize_weight",
    "standardize_weight",
    "binarize_standardized_weight",
    "reference_sign_identity",
    "reference_sign_approx",
    "reference_sign_ste",
    "reference_binarize_weight",
    "reference_standardize_weight",
    "reference_binarize_standardized_weight",
    "REFERENCE_ESTIMATORS",
    "use_reference",
    "reference_enabled",
    "WS_EPS",
]

#: epsilon of the published weight standardization: ``(w - mean) / (std + eps)``.
WS_EPS = 1e-5


# --------------------------------------------------------------------------
# activations
# --------------------------------------------------------------------------
class _SignIdentity(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.sign(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        # The gradient only needs 1[|x| <= 1]: keep one byte per entry, not x.
        ctx.save_for_backward(x.abs() <= 1)
        return torch.sign(x)

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return torch.where(inside, grad, 0)


class _SignApprox(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        # 2 - 2|x| is not a function of a compact code of x, so x itself is kept.
        ctx.save_for_backward(x)
        return torch.sign(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        # grad * 2 * max(0, 1 - |x|) = -2 * grad * (min(|x|, 1) - 1), in one new tensor.
        slope = x.abs().clamp_(max=1).sub_(1)
        return slope.mul_(grad).mul_(-2)


def sign_identity(x: torch.Tensor) -> torch.Tensor:
    """``sign(x)`` with the plain identity straight-through gradient."""
    return _SignIdentity.apply(x)


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    """``sign(x)`` with the clipped-identity gradient ``1[|x| <= 1]``."""
    return _SignSTE.apply(x)


def sign_approx(x: torch.Tensor) -> torch.Tensor:
    """``sign(x)`` with the ApproxSign (Bi-Real) gradient ``max(0, 2 - 2|x|)``."""
    return _SignApprox.apply(x)


ESTIMATORS = {"identity": sign_identity, "ste": sign_ste, "approx": sign_approx}


def get_estimator(name: str):
    """Return the sign function called ``name`` (one of :data:`ESTIMATORS`)."""
    try:
        return ESTIMATORS[name]
    except KeyError:
        raise ValueError(
            f"unknown sign estimator {name!r}; choose one of {sorted(ESTIMATORS)}"
        ) from None


# --------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------
# Every weight path below allocates one weight-sized tensor in forward (the
# output) and one in backward (the gradient) and otherwise works in place:
# on CPU a fresh tensor above glibc's mmap threshold (32 MB; the 1024x1024x3x3
# conv of ReActNet-A is 38 MB) costs page faults worth ~10 in-place passes.
# Per-channel statistics use sum and vector norms, not ``var_mean`` (Welford),
# which is several times slower on CPU.

def _channel_dims(w: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(1, w.dim()))


def _centre(w: torch.Tensor, out: torch.Tensor | None = None):
    """``(w - mean, mean)`` per output channel; the difference is written to ``out`` if given."""
    mean = w.sum(dim=_channel_dims(w), keepdim=True).div_(w[0].numel())
    return torch.sub(w, mean, out=out) if out is not None else w - mean, mean


def _std_stats(w: torch.Tensor, eps: float):
    """Centred weights ``u`` (new tensor), per-channel mean, biased std, ``std+eps``, ``1/sqrt(n)``."""
    dims = _channel_dims(w)
    n = w[0].numel()
    centred, mean = _centre(w)
    std = torch.linalg.vector_norm(centred, 2, dim=dims, keepdim=True).div_(math.sqrt(n))
    return centred, mean, std, std + eps, 1.0 / math.sqrt(n)


def _clamp_never_clips(w: torch.Tensor) -> bool:
    """True when ``|w_hat| <= 1`` is guaranteed, so the STE clamp mask is all ones.

    For ``n`` values ``|x_i - mean| <= std * sqrt(n - 1)`` (biased std), hence
    ``|w_hat| = |x_i - mean| / (std + eps) / sqrt(n) <= sqrt(1 - 1/n) < 1``.
    The margin ``~1/(2n)`` must dwarf rounding, so low-precision or huge
    channels still compute the mask.
    """
    return torch.finfo(w.dtype).eps * w[0].numel() <= 1e-2


def _standardize_grad(grad, w, mean, std, s, c, gain, centred_dot, out):
    """``dL/dw`` of ``w_hat * gain`` with ``w_hat = c * (w - mean) / s``, ``s = std + eps``.

    With ``u = w - mean``, ``g = grad * gain`` and ``n`` weights per channel::

        dL/dw = c/s * (g - mean(g)) - c/s**2 * sum(g*u) / (n*std) * u

    ``centred_dot`` is ``sum(grad*u)`` per channel. Written into ``out`` in two
    passes as ``(k*mean + b - k*w) + a*grad``, so ``u`` need not be kept.
    """
    n = w[0].numel()
    a = c / s if gain is None else gain * (c / s)
    # std == 0 only for a constant channel; its u is 0 too, so the term vanishes.
    k = (a * centred_dot / s).div_(std.clamp_min(torch.finfo(std.dtype).tiny) * n)
    b = k * mean - a * grad.sum(dim=_channel_dims(grad), keepdim=True).div_(n)
    return torch.addcmul(b, w, k.neg(), out=out).addcmul_(grad, a)


def _dot_per_channel(a: torch.Tensor, b: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """``sum(a*b)`` over each output channel, using ``scratch`` (may be ``b``) for the product."""
    return torch.mul(a, b, out=scratch).sum(dim=_channel_dims(a), keepdim=True)


class _BinarizeWeight(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w):
        scale = torch.linalg.vector_norm(w, 1, dim=_channel_dims(w), keepdim=True).div_(w[0].numel())
        ctx.save_for_backward(w)
        return torch.sign(w).mul_(scale)

    @staticmethod
    def backward(ctx, grad):
        (w,) = ctx.saved_tensors
        # 1[|w| <= 1] as 0./1. in the one new tensor, then times grad.
        return w.abs().le_(1).mul_(grad)


def binarize_weight(w: torch.Tensor) -> torch.Tensor:
    """``mean|w| * sign(w)`` per output channel; gradient through ``clamp(w, -1, 1)``."""
    return _BinarizeWeight.apply(w)


def _native_forward(ctx, w, gain, eps, binarize):
    """The native forward (see :mod:`.weight_native`) or None when the torch code must run.

    The native backward has no STE mask, so binarizing needs ``_clamp_never_clips``.
    """
    lib = weight_native.lib_for(w, gain)
    ctx.lib = lib if lib is not None and (not binarize or _clamp_never_clips(w)) else None
    if ctx.lib is None:
        return None
    out, stats = weight_native.forward(ctx.lib, w, gain, eps, binarize)
    ctx.save_for_backward(w, gain, stats)
    return out


def _native_backward(ctx, grad, binarize):
    if torch.is_grad_enabled():  # create_graph=True: the native backward builds no graph
        raise RuntimeError("the fused weight paths are not twice differentiable; use the "
                           "autograd composition (bnn_helpers.binarize.use_reference())")
    w, gain, stats = ctx.saved_tensors
    grad_w, grad_gain = weight_native.backward(
        ctx.lib, w, grad, stats, gain, binarize, ctx.needs_input_grad[0],
        gain is not None and ctx.needs_input_grad[1])
    return grad_w, grad_gain, None


class _StandardizeWeight(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, gain, eps):
        out = _native_forward(ctx, w, gain, eps, binarize=False)
        if out is not None:
            return out
        centred, mean, std, s, c = _std_stats(w, eps)
        ctx.save_for_backward(w, mean, std, s, gain)
        ctx.c = c
        factor = c / s if gain is None else gain * (c / s)
        return centred.mul_(factor)

    @staticmethod
    def backward(ctx, grad):
        if ctx.lib is not None:
            return _native_backward(ctx, grad, binarize=False)
        w, mean, std, s, gain = ctx.saved_tensors
        c = ctx.c
        centred, _ = _centre(w)
        centred_dot = _dot_per_channel(grad, centred, centred)
        grad_gain = None
        if gain is not None and ctx.needs_input_grad[1]:
            # d out / d gain = w_hat = c*u/s.
            grad_gain = centred_dot * (c / s)
        grad_w = None
        if ctx.needs_input_grad[0]:
            grad_w = _standardize_grad(grad, w, mean, std, s, c, gain, centred_dot, centred)
        return grad_w, grad_gain, None


def standardize_weight(w: torch.Tensor, gain: torch.Tensor | None = None,
                       eps: float = WS_EPS) -> torch.Tensor:
    """Scaled weight standardization: ``gain * (w - mean) / (std + eps) / sqrt(fan_in)``.

    Statistics are per output channel, ``std`` is the biased standard deviation.
    """
    return _StandardizeWeight.apply(w, gain, eps)


class _BinarizeStandardizedWeight(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, gain, eps):
        out = _native_forward(ctx, w, gain, eps, binarize=True)
        if out is not None:
            return out
        centred, mean, std, s, c = _std_stats(w, eps)
        n = w[0].numel()
        # mean|w_hat| = c/s * mean|u|
        scale = torch.linalg.vector_norm(centred, 1, dim=_channel_dims(w), keepdim=True)
        scale.mul_(c / n).div_(s)
        ctx.save_for_backward(w, mean, std, s, gain, scale)
        ctx.c = c
        # One multiply by scale*gain: every entry is exactly +-(scale*gain) or 0.
        return centred.sign_().mul_(scale if gain is None else scale * gain)

    @staticmethod
    def backward(ctx, grad):
        if ctx.lib is not None:
            return _native_backward(ctx, grad, binarize=True)
        w, mean, std, s, gain, scale = ctx.saved_tensors
        c = ctx.c
        buf, _ = _centre(w)
        if not _clamp_never_clips(w):
            grad = grad * (buf.abs().mul_(c).div_(s) <= 1).to(grad.dtype)
            torch.sub(w, mean, out=buf)
        centred_dot = _dot_per_channel(grad, buf, buf)
        grad_gain = None
        if gain is not None and ctx.needs_input_grad[1]:
            # d out / d gain = scale * sign(u).
            torch.sub(w, mean, out=buf).sign_()
            grad_gain = _dot_per_channel(grad, buf, buf).mul_(scale)
        grad_w = None
        if ctx.needs_input_grad[0]:
            grad_w = _standardize_grad(grad, w, mean, std, s, c, gain, centred_dot, buf)
        return grad_w, grad_gain, None


def binarize_standardized_weight(w: torch.Tensor, gain: torch.Tensor | None = None,
                                 eps: float = WS_EPS) -> torch.Tensor:
    """BN-free binary weight: ``gain * mean|w_hat| * sign(w_hat)``, ``w_hat`` standardized.

    The gradient flows straight through ``clamp(w_hat, -1, 1)`` and then through
    the standardization (computed analytically, not replayed op by op).
    """
    return _BinarizeStandardizedWeight.apply(w, gain, eps)


# --------------------------------------------------------------------------
# straightforward autograd compositions (reference for tests and benchmarks)
# --------------------------------------------------------------------------
def reference_sign_identity(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x).detach() - x.detach() + x


def reference_sign_approx(x: torch.Tensor) -> torch.Tensor:
    """ApproxSign written as masks and polynomials; autograd keeps them all."""
    forward = torch.sign(x)
    mask1 = (x < -1).float()
    mask2 = (x < 0).float()
    mask3 = (x < 1).float()
    poly = -1 * mask1 + (x * x + 2 * x) * (1 - mask1)
    poly = poly * mask2 + (-x * x + 2 * x) * (1 - mask2)
    poly = poly * mask3 + 1 * (1 - mask3)
    return forward.detach() - poly.detach() + poly


def _clip_inclusive(x: torch.Tensor) -> torch.Tensor:
    """``clamp(x, -1, 1)`` whose gradient is 1 on the closed interval [-1, 1].

    Recent torch releases give ``torch.clamp`` a zero gradient exactly at the
    bounds; the estimators are defined with ``|x| <= 1``, so say it explicitly.
    """
    return torch.where(x.abs() <= 1, x, torch.sign(x).detach())


def reference_sign_ste(x: torch.Tensor) -> torch.Tensor:
    clipped = _clip_inclusive(x)
    return torch.sign(x).detach() - clipped.detach() + clipped


def reference_binarize_weight(w: torch.Tensor) -> torch.Tensor:
    scale = w.abs().mean(dim=_channel_dims(w), keepdim=True).detach()
    clipped = _clip_inclusive(w)
    return (scale * torch.sign(w)).detach() - clipped.detach() + clipped


def reference_standardize_weight(w: torch.Tensor, gain: torch.Tensor | None = None,
                                 eps: float = WS_EPS) -> torch.Tensor:
    dims = _channel_dims(w)
    mean = w.mean(dim=dims, keepdim=True)
    std = w.std(dim=dims, keepdim=True, unbiased=False)
    w_hat = (w - mean) / (std + eps) / math.sqrt(w[0].numel())
    return w_hat * gain if gain is not None else w_hat


def reference_binarize_standardized_weight(w: torch.Tensor, gain: torch.Tensor | None = None,
                                           eps: float = WS_EPS) -> torch.Tensor:
    out = reference_binarize_weight(reference_standardize_weight(w, None, eps))
    return out * gain if gain is not None else out


REFERENCE_ESTIMATORS = {"identity": reference_sign_identity, "ste": reference_sign_ste,
                        "approx": reference_sign_approx}

_reference_mode = False


class use_reference:
    """Make the layers of :mod:`bnn_helpers.layers` use the ``reference_*`` compositions.

    Works like ``torch.set_grad_enabled``: ``use_reference(True)`` switches at
    once (process-wide); as a context manager it restores the previous mode on
    exit. Layers read the mode at every forward, so the same model can be timed
    both ways::

        with use_reference():
            loss = model(x).sum()   # straightforward autograd composition
    """

    def __init__(self, enabled: bool = True):
        global _reference_mode
        self.previous = _reference_mode
        _reference_mode = bool(enabled)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        global _reference_mode
        _reference_mode = self.previous


def reference_enabled() -> bool:
    """True while :class:`use_reference` has switched the layers to the compositions."""
    return _reference_mode
