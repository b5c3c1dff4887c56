"""Counting correct predictions, defined once for the engine and the diagnostics.

Top-1 is ``argmax``: on an exact tie it picks the first class, and every top-1
number in the package (training logs, notebook evaluations, prediction
comparisons) counts the same way.
"""
from __future__ import annotations

import torch

__all__ = ["top1_hits", "topk_hits"]


@torch.no_grad()
def top1_hits(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Number of samples whose argmax is the label, as a 0-d tensor on the logits' device."""
    return (logits.detach().argmax(1) == y).sum()


@torch.no_grad()
def topk_hits(logits: torch.Tensor, y: torch.Tensor, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """(top-1 hits, top-``k`` hits) of a batch as 0-d tensors on its device (no host sync)."""
    in_top_k = (logits.detach().topk(min(k, logits.shape[1]), dim=1).indices == y[:, None]).any(dim=1)
    return top1_hits(logits, y), in_top_k.sum()
