"""Binary weight signs during training: which convolutions carry sign weights, the
signs they use, and :class:`StatsRecorder`, which writes flip ratio, sign balance and
the AGC clip share to ``stats.csv`` as the engine trains (``--track-stats``).
No pandas here: the engine imports this module.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import torch
import torch.nn as nn

from .layers import RSign, is_binary_conv

__all__ = ["unwrap", "sign_layers", "binary_sign", "StatsRecorder", "STATS_COLUMNS"]


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a DistributedDataParallel/DataParallel or torch.compile wrapper."""
    while True:
        for attribute in ("module", "_orig_mod"):
            inner = getattr(model, attribute, None)
            if isinstance(inner, nn.Module):
                model = inner
                break
        else:
            return model


def sign_layers(model: nn.Module) -> dict[str, nn.Conv2d]:
    """Convolutions whose weight signs matter: ``{parameter name of the weight: conv}``.

    The binary convs of the model; in step 1 (no binary conv) the convs inside
    ``model.blocks``, whose latent weights step 2 binarizes. Names are those
    of the unwrapped model (without a DDP ``module.`` prefix).
    """
    model = unwrap(model)
    named = dict(model.named_modules())
    layers = {f"{n}.weight": m for n, m in named.items() if is_binary_conv(m)}
    if not layers and hasattr(model, "blocks"):
        layers = {f"blocks.{n}.weight": m for n, m in model.blocks.named_modules()
                  if isinstance(m, nn.Conv2d)}
    return layers


def binary_sign(weight: torch.Tensor, standardized: bool) -> torch.Tensor:
    """The sign the binary conv uses: ``sign(w - mean per out channel)`` if standardized, else ``sign(w)``."""
    w = weight.detach()
    if standardized:
        w = w - w.mean(dim=tuple(range(1, w.dim())), keepdim=True)
    return torch.sign(w)


# --------------------------------------------------------------------------
# training callback
# --------------------------------------------------------------------------
STATS_COLUMNS = ["step", "epoch", "iteration", "optimizer_step", "flip_ratio",
                 "weight_sign_balance", "act_sign_balance", "agc_clip_share"]


def _is_rank_zero() -> bool:
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class StatsRecorder:
    """Records binary-network statistics every ``every`` optimizer steps into ``run_dir/stats.csv``.

    The engine calls, per training iteration::

        recorder.before_optimizer_step(model, step, epoch, iteration)
        optimizer.step()
        recorder.after_optimizer_step(model, step, epoch, iteration, agc_clip_share)

    and ``recorder.close()`` at the end. Columns: :data:`STATS_COLUMNS`;
    ``optimizer_step`` counts the optimizer steps this recorder has seen
    (1-based; the ``every``-th, 2·``every``-th, ... are recorded).
    ``flip_ratio`` compares the signs of :func:`sign_layers` before and after
    that optimizer step; ``weight_sign_balance`` is the share of +1 weights
    after it; ``act_sign_balance`` is the share of +1 among every RSign output
    of the training forward of that iteration (a forward hook is armed one
    iteration ahead, so with ``every=1`` the first row has none: NaN).
    Rows are appended, so step 1 and step 2 may share one file. Only rank 0
    records.
    """

    def __init__(self, run_dir, every: int = 100):
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"StatsRecorder: every must be a positive integer, got {every!r}")
        self.path = Path(run_dir) / "stats.csv"
        self.every = every
        self.count = 0
        self._enabled: bool | None = None
        self._file = None
        self._writer = None
        self._hooked_model: nn.Module | None = None
        self._hook_handles: list = []
        self._armed = False
        self._positive: torch.Tensor | None = None
        self._numel = 0
        self._signs_before: dict[str, torch.Tensor] | None = None

    # -- activation signs ------------------------------------------------
    def _sign_hook(self, module, inputs, output):
        if self._armed and module.training:
            positive = (output.detach() > 0).sum()
            self._positive = positive if self._positive is None else self._positive + positive
            self._numel += output.numel()

    def _attach(self, model: nn.Module) -> None:
        model = unwrap(model)
        if self._hooked_model is model:
            return
        self._detach()
        self._hooked_model = model
        self._hook_handles = [m.register_forward_hook(self._sign_hook)
                              for m in model.modules() if isinstance(m, RSign)]

    def _detach(self) -> None:
        for handle in self._hook_handles:
            handle.remove()
        self._hook_handles, self._hooked_model = [], None

    def _records(self, count: int) -> bool:
        return count % self.every == 0

    # -- engine interface ----------------------------------------------------
    def before_optimizer_step(self, model: nn.Module, step: int, epoch: int, iteration: int) -> None:
        if self._enabled is None:
            self._enabled = _is_rank_zero()
        if not self._enabled:
            return
        self._attach(model)
        self.count += 1
        if self._records(self.count):
            self._signs_before = {n: binary_sign(m.weight, getattr(m, "standardized", False)).to(torch.int8)
                                  for n, m in sign_layers(model).items()}

    def after_optimizer_step(self, model: nn.Module, step: int, epoch: int, iteration: int,
                             agc_clip_share: "float | torch.Tensor | None" = None) -> None:
        if not self._enabled:
            return
        if self._signs_before is not None:
            self._write(model, step, epoch, iteration, agc_clip_share)
            self._signs_before = None
        # Arm the sign hooks for the forward of the next recorded iteration only.
        self._armed = self._records(self.count + 1)
        self._positive, self._numel = None, 0

    def _write(self, model, step, epoch, iteration, agc_clip_share) -> None:
        flips = total = positive = 0
        for name, conv in sign_layers(model).items():
            signs = binary_sign(conv.weight, getattr(conv, "standardized", False)).to(torch.int8)
            flips += int((signs != self._signs_before[name]).sum())
            positive += int((signs > 0).sum())
            total += signs.numel()
        act = float(self._positive) / self._numel if self._numel else math.nan
        row = {"step": step, "epoch": epoch, "iteration": iteration, "optimizer_step": self.count,
               "flip_ratio": flips / total if total else math.nan,
               "weight_sign_balance": positive / total if total else math.nan,
               "act_sign_balance": act,
               "agc_clip_share": math.nan if agc_clip_share is None else float(agc_clip_share)}
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            new = not self.path.exists() or self.path.stat().st_size == 0
            self._file = open(self.path, "a", newline="")
            self._writer = csv.DictWriter(self._file, fieldnames=STATS_COLUMNS)
            if new:
                self._writer.writeheader()
        self._writer.writerow(row)
        self._file.flush()

    def close(self) -> None:
        """Remove the hooks and close ``stats.csv``."""
        self._detach()
        if self._file is not None:
            self._file.close()
        self._file = self._writer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
