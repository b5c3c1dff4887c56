"""Training objectives.

* ``kd``: the distribution loss of ReActNet / BNN-BN — cross-entropy between the
  teacher's softmax and the student's log-softmax; labels are not used. Written
  as timm's ``SoftTargetCrossEntropy`` applied to ``softmax(teacher_logits)``.
* ``ce``: ``nn.CrossEntropyLoss`` with optional label smoothing.

The teacher itself is loaded by :mod:`bnn_helpers.teacher`.
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy

from .config import TrainError

__all__ = ["Objective"]


class Objective(nn.Module):
    """``loss(student_logits, labels, teacher_logits=None)`` for ``kd`` or ``ce``."""

    def __init__(self, kind: str = "ce", label_smoothing: float = 0.0):
        super().__init__()
        if kind not in ("kd", "ce"):
            raise TrainError(f"unknown loss {kind!r}; valid: kd, ce")
        self.kind = kind
        self.soft_ce = SoftTargetCrossEntropy()
        self.ce = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def forward(self, student_logits, labels, teacher_logits=None):
        if self.kind == "kd":
            target = F.softmax(teacher_logits.float(), dim=-1)
            return self.soft_ce(student_logits.float(), target)
        return self.ce(student_logits.float(), labels)
