"""Context managers for measuring a network without leaving traces on it: forward
hooks removed, the train/eval flag and the buffers (BN running statistics) restored."""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

__all__ = ["removing_hooks", "eval_mode", "buffers_restored"]


@contextlib.contextmanager
def removing_hooks():
    """Collects hook handles (append them to the yielded list); removes all on exit."""
    handles: list = []
    try:
        yield handles
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """``model.eval()`` inside, its previous train/eval flag restored on exit."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextlib.contextmanager
def buffers_restored(model: nn.Module):
    """A train-mode forward updates BN running statistics; put them back afterwards."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, copy in saved:
                buf.copy_(copy)
