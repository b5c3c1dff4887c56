"""Adaptive gradient clipping (Brock et al. 2021, arXiv 2102.06171) with a clip count.

The clipping itself is timm's ``adaptive_clip_grad``: a unit (a row of a weight,
i.e. one output channel; a whole tensor for 1-D parameters) whose gradient norm
exceeds ``clip_factor * max(|w_unit|, eps)`` is rescaled to that norm. We also
report which share of units was clipped, to see how often AGC acts.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn
from timm.utils import adaptive_clip_grad
from timm.utils.agc import unitwise_norm

__all__ = ["clip_gradients", "clip_gradients_", "clipped_units", "parameters_except_classifier"]


def clipped_units(p: torch.Tensor, clip_factor: float = 0.02, eps: float = 1e-3) -> torch.Tensor:
    """Bool per unit of ``p``: whether AGC clips its gradient now.

    timm's rule: a unit keeps its gradient only while
    ``|g_unit| < clip_factor * max(|w_unit|, eps)``.
    """
    max_norm = unitwise_norm(p.detach().float()).clamp(min=eps).mul_(clip_factor)
    return ~(unitwise_norm(p.grad.detach().float()) < max_norm)


@torch.no_grad()
def clip_gradients_(parameters: Iterable[torch.Tensor], clip_factor: float = 0.02,
                    eps: float = 1e-3) -> torch.Tensor:
    """Clip in place; return the clipped-unit share as a 0-d tensor (no host sync)."""
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return torch.zeros(())
    # Counted before timm changes the gradients below.
    flags = [clipped_units(p, clip_factor, eps) for p in params]
    clipped, units = [f.sum() for f in flags], sum(f.numel() for f in flags)
    adaptive_clip_grad(params, clip_factor=clip_factor, eps=eps)
    return torch.stack(clipped).sum().float() / units


def clip_gradients(parameters: Iterable[torch.Tensor], clip_factor: float = 0.02,
                   eps: float = 1e-3) -> float:
    """Clip gradients with timm's AGC; return the share of units that were clipped."""
    return float(clip_gradients_(parameters, clip_factor, eps))


def parameters_except_classifier(model: nn.Module) -> list[torch.Tensor]:
    """Every trainable parameter but the final classifier's (AGC's usual exclusion)."""
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    skip = {id(p) for p in classifier.parameters()} if isinstance(classifier, nn.Module) else set()
    return [p for p in model.parameters() if p.requires_grad and id(p) not in skip]
