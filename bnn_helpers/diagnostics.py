"""Diagnostics of binary networks: signal propagation, weight statistics, flips.

Works on any model that exposes ``model.stem``, ``model.blocks`` (ordered) and
``model.head``, as every network of :mod:`bnn_helpers.models` does;
:func:`signal_propagation` also takes a plain list of blocks (a toy stack).

Signal propagation (Brock et al. 2021, arXiv 2101.08692; docs/reference.md §8)
    :func:`signal_propagation` -> one row per stem / block / head with
    ``avg_sq_mean`` (mean over channels of the squared channel mean),
    ``avg_var`` (mean over channels of the channel variance), the variance of
    the residual branches before ``alpha`` and the share of +1 among the
    outputs of every sign in the block. The head row holds the logits, whose
    ``avg_var`` is the variance across inputs (:func:`logit_variance`).
    :func:`readable_signal_table` prints one with readable column names;
    :func:`block_input_variance` gives the variance entering each block, and
    :func:`signal_summary` condenses several tables into the numbers compared
    (stream, logits, share of +1 signs, bits per sign, gradient window).

Accuracy
    :func:`top1_accuracy` on in-memory tensors, in eval mode (running BN statistics)
    or with train-mode BN (each batch's own statistics).

Structure
    :func:`count_parts` — blocks, signs, binary convs, normalization layers, buffers.

Weights
    :func:`sign_layers` (the convs whose weights are, or in step 2 will be,
    binary), :func:`latent_weight_values`, :func:`weight_sign_balance`,
    :func:`flip_ratio` / :func:`flip_ratio_per_layer` between two state dicts,
    :func:`gradient_norms`, :func:`agc_clipped_share` (read-only AGC share).

Training
    :class:`StatsRecorder` — the engine's callback that writes ``stats.csv``
    (defined with :func:`sign_layers` and :func:`binary_sign` in
    :mod:`bnn_helpers.sign_stats`, which the engine imports without pandas).

Inference
    :func:`count_sign_ties` — RSign outputs exactly on their threshold;
    :func:`binary_conv_io` — what every binary conv of a float model and of its
    packed copy (:func:`bnn_helpers.deploy.pack`) receives and computes;
    :func:`compare_packed` — the checks that the packed copy is the same network;
    :func:`describe_flips` — its sign flips, in words.

Signs
    :func:`sign_shares` — shares of +1, 0 and −1 after ``sign`` (``sign(0) = 0``).

Gradients
    :func:`unitwise_ratios` — AGC's ratio ‖G‖/max(‖W‖, ε) per unit, by kind of
    parameter; :func:`ste_window_shares` — how many sign inputs fall inside
    the straight-through estimator's gradient window.

Every function that hooks a model removes its hooks before returning, also
when the forward raises.
"""
from __future__ import annotations

import contextlib
import copy
import math
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from .agc import clipped_units, parameters_except_classifier
from timm.utils.agc import unitwise_norm
from .hooks import buffers_restored, eval_mode, removing_hooks
from .layers import RSign, is_binary_conv
from .metrics import top1_hits
# sign_layers, binary_sign, StatsRecorder, STATS_COLUMNS: re-exported (documented here)
from .sign_stats import STATS_COLUMNS, StatsRecorder, binary_sign, sign_layers, unwrap

__all__ = [
    "scaled_outputs",
    "channel_statistics",
    "signal_propagation",
    "signal_by_position",
    "SIGNAL_COLUMN_NAMES",
    "readable_signal_table",
    "block_rows",
    "block_input_variance",
    "sign_entropy_bits",
    "signal_summary",
    "logit_variance",
    "batch_coupling",
    "coupling_table",
    "train_mode_dependence",
    "top1_accuracy",
    "binarization_gap",
    "binarization_readings",
    "top2_margin",
    "compare_predictions",
    "sign_layers",
    "binary_sign",
    "latent_weight_values",
    "count_parts",
    "weight_sign_balance",
    "flip_ratio_per_layer",
    "flip_ratio",
    "gradient_norms",
    "agc_clipped_share",
    "StatsRecorder",
    "STATS_COLUMNS",
    "count_sign_ties",
    "unitwise_ratios",
    "unitwise_summary",
    "sign_shares",
    "init_signal_readings",
    "sign_window_readings",
    "block_and_logits",
    "step2_start",
    "evaluate_ways",
    "ste_window_share",
    "ste_window_shares",
    "sign_inputs",
    "binary_conv_io",
    "compare_packed",
    "threshold_shift_ulps",
    "describe_flips",
    "signal_at_init_and_trained",
    "logits_in_batches",
    "beta_schedule_table", "readable_beta_table",
    "PREDICTED_INPUT_VAR",
    "sign_input_shares", "packed_equality_table", "mode_dependence_table"]


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def _check_model(model: nn.Module) -> None:
    missing = [a for a in ("stem", "blocks", "head") if not hasattr(model, a)]
    if missing:
        raise TypeError(f"{type(model).__name__} lacks {', '.join(missing)}; the diagnostics need "
                        "a model with .stem, .blocks and .head (see bnn_helpers.create_model)")


class _Stack(nn.Module):
    """A plain list of blocks in the stem / blocks / head layout (identity stem and head)."""

    def __init__(self, blocks):
        super().__init__()
        self.stem, self.blocks, self.head = nn.Identity(), nn.Sequential(*blocks), nn.Identity()

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


