"""Sign functions and their straight-through estimators (STEs).

``sign`` has zero gradient almost everywhere, so binary networks train with a
surrogate gradient in the backward pass. Every function here is a custom
``torch.autograd.Function`` whose forward is exactly ``torch.sign`` (note
``sign(0) == 0``, as in the published network) and whose backward stores only
what it needs: the input, never the masks and polynomials a plain autograd
composition would keep alive.

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

``reference_*`` functions are the straightforward autograd compositions of the
same formulas (what the notebooks build as toys); the tests check the fused
versions against them and the benchmarks time both.
"""
from __future__ import annotations

import math

import torch

__all__ = [
    "sign_identity",
    "sign_ste",
    "sign_approx",
    "ESTIMATORS",
    "get_estimator",
    "binarize_weight",
    "standardize_weight",
    "binarize_standardized_weight",
    "reference_sign_approx",
    "reference_sign_ste",
    "reference_binarize_weight",
    "reference_standardize_weight",
    "reference_binarize_standardized_weight",
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
        ctx.save_for_backward(x)
        return torch.sign(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


class _SignApprox(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sign(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        # 2 - 2|x| inside (-1, 1), zero outside; one temporary, no masks kept.
        slope = (1 - x.abs()).clamp_(min=0).mul_(2)
        return grad * slope.to(grad.dtype)


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
def _channel_dims(w: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(1, w.dim()))


class _BinarizeWeight(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w):
        scale = w.abs().mean(dim=_channel_dims(w), keepdim=True)
        ctx.save_for_backward(w)
        return torch.sign(w).mul_(scale)

    @staticmethod
    def backward(ctx, grad):
        (w,) = ctx.saved_tensors
        return grad * (w.abs() <= 1).to(grad.dtype)


def binarize_weight(w: torch.Tensor) -> torch.Tensor:
    """``mean|w| * sign(w)`` per output channel; gradient through ``clamp(w, -1, 1)``."""
    return _BinarizeWeight.apply(w)


def _std_stats(w: torch.Tensor, eps: float):
    """Per-output-channel centred weights, ``1/(std+eps)`` and ``1/sqrt(fan_in)``."""
    dims = _channel_dims(w)
    fan_in = w[0].numel()
    var, mean = torch.var_mean(w, dim=dims, keepdim=True, correction=0)
    std = var.sqrt()
    centred = w - mean
    inv = 1.0 / (std + eps)
    return centred, std, inv, 1.0 / math.sqrt(fan_in)


def _standardize_backward(grad_hat, centred, std, inv, c):
    """Gradient of ``w_hat = c * (w - mean) / (std + eps)`` with respect to ``w``.

    With ``u = w - mean``, ``s = std + eps`` and ``n`` weights per channel:
    ``dL/dw = c/s * (g - mean(g)) - c/s**2 * sum(g*u) * u / (n*std)``.
    """
    dims = _channel_dims(grad_hat)
    n = centred[0].numel()
    g_mean = grad_hat.mean(dim=dims, keepdim=True)
    gu = (grad_hat * centred).sum(dim=dims, keepdim=True)
    # std == 0 only for a constant channel; its u is 0 too, so the term vanishes.
    coef = gu * inv * inv * c / (n * std.clamp_min(torch.finfo(std.dtype).tiny))
    return (grad_hat - g_mean).mul_(inv * c).sub_(centred * coef)


class _StandardizeWeight(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, gain, eps):
        centred, std, inv, c = _std_stats(w, eps)
        w_hat = centred * (inv * c)
        ctx.save_for_backward(centred, std, inv, w_hat if gain is not None else None, gain)
        ctx.c = c
        return w_hat * gain if gain is not None else w_hat

    @staticmethod
    def backward(ctx, grad):
        centred, std, inv, w_hat, gain = ctx.saved_tensors
        grad_gain = None
        if gain is not None:
            if ctx.needs_input_grad[1]:
                grad_gain = (grad * w_hat).sum(dim=_channel_dims(grad), keepdim=True)
            grad = grad * gain
        grad_w = _standardize_backward(grad, centred, std, inv, ctx.c)
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
        centred, std, inv, c = _std_stats(w, eps)
        w_hat = centred.mul(inv * c)
        scale = w_hat.abs().mean(dim=_channel_dims(w), keepdim=True)
        signs = torch.sign(w_hat)
        ctx.save_for_backward(centred, std, inv, w_hat, gain, scale)
        ctx.c = c
        out = signs.mul_(scale)
        return out * gain if gain is not None else out

    @staticmethod
    def backward(ctx, grad):
        centred, std, inv, w_hat, gain, scale = ctx.saved_tensors
        grad_gain = None
        if gain is not None:
            if ctx.needs_input_grad[1]:
                # d out / d gain = scale * sign(w_hat); sum over each channel.
                grad_gain = (grad * torch.sign(w_hat)).sum(
                    dim=_channel_dims(grad), keepdim=True).mul_(scale)
            grad = grad * gain
        grad_hat = grad * (w_hat.abs() <= 1).to(grad.dtype)
        grad_w = _standardize_backward(grad_hat, centred, std, inv, ctx.c)
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
