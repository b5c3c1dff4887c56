"""One training step of the recipe, defined once: the engine, the benchmarks and the
notebooks run this same function.

    optimizer = make_optimizer(model, "adam", lr=5e-4, weight_decay=1e-5)
    out = training_step(model, x, y, Objective("kd"), optimizer, teacher=teacher,
                        amp="bf16", agc_params=parameters_except_classifier(model))
    out.loss, out.logits, out.clip_share

The step: forward (and the teacher's, without gradients) under autocast, loss,
``zero_grad``, backward (scaled with fp16), AGC on the true gradients, optimizer
step. ``training_throughput`` times this step on synthetic images (images/s).
"""
from __future__ import annotations

import contextlib
import time
import warnings
from typing import Callable, NamedTuple

import torch
import torch.nn as nn

from .agc import clip_gradients_, parameters_except_classifier
from .losses import Objective

__all__ = ["StepOutput", "autocast", "make_optimizer", "make_scheduler", "training_step",
           "training_throughput"]


class StepOutput(NamedTuple):
    loss: torch.Tensor         # the batch's loss (still attached to the graph; detach to log it)
    logits: torch.Tensor       # the student's logits
    clip_share: torch.Tensor | None  # share of units AGC clipped (0-d, on the device); None without AGC


def autocast(device_type: str, amp: str = "none"):
    """The autocast context of ``amp`` (``none``, ``bf16`` or ``fp16``) on ``device_type``."""
    if amp == "none":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast(device_type, dtype=dtype)


def make_optimizer(model: nn.Module, name: str = "adam", lr: float = 5e-4, weight_decay: float = 0.0,
                   momentum: float = 0.9) -> torch.optim.Optimizer:
    """Adam or SGD with the published decay rule: every 4-D parameter (conv weights, WS
    gains and the (1,C,1,1) learnable biases) decays, nothing else."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim == 4]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim != 4]
    groups = [{"params": rest, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]
    if name == "adam":
        # On CPU torch's fused Adam is one pass per tensor instead of about six (3x faster on
        # ReActNet-A's 28 M weights; results differ by float32 rounding). GPUs keep torch's default.
        on_cpu = all(p.device.type == "cpu" for p in decay + rest)
        return torch.optim.Adam(groups, lr=lr, fused=True if on_cpu else None)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    raise ValueError(f"unknown optimizer {name!r}; valid: adam, sgd")


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: str, epochs: int):
    """Per-epoch learning-rate factor: ``published`` (stepped before each epoch, so epoch e of
    E runs at ``1 - e/E``), ``linear`` (``1 - (e-1)/E``) or ``constant``."""
    if schedule == "published" and epochs == 1:
        warnings.warn("lr_schedule 'published' with epochs=1 trains at lr 0 (the rate is "
                      "lowered before each epoch); use --lr-schedule linear for short runs",
                      stacklevel=3)
    factor = {"published": lambda e: 1.0 - e / epochs,       # stepped before epoch e = 1..E
              "linear": lambda e: 1.0 - (e - 1) / epochs,    # e = 1..E -> 1 .. 1/E
              "constant": lambda e: 1.0}[schedule]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: max(factor(e), 0.0))


def training_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, objective: nn.Module,
                  optimizer: torch.optim.Optimizer, *, teacher: nn.Module | None = None,
                  amp: str = "none", scaler: torch.amp.GradScaler | None = None,
                  agc_params: list | None = None, agc_clip_factor: float = 0.02, agc_eps: float = 1e-3,
                  before_update: Callable[[], None] | None = None) -> StepOutput:
    """Forward, loss, backward, AGC and the optimizer update on one batch.

    ``objective(logits, y, teacher_logits)``; ``teacher``: run without gradients on the
    same images (distillation); ``scaler``: a GradScaler for fp16; ``agc_params``: the
    parameters AGC clips (None: no clipping); ``before_update()``: called once the
    gradients exist, before clipping and the update (where statistics are read).
    """
    with autocast(x.device.type, amp):
        logits = model(x)
        teacher_logits = None
        if teacher is not None:
            with torch.no_grad():
                teacher_logits = teacher(x)
        loss = objective(logits, y, teacher_logits)
    optimizer.zero_grad(set_to_none=True)
    (scaler.scale(loss) if scaler is not None else loss).backward()
    if before_update is not None:
        before_update()
    clip_share = None
    if agc_params is not None:
        if scaler is not None:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        clip_share = clip_gradients_(agc_params, agc_clip_factor, agc_eps)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return StepOutput(loss, logits, clip_share)



def training_throughput(model: nn.Module, batch: int, image_size: int = 224, *,
                        teacher: nn.Module | None = None, loss: str = "kd", amp: str = "none",
                        channels_last: bool = False, steps: int = 10, warmup: int = 3,
                        lr: float = 5e-4, weight_decay: float = 0.0) -> float:
    """Training images per second of :func:`training_step` on random images (no data loading).

    The recipe's step as the engine runs it: Adam with the published decay groups,
    ``loss`` (``kd`` needs ``teacher``; ``ce`` uses random labels), AGC on every
    parameter but the classifier, ``amp`` autocast. ``model`` (and ``teacher``)
    must already be on the device to measure; ``warmup`` steps are not timed
    (first-call allocations, kernel selection). The model's weights change.
    """
    if loss == "kd" and teacher is None:
        raise ValueError("loss='kd' distils from a teacher: pass teacher=..., or use loss='ce'")
    device = next(model.parameters()).device
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, 3, image_size, image_size, device=device).contiguous(memory_format=fmt)
    y = None
    if loss == "ce":  # random labels over the model's classes
        with torch.no_grad():
            num_classes = model.eval()(x[:1]).shape[1]
        y = torch.randint(0, num_classes, (batch,), device=device)
    optimizer = make_optimizer(model, "adam", lr=lr, weight_decay=weight_decay)
    objective, clipped = Objective(loss), parameters_except_classifier(model)
    model.train()

    def synchronize():  # GPU kernels run asynchronously: wait for them before reading the clock
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for i in range(warmup + steps):
        if i == warmup:
            synchronize()
            start = time.perf_counter()
        training_step(model, x, y, objective, optimizer, teacher=teacher, amp=amp, agc_params=clipped)
    synchronize()
    return batch * steps / (time.perf_counter() - start)