def _per_channel(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel means and (biased) variances of ``(N, C, ...)`` over every dim but 1."""
    t = t.detach().float()
    dims = tuple(d for d in range(t.dim()) if d != 1)
    var, mean = torch.var_mean(t, dim=dims, correction=0)
    return mean, var


def channel_statistics(t: torch.Tensor) -> tuple[float, float]:
    """``(avg_sq_mean, avg_var)`` of an ``(N, C, H, W)`` or ``(N, C)`` tensor.

    Mean over channels of (channel mean over N, H, W)², and mean over channels
    of the channel variance over N, H, W (biased, as BatchNorm normalizes).
    """
    if t.dim() < 2:
        raise ValueError(f"channel_statistics needs a tensor (N, C, ...), got shape {tuple(t.shape)}")
    mean, var = _per_channel(t)
    return float(mean.pow(2).mean()), float(var.mean())


def _branch_norms(block: nn.Module) -> dict[str, list[nn.Module]]:
    """Modules whose OUTPUT is a residual branch before ``alpha``.

    ReActNet-A: ``norm1`` (half 1), ``norm2[i]`` (half 2); ReActNet-18: ``norm``.
    They are ``nn.Identity`` placeholders without BN, so the hook point exists
    in every mode.
    """
    points: dict[str, list[nn.Module]] = {}
    if isinstance(getattr(block, "norm1", None), nn.Module):
        points["branch_var"] = [block.norm1]
    elif isinstance(getattr(block, "norm", None), nn.Module):
        points["branch_var"] = [block.norm]
    norm2 = getattr(block, "norm2", None)
    if isinstance(norm2, nn.Module):
        points["branch_var2"] = list(norm2) if isinstance(norm2, nn.ModuleList) else [norm2]
    return points


# --------------------------------------------------------------------------
# signal propagation
# --------------------------------------------------------------------------
def signal_propagation(model: nn.Module | Sequence[nn.Module], x: torch.Tensor) -> pd.DataFrame:
    """Signal-propagation table of ``model`` on the batch ``x``.

    ``model`` is a network with ``stem``, ``blocks`` and ``head``, or a plain
    list (or ``nn.ModuleList``) of blocks applied one after the other: then the
    rows are ``input`` (the statistics of ``x`` itself), ``block1`` ...
    ``blockN``, and there is no head row.

    Rows: ``stem``, ``block1`` ... ``blockN``, ``head`` (the logits). Columns:
    ``position`` (0 = stem), ``name``, ``channels``, ``height``, ``width``,
    ``avg_sq_mean``, ``avg_var``, ``branch_var`` (first residual branch before
    ``alpha``), ``branch_var2`` (second half of a ReActNet-A block, both 1x1
    convs together when the block doubles its channels), ``sign_balance1``,
    ``sign_balance2``, ... (share of +1 among the outputs of the k-th RSign of
    the block; note ``sign(0) = 0`` counts as not +1), ``sign_window1``, ... (share of
    the k-th RSign's shifted inputs ``x + b`` with ``|x + b| < 1``, where the ``approx``
    and ``ste`` estimators pass a gradient; the rest are saturated signs).

    Runs under ``torch.no_grad`` in whatever train/eval mode the caller set.
    The measurement of docs/reference.md §8 uses **train mode**: BN then
    normalizes with the statistics of ``x``. BN running statistics touched by
    a train-mode forward are restored afterwards, and every hook is removed.
    """
    if isinstance(model, (list, tuple, nn.ModuleList)):
        if not len(model) or not all(isinstance(m, nn.Module) for m in model):
            raise TypeError("signal_propagation needs a non-empty list of modules (the blocks) "
                            "or a model with .stem, .blocks and .head")
        table = signal_propagation(_Stack(list(model)), x)
        table = table[table["name"] != "head"].reset_index(drop=True)
        table.loc[0, "name"] = "input"
        return table
    model = unwrap(model)
    _check_model(model)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"signal_propagation needs a tensor batch, got {type(x).__name__}")
    if x.shape[0] < 2:
        raise ValueError("signal_propagation needs a batch of at least 2 inputs "
                         "(variances over the batch are undefined for one input)")

    points = [("stem", model.stem)] + [(f"block{i + 1}", b) for i, b in enumerate(model.blocks)]
    rows = [{"position": i, "name": name} for i, (name, _) in enumerate(points)]
    rows.append({"position": len(points), "name": "head"})
    branch_vars: dict[tuple[int, str], list[torch.Tensor]] = {}

    def output_hook(row):
        def hook(module, inputs, output):
            mean, var = _per_channel(output)
            row.update(channels=output.shape[1],
                       height=output.shape[2] if output.dim() == 4 else 1,
                       width=output.shape[3] if output.dim() == 4 else 1,
                       avg_sq_mean=float(mean.pow(2).mean()), avg_var=float(var.mean()))
        return hook

    def branch_hook(key):
        def hook(module, inputs, output):
            branch_vars.setdefault(key, []).append(_per_channel(output)[1])
        return hook

    def sign_hook(row, column):
        def hook(module, inputs, output):
            row[column] = float((output > 0).float().mean())
        return hook

    def window_hook(row, column):
        def hook(module, inputs, output):  # on RSign.shift: output = the sign's input x + b
            row[column] = ste_window_share(output)
        return hook

    with removing_hooks() as handles, buffers_restored(model), torch.no_grad():
        for (i, (_, module)), row in zip(enumerate(points), rows):
            handles.append(module.register_forward_hook(output_hook(row)))
            if i == 0:
                continue
            for column, norms in _branch_norms(module).items():
                for norm in norms:
                    handles.append(norm.register_forward_hook(branch_hook((i, column))))
            signs = [m for m in module.modules() if isinstance(m, RSign)]
            for k, sign in enumerate(signs, start=1):
                handles.append(sign.register_forward_hook(sign_hook(row, f"sign_balance{k}")))
                handles.append(sign.shift.register_forward_hook(window_hook(row, f"sign_window{k}")))
        handles.append(model.head.register_forward_hook(output_hook(rows[-1])))
        model(x)

    for (i, column), variances in branch_vars.items():
        rows[i][column] = float(torch.cat(variances).mean())
    table = pd.DataFrame(rows)
    ordered = ["position", "name", "channels", "height", "width", "avg_sq_mean", "avg_var",
               "branch_var", "branch_var2"]
    signs = sorted((c for c in table.columns if c.startswith(("sign_balance", "sign_window"))),
                   key=lambda c: (c.rstrip("0123456789"), int(c[len(c.rstrip("0123456789")):])))
    for column in ordered:
        if column not in table:
            table[column] = np.nan
    return table[ordered + signs]


#: Printed names of :func:`signal_propagation`'s columns (ReActNet-A: half 1 is the 3×3 conv,
#: half 2 the 1×1 conv(s); sign 1 and sign 2 are the RSigns in front of them).
SIGNAL_COLUMN_NAMES = {"avg_sq_mean": "mean²", "avg_var": "variance",
                       "branch_var": "branch var (3×3 half)", "branch_var2": "branch var (1×1 half)",
                       "sign_balance1": "share +1 (sign 1)", "sign_balance2": "share +1 (sign 2)"}


def readable_signal_table(table: pd.DataFrame, rows: Iterable[str] | None = None) -> pd.DataFrame:
    """A :func:`signal_propagation` table for printing: indexed by ``name``, with the
    columns of :data:`SIGNAL_COLUMN_NAMES` under their printed names.

    ``rows``: the names to keep, in order (e.g. ``["stem", "block1", "head"]``);
    ``None`` keeps every row. The numbers are not changed.
    """
    columns = [c for c in SIGNAL_COLUMN_NAMES if c in table.columns]
    view = table.set_index("name")[columns].rename(columns=SIGNAL_COLUMN_NAMES)
    view.index.name = None
    return view if rows is None else view.loc[list(rows)]


def _block_names(index) -> list:
    """The ``block<l>`` names of a signal table's name index, in order."""
    return [n for n in index if str(n).startswith("block")]


def block_rows(table: pd.DataFrame, first: int = 1, last: int | None = None) -> pd.DataFrame:
    """The rows ``block{first}`` .. ``block{last}`` of a :func:`signal_propagation` table, indexed by name.

    ``last=None`` runs to the last block. The numbers are not changed.
    """
    by_name = table.set_index("name")
    end = f"block{last}" if last is not None else _block_names(by_name.index)[-1]
    return by_name.loc[f"block{first}":end]


def block_input_variance(table: pd.DataFrame) -> pd.Series:
    """The variance entering each block: ``avg_var`` of the row before it, indexed by block name.

    ``table`` is a :func:`signal_propagation` table; block ``l``'s input is the
    output of the stem (or of the input, for a list of blocks) when ``l = 1``,
    and of block ``l − 1`` after that. This is what NF-ResNets' ``β_l²`` predicts.
    """
    by_name = table.set_index("name")["avg_var"]
    return by_name.shift(1).loc[_block_names(by_name.index)].rename("input_var")


def sign_entropy_bits(p) -> np.ndarray | float:
    """Information carried by one sign that is +1 with probability ``p``, in bits.

    ``H(p) = −p·log2(p) − (1 − p)·log2(1 − p)``: 1 bit for a balanced sign
    (``p = 1/2``), 0 for a sign that is always the same. Works elementwise on arrays.
    """
    q = np.clip(np.asarray(p, dtype=float), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        bits = -(np.where(q > 0, q * np.log2(q), 0.0) + np.where(q < 1, (1 - q) * np.log2(1 - q), 0.0))
    bits = bits + 0.0                    # -0.0 (a certain sign) prints as 0
    return float(bits) if bits.ndim == 0 else bits


def signal_summary(tables: Mapping, names: Iterable[str] | None = None,
                   first_block: int = 3) -> pd.DataFrame:
    """The numbers the notebooks compare, one row per :func:`signal_propagation` table.

    ``tables``: ``{key: table}``; tuple keys give a MultiIndex whose levels are
    named by ``names`` (e.g. ``("input", "mode")``). Columns:

    * ``last block mean²``, ``last block variance`` and ``max block mean²`` (over the blocks);
    * ``last block share +1 (sign 2)`` and ``min share +1, sign 2, blocks {first_block}+``
      (the smallest share of +1 at the blocks' second signs from block ``first_block``
      on; 1 means every one of them outputs only +1), NaN without ``sign_balance2``;
    * ``+1 share min``, ``+1 share mean``, ``+1 share max``: over every sign of blocks
      ``first_block`` and later, and ``bits per sign``: :func:`sign_entropy_bits` at
      that mean share;
    * ``STE window share``: mean over every sign of the network of the share of its
      inputs inside the gradient window ``|x + b| < 1``;
    * ``logit mean²`` and ``logit variance across inputs`` (the head row),
      ``logit var / mean²`` (the variance across inputs relative to the logits'
      size, which compares networks whose logits differ in scale) and
      ``logit var / last block var`` (relative to the variance the head was fed).
    """
    rows = []
    for key, table in tables.items():
        by_name = table.set_index("name")
        blocks = _block_names(by_name.index)
        if not blocks or "head" not in by_name.index:
            raise ValueError("signal_summary needs tables with block rows and a head row "
                             f"(from signal_propagation); {key!r} has neither or no head")
        per_block, head = by_name.loc[blocks], by_name.loc["head"]
        later = per_block.iloc[first_block - 1:]
        second = (per_block["sign_balance2"] if "sign_balance2" in per_block
                  else pd.Series(np.nan, index=per_block.index))
        shares = later.filter(regex=r"^sign_balance\d+$").to_numpy(dtype=float)
        shares = shares[np.isfinite(shares)]
        windows = by_name.filter(regex=r"^sign_window\d+$").to_numpy(dtype=float)
        mean_share = float(shares.mean()) if shares.size else float("nan")
        rows.append({"last block mean²": float(per_block["avg_sq_mean"].iloc[-1]),
                     "last block variance": float(per_block["avg_var"].iloc[-1]),
                     "max block mean²": float(per_block["avg_sq_mean"].max()),
                     "last block share +1 (sign 2)": float(second.iloc[-1]),
                     f"min share +1, sign 2, blocks {first_block}+": float(second.iloc[first_block - 1:].min()),
                     "+1 share min": float(shares.min()) if shares.size else float("nan"),
                     "+1 share mean": mean_share,
                     "+1 share max": float(shares.max()) if shares.size else float("nan"),
                     "bits per sign": sign_entropy_bits(mean_share),
                     "STE window share": (float(np.nanmean(windows)) if np.isfinite(windows).any()
                                          else float("nan")),
                     "logit mean²": float(head["avg_sq_mean"]),
                     "logit variance across inputs": float(head["avg_var"]),
                     "logit var / mean²": float(head["avg_var"] / head["avg_sq_mean"]),
                     "logit var / last block var": float(head["avg_var"] / per_block["avg_var"].iloc[-1])})
    keys = list(tables)
    index = (pd.MultiIndex.from_tuples(keys, names=list(names) if names else None)
             if keys and all(isinstance(k, tuple) for k in keys) else pd.Index(keys, name=None))
    if names and index.nlevels == 1:
        index.name = list(names)[0]
    return pd.DataFrame(rows, index=index)


def batch_coupling(model: nn.Module, sample: torch.Tensor, companions_a: torch.Tensor,
                   companions_b: torch.Tensor | None = None) -> float:
    """How much one input's logits depend on the rest of its batch: the series' one measure.

    ``sample`` (one input, batch dim 1) is run once in front of ``companions_a``
    and once in front of ``companions_b`` (``None``: alone, a batch of one); the
    result is the relative change of its logits, ``‖l_A − l_B‖ / ‖l_A‖``. 0 for a
    network whose output for one input ignores the batch (eval mode, no BN, BN-free);
    float32 rounding gives ~1e-7 when the batch layout changes. Runs on a copy of
    ``model`` in its current train/eval mode, so train-mode BN running statistics
    are not touched.
    """
    model = copy.deepcopy(unwrap(model))
    with torch.no_grad():
        a = model(torch.cat([sample, companions_a]))[0]
        b = model(sample if companions_b is None else torch.cat([sample, companions_b]))[0]
    return float((a - b).norm() / a.norm())


def coupling_table(models: Mapping[str, nn.Module], sample: torch.Tensor, companions_a: torch.Tensor,
                   companions_b: torch.Tensor | None = None) -> pd.DataFrame:
    """:func:`batch_coupling` of several networks in train and in eval mode.

    Returns rows ``"train mode"``, ``"eval mode"`` and one column per entry of
    ``models``. Each network is switched to each mode in turn; its own train/eval
    flag is restored afterwards.
    """
    table = pd.DataFrame(index=["train mode", "eval mode"], columns=list(models), dtype=float)
    for label, model in models.items():
        was_training = model.training
        for mode in table.index:
            model.train(mode == "train mode")
            table.loc[mode, label] = batch_coupling(model, sample, companions_a, companions_b)
        model.train(was_training)
    return table


def train_mode_dependence(model: nn.Module, batch: torch.Tensor, companions: torch.Tensor) -> dict[str, float]:
    """What a network's train mode changes, on one batch: the two costs of batch statistics.

    ``"train vs eval mode"``: the largest relative change ``‖l_train − l_eval‖ / ‖l_eval‖``
    of one input's logits over ``batch`` when the whole batch runs in train mode
    instead of eval mode. ``"batch coupling (train mode)"``: :func:`batch_coupling`
    in train mode of ``batch[0]`` in front of ``batch[1:]`` versus in front of
    ``companions[:len(batch) - 1]``. Both are 0 (up to float32 rounding) for a
    network without BatchNorm. Runs on copies: ``model`` and its running statistics
    are not touched.
    """
    if len(batch) < 2 or len(companions) < len(batch) - 1:
        raise ValueError("give a batch of at least 2 inputs and at least len(batch) - 1 companions")
    trained = copy.deepcopy(unwrap(model)).train()
    with torch.no_grad():
        eval_logits = copy.deepcopy(trained).eval()(batch)
        train_logits = copy.deepcopy(trained)(batch)
    gap = (train_logits - eval_logits).norm(dim=1) / eval_logits.norm(dim=1)
    return {"train vs eval mode": float(gap.max()),
            "batch coupling (train mode)": batch_coupling(trained, batch[:1], batch[1:],
                                                          companions[:len(batch) - 1])}


def logit_variance(model: nn.Module, x: torch.Tensor) -> float:
    """Variance of the logits across the inputs of ``x`` (mean over classes).

    ~0 means the network answers the same for every input (docs/reference.md §8: the
    published ReActNet-A without BN at initialisation). Same mode/buffer rules
    as :func:`signal_propagation`.
    """
    with buffers_restored(model), torch.no_grad():
        logits = model(x)
    if logits.shape[0] < 2:
        raise ValueError("logit_variance needs a batch of at least 2 inputs")
    return channel_statistics(logits)[1]


def signal_by_position(tables_by_label: Mapping[str, pd.DataFrame], quantity: str,
                       blocks_only: bool = False) -> pd.DataFrame:
    """One quantity of several :func:`signal_propagation` tables side by side.

    Returns one column per label and one row per position, indexed by name
    (``stem``, ``block1`` ... ``head``); with ``blocks_only`` the blocks alone,
    indexed by block number 1 ... N. ``quantity`` is a column (``"avg_var"``,
    ``"branch_var"``: that column alone) or, where no column has that name, the prefix
    of numbered columns (``"sign_window"``: ``sign_window1``, ``sign_window2``, ...),
    averaged per row, ignoring NaN (a position without signs is NaN).
    """
    if not tables_by_label:
        raise ValueError("signal_by_position needs at least one table: {label: DataFrame}")
    columns = {}
    for label, table in tables_by_label.items():
        names = [quantity] if quantity in table.columns else [
            c for c in table.columns if c.startswith(quantity) and c[len(quantity):].isdigit()]
        if not names:
            raise ValueError(f"table {label!r} has no column {quantity!r} (nor {quantity}1, {quantity}2, ...)")
        values = table[names].astype(float).mean(axis=1, skipna=True)
        values.index = table["name"]
        if blocks_only:
            values = values[values.index.str.startswith("block")]
            values.index = values.index.str.replace("block", "").astype(int).rename("block")
        columns[label] = values
    return pd.DataFrame(columns)


def signal_at_init_and_trained(run_dirs: Mapping[str, object], x: torch.Tensor, num_classes: int,
                               step: int = 2, seed: int = 0, init_step: int | None = None) -> dict[str, pd.DataFrame]:
    """:func:`signal_propagation` of each run's network at initialisation and trained.

    ``run_dirs``: ``{name: run directory}`` of finished engine runs. For each,
    the step-``init_step`` network (default: ``step``) is built from the run's
    ``config.yaml`` with ``torch.manual_seed(seed)`` (initialisation) and the
    step-``step`` network is loaded from its best checkpoint (trained); both are
    measured in train mode on ``x``. ``init_step=1, step=2`` compares where a
    two-step run starts (step 1 at initialisation) with where it ends. Returns
    ``{"<name> · init": table, "<name> · trained": table, ...}``.
    """
    from .checkpoints import initial_model, load_trained

    tables = {}
    for name, run_dir in run_dirs.items():
        fresh = initial_model(run_dir, seed, num_classes, step if init_step is None else init_step)
        tables[f"{name} · init"] = signal_propagation(fresh.train(), x)
        tables[f"{name} · trained"] = signal_propagation(load_trained(run_dir, step=step).train(), x)
    return tables


# --------------------------------------------------------------------------
# accuracy
# --------------------------------------------------------------------------
@torch.no_grad()
def logits_in_batches(model: nn.Module, x: torch.Tensor, batch_size: int = 64,
                      train_mode: bool = False) -> torch.Tensor:
    """The logits of ``x``, computed in batches of ``batch_size``, concatenated.

    ``train_mode=True`` runs BatchNorm on each batch's own statistics. The
    model's modes and running statistics are restored afterwards.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    modes = [(m, m.training) for m in model.modules()]
    with buffers_restored(model):
        model.train(train_mode)
        try:
            return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
        finally:
            for module, training in modes:
                module.training = training


@torch.no_grad()
def top1_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 64,
                  train_mode: bool = False) -> float:
    """Top-1 accuracy (%) of ``model`` on ``(x, y)``, evaluated in batches of ``batch_size``.

    ``train_mode=True`` evaluates with BatchNorm using each batch's own statistics
    (how a BN network was trained) instead of its running statistics. The model's
    modes and running statistics are restored afterwards.
    """
    if len(x) != len(y) or len(y) == 0:
        raise ValueError(f"need as many labels as inputs and at least one: got {len(x)} inputs, "
                         f"{len(y)} labels")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    modes = [(m, m.training) for m in model.modules()]
    hits = 0
    with buffers_restored(model):
        model.train(train_mode)
        try:
            for start in range(0, len(y), batch_size):
                logits = model(x[start:start + batch_size])
                hits += int(top1_hits(logits, y[start:start + batch_size]))
        finally:
            for module, training in modes:
                module.training = training
    return 100.0 * hits / len(y)


def top2_margin(logits: torch.Tensor) -> torch.Tensor:
    """Per sample: the largest logit minus the second largest (0 for an exact tie)."""
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(f"top2_margin needs (N, classes >= 2) logits, got {tuple(logits.shape)}")
    top2 = logits.topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1]


def compare_predictions(reference: torch.Tensor, other: torch.Tensor, rounding_bound: float,
                        labels: torch.Tensor | None = None) -> dict:
    """Compare two networks' predictions where rounding cannot decide them.

    Argmax and accuracy are discontinuous: when two computations of the same
    function differ by up to ``rounding_bound`` per logit (another CPU, kernel,
    thread count or batch size), a sample whose reference top-2 margin is at
    most ``2 * rounding_bound`` may flip its prediction without anything being
    wrong. Those samples are *undecided* and left out of the argmax check;
    everywhere else the predictions must agree. Accuracies may then differ by
    at most the undecided share, which is returned as ``accuracy_tolerance``
    (in percentage points).
    """
    if reference.shape != other.shape:
        raise ValueError(f"logit shapes differ: {tuple(reference.shape)} vs {tuple(other.shape)}")
    if not rounding_bound >= 0:
        raise ValueError(f"rounding_bound must be >= 0, got {rounding_bound!r}")
    decided = top2_margin(reference) > 2 * rounding_bound
    same = reference.argmax(1) == other.argmax(1)
    result = {"samples": len(reference), "undecided": int((~decided).sum()),
              "compared": int(decided.sum()), "disagree": int((~same & decided).sum()),
              "max logit diff": float((reference - other).abs().max()) if len(reference) else 0.0,
              "accuracy_tolerance": 100.0 * float((~decided).sum()) / max(len(reference), 1)}
    if labels is not None:
        for key, logits in (("top-1 reference %", reference), ("top-1 other %", other)):
            result[key] = 100.0 * int(top1_hits(logits, labels)) / len(labels)
    return result


# --------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------
def _standardized_flags(model: nn.Module | None, names) -> dict[str, bool]:
    if model is not None:
        return {n: bool(getattr(m, "standardized", False)) for n, m in sign_layers(model).items()}
    if names is None:
        raise ValueError("pass model= (to find the binary convs) or names= "
                         "({weight name: standardized?} or a list of names)")
    if isinstance(names, Mapping):
        return {n: bool(s) for n, s in names.items()}
    return {n: False for n in names}


def latent_weight_values(model: nn.Module, layers: str = "sign") -> dict[str, np.ndarray]:
    """Latent weight values per layer, flattened, for histograms.

    ``layers="sign"``: the layers of :func:`sign_layers`; ``"conv"``: every conv.
    """
    if layers == "sign":
        chosen = sign_layers(model)
    elif layers == "conv":
        chosen = {f"{n}.weight": m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    else:
        raise ValueError(f"layers must be 'sign' or 'conv', got {layers!r}")
    return {n: m.weight.detach().float().cpu().flatten().numpy() for n, m in chosen.items()}


_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def binarization_gap(run_dirs: Mapping, x: torch.Tensor, y: torch.Tensor) -> pd.DataFrame:
    """Step 1's best weights before and right after binarization, in eval and in train mode.

    ``run_dirs``: ``{mode: run directory}`` of step-1 runs. For each run, step 1's best
    checkpoint is evaluated in the step-1 network (real weights) and in the step-2 network
    (binarized, as step 2 starts), each with the running statistics (eval mode) and with
    the statistics of each batch of 64 (train mode). Returns val top-1 (%) indexed by
    (mode, weights), columns ``eval mode (running stats)`` and ``train mode (batch stats)``.
    """
    from .checkpoints import load_trained

    rows = []
    for mode, run_dir in run_dirs.items():
        for weights, binary in (("step 1 (real weights)", False), ("step 2 start (binarized)", True)):
            model = load_trained(run_dir, step=1, binary_weights=binary)
            rows.append({"mode": mode, "weights": weights,
                         "eval mode (running stats)": top1_accuracy(model, x, y),
                         "train mode (batch stats)": top1_accuracy(model, x, y, train_mode=True)})
    return pd.DataFrame(rows).set_index(["mode", "weights"])


def binarization_readings(gap: pd.DataFrame, mode: str = "bn", control: str = "none") -> pd.Series:
    """What binarizing the weights costs, read off a :func:`binarization_gap` table (points, %).

    ``step 1, lower of the two`` (eval mode), ``{m} drop`` (eval-mode top-1 lost by
    binarizing, for ``mode`` and ``control``), ``{m} binarized`` (eval mode after),
    ``{mode} binarized, batch stats`` (train mode after), ``given back by batch stats``
    (that minus ``{mode} binarized``), ``% of the drop given back`` and
    ``still below step 1`` (``mode``'s step-1 top-1 minus its binarized train-mode top-1).
    """
    ev, tr = gap["eval mode (running stats)"], gap["train mode (batch stats)"]
    before = ev.xs("step 1 (real weights)", level="weights")
    after = ev.xs("step 2 start (binarized)", level="weights")
    fresh = tr[mode, "step 2 start (binarized)"]
    drop = before - after
    return pd.Series({"step 1, lower of the two": min(before[mode], before[control]),
                      f"{mode} drop": drop[mode], f"{control} drop": drop[control],
                      f"{mode} binarized": after[mode], f"{control} binarized": after[control],
                      f"{mode} binarized, batch stats": fresh,
                      "given back by batch stats": fresh - after[mode],
                      "% of the drop given back": 100 * (fresh - after[mode]) / drop[mode],
                      "still below step 1": before[mode] - fresh})


def count_parts(model: nn.Module, with_buffers: bool = True) -> pd.Series:
    """What a network is made of, as integer counts (one Series).

    ``blocks`` (``len(model.blocks)``, 0 without), ``RSign``, ``RPReLU``,
    ``binary 3×3 convs`` and ``binary 1×1 convs`` (convs with binary weights:
    none in a step-1 network), ``normalization layers`` (BatchNorm, GroupNorm,
    LayerNorm, LocalResponseNorm), ``buffer values`` (all buffer elements), and
    of those the ``running mean + var values`` and the ``num_batches_tracked
    counters`` (one integer per BatchNorm layer). ``with_buffers=False`` leaves out
    the three buffer counts (the network's layers only).
    """
    from .layers import RPReLU

    model = unwrap(model)
    modules = list(model.modules())
    convs = [m for m in modules if is_binary_conv(m)]
    buffers = dict(model.named_buffers())
    counts = pd.Series({
        "blocks": len(model.blocks) if hasattr(model, "blocks") else 0,
        "RSign": sum(isinstance(m, RSign) for m in modules),
        "RPReLU": sum(isinstance(m, RPReLU) for m in modules),
        "binary 3×3 convs": sum(m.kernel_size == (3, 3) for m in convs),
        "binary 1×1 convs": sum(m.kernel_size == (1, 1) for m in convs),
        "normalization layers": sum(isinstance(m, _NORM_TYPES) for m in modules),
        "buffer values": sum(b.numel() for b in buffers.values()),
        "running mean + var values": sum(b.numel() for n, b in buffers.items()
                                         if n.endswith(("running_mean", "running_var"))),
        "num_batches_tracked counters": sum(b.numel() for n, b in buffers.items()
                                            if n.endswith("num_batches_tracked")),
    }, dtype=int)
    return counts if with_buffers else counts.drop(["buffer values", "running mean + var values",
                                               "num_batches_tracked counters"])


def weight_sign_balance(model: nn.Module) -> pd.DataFrame:
    """Per sign layer: ``name``, ``numel``, ``positive_share`` (share of +1 binary weights)."""
    rows = []
    for name, conv in sign_layers(model).items():
        signs = binary_sign(conv.weight, getattr(conv, "standardized", False))
        rows.append({"name": name, "numel": signs.numel(),
                     "positive_share": float((signs > 0).float().mean())})
    return pd.DataFrame(rows, columns=["name", "numel", "positive_share"])


def flip_ratio_per_layer(before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor],
                         model: nn.Module | None = None, names=None) -> pd.DataFrame:
    """Per binary layer: ``name``, ``numel``, ``flips``, ``flip_ratio`` between two state dicts.

    The layers and whether their sign is taken after standardization come
    from ``model`` (:func:`sign_layers`) or from ``names``.
    """
    rows = []
    for name, standardized in _standardized_flags(model, names).items():
        if name not in before or name not in after:
            raise KeyError(f"{name!r} missing from a state dict; pass the model the state dicts came from")
        if before[name].shape != after[name].shape:
            raise ValueError(f"{name!r}: shapes differ ({tuple(before[name].shape)} vs "
                             f"{tuple(after[name].shape)})")
        old = binary_sign(before[name], standardized)
        new = binary_sign(after[name].to(old.device), standardized)
        flips = int((old != new).sum())
        rows.append({"name": name, "numel": old.numel(), "flips": flips,
                     "flip_ratio": flips / old.numel()})
    return pd.DataFrame(rows, columns=["name", "numel", "flips", "flip_ratio"])


def flip_ratio(before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor],
               model: nn.Module | None = None, names=None) -> float:
    """Share of binary weights whose sign differs between ``before`` and ``after``."""
    table = flip_ratio_per_layer(before, after, model, names)
    total = table["numel"].sum()
    return float(table["flips"].sum() / total) if total else math.nan


def gradient_norms(model: nn.Module) -> pd.DataFrame:
    """Per parameter with a gradient: ``name``, ``numel``, ``grad_norm``, ``param_norm`` (L2)."""
    rows = [{"name": n, "numel": p.numel(), "grad_norm": float(p.grad.detach().float().norm()),
             "param_norm": float(p.detach().float().norm())}
            for n, p in model.named_parameters() if p.grad is not None]
    return pd.DataFrame(rows, columns=["name", "numel", "grad_norm", "param_norm"])


def agc_clipped_share(model: nn.Module, clip_factor: float = 0.02, eps: float = 1e-3,
                      exclude: Iterable[str] | None = None) -> float:
    """Share of units that AGC *would* clip now, without touching any gradient.

    Same rule as ``timm.utils.adaptive_clip_grad``: a unit (a row of
    ``unitwise_norm``) is clipped unless ``|g| < clip_factor * max(|w|, eps)``.
    ``exclude``: parameter names or name prefixes to skip; default the
    classifier (the paper clips every parameter except the classifier's).
    """
    if exclude is None:
        params = parameters_except_classifier(model)
    else:
        skip = set(exclude)
        params = [p for name, p in model.named_parameters()
                  if not any(name == s or name.startswith(s + ".") for s in skip)]
    flags = [clipped_units(p, clip_factor, eps) for p in params if p.grad is not None]
    clipped, total = sum(int(f.sum()) for f in flags), sum(f.numel() for f in flags)
    return clipped / total if total else math.nan


@torch.no_grad()
def count_sign_ties(model: nn.Module, images: torch.Tensor) -> dict:
    """How many RSign outputs are exactly 0 (input on the threshold) on ``images``."""
    counts = {"sign_outputs": 0, "zeros": 0}

    def hook(module, inputs, output):
        counts["sign_outputs"] += output.numel()
        counts["zeros"] += int((output == 0).sum())

    with removing_hooks() as handles, eval_mode(model):
        handles += [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, RSign)]
        model(images)
    counts["fraction"] = counts["zeros"] / max(1, counts["sign_outputs"])
    return counts


def _parameter_kind(name: str, p: torch.Tensor, classifier_ids: set, prelu_ids: set) -> str:
    if id(p) in classifier_ids:
        return "classifier"
    if name.startswith("stem"):
        return "stem"
    if name.endswith(".gain"):
        return "WS gains"
    if id(p) in prelu_ids:
        return "PReLU slopes"
    if p.ndim >= 2 and name.endswith("weight"):
        return "block conv weights" if name.startswith("blocks") else "other weights"
    if name.endswith("bias"):
        return "biases and shifts"
    return "other parameters"


def unitwise_ratios(model: nn.Module, eps: float = 1e-3) -> pd.DataFrame:
    """AGC's ratio ``|G_unit| / max(|W_unit|, eps)`` for every unit of every parameter with a gradient.

    One row per unit: ``name`` (parameter), ``kind`` and ``ratio``. Kinds:
    ``classifier``, ``stem``, ``block conv weights`` (``other weights`` outside
    the blocks), ``WS gains``, ``PReLU slopes`` (the weights of ``nn.PReLU``),
    ``biases and shifts`` (every ``*bias``: in the BN-free ReActNet-A the RSign
    and RPReLU shifts, which start at 0) and ``other parameters``.
    Units are timm's (``unitwise_norm``: one per slice along dim 0 of a tensor
    with 2 or more dims; the whole tensor for 0-D/1-D parameters). So a WS gain
    of shape ``(C, 1, 1, 1)`` gives C one-element units, while a shift of shape
    ``(1, C, 1, 1)`` or a PReLU slope of shape ``(C,)`` is one unit.
    AGC with clip factor λ rescales exactly the units whose ratio exceeds λ.
    Reads the gradients, changes nothing.
    """
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    classifier_ids = {id(p) for p in classifier.parameters()} if isinstance(classifier, nn.Module) else set()
    prelu_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.PReLU)}
    rows = []
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        ratio = unitwise_norm(p.grad.detach().float()) / unitwise_norm(p.detach().float()).clamp(min=eps)
        kind = _parameter_kind(name, p, classifier_ids, prelu_ids)
        rows += [{"name": name, "kind": kind, "ratio": float(r)} for r in ratio.flatten()]
    return pd.DataFrame(rows, columns=["name", "kind", "ratio"])


def unitwise_summary(ratios: pd.DataFrame, clip_factor: float) -> pd.DataFrame:
    """One row per ``kind`` of :func:`unitwise_ratios` (in order of appearance): ``units``,
    ``median ratio``, ``max ratio`` and ``% above lambda`` (the share of units AGC with
    clip factor ``clip_factor`` would rescale, in percent)."""
    missing = {"kind", "ratio"} - set(ratios.columns)
    if missing:
        raise ValueError(f"ratios lacks columns {sorted(missing)}; pass unitwise_ratios(...)")
    groups = ratios.groupby("kind", sort=False)["ratio"]
    return pd.DataFrame({"units": groups.size(), "median ratio": groups.median(), "max ratio": groups.max(),
                         "% above lambda": groups.apply(lambda r: 100.0 * float((r > clip_factor).mean()))})


def sign_shares(values) -> dict[str, float]:
    """Shares of +1, 0 and −1 in ``sign(values)`` (a NumPy array or a tensor); they add up to 1.

    ``sign(0) = 0`` in NumPy and PyTorch, so inputs exactly at the threshold
    count as neither +1 nor −1.
    """
    signs = np.sign(values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values))
    if signs.size == 0:
        raise ValueError("sign_shares needs at least one value")
    return {"share of +1": float((signs > 0).mean()), "share of 0": float((signs == 0).mean()),
            "share of −1": float((signs < 0).mean())}


def ste_window_share(sign_input, half_width: float = 1.0) -> float:
    """Share of a sign's shifted inputs ``x + b`` with ``|x + b| < half_width``: where the approx
    and ste estimators pass a gradient (outside it the sign is saturated). A tensor or an
    array (e.g. the values of :func:`sign_inputs`)."""
    return float((torch.as_tensor(sign_input).abs() < half_width).float().mean())


def sign_input_shares(seen: Mapping[str, Mapping[str, object]], low: float = -1.0,
                      high: float = 1.0) -> pd.DataFrame:
    """Share of sign inputs strictly inside ``(low, high)``, one row per label, one column per block.

    ``seen``: ``{label: {block name: values}}``, the values e.g. from :func:`sign_inputs`.
    The default ``(-1, 1)`` is the gradient window of :func:`ste_window_share`; ``(-1, 0)``
    counts the inputs just below the threshold::

        window = sign_input_shares(seen)            # |u| < 1
        below = sign_input_shares(seen, -1.0, 0.0)  # -1 < u < 0
    """
    def share(values):
        u = np.asarray(torch.as_tensor(values).double())
        return float(np.mean((u > low) & (u < high)))
    return pd.DataFrame({label: {block: share(u) for block, u in by_block.items()}
                         for label, by_block in seen.items()}).T


@contextlib.contextmanager
def scaled_outputs(model: nn.Module, module_type: type, gain: float):
    """Inside the ``with``, every ``module_type`` module of ``model`` returns its output times
    ``gain`` (forward hooks, removed on exit, also when the forward raises)::

        with scaled_outputs(model, nn.PReLU, 1.5):
            table = signal_propagation(model, x)     # as if each PReLU carried a gain of 1.5
    """
    with removing_hooks() as handles:
        handles += [m.register_forward_hook(lambda module, inputs, output: output * gain)
                    for m in model.modules() if isinstance(m, module_type)]
        yield model


@contextlib.contextmanager
def ste_window_shares(model: nn.Module, half_width: float = 1.0):
    """Record, for every RSign forward inside the ``with``, the share of its inputs in the STE's window.

    The input of the sign is RSign's shifted input ``x + b``; ApproxSign (and the
    clipped identity) pass a gradient only where ``|x + b| < half_width``. Yields
    a list that receives one share per RSign call, in call order; the hooks are
    removed on exit, also when the forward raises::

        with ste_window_shares(model) as shares:
            model(x)
        print(sum(shares) / len(shares))
    """
    shares: list[float] = []

    def hook(module, inputs, output):
        shares.append(ste_window_share(module.shift(inputs[0]), half_width))

    with removing_hooks() as handles:
        handles += [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, RSign)]
        yield shares
@torch.no_grad()
def sign_inputs(model: nn.Module, x: torch.Tensor, max_values: int = 20000,
                seed: int = 0) -> dict[str, np.ndarray]:
    """What every sign of each block sees: ``{"block3": values}``, the inputs
    ``u = x + b`` of all the block's RSigns on the batch ``x`` (pooled), as float64.

    Blocks with more values keep a random ``max_values`` of them (fixed ``seed``),
    enough for a histogram. Runs under ``no_grad`` in the caller's train/eval
    mode; BN running statistics touched in train mode are restored, hooks removed.
    """
    model = unwrap(model)
    _check_model(model)
    values: dict[str, list[torch.Tensor]] = {}

    def hook(name):
        def record(module, inputs, output):  # on RSign.shift: output = the sign's input
            values.setdefault(name, []).append(output.detach().flatten().double())
        return record

    with removing_hooks() as handles, buffers_restored(model):
        for i, block in enumerate(model.blocks, start=1):
            handles += [m.shift.register_forward_hook(hook(f"block{i}"))
                        for m in block.modules() if isinstance(m, RSign)]
        model(x)
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, parts in values.items():
        flat = torch.cat(parts)
        if flat.numel() > max_values:
            flat = flat[torch.randperm(flat.numel(), generator=generator)[:max_values]]
        out[name] = flat.numpy()
    return out


@torch.no_grad()
def binary_conv_io(model: nn.Module, packed: nn.Module, images: torch.Tensor):
    """Run a float model and its packed copy on ``images``; record every binary conv.

    Returns ``(logits_float, logits_packed, seen)`` with ``seen["float"][name]``
    = (the conv's ±1/0 input, its float output) and ``seen["packed"][name]`` =
    (the packed input unpacked to ±1/0, the integer XOR-popcount result), for
    every binary conv ``name`` (the same names in both networks).
    """
    from .packed_layers import PackedBinaryConv2d   # deployment code, loaded only when needed

    seen = {"float": {}, "packed": {}}

    def keep(kind, name):
        def hook(module, inputs, output):
            if kind == "packed":   # unpack the bits; recompute the integer part of the conv
                seen[kind][name] = (inputs[0].to_ternary(), module.integer_forward(inputs[0]))
            else:
                seen[kind][name] = (inputs[0], output)
        return hook

    with removing_hooks() as handles, eval_mode(model):
        handles += [m.register_forward_hook(keep("float", n)) for n, m in model.named_modules()
                    if is_binary_conv(m)]
        handles += [m.register_forward_hook(keep("packed", n)) for n, m in packed.named_modules()
                    if isinstance(m, PackedBinaryConv2d)]
        logits_float, logits_packed = model(images), packed(images)
    return logits_float, logits_packed, seen


def threshold_shift_ulps(model: nn.Module, packed: nn.Module) -> torch.Tensor:
    """How far each sign threshold of ``packed`` lies from ``-b·β_l``, in ulps.

    ``model``: a ``bf`` ReActNet-A (float simulation) whose RSigns compute
    ``sign(x·m + b)`` with the stored multiplier ``m = 1/β_l`` (``act1``/``act2``
    and ``beta1``/``beta2`` of each block); ``packed``: ``deploy.pack(model)``,
    whose ``sign1``/``sign2`` hold the exact boundaries (``lower``, ``upper``)
    found by ``deploy.exact_sign_thresholds``. Returns one value per channel of
    every RSign (blocks in order, sign 1 then sign 2): the larger of
    ``|lower − t|`` and ``|upper − t|`` divided by the float spacing (ulp) at
    ``t = −b·β_l``. 0 means the packed threshold is ``−b·β_l`` exactly.
    """
    shifts = []
    with torch.no_grad():
        for float_block, packed_block in zip(model.blocks, packed.blocks):
            for k in (1, 2):
                sign = getattr(packed_block, f"sign{k}")
                t = -getattr(float_block, f"act{k}").shift.bias.flatten() / getattr(float_block, f"beta{k}")
                ulp = (torch.nextafter(t, torch.full_like(t, math.inf)) - t).abs()   # float spacing at t
                shifts.append(((torch.stack([sign.lower, sign.upper]) - t).abs() / ulp).amax(0))
    return torch.cat(shifts)


@torch.no_grad()
def compare_packed(model: nn.Module, packed: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                   logit_rtol: float = 1e-5) -> tuple[dict, dict]:
    """Check that ``packed`` (``deploy.pack(model)``) computes what ``model`` computes.

    Per binary conv and image: (1) the packed XOR-popcount result equals the
    integer convolution ``F.conv2d(±1/0 input, ±1 weights)`` exactly; (2) the
    float conv output divided by its per-channel magnitude ``ā`` (every entry of
    the effective weight ``ā·sign(ŵ)`` has magnitude ``ā``) rounds to the
    integer conv of its own input; (3) signs that differ between the two
    networks (*flips*) are counted per image. Predictions are compared only
    where rounding cannot decide them: top-2 margin above twice
    ``logit_rtol`` x the logit scale, and no flipped sign.

    Returns ``(row, per_image)``: ``row`` holds the counts of the notebook's
    table; ``per_image`` the tensors ``flips``, ``rel_err`` (max logit
    difference / logit scale) and both networks' logits.
    """
    logits_f, logits_p, seen = binary_conv_io(model, packed, images)
    flips = torch.zeros(len(images), dtype=torch.long)
    n_signs = int_wrong = 0
    off_integer = 0.0
    for name, conv in model.named_modules():
        if not is_binary_conv(conv):
            continue
        (x_f, y_f), (x_p, dot) = seen["float"][name], seen["packed"][name]
        w_eff = conv.effective_weight()
        signs = torch.sign(w_eff)
        if not torch.equal(packed.get_submodule(name).signs(), signs):
            raise AssertionError(f"{name}: the packed bits are not the signs of the weights")
        exact = F.conv2d(x_p, signs, None, conv.stride, conv.padding).round().int()       # (1)
        int_wrong += int((dot != exact).sum())
        ratio = y_f / w_eff.abs().flatten(1).amax(1).view(1, -1, 1, 1)                   # (2)
        if not torch.equal(ratio.round(), F.conv2d(x_f, signs, None, conv.stride, conv.padding)):
            raise AssertionError(f"{name}: float conv / c is not the integer conv of its input")
        off_integer = max(off_integer, float((ratio - ratio.round()).abs().max()))
        flips += (x_f != x_p).flatten(1).sum(1)                                           # (3)
        n_signs += x_f.numel()
    scale = float(logits_f.abs().max())
    rel_err = (logits_f - logits_p).abs().amax(1) / scale
    clean = flips == 0
    decided = (top2_margin(logits_f) > 2 * logit_rtol * scale) & clean   # a flip is a rounding event too
    preds = compare_predictions(logits_f[decided], logits_p[decided], logit_rtol * scale)
    n = len(images)
    row = {"digits": n, "undecided by rounding": int((~decided).sum()),
           "argmax differs (decided)": preds["disagree"],
           "top-1 tolerance %": 100 * int((~decided).sum()) / n,
           "top-1 float %": 100 * int(top1_hits(logits_f, labels)) / n,
           "top-1 packed %": 100 * int(top1_hits(logits_p, labels)) / n,
           "integer results wrong": int_wrong, "float conv / ā off-integer": off_integer,
           "sign outputs": n_signs, "sign flips": int(flips.sum()),
           "digits with a flip": int((~clean).sum()),
           "max rel. logit diff (no flip)": float(rel_err[clean].max()) if clean.any() else math.nan,
           "max rel. logit diff (all)": float(rel_err.max())}
    return row, {"flips": flips, "rel_err": rel_err, "logits_f": logits_f, "logits_p": logits_p}


def describe_flips(per_image: Mapping[str, torch.Tensor], logit_rtol: float = 1e-5, show: int = 5) -> str:
    """One paragraph on the sign flips of :func:`compare_packed` (its ``per_image`` result).

    Says how many signs flipped and in how many images (those are left out of the
    comparisons), how close the logits of the other images came (as a fraction of
    the logit scale, against ``logit_rtol``), and for up to ``show`` images with a
    flip how far their logits moved and whether their prediction stayed the same.
    """
    flips, rel_err = per_image["flips"], per_image["rel_err"]
    clean = flips == 0
    if clean.all():
        lines = [f"no sign flipped: all {len(flips)} images entered every comparison"]
    else:
        lines = [f"{int(flips.sum())} sign(s) flipped, in {int((~clean).sum())} image(s): "
                 "left out of the comparisons"]
    if clean.any():
        lines[0] += (f"; the logits of the images without a flip agree to {float(rel_err[clean].max()):.1e} "
                     f"of the logit scale (tolerance {logit_rtol:g})")
    preds_f, preds_p = per_image["logits_f"].argmax(1), per_image["logits_p"].argmax(1)
    for i in torch.nonzero(~clean).flatten().tolist()[:show]:
        same = "the same prediction" if preds_f[i] == preds_p[i] else "different predictions"
        lines.append(f"    image {i}: {int(flips[i])} sign(s) flipped -> logits differ by {float(rel_err[i]):.1e} "
                     f"of the scale; {same} ({int(preds_f[i])} float, {int(preds_p[i])} packed)")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# NF bookkeeping of ReActNet-A
# --------------------------------------------------------------------------
PREDICTED_INPUT_VAR = "predicted Var at input = 1/beta1² (published)"


def beta_schedule_table(strides: Sequence[int], alpha: float) -> pd.DataFrame:
    """Both β schedules of ReActNet-A side by side, one row per block.

    Index ``block`` (1-based); columns ``stride``, ``beta1 published``,
    ``beta1 nf``, ``beta2 published``, ``beta2 nf`` (the stored multipliers
    ``1/β`` of :func:`bnn_helpers.models.reactnet_a.beta_schedule_a`) and
    :data:`PREDICTED_INPUT_VAR`, ``1/beta1²`` of the published schedule: the
    variance the NF recurrence predicts at each block's input.
    """
    from .models.reactnet_a import beta_schedule_a

    schedules = {name: beta_schedule_a(strides, alpha, name) for name in ("published", "nf")}
    table = pd.DataFrame({"stride": list(strides),
                          **{f"beta{k + 1} {name}": [b[k] for b in betas]
                             for k in (0, 1) for name, betas in schedules.items()}},
                         index=pd.Index(range(1, len(strides) + 1), name="block"))
    table[PREDICTED_INPUT_VAR] = 1 / table["beta1 published"] ** 2
    return table


def readable_beta_table(table: pd.DataFrame) -> pd.DataFrame:
    """A :func:`beta_schedule_table` for reading, in the prose's β (a standard deviation, ≥ 1).

    The code's multipliers are renamed for what they are, ``1/β₁ published`` ... ``1/β₂ nf``
    (``beta1`` = 1/β₁, ``beta2`` = 1/β₂), and two columns of the published schedule follow:
    ``β₁ published`` (the predicted standard deviation at the block's input) and
    ``β₁² published`` (the predicted variance, :data:`PREDICTED_INPUT_VAR`).
    """
    shown = table.drop(columns=PREDICTED_INPUT_VAR).rename(
        columns=lambda c: c.replace("beta1", "1/β₁").replace("beta2", "1/β₂"))
    shown["β₁ published"] = 1 / table["beta1 published"]
    shown["β₁² published"] = table[PREDICTED_INPUT_VAR]
    return shown


def init_signal_readings(tables: Mapping[str, Mapping[str, pd.DataFrame]], photos: str = "photos",
                         noise: str = "N(0,1) noise", deep_from: int = 5, positive_from: int = 4) -> pd.Series:
    """Notebook 05's readings of the fresh networks' signal tables, as named numbers.

    ``tables``: ``{input: {mode: signal_propagation table}}`` with modes ``bn``, ``none``,
    ``bf`` and the inputs ``photos`` and ``noise``. "both inputs" readings take the
    extreme over the two inputs; "deep" blocks are ``deep_from``..last, and the bf
    stream's mean² / variance is read on photos from block ``positive_from`` on.
    """
    kinds = (photos, noise)
    summary = signal_summary({(k, m): tables[k][m] for k in kinds for m in ("bn", "none", "bf")},
                             names=("input", "mode"))
    def blocks(kind, mode, first=1):
        return block_rows(tables[kind][mode], first)
    bn_branch = pd.concat([blocks(k, "bn")["branch_var"] for k in kinds]).dropna()
    bf_shrink = [blocks(k, "bf")["avg_var"].iloc[-1] / tables[k]["bf"].set_index("name").loc["stem", "avg_var"]
                 for k in kinds]
    deep_noise = blocks(noise, "none", deep_from)[["sign_balance1", "sign_balance2"]]
    bf_stream = blocks(photos, "bf", positive_from)
    return pd.Series({
        "bn, none, both inputs: smallest last-block mean²": float(summary.loc[(list(kinds), ["bn", "none"]), "last block mean²"].min()),
        "bf, both inputs: largest block mean²": float(summary.xs("bf", level="mode")["max block mean²"].max()),
        "bn, both inputs: smallest branch variance (3×3 half)": float(bn_branch.min()),
        "bn, both inputs: largest branch variance (3×3 half)": float(bn_branch.max()),
        "bf, both inputs: largest last-block / stem variance": float(max(bf_shrink)),
        f"none on noise, blocks {deep_from}+: smallest share +1 (either sign)": float(deep_noise.min().min()),
        "none on noise: logit variance across inputs": float(summary.loc[(noise, "none"), "logit variance across inputs"]),
        "none on photos: last block share +1 (sign 2)": float(summary.loc[(photos, "none"), "last block share +1 (sign 2)"]),
        "none on photos: logit variance across inputs": float(summary.loc[(photos, "none"), "logit variance across inputs"]),
        f"bf on photos, blocks {positive_from}+: smallest mean² / variance": float(
            (bf_stream["avg_sq_mean"] / bf_stream["avg_var"]).min())})


def sign_window_readings(seen: Mapping[str, Mapping[str, object]], photos: str = "photos",
                         noise: str = "N(0,1) noise", mid_from: int = 3, deep_from: int = 5) -> pd.Series:
    """Notebook 05's readings of what the signs see, as named numbers.

    ``seen``: ``{"<mode> · <input>": sign_inputs(...)}`` for modes ``bn``, ``none``, ``bf``
    and the inputs ``photos`` and ``noise``. The window is ``|u| < 1``
    (:func:`sign_input_shares`), the spike ``-1 < u < 0``; "both inputs" readings take the
    extreme over the two inputs, over blocks ``mid_from``.. ("blocks 3+") or ``deep_from``..
    """
    window, spike = sign_input_shares(seen), sign_input_shares(seen, -1.0, 0.0)
    positive = sign_input_shares(seen, 0.0, np.inf)
    mid = [b for b in window.columns if int(b[5:]) >= mid_from]
    deep = [b for b in window.columns if int(b[5:]) >= deep_from]
    bn = [f"bn · {photos}", f"bn · {noise}"]
    return pd.Series({
        f"none on noise, blocks {deep_from}+: largest window share": float(window.loc[f"none · {noise}", deep].max()),
        f"none on noise, blocks {deep_from}+: smallest share > 0": float(positive.loc[f"none · {noise}", deep].min()),
        f"none on photos, blocks {deep_from}+: largest window share": float(window.loc[f"none · {photos}", deep].max()),
        f"bf, both inputs, blocks {mid_from}+: smallest window share": float(
            window.loc[[f"bf · {photos}", f"bf · {noise}"], mid].min().min()),
        f"bn, both inputs, blocks {mid_from}+: largest window share": float(window.loc[bn, mid].max().max()),
        f"bn, both inputs, blocks {mid_from}+: smallest spike / window share": float(
            (spike.loc[bn, mid] / window.loc[bn, mid]).min().min()),
        f"bn on photos, blocks {mid_from}+: largest window − spike share": float(
            (window.loc[bn[0], mid] - spike.loc[bn[0], mid]).max())})


# --------------------------------------------------------------------------
# notebook 06: small named tables
# --------------------------------------------------------------------------
def block_and_logits(tables_by_label: Mapping[str, pd.DataFrame], block: str = "block13",
                     quantities=("avg_sq_mean", "avg_var", "branch_var")) -> pd.DataFrame:
    """One row per :func:`signal_propagation` table: ``quantities`` at ``block`` and the logit variance.

    The logit variance is ``avg_var`` of the ``head`` row (the variance of each logit across the
    inputs, averaged over the logits). Rows keep the labels of ``tables_by_label``.
    """
    table = pd.DataFrame({q: signal_by_position(tables_by_label, q).loc[block] for q in quantities})
    table["logit variance"] = signal_by_position(tables_by_label, "avg_var").loc["head"]
    return table


def step2_start(runs: Mapping, summary: pd.DataFrame, x: torch.Tensor, y: torch.Tensor,
                fresh_stats_mode: str = "bn") -> pd.DataFrame:
    """Val top-1 (%) of each mode around the moment step 2 binarizes the weights, mean over seeds.

    ``runs``: ``{(mode, seed): run directory}`` of ``step: both`` runs; ``summary``: their
    ``read_runs(runs, keys=("mode", "seed"))``. Columns: ``step 1 best`` (best step-1 epoch),
    ``binarized, eval mode`` (step 1's best checkpoint loaded into the step-2 network, before any
    step-2 training, BN with running statistics), ``binarized, train-mode BN`` (the same with each
    batch of 64's own statistics; ``fresh_stats_mode`` only, NaN for the others) and
    ``after 1 epoch of step 2``. One row per mode, in order of first appearance in ``runs``.
    """
    from .checkpoints import load_trained

    by_epoch = summary.set_index(["mode", "seed", "step", "epoch"]).sort_index()["val_top1"]
    rows = []
    for (mode, seed), run_dir in runs.items():
        fresh = load_trained(run_dir, step=1, binary_weights=True)
        rows.append({"mode": mode, "step 1 best": by_epoch[mode, seed, 1].max(),
                     "binarized, eval mode": top1_accuracy(fresh, x, y),
                     "binarized, train-mode BN": (top1_accuracy(fresh, x, y, train_mode=True)
                                                  if mode == fresh_stats_mode else np.nan),
                     "after 1 epoch of step 2": by_epoch[mode, seed, 2, 1]})
    return pd.DataFrame(rows).groupby("mode", sort=False).mean()


def evaluate_ways(nets: Mapping[str, nn.Module], x: torch.Tensor, y: torch.Tensor,
                  ways: Mapping[str, tuple]) -> pd.DataFrame:
    """Top-1 (%) of each network evaluated several ways: one row per network, one column per way.

    ``ways``: ``{name: (batch size, train_mode)}``; in train mode BN normalizes each batch with
    its own statistics (:func:`top1_accuracy`). Rows keep the keys of ``nets``.
    """
    return pd.DataFrame({name: {label: top1_accuracy(net, x, y, size, train_mode=train)
                                for label, net in nets.items()}
                         for name, (size, train) in ways.items()}).rename_axis("network")


def packed_equality_table(models: dict, packs: dict, images: torch.Tensor, labels: torch.Tensor,
                          logit_rtol: float = 1e-5):
    """:func:`compare_packed` for every network of ``models`` (``{norm: model}``, packed in ``packs``).

    Returns ``(table, results)``: one row per norm with the counts of
    :func:`compare_packed` plus ``RSign ties (exact 0)`` (:func:`count_sign_ties`),
    and ``{norm: per-image results}`` for :func:`describe_flips`.
    """
    rows, results = {}, {}
    for norm, model in models.items():
        row, results[norm] = compare_packed(model, packs[norm], images, labels, logit_rtol)
        rows[norm] = {**row, "RSign ties (exact 0)": count_sign_ties(model, images)["zeros"]}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("norm"), results


def mode_dependence_table(models: dict, batch: torch.Tensor, companions: torch.Tensor):
    """:func:`train_mode_dependence` of every network of ``models`` (``{norm: model}``): one row per norm."""
    return pd.DataFrame.from_dict({norm: train_mode_dependence(model, batch, companions)
                                   for norm, model in models.items()}, orient="index").rename_axis("norm")
