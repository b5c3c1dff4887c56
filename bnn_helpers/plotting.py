"""Figures of the tutorial series, in one seaborn style.

Every function takes tables (from :mod:`bnn_helpers.diagnostics` or a run
directory's CSV files), never a model, and returns a ``matplotlib`` figure:

* :func:`plot_signal_propagation` – squared channel mean and channel variance
  per block, log scale, several variants overlaid (optionally a sign's share of +1);
* :func:`plot_sign_saturation` – per block: stream variance, share of sign inputs
  inside the estimator's gradient window, share of +1 signs;
* :func:`plot_image_grid` – small images with a title each (digits, photo patches);
* :func:`plot_logit_spread` – how much the logits differ between inputs, absolute
  and relative to their size (from :func:`bnn_helpers.diagnostics.signal_summary`);
* :func:`plot_accuracy_curves` – top-1 and loss per epoch from ``summary.csv``;
  step 2 continues after step 1, behind a dashed divider;
* :func:`plot_evaluation_bars` – grouped grey bars, one group per network, one bar per evaluation;
* :func:`plot_seed_bands` – mean and min–max over seeds per mode, several panels;
* :func:`plot_training_stats` – flip ratio, sign balances, AGC share from ``stats.csv``;
* :func:`plot_estimators` – forward and backward of every sign estimator;
* :func:`plot_weight_histograms` – latent-weight histograms, one panel per layer;
* :func:`plot_block_diagram` – the wiring of a BN-free ReActNet-A block (no data);
* :func:`plot_deployment_summary` – packed size, real-valued ops per block and
  inference speed (notebook 08's tables);
* :func:`plot_sign_thresholds` – ``sign(x − τ)`` of photos for several thresholds;
* :func:`explore` – the same lesson under ipywidgets sliders, where a front end
  can show them (the notebooks always draw a static grid as well).

:func:`savefig` writes a PNG into the repository's ``Figs/`` with a fixed size
and dpi and no metadata, so a regenerated figure only changes when its data do.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib.ticker
import matplotlib.pyplot as plt
from matplotlib.legend_handler import HandlerTuple
from matplotlib.patches import Patch
import numpy as np
import pandas as pd
import seaborn as sns
import torch

from .binarize import ESTIMATORS
from .paths import figs_dir

__all__ = [
    "use_style",
    "savefig",
    "plot_signal_propagation",
    "plot_sign_saturation",
    "plot_image_grid",
    "plot_logit_spread",
    "plot_accuracy_curves",
    "plot_evaluation_bars",
    "plot_training_stats",
    "plot_estimators",
    "plot_weight_histograms",
    "plot_block_diagram",
    "plot_deployment_summary",
    "FIG_DPI",
]

FIG_DPI = 120
_PANEL_SIZE = (5.0, 3.6)  # inches per panel


def use_style() -> None:
    """The series' style: seaborn whitegrid, colorblind palette, readable fonts."""
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind",
                  rc={"figure.dpi": FIG_DPI, "savefig.dpi": FIG_DPI, "axes.titlesize": "medium",
                      "legend.fontsize": "small", "lines.linewidth": 1.6})


def _figure(n_panels: int, ncols: int | None = None):
    ncols = ncols or n_panels
    nrows = math.ceil(n_panels / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(_PANEL_SIZE[0] * ncols, _PANEL_SIZE[1] * nrows),
                             squeeze=False, layout="constrained")
    axes = axes.ravel()
    for ax in axes[n_panels:]:
        ax.remove()
    return fig, list(axes[:n_panels])


def _colors(n: int):
    return sns.color_palette("colorblind", max(n, 1))


# --------------------------------------------------------------------------
# saving
# --------------------------------------------------------------------------
def savefig(fig, name: str) -> Path:
    """Save ``fig`` as ``Figs/<name>.png`` (fixed dpi, no metadata) and return the path."""
    if not name or Path(name).name != name:
        raise ValueError(f"savefig: give a plain file name such as 'signal_propagation', got {name!r}")
    suffix = Path(name).suffix.lower()
    if suffix in {".pdf", ".svg", ".jpg", ".jpeg", ".eps", ".tif", ".tiff", ".webp"}:
        raise ValueError(f"savefig writes PNG only; use {Path(name).stem + '.png'!r}")
    folder = figs_dir()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / (name if suffix == ".png" else name + ".png")
    # No "Software" entry and no tight bbox: identical data -> identical bytes.
    fig.savefig(target, format="png", dpi=FIG_DPI, metadata={"Software": None})
    return target


# --------------------------------------------------------------------------
# signal propagation
# --------------------------------------------------------------------------
# (column, title, y label)
_SP_PANELS = [("avg_sq_mean", "Average channel squared mean", "channel mean², averaged (a.u.)"),
              ("avg_var", "Average channel variance", "channel variance, averaged (a.u.)"),
              ("branch_var", "Residual branch (half 1) before α", "branch variance (a.u.)")]
#: Log panels show smaller values (a BN output's mean² ~1e-20 is rounding noise) at this floor.
_LOG_FLOOR = 1e-6


def _neutral_colors(n: int) -> list:
    """``n`` greys from light to dark, for series that are not normalization modes
    (mode colours mean bn / none / bf everywhere in the series)."""
    return [str(level) for level in np.linspace(0.85, 0.3, max(n, 1))]


def _label_colors(labels) -> list:
    """One colour per label; a label that starts with a mode ("bn · init", "bf (nf β)",
    "none, photos") gets that mode's colour, as everywhere in the series, so variants of
    one mode differ by line style only. Other labels take the colours after the modes',
    or the palette in order when no label names a mode."""
    modes = ("bn", "none", "bf")
    found = [re.match(r"(bn|none|bf)\b", label) for label in labels]
    if not any(found):                      # no mode in any label: the palette in order
        return list(_colors(len(labels)))
    by_mode = dict(zip(modes, _colors(len(modes))))
    fallback = iter(_colors(len(labels) + len(modes))[len(modes):])
    return [by_mode[m.group(1)] if m else next(fallback) for m in found]


def plot_signal_propagation(tables_by_label: Mapping[str, pd.DataFrame], branch: bool = True,
                            include_head: bool = False, title: str | None = None,
                            linestyles: Mapping[str, str] | None = None, *,
                            branch_title: str | None = None, sign_column: str | None = None,
                            legend_title: str = "variant", own_x_range: bool = False,
                            zeros_at_floor: bool = False, small_ticks: bool | None = None):
    """Signal propagation of several variants: one line per label per panel.

    ``tables_by_label``: ``{label: diagnostics.signal_propagation(...)}``.
    Panels: squared mean, variance and (``branch=True``) first-branch variance,
    all on a log scale, x = stem, block 1, ..., (head). Values below 1e-6 are
    drawn at 1e-6 (a panel where that happens marks the floor with a dotted
    line and says so) and zeros are left out. ``linestyles`` maps a label to a
    matplotlib linestyle (e.g. dashed for trained networks); labels that start with a
    mode share its colour. The legend (titled ``legend_title``) sits right of the
    last panel, clear of the lines.

    ``branch_title`` replaces the branch panel's title (the default names α, which
    notebook 03 introduces). ``sign_column`` (e.g. ``"sign_balance2"``) adds a
    fourth, linear panel: the share of +1 among the outputs of that sign of every
    block, with 0.5 (balanced) dotted; four panels are laid out 2 × 2. A panel
    gets x ticks only where it has data (the branch and sign panels: blocks only),
    on the same x range as the others; ``own_x_range=True`` instead fits each panel's
    x range to the positions it has data for (no empty "stem" slot under a
    blocks-only panel).

    ``zeros_at_floor=True`` draws exact zeros at the floor too (instead of leaving
    them out), and the floor's note says so: use it when values that are zero up
    to float rounding come out sometimes as 0 and sometimes as a tiny positive
    number, so that they are drawn the same on every CPU.

    ``small_ticks``: x tick labels at font size 8 (``True``) or at the style's size
    (``False``); ``None`` picks small ones when a "stem" or "head" slot or a sign
    panel crowds the axis. The widened 2 × 2 layout has room for ``False``.
    """
    if not tables_by_label:
        raise ValueError("plot_signal_propagation needs at least one table: {label: DataFrame}")
    panels = list(_SP_PANELS if branch else _SP_PANELS[:2])
    if branch and branch_title:
        panels[2] = (panels[2][0], branch_title, panels[2][2])
    if sign_column:
        which = {"1": "first", "2": "second"}.get(sign_column[-1], sign_column)
        panels.append((sign_column, f"Share of +1 at each block's {which} sign", "share of +1 (fraction)"))
    fig, axes = _figure(len(panels), ncols=2 if len(panels) == 4 else None)
    if len(panels) == 4:                     # 2 × 2, widened: 14 ticks per panel and a legend at the right
        fig.set_size_inches(2 * _PANEL_SIZE[0] + 2.5, 2 * _PANEL_SIZE[1])
    colors = _label_colors(tables_by_label)
    names, clipped = {}, set()
    with_data = {column: set() for column, *_ in panels}
    for (label, table), color in zip(tables_by_label.items(), colors):
        missing = {"position", "name"} | {c for c, *_ in panels}
        missing -= set(table.columns)
        if missing:
            raise ValueError(f"table {label!r} lacks columns {sorted(missing)}; "
                             "pass diagnostics.signal_propagation() tables")
        rows = table if include_head else table[table["name"] != "head"]
        names.update(zip(rows["position"], rows["name"]))
        style = (linestyles or {}).get(label, "-")
        for ax, (column, *_) in zip(axes, panels):
            values = rows[column].to_numpy(dtype=float)
            with_data[column].update(rows["position"][np.isfinite(values)])
            if column == sign_column:        # a share: linear axis, no floor
                ax.plot(rows["position"], values, marker="o", markersize=3, color=color,
                        linestyle=style, label=label)
                continue
            shown = (values >= 0) if zeros_at_floor else (values > 0)
            if (shown & (values < _LOG_FLOOR)).any():
                clipped.add(column)
            # log axes cannot show 0 (e.g. the constant branches of the no-BN network).
            values = np.where(shown, np.maximum(values, _LOG_FLOOR), np.nan)
            ax.plot(rows["position"], values, marker="o", markersize=3, color=color,
                    linestyle=style, label=label)
    span = (min(names) - 0.6, max(names) + 0.6)
    small = ("stem" in names.values() or include_head or sign_column) if small_ticks is None else small_ticks
    for ax, (column, name, ylabel) in zip(axes, panels):
        if column == sign_column:
            ax.set_ylim(0, 1.04)
            ax.axhline(0.5, color="0.5", linestyle=":", linewidth=1, zorder=0)
        else:
            ax.set_yscale("log")
        if column in clipped:
            ax.axhline(_LOG_FLOOR, color="0.5", linestyle=":", linewidth=1, zorder=0)
            note = "smaller values and exact 0" if zeros_at_floor else "smaller values"
            ax.text(0.99, _LOG_FLOOR, f"plotting floor 10⁻⁶: {note} drawn here",
                    transform=ax.get_yaxis_transform(), ha="right", va="bottom", fontsize=7, color="0.3")
        ticks = sorted(with_data[column])
        labels = ["stem" if names[p] == "stem" else "head" if names[p] == "head"
                  else names[p].replace("block", "") for p in ticks]
        ax.set_xticks(ticks, labels, fontsize=8 if small else None)
        ax.set_xlim(*((ticks[0] - 0.6, ticks[-1] + 0.6) if own_x_range and ticks else span))
        has = {names[p] for p in ticks}
        ax.set_xlabel("position (" + ", ".join(["stem"] * ("stem" in has) + ["block index"]
                                              + ["head"] * ("head" in has)) + ")")
        ax.set_ylabel(ylabel)
        ax.set_title(name)
    axes[-1].legend(title=legend_title, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(title or "Signal propagation")
    return fig


def plot_sign_saturation(tables_by_label: Mapping[str, pd.DataFrame], title: str | None = None,
                         linestyles: Mapping[str, str] | None = None):
    """Per block: residual-stream variance, signs in the gradient window, share of +1 signs.

    ``tables_by_label``: ``{label: diagnostics.signal_propagation(...)}``. The
    middle panel averages the block's ``sign_window*`` columns (share of the signs'
    shifted inputs with ``|x + b| < 1``, where the approx/ste estimators pass a
    gradient), the right one its ``sign_balance*`` columns (share of +1 outputs), both
    via ``diagnostics.signal_by_position``. A label that starts with a mode
    (``"bf · trained"``) gets that mode's colour; tell the variants of one mode apart
    with ``linestyles``.
    """
    from .diagnostics import signal_by_position

    if not tables_by_label:
        raise ValueError("plot_sign_saturation needs at least one table: {label: DataFrame}")
    panels = [("avg_var", "Residual stream after the block", "channel variance (log)", True),
              ("sign_window", "Sign inputs inside the gradient window", "share with |x + b| < 1", False),
              ("sign_balance", "Sign outputs", "share of +1", False)]
    fig, axes = _figure(len(panels))
    colors = dict(zip(tables_by_label, _label_colors(tables_by_label)))
    for ax, (quantity, *_) in zip(axes, panels):
        values = signal_by_position(tables_by_label, quantity, blocks_only=True)
        for label in tables_by_label:
            ax.plot(values.index, values[label], marker="o", markersize=3, color=colors[label],
                    linestyle=(linestyles or {}).get(label, "-"), label=label)
    for ax, (_, name, ylabel, log) in zip(axes, panels):
        if log:
            ax.set_yscale("log")
        else:
            ax.set_ylim(0, 1.02)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set(xlabel="block", ylabel=ylabel, title=name)
    axes[1].axhline(0, color="0.6", linewidth=0.8)
    axes[1].axhline(0.5, color="0.6", linewidth=0.8, linestyle=":")   # half of the inputs inside
    axes[2].axhline(0.5, color="0.6", linewidth=0.8, linestyle=":")
    axes[-1].legend(title="network", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(title or "Sign saturation per block")
    return fig


def plot_logit_spread(summary: pd.DataFrame, title: str | None = None):
    """Do different inputs get different logits? Two dot panels, log scale.

    ``summary``: :func:`bnn_helpers.diagnostics.signal_summary` with a
    two-level index (input batch, mode). Left: the variance of the logits
    across the inputs of a batch (``logit variance across inputs``); right: the
    same relative to the logits' size (``logit var / mean²``), the measure that
    compares networks whose logits differ in scale. One column per mode (in the
    order of ``summary``), one marker per input batch, side by side: markers, not
    bars, because on a log axis a bar's length depends on an arbitrary floor. The
    marker colours are not the modes' colours (the modes are on the x axis).
    """
    panels = [("logit variance across inputs", "Variance of the logits across inputs",
               "variance across inputs (a.u., log)"),
              ("logit var / mean²", "The same, relative to the logits' size",
               "variance / mean² (log)")]
    if summary.index.nlevels != 2:
        raise ValueError("plot_logit_spread needs diagnostics.signal_summary(...) indexed by (input, mode)")
    missing = {column for column, *_ in panels} - set(summary.columns)
    if missing:
        raise ValueError(f"summary lacks columns {sorted(missing)}; pass diagnostics.signal_summary(...)")
    inputs_level, modes_level = summary.index.names
    modes = list(dict.fromkeys(summary.index.get_level_values(1)))
    fig, axes = _figure(len(panels))
    markers = "osD^v"
    for ax, (column, name, ylabel) in zip(axes, panels):
        table = summary[column].unstack(0).loc[modes]      # rows: modes, columns: input batches
        colors = _colors(3 + table.shape[1])[3:]
        offsets = (np.arange(table.shape[1]) - (table.shape[1] - 1) / 2) * 0.15
        for k, batch in enumerate(table.columns):
            ax.plot(np.arange(len(modes)) + offsets[k], table[batch].to_numpy(), linestyle="none",
                    marker=markers[k % len(markers)], markersize=9, color=colors[k], label=str(batch))
        values = table.to_numpy()[table.to_numpy() > 0]
        ax.set(yscale="log", xticks=np.arange(len(modes)), xticklabels=modes, xlim=(-0.5, len(modes) - 0.5),
               ylim=(values.min() / 5, values.max() * 5) if values.size else (None, None),
               xlabel=f"normalization {modes_level or 'mode'}", ylabel=ylabel, title=name)
        ax.grid(True, axis="y", which="major", alpha=0.4)
    axes[-1].legend(title=f"{inputs_level or 'input'} batch", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(title or "Do different inputs get different logits?")
    return fig


# --------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------
def plot_image_grid(images, titles: Sequence[str], ncols: int, title: str | None = None,
                    cmap: str | None = None, panel_size: float = 1.15):
    """A grid of small images, each with its own title, axes hidden.

    ``images``: (N, H, W) grey values (drawn with ``cmap``) or (N, H, W, 3) RGB in
    [0, 1] (e.g. ``photos.to_display(x)``), as a tensor or array; ``titles``: one per
    image. ``ncols`` images per row; each panel is ``panel_size`` inches wide.
    """
    images = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if len(images) != len(titles) or not len(images):
        raise ValueError(f"plot_image_grid needs one title per image, got {len(images)} images, {len(titles)} titles")
    nrows = math.ceil(len(images) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_size * ncols, panel_size * nrows + 0.4),
                             squeeze=False, layout="constrained")
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, image, name in zip(axes.ravel(), images, titles):
        ax.imshow(image, cmap=cmap)
        ax.set_title(name, fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


# --------------------------------------------------------------------------
# training runs
# --------------------------------------------------------------------------
def _runs(run_dirs) -> dict[str, Path]:
    if isinstance(run_dirs, (str, os.PathLike)):
        run_dirs = [run_dirs]
    if isinstance(run_dirs, Mapping):
        runs = {str(k): Path(v) for k, v in run_dirs.items()}
    else:
        runs = {Path(d).name: Path(d) for d in run_dirs}
    if not runs:
        raise ValueError("give at least one run directory (or {label: run directory})")
    return runs


def _read(run: Path, file: str, columns: Sequence[str]) -> pd.DataFrame:
    path = run / file
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; is {run} a training run directory?")
    table = pd.read_csv(path)
    missing = set(columns) - set(table.columns)
    if missing:
        raise ValueError(f"{path} lacks columns {sorted(missing)}")
    return table


def _with_progress(table: pd.DataFrame, within: str) -> tuple[pd.DataFrame, list[float]]:
    """Add ``x``: ``within`` continued across training steps, in training order.

    A step whose counter restarts is shifted to begin after the previous
    step's last ``x``. Returns the table and the x of each step boundary.
    """
    parts, dividers, offset = [], [], 0.0
    for _, part in table.groupby("step", sort=True):
        part = part.sort_values(within, kind="stable").copy()
        shift = offset if parts and part[within].min() <= offset else 0.0
        part["x"] = part[within].astype(float) + shift
        if parts:
            dividers.append((offset + float(part["x"].min())) / 2)
        parts.append(part)
        offset = float(part["x"].max())
    return pd.concat(parts, ignore_index=True), dividers


def plot_accuracy_curves(run_dirs, title: str | None = None, chance: float | None = None,
                         loss_band: float | None = None, loss_title: str | None = None,
                         legend: str = "panels", legend_loc: str | Mapping[str, str] | None = None):
    """Top-1 and loss per epoch (train dotted with × markers, on top; validation solid) for one or more runs.

    ``run_dirs``: a path, a list of paths (labelled by folder name) or
    ``{label: path}``; each holds ``summary.csv``. A single run given as
    ``{"": path}`` gets the plain labels "val" and "train" (describe it in
    ``title``). A label that starts with a mode (``"bf"``, ``"bn (seed 0)"``) gets
    that mode's colour, as everywhere in the series; other labels take the palette
    in order. Epochs are counted across
    both steps; a dashed grey line marks where step 2 begins. ``chance``: top-1
    of guessing (100 / classes, in %), drawn as a labelled line on the accuracy
    panel so a run near it reads as "learned nothing (yet)", and the
    cross-entropy of a uniform guess, ln(100 / chance), on the loss panel.
    ``loss_band`` (needs ``chance``): zoom the loss panel to ln(100 / chance) ±
    ``loss_band`` nats, for a run expected to stay at chance.
    ``loss_title`` replaces the loss panel's title (e.g. to say which loss the
    train and val lines are, when training used distillation). ``legend``:
    ``"panels"`` gives each panel its own legend; ``"right"`` draws one legend
    for both panels right of them, clear of the curves. ``legend_loc`` (with
    ``"panels"``): where each panel's legend goes, a matplotlib ``loc`` for both
    or ``{"top1": loc, "loss": loc}`` (default: matplotlib's choice).
    """
    if loss_band is not None and (chance is None or loss_band <= 0):
        raise ValueError("loss_band needs chance and a positive width (nats)")
    if legend not in ("panels", "right"):
        raise ValueError(f"legend must be 'panels' or 'right', got {legend!r}")
    columns = ["epoch", "step", "train_loss", "train_top1", "val_loss", "val_top1"]
    fig, (ax_acc, ax_loss) = _figure(2)
    runs = _runs(run_dirs)
    boundaries = set()
    for (label, run), color in zip(runs.items(), _label_colors(runs)):
        table = _read(run, "summary.csv", columns)
        # A resumed run may repeat epochs: keep the last row of each.
        table = table.drop_duplicates(["step", "epoch"], keep="last").sort_values(["step", "epoch"])
        table["_rank"] = table.groupby("step").cumcount() + 1.0
        table, dividers = _with_progress(table, "_rank")
        boundaries.update(dividers)
        for ax, metric in ((ax_acc, "top1"), (ax_loss, "loss")):
            ax.plot(table["x"], table[f"val_{metric}"], color=color, linestyle="-",
                    marker="o", markersize=3, label=f"{label} val".strip())
            # drawn on top, with its own marker: visible where it runs along the val line
            ax.plot(table["x"], table[f"train_{metric}"], color=color, linestyle=":", marker="x",
                    markersize=6, markeredgewidth=1.5, zorder=3, label=f"{label} train".strip())
    if chance is not None:
        # Guessing uniformly: top-1 = chance, cross-entropy = ln(classes) = ln(100 / chance).
        ax_acc.axhline(chance, color="0.35", linestyle="-.", linewidth=1, zorder=1,
                       label=f"chance ({chance:.2g} %)")
        ax_loss.axhline(math.log(100 / chance), color="0.35", linestyle="-.", linewidth=1, zorder=1,
                        label=f"uniform guess: loss ln {100 / chance:g} = {math.log(100 / chance):.3f}")
    xlabel = "epoch (step 1, then step 2 after the dashed line)" if boundaries else "epoch"
    for ax, ylabel, name in ((ax_acc, "top-1 accuracy (%)", "Top-1 accuracy"),
                             (ax_loss, "loss (nats)", "Loss")):
        if chance is not None:
            # From 0: the distance to the chance line reads true to scale (a zoomed axis
            # makes noise around chance look like learning), and the legend finds room.
            ax.set_ylim(bottom=0, top=ax.get_ylim()[1] * 1.1)
        _finish_axis(ax, boundaries, xlabel, ylabel, name)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    if loss_band is not None:
        uniform = math.log(100 / chance)
        ax_loss.set(ylim=(uniform - loss_band, uniform + loss_band),
                    title=f"Loss (zoomed to ln {100 / chance:g} ± {loss_band:g} nats)")
    if loss_title is not None:
        ax_loss.set_title(loss_title)
    if legend == "panels" and legend_loc is not None:
        locs = legend_loc if isinstance(legend_loc, Mapping) else {"top1": legend_loc, "loss": legend_loc}
        for ax, metric in ((ax_acc, "top1"), (ax_loss, "loss")):
            ax.legend(loc=locs.get(metric, "best"))
    if legend == "right":             # one legend for both panels (runs, then each panel's reference line)
        handles = {}
        for ax in (ax_acc, ax_loss):
            for handle, label in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(label, handle)
            ax.get_legend().remove()
        fig.set_size_inches(_PANEL_SIZE[0] * 2 + 2.8, _PANEL_SIZE[1] + 0.4)   # room for it: the panels keep their size
        fig.legend(handles.values(), handles.keys(), loc="outside right upper")
    fig.suptitle(title or "Training curves")
    return fig


def plot_evaluation_bars(table: pd.DataFrame, title: str | None = None, ylabel: str = "val top-1 (%)",
                         chance: float | None = None, legend_title: str | None = None,
                         wrap: int | None = None):
    """Grouped bars: one group per row of ``table`` (its index labels the x axis), one bar per column.

    The bars use a neutral grey palette, so they do not borrow the colours that
    mean a normalization mode elsewhere in the series. ``chance`` (in %) draws a
    labelled dash-dot line; the y axis runs from 0 to 100. One legend (titled
    ``legend_title``) sits right of the axes, clear of the bars. ``wrap``: break
    the group labels into lines of at most that many characters.
    """
    if wrap:
        import textwrap
        table = table.rename(index=lambda label: textwrap.fill(str(label), wrap))
    fig, ax = plt.subplots(figsize=(10, 3.8), layout="constrained")
    greys = [str(g) for g in np.linspace(0.2, 0.8, table.shape[1]).round(2)]
    table.plot.bar(ax=ax, rot=0, color=greys, edgecolor="0.1", linewidth=0.5)
    if chance is not None:
        ax.axhline(chance, color="0.3", linewidth=0.8, linestyle="-.", label=f"chance ({chance:g} %)")
    ax.set(xlabel=table.index.name or "", ylabel=ylabel, ylim=(0, 100), title=title or "")
    ax.legend(title=legend_title, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def plot_seed_bands(panels: Mapping[str, pd.DataFrame], modes=("bn", "none", "bf"), metric: str = "val_top1",
                    ylabel: str = "validation top-1 (%)", chance: float | None = None, title: str | None = None,
                    mark_lr_zero: bool = False):
    """Mean over seeds (line) and min–max over seeds (band) per mode, one panel per table.

    ``panels``: ``{panel title: table}`` with columns ``mode``, ``seed``,
    ``step``, ``epoch`` and ``metric`` (``results.read_runs`` or
    ``results.load_reference_runs``). Step 2's epochs continue after step 1's,
    behind a dashed line; ``chance`` draws a labelled grey horizontal line.
    ``mark_lr_zero`` shades the epochs a table's ``lr`` column has at 0 (labelled
    "epoch at learning rate 0"). Panels share the y axis; one legend for all panels
    sits below them, clear of the data.
    """
    if not panels:
        raise ValueError("plot_seed_bands needs at least one panel: {title: table}")
    fig, axes = _figure(len(panels))
    for ax in axes[1:]:
        ax.sharey(axes[0])
    for ax, (name, table) in zip(axes, panels.items()):
        missing = {"mode", "seed", "step", "epoch", metric} - set(table.columns)
        if missing:
            raise ValueError(f"panel {name!r} lacks columns {sorted(missing)}")
        per_step = table[table["step"] == table["step"].min()]["epoch"].max()
        x = table["epoch"] + (table["step"] - table["step"].min()) * per_step
        for mode, color in zip(modes, _colors(len(modes))):
            curve = table[table["mode"] == mode].assign(x=x).groupby("x")[metric]
            ax.plot(curve.mean().index, curve.mean(), color=color, marker="o", markersize=3,
                    label=f"{mode}: mean of {table[table['mode'] == mode]['seed'].nunique()} seeds, band min–max")
            ax.fill_between(curve.min().index, curve.min(), curve.max(), color=color, alpha=0.2)
        if chance is not None:
            ax.axhline(chance, color="0.45", linewidth=1, linestyle="-.", zorder=0, label=f"chance ({chance:g} %)")
        if mark_lr_zero and "lr" in table.columns:
            for i, epoch in enumerate(sorted(set(x[table["lr"] == 0]))):
                ax.axvspan(epoch - 0.5, epoch + 0.5, color="0.85", zorder=0,
                           label="epoch at learning rate 0" if i == 0 else None)
        boundaries = [per_step + 0.5] if table["step"].nunique() > 1 else []
        _finish_axis(ax, boundaries, "epoch (step 2 after the dashed line)", ylabel, name)
        ax.get_legend().remove()
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    entries = {}                                   # every panel's entries, each label once
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    fig.legend(list(entries.values()), list(entries), loc="outside lower center", ncols=min(len(entries), 4))
    if title:
        fig.suptitle(title)
    return fig


def _finish_axis(ax, step_boundaries, xlabel, ylabel, title):
    """Dashed lines where step 2 starts, labels, title and legend."""
    for x in sorted(step_boundaries):
        ax.axvline(x, color="0.5", linestyle="--", linewidth=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()


# (column, title, y label, log scale)
_STATS_PANELS = [("flip_ratio", "Flip ratio", "share of weight signs flipped per step", True),
                 ("weight_sign_balance", "Weight sign balance", "share of +1 weights", False),
                 ("act_sign_balance", "Activation sign balance", "share of +1 activations", False),
                 ("agc_clip_share", "AGC clipped share", "clipped units (fraction)", False)]
#: The sign-balance panels span at least this much of the [0, 1] share axis, so a balance
#: that moves by 10⁻⁴ draws as the flat line it is, not as a dramatic curve.
_MIN_BALANCE_SPAN = 0.02


def plot_training_stats(run_dirs, title: str | None = None, columns: Sequence[str] | None = None,
                        colors: Mapping[str, object] | None = None,
                        linestyles: Mapping[str, str] | None = None, legend: bool = True,
                        epoch_steps: int | None = None, ylabels: Mapping[str, str] | None = None):
    """Flip ratio, weight/activation sign balance and AGC clipped share over training.

    Reads ``stats.csv`` of each run (written by ``diagnostics.StatsRecorder``);
    x = optimizer steps, continued across training steps 1 and 2. The flip
    ratio (share of the latent weights whose sign changed: the binary weights'
    flips in step 2) is on a log scale. ``columns`` draws only those panels
    (``"flip_ratio"``, ``"weight_sign_balance"``, ``"act_sign_balance"``,
    ``"agc_clip_share"``; default all four). The sign-balance panels span at
    least ``_MIN_BALANCE_SPAN`` (0.02) of their axis; all panels share the x
    axis and its ticks. One legend for all panels: right of them, or below a
    single panel, whose title is the figure's. A NaN in ``stats.csv`` (the
    activation balance of the first recorded step of each training step)
    leaves a gap. ``colors`` (``{label: matplotlib colour}``) fixes some labels'
    colours; the others keep theirs. ``linestyles`` (``{label: matplotlib linestyle}``)
    draws some labels dashed or dotted; those lines are drawn above the solid ones, so
    a dashed line stays visible where it lies on top of another run's solid line.
    ``legend=False`` draws no legend (one run whose name the title already gives).
    ``epoch_steps`` (optimizer steps per epoch, counted from 1) draws a thin dotted
    grey line at every epoch boundary (x = k·epoch_steps + 0.5) and says so in the x label.
    ``ylabels`` (``{column: y label}``) replaces some panels' y labels, e.g.
    ``{"flip_ratio": "share of weight signs flipped per optimizer step"}``.
    """
    known = [c for c, *_ in _STATS_PANELS]
    unknown = set(columns or ()) - set(known)
    if unknown:
        raise ValueError(f"unknown stats column(s) {sorted(unknown)}; choose from {known}")
    panels = [p for p in _STATS_PANELS if columns is None or p[0] in columns]
    fig, axes = _figure(len(panels), ncols=min(len(panels), 2))
    for ax in axes[1:]:
        ax.sharex(axes[0])
    runs = _runs(run_dirs)
    boundaries = set()
    for (label, run), color in zip(runs.items(), _label_colors(runs)):
        color = (colors or {}).get(label, color)
        table = _read(run, "stats.csv", ["step", "optimizer_step"] + [c for c, *_ in panels])
        table, dividers = _with_progress(table, "optimizer_step")
        boundaries.update(dividers)
        for ax, (column, _, _, log) in zip(axes, panels):
            values = table[column].to_numpy(dtype=float)
            if log:
                values = np.where(values > 0, values, np.nan)
            style = (linestyles or {}).get(label, "-")
            ax.plot(table["x"], values, color=color, label=label, linestyle=style,
                    zorder=2 if style in ("-", "solid") else 3)
    for ax, (column, name, ylabel, log) in zip(axes, panels):
        if log:
            ax.set_yscale("log")
        if column.endswith("sign_balance"):
            low, high = ax.get_ylim()
            if high - low < _MIN_BALANCE_SPAN:
                middle = (low + high) / 2
                ax.set_ylim(middle - _MIN_BALANCE_SPAN / 2, middle + _MIN_BALANCE_SPAN / 2)
        xlabel = "optimizer steps (step 2 after the dashed line)" if boundaries else "optimizer steps"
        if epoch_steps:
            last = max(float(np.nanmax(line.get_xdata())) for line in ax.lines)
            for x in np.arange(epoch_steps, last, epoch_steps) + 0.5:
                ax.axvline(x, color="0.55", linestyle=":", linewidth=1, zorder=1)
            xlabel += f" (dotted: epoch boundaries, every {epoch_steps})"
        _finish_axis(ax, boundaries, xlabel, (ylabels or {}).get(column, ylabel), name)
        ax.get_legend().remove()          # one legend for all panels, clear of the curves
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    if len(panels) == 1:               # one title (the figure's), the legend below the panel
        axes[0].set_title("")
        if legend:
            fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=min(len(runs), 3))
        fig.suptitle(title or panels[0][1])
    else:
        if legend:
            fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper")
        fig.suptitle(title or "Training statistics")
    return fig


# --------------------------------------------------------------------------
# estimators and weights
# --------------------------------------------------------------------------
def plot_estimators(x_range: float = 2.0, points: int = 801):
    """Forward and backward of every sign estimator in ``binarize.ESTIMATORS``.

    The backward is measured with autograd on a grid. Left: ``sign(x)`` (the
    forward of every estimator) and, dashed, the function whose derivative
    each backward is (its integral from 0) – the surrogate the estimator
    pretends to differentiate. Right: the backward ``d out / d x``. One legend
    (one colour per estimator, its entry showing the broken left-panel and the
    solid right-panel line; its title says so once) sits below both panels, off
    the region ``|x| < 1`` where the estimators differ. Later estimators are
    drawn thinner and on top (higher zorder), so where curves coincide (e.g.
    ApproxSign on the clipped STE for ``|x| > 1``) the thin one stays visible.
    """
    grid = torch.linspace(-x_range, x_range, points, dtype=torch.float64)
    fig, (ax_fwd, ax_bwd) = _figure(2)
    ax_fwd.plot(grid, torch.sign(grid), color="black", linewidth=2.2, label="sign(x) (forward)")
    dx = float(grid[1] - grid[0])
    zero = int(torch.argmin(grid.abs()))
    labels = {"identity": "identity", "ste": "clipped (sign_ste)", "approx": "ApproxSign (sign_approx)"}
    widths = np.linspace(3.6, 2.2, len(ESTIMATORS))   # later curves thinner: coinciding ones stay visible
    for rank, ((name, fn), color, width) in enumerate(zip(ESTIMATORS.items(), _colors(len(ESTIMATORS)), widths)):
        x = grid.clone().requires_grad_(True)
        out = fn(x)
        if not torch.equal(out.detach(), torch.sign(grid)):
            raise RuntimeError(f"estimator {name!r}: forward is not sign(x)")
        (grad,) = torch.autograd.grad(out.sum(), x)
        grad = grad.numpy()
        # Trapezoid integral of the backward, anchored at 0.
        integral = np.concatenate([[0.0], np.cumsum((grad[1:] + grad[:-1]) * dx / 2)])
        ax_fwd.plot(grid, integral - integral[zero], color=color, linestyle="--", linewidth=width,
                    label=f"{labels.get(name, name)}: ∫ backward", zorder=3 + rank)
        ax_bwd.plot(grid, grad, color=color, linewidth=width, label=labels.get(name, name), zorder=3 + rank)
    ax_fwd.set_title("Forward: sign (black) and, dashed, the surrogate\neach backward implies (its integral from 0)")
    ax_fwd.set_ylabel("output (dimensionless)")
    ax_bwd.set_title("Backward: gradient passed to x")
    ax_bwd.set_ylabel("d output / d x (dimensionless)")
    for ax in (ax_fwd, ax_bwd):
        ax.set_xlabel("input x (dimensionless)")
    # One legend below both panels: inside, it would cover |x| < 1, where the estimators differ.
    # Each estimator's entry pairs its dashed surrogate (left) with its solid backward (right).
    sign_line, surrogates = ax_fwd.get_lines()[0], ax_fwd.get_lines()[1:]
    handles = [sign_line] + [(fwd, bwd) for fwd, bwd in zip(surrogates, ax_bwd.get_lines())]
    # "broken line": the short legend handle cuts a dash pattern into what can look like dash-dot.
    names = [sign_line.get_label()] + [bwd.get_label() for bwd in ax_bwd.get_lines()]
    fig.legend(handles, names, loc="outside lower center", ncols=2, frameon=False,
               title="each estimator: broken line = surrogate (left panel), solid line = backward (right panel)",
               title_fontsize="small", handler_map={tuple: HandlerTuple(ndivide=None, pad=0.6)}, handlelength=4.0)
    fig.suptitle("Sign estimators (straight-through variants)")
    return fig


def plot_weight_histograms(values_by_layer: Mapping[str, np.ndarray], bins: int = 60,
                           ncols: int = 4, title: str | None = None):
    """One histogram per layer of ``{layer name: values}`` (e.g. ``diagnostics.latent_weight_values``)."""
    if not values_by_layer:
        raise ValueError("plot_weight_histograms needs {layer name: values} with at least one layer")
    n = len(values_by_layer)
    fig, axes = _figure(n, ncols=min(ncols, n))
    for ax, (name, values) in zip(axes, values_by_layer.items()):
        values = np.asarray(values, dtype=float).ravel()
        ax.hist(values, bins=bins, color=_colors(1)[0])
        ax.set_title(name.removesuffix(".weight"), fontsize="small")
        ax.set_xlabel("latent weight value")
        ax.set_ylabel("count (weights)")
    fig.suptitle(title or "Latent weights per layer")
    return fig


def plot_sign_input_histograms(inputs_by_label: Mapping[str, Mapping[str, np.ndarray]],
                               blocks: Sequence[str], bins: int = 61, title: str | None = None,
                               sharey: bool = False):
    """Histograms of what the signs see: one row per network, one column per block.

    ``inputs_by_label``: ``{label: diagnostics.sign_inputs(model, x)}``. The x axis is
    symmetric-log (linear inside ``|u| < 1``, the window where ApproxSign and the
    clipped identity pass a gradient, shaded; logarithmic outside), so a stream
    that grew by orders of magnitude stays on the page. Each panel's title gives
    the share of inputs inside the window and the share that are positive.
    ``sharey=True`` gives every panel the same y range (the y ticks are labelled in
    the first column only), so the heights of the bars compare across panels.
    """
    from .diagnostics import ste_window_share
    if not inputs_by_label or not blocks:
        raise ValueError("plot_sign_input_histograms needs {label: {block: values}} and blocks")
    labels = list(inputs_by_label)
    missing = [(label, b) for label in labels for b in blocks if b not in inputs_by_label[label]]
    if missing:
        raise ValueError(f"no sign inputs for {missing[:3]}; blocks must name diagnostics.sign_inputs keys")
    largest = max(float(np.abs(v).max()) for d in inputs_by_label.values() for v in d.values())
    limit = max(2.0, largest * 1.05)
    edges = np.concatenate([-np.geomspace(limit, 1, bins // 3 + 1), np.linspace(-1, 1, bins // 3 + 1)[1:-1],
                            np.geomspace(1, limit, bins // 3 + 1)])
    decades = 10.0 ** np.arange(0, math.floor(math.log10(limit)) + 1)
    ticks = np.concatenate([-decades[::-1], [0.0], decades])
    fig, axes = plt.subplots(len(labels), len(blocks), figsize=(2.6 * len(blocks), 2.1 * len(labels)),
                             squeeze=False, sharex=True, sharey="all" if sharey else False,
                             constrained_layout=True)
    for row, (label, color) in enumerate(zip(labels, _label_colors(labels))):
        for col, block in enumerate(blocks):
            ax, u = axes[row, col], np.asarray(inputs_by_label[label][block], dtype=float)
            ax.axvspan(-1, 1, color="0.9", zorder=0)
            ax.hist(u, bins=edges, weights=np.full(u.size, 1.0 / u.size), color=color)
            ax.set_xscale("symlog", linthresh=1.0)
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.axvline(0, color="0.4", linewidth=0.8)
            inside, positive = ste_window_share(u), float(np.mean(u > 0))
            ax.set_title(f"{label}, {block}\n{inside:.0%} in window, {positive:.0%} > 0", fontsize="small")
            if col == 0:
                ax.set_ylabel("share of sign inputs")
            if row == len(labels) - 1:
                ax.set_xlabel("sign input u (symlog)")
    fig.suptitle(title or "What the signs see: inputs u per block (shaded: |u| < 1, the gradient window)")
    return fig


# --------------------------------------------------------------------------
# predictions against measurements, gradient ratios
# --------------------------------------------------------------------------
_PREDICTION_DASHES = ["--", (0, (1, 1.5)), "-.", (0, (5, 1, 1, 1, 1, 1))]


def _label_panel(ax, xlabel: str, ylabel: str, title: str) -> None:
    """Integer x ticks, axis labels, title and a small legend: how the comparison panels end."""
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize="x-small")


PREDICTION_COLUMNS = ["panel", "prediction", "series", "x", "predicted", "measured", "ratio"]


def prediction_table(x, predicted, measured: Mapping[str, object], panel: str = "",
                     prediction: str = "predicted") -> pd.DataFrame:
    """A prediction and the measurements it should match, as one tidy table.

    ``x``: positions (e.g. block indices); ``predicted``: the predicted value at
    each position; ``measured``: ``{series label: values at the same positions}``.
    One row per series and position, columns ``panel`` (the figure panel it
    belongs to), ``prediction`` (the prediction's label), ``series``, ``x``,
    ``predicted``, ``measured`` and ``ratio`` = measured / predicted. Tables of
    several panels concatenate (``pd.concat``) into the input of
    :func:`plot_predicted_vs_measured`.
    """
    x = np.asarray(x)
    predicted = np.asarray(predicted, dtype=float)
    if predicted.shape != x.shape:
        raise ValueError(f"predicted has shape {predicted.shape}, x has {x.shape}")
    if not measured:
        raise ValueError("prediction_table needs at least one measured series: {label: values}")
    frames = []
    for label, values in measured.items():
        values = np.asarray(values, dtype=float)
        if values.shape != x.shape:
            raise ValueError(f"measured series {label!r} has shape {values.shape}, x has {x.shape}")
        frames.append(pd.DataFrame({"panel": panel, "prediction": prediction, "series": label, "x": x,
                                    "predicted": predicted, "measured": values, "ratio": values / predicted}))
    return pd.concat(frames, ignore_index=True)[PREDICTION_COLUMNS]


def _panels_from_table(table: pd.DataFrame) -> dict:
    """:func:`prediction_table` rows -> ``{panel: {"predicted": {...}, "measured": {...}}}``."""
    missing = set(PREDICTION_COLUMNS[:-1]) - set(table.columns)
    if missing:
        raise ValueError(f"the table lacks columns {sorted(missing)}; build it with prediction_table(...)")
    panels = {}
    for name, rows in table.groupby("panel", sort=False):
        panel = panels.setdefault(name, {"predicted": {}, "measured": {}})
        for label, series in rows.groupby("series", sort=False):
            panel["measured"][label] = (series["x"].to_numpy(), series["measured"].to_numpy())
        for label, series in rows.groupby("prediction", sort=False):
            first = series.drop_duplicates("x")
            panel["predicted"][label] = (first["x"].to_numpy(), first["predicted"].to_numpy())
    return panels


def plot_predicted_vs_measured(panels: Mapping[str, Mapping[str, Mapping[str, tuple]]] | pd.DataFrame,
                               xlabel: str | Mapping[str, str], ylabel: str, title: str | None = None,
                               log: bool | Mapping[str, bool] = True, legend: str = "panels",
                               colors: Mapping[str, object] | None = None):
    """One panel per entry of ``panels``: predictions as dark dashed lines, measurements as coloured markers.

    ``panels``: a :func:`prediction_table` (one panel per value of its ``panel``
    column), or ``{panel title: {"predicted": {label: (x, y)}, "measured": {label: (x, y)}}}``.
    Predictions are drawn *above* the measurements (thick, dark, no markers,
    one dash pattern each), so a measurement that lies on its prediction
    does not hide it; measurements are coloured lines with markers. The x axis
    gets integer ticks; ``log`` puts y on a log scale (a bool for every panel,
    or ``{panel title: bool}``, default True). Colours are shared across
    panels by label. ``legend="panels"`` gives every panel its own legend;
    ``legend="figure"`` draws one legend for all panels, below them (each
    prediction label then keeps one dash pattern across panels): in one row
    when panels share labels, else one column per panel, in panel order.
    ``xlabel`` is one label for every panel or ``{panel title: label}``;
    Measured series take :func:`series_colors` (a mode label its mode's colour,
    the others the palette after the modes'); ``colors`` (``{measured label:
    matplotlib colour}``) fixes some series' colours, e.g. to match another figure.
    """
    if isinstance(panels, pd.DataFrame):
        panels = _panels_from_table(panels)
    if not panels:
        raise ValueError("plot_predicted_vs_measured needs at least one panel")
    if legend not in ("panels", "figure"):
        raise ValueError(f"legend must be 'panels' or 'figure', got {legend!r}")
    measured_labels = list(dict.fromkeys(label for p in panels.values() for label in p.get("measured", {})))
    colors = {**series_colors(measured_labels), **(colors or {})}
    predicted_labels = list(dict.fromkeys(label for p in panels.values() for label in p.get("predicted", {})))
    shared_dashes = dict(zip(predicted_labels, _PREDICTION_DASHES * (len(predicted_labels) // 4 + 1)))
    fig, axes = _figure(len(panels))
    for ax, (name, panel) in zip(axes, panels.items()):
        unknown = set(panel) - {"predicted", "measured"}
        if unknown:
            raise ValueError(f"panel {name!r}: keys must be 'predicted' and 'measured', got {sorted(unknown)}")
        for label, (x, y) in panel.get("measured", {}).items():
            ax.plot(x, y, color=colors[label], marker="o", markersize=4, linewidth=1.4, alpha=0.9,
                    label=label, zorder=2)
        for (label, (x, y)), dash in zip(panel.get("predicted", {}).items(), _PREDICTION_DASHES * 4):
            dash = shared_dashes[label] if legend == "figure" else dash
            ax.plot(x, y, color="0.1", linestyle=dash, linewidth=2.2, label=label, zorder=3)
        if log.get(name, True) if isinstance(log, Mapping) else log:
            ax.set_yscale("log")
        _label_panel(ax, xlabel[name] if isinstance(xlabel, Mapping) else xlabel, ylabel, name)
    if legend == "figure":
        handles = {}
        for ax in axes:
            for handle, label in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(label, handle)
            ax.get_legend().remove()
        per_panel = [set(p.get("measured", {})) | set(p.get("predicted", {})) for p in panels.values()]
        shared = len(set().union(*per_panel)) < sum(len(labels) for labels in per_panel)
        # shared labels: one row (up to 4 columns); each panel its own labels: one column per panel, in order
        fig.legend(handles.values(), handles.keys(), loc="outside lower center",
                   ncols=min(len(handles), 4) if shared else len(panels))
    if title:
        fig.suptitle(title)
    return fig


def plot_unitwise_ratios(ratios: pd.DataFrame, clip_factor: float, title: str | None = None):
    """Box plot of AGC's ratio ‖G‖/max(‖W‖, ε) per kind of parameter (``diagnostics.unitwise_ratios``).

    One horizontal box per ``kind`` (labelled with its number of units), log
    x axis, and a dashed vertical line at ``clip_factor``: units to its right
    would be clipped. Ratios below 10⁻⁶ (``_LOG_FLOOR``) are drawn at 10⁻⁶, and
    then a dotted line there says so.
    """
    missing = {"kind", "ratio"} - set(ratios.columns)
    if missing:
        raise ValueError(f"ratios lacks columns {sorted(missing)}; pass diagnostics.unitwise_ratios(...)")
    kinds = list(dict.fromkeys(ratios["kind"]))
    fig, (ax,) = _figure(1)
    fig.set_size_inches(10.0, 0.55 * len(kinds) + 1.8)   # room for the long unit-kind labels
    values = [ratios.loc[ratios["kind"] == k, "ratio"].clip(lower=_LOG_FLOOR) for k in kinds]
    # matplotlib >= 3.10 spells it orientation=, older versions vert= (deprecated since 3.11)
    horizontal = ({"orientation": "horizontal"} if tuple(map(int, matplotlib.__version__.split(".")[:2])) >= (3, 10)
                  else {"vert": False})
    ax.boxplot(values, showfliers=True, flierprops={"markersize": 3}, **horizontal)
    ax.set_yticks(range(1, len(kinds) + 1), [f"{k} ({len(v):,} units)" for k, v in zip(kinds, values)])
    ax.set_xscale("log")
    ax.axvline(clip_factor, color="0.3", linestyle="--", label=f"λ = {clip_factor:g}: clipped to the right")
    if (ratios["ratio"] < _LOG_FLOOR).any():   # a log axis cannot show them (e.g. exact 0): say where they are
        ax.axvline(_LOG_FLOOR, color="0.25", linestyle=":", linewidth=1.5, zorder=3)
        ax.text(_LOG_FLOOR, 1.0, " plotting floor 10⁻⁶: smaller ratios drawn here", transform=ax.get_xaxis_transform(),
                ha="left", va="bottom", fontsize="small", color="0.25")
    ax.set_xlabel("‖G‖ / max(‖W‖, ε) per unit")
    fig.suptitle(title or "Unit-wise gradient-to-weight ratio")   # centred on the figure, not the axes
    ax.legend(loc="upper left")
    return fig



def plot_run_comparison(panels: Mapping[str, Mapping[str, str | os.PathLike]], metric: str = "val_top1",
                        ylabel: str = "validation top-1 (%)", chance: float | None = None,
                        styles: Mapping[str, str] | None = None, ncols: int | None = None,
                        title: str | None = None, colors: Mapping[str, object] | None = None,
                        sharey: bool = False, unfinished_notes: Mapping[str, str] | None = None):
    """Several small comparisons of training runs: one panel per ``{panel title: {label: run directory}}``.

    Each run contributes ``metric`` per epoch from its ``summary.csv`` (step 1
    then step 2, counted on). A run that stopped before its first epoch ended
    (no rows) still gets a legend entry, ending in "(no epoch finished)".
    ``styles`` maps a label to a matplotlib linestyle; ``chance`` draws a grey
    horizontal line. Epoch ticks are integers. ``colors`` (``{label:
    matplotlib colour}``) fixes some labels' colours; the others keep the palette.
    ``sharey=True`` gives every panel the same y range (to compare panels by eye).
    ``unfinished_notes`` (``{label: text}``): a run with no finished epoch whose label
    is a key gets no (empty) legend entry; its panel says ``"{label}: {text}"`` in its
    lower right corner instead, e.g. ``{"no AGC": "diverged in epoch 1, not drawn"}``.
    """
    if not panels:
        raise ValueError("plot_run_comparison needs at least one panel: {title: {label: run directory}}")
    labels = list(dict.fromkeys(label for runs in panels.values() for label in runs))
    colors = {**dict(zip(labels, _colors(len(labels)))), **(colors or {})}
    fig, axes = _figure(len(panels), ncols=ncols or min(len(panels), 2))
    if sharey:
        for ax in axes[1:]:
            ax.sharey(axes[0])
    for ax, (name, runs) in zip(axes, panels.items()):
        for label, run in runs.items():
            path = Path(run) / "summary.csv"
            table = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=["step", "epoch", metric])
            table = table.sort_values(["step", "epoch"]) if len(table) else table
            style = (styles or {}).get(label, "-")
            if len(table):
                x = np.arange(1, len(table) + 1)
                ax.plot(x, table[metric].to_numpy(dtype=float), color=colors[label], linestyle=style,
                        marker="o", markersize=4, label=label)
            elif label in (unfinished_notes or {}):   # nothing to draw: say so in the panel
                ax.text(0.97, 0.12, f"{label}: {unfinished_notes[label]}", transform=ax.transAxes, ha="right",
                        va="bottom", fontsize="x-small", color=colors[label],
                        bbox=dict(facecolor="white", edgecolor="0.8", boxstyle="round,pad=0.3"))
            else:   # an empty line keeps the run in the legend
                ax.plot([], [], color=colors[label], linestyle=style, label=f"{label} (no epoch finished)")
        longest = max((len(line.get_xdata()) for line in ax.lines), default=1)
        if chance is not None:
            ax.axhline(chance, color="0.6", linewidth=1, zorder=0)
        ax.set_xlim(0.5, max(longest, 1) + 0.5)
        _label_panel(ax, "epoch", ylabel, name)
    if title:
        fig.suptitle(title)
    return fig


def mode_colors() -> dict:
    """``{"bn": colour, "none": colour, "bf": colour}``: the colour each normalization mode has in every figure of the series."""
    return dict(zip(("bn", "none", "bf"), _colors(3)))


def series_colors(labels) -> dict:
    """``{label: colour}``: a label that is exactly a mode (``"bf"``) gets :func:`mode_colors`'
    colour; every other label takes the palette colours after the modes', in order, so
    no other series borrows a mode's colour (the rule of every predicted-vs-measured figure)."""
    labels = list(dict.fromkeys(labels))
    modes = mode_colors()
    others = iter(_colors(3 + len(labels))[3:])
    return {label: modes[label] if label in modes else next(others) for label in labels}


def plot_variance_prediction(toy: pd.DataFrame, network: pd.DataFrame, title: str | None = None):
    """Two :func:`prediction_table` panels: a toy stack (linear y axis, x from 0 = its input) and a
    network (log y axis, x = block index), as in notebook 03's section 7.

    A series labelled exactly by a mode (``"bf"``) gets that mode's colour (:func:`mode_colors`);
    every other series (toys, variants such as ``"bf + PReLU gain"``) takes the palette colours
    after the modes', in order, so no series borrows a mode's colour. One legend below the panels.
    """
    for name, table in (("toy", toy), ("network", network)):
        if table["panel"].nunique() != 1:
            raise ValueError(f"{name} must be a prediction_table of one panel, got panels {sorted(table['panel'].unique())}")
    toy_panel, net_panel = toy["panel"].iloc[0], network["panel"].iloc[0]
    return plot_predicted_vs_measured(pd.concat([toy, network]), xlabel={toy_panel: "block index l (0: input)", net_panel: "block index l"},
                                      ylabel="channel variance (a.u.)", log={toy_panel: False}, legend="figure",
                                      title=title)


def plot_slope_grid(grid: pd.DataFrame, title: str | None = None):
    """Notebook 03's α × trunk-slope grid: one linear panel per α, one legend below them.

    ``grid``: a :func:`prediction_table` with one panel per α and one series per trunk
    slope, labelled ``"trunk slope s = {s:g}"``. The ``s = 0.25`` series takes the colour
    the PReLU-trunk toy gets in :func:`plot_variance_prediction` (the same toy at α = 0.2),
    ``s = 1`` (an identity trunk with a sign branch) a colour of its own, ``s = 0.5`` grey;
    other slopes (a slider's) take :func:`series_colors`' defaults.
    """
    toy_colors = series_colors(["identity toy", "PReLU toy"])       # the order of plot_variance_prediction's toy
    colors = {"trunk slope s = 0.25": toy_colors["PReLU toy"], "trunk slope s = 0.5": "0.55", "trunk slope s = 1": "C9"}
    return plot_predicted_vs_measured(grid, xlabel="block index l (0: input)", ylabel="trunk variance (a.u.)", log=False,
                                      legend="figure", colors=colors, title=title)


__all__ += ["plot_slope_grid"]
__all__ += ["plot_sign_input_histograms", "prediction_table", "mode_colors", "series_colors", "plot_variance_prediction", "plot_predicted_vs_measured", "plot_unitwise_ratios", "plot_run_comparison", "plot_seed_bands"]


# --------------------------------------------------------------------------
# diagrams and deployment
# --------------------------------------------------------------------------
_KIND_COLORS = {"binary": "#f4a582", "real": "#92c5de", "io": "#f7f7f7"}


def _draw_block(ax, reduction: bool) -> None:
    """One ReActNet-A block (mode bf) as boxes and arrows, top to bottom, on ``ax``.

    Every arrow runs vertically or horizontally and stops a little outside the
    box it points at: its shrink is the measured half height (or half width) of
    that box, so two-line boxes do not hide the arrowhead.
    """
    ax.set_axis_off()
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.03, 1.02)
    main, left, right = 0.5, 0.08, 0.92
    rows = np.linspace(0.98, 0.0, 15 if reduction else 14)  # one row per box on the main line
    boxes = {}                                               # (x, y) -> the Text drawn there
    line = dict(color="0.3", lw=1.1, zorder=1)

    def box(x, y, text, kind):
        boxes[(x, y)] = ax.text(x, y, text, ha="center", va="center", fontsize=8.5, zorder=3,
                                bbox=dict(boxstyle="round,pad=0.35", fc=_KIND_COLORS[kind], ec="0.35"))

    def half(point, vertical):
        # Half height (vertical arrow) or half width of the box at ``point``, in points, plus a gap.
        text = boxes.get(point)
        if text is None:
            return 0.0
        extent = text.get_window_extent()                   # the text alone, in pixels
        size = (extent.height if vertical else extent.width) * 72 / ax.figure.dpi
        return size / 2 + 0.35 * text.get_fontsize() + 2.0  # + the box's pad + a gap

    def arrow(x0, y0, x1, y1):
        vertical = x0 == x1
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0), zorder=2,
                    arrowprops=dict(arrowstyle="-|>", color="0.3", lw=1.1,
                                    shrinkA=half((x0, y0), vertical), shrinkB=half((x1, y1), vertical)))

    def skip(y_from, y_to, x_side, x_to):
        # A shortcut: leaves the main line at a dot just below y_from, runs along x_side.
        y_split = y_from - 0.022
        ax.plot([main, x_side, x_side], [y_split, y_split, y_to], **line)
        ax.plot([main], [y_split], "o", color="0.3", markersize=3.5, zorder=2)
        arrow(x_side, y_to, x_to, y_to)

    def chain(x, items, first_row):
        for k, (text, kind) in enumerate(items):
            box(x, rows[first_row + k], text, kind)
            if k:
                arrow(x, rows[first_row + k - 1], x, rows[first_row + k])

    stride = 2 if reduction else 1
    # Half 1: sign of the rescaled input, 3x3 binary conv, x alpha, + shortcut, RPReLU.
    # Each RSign has its own bias (b₁, b₂), each RPReLU its own shifts and slope.
    chain(main, [("x   (C×H×W)", "io"), ("× 1/$\\beta_{l,1}$", "real"), ("RSign₁: sign(· + b₁)", "binary"),
                 (f"3×3 binary conv, stride {stride}\n(scaled WS · gain)", "binary"),
                 ("× α", "real"), ("+", "real"), ("RPReLU₁  → y", "real"),
                 ("× 1/$\\beta_{l,2}$", "real"), ("RSign₂: sign(· + b₂)", "binary")], 0)
    # The half-1 shortcut is x itself, or avgpool(x/β_{l,1}) in a reduction block.
    skip(rows[1] if reduction else rows[0], rows[5], left, main)
    if reduction:
        box(left, (rows[1] + rows[5]) / 2, "avgpool\n2×2", "real")
    # Half 2: one 1x1 conv, or two on the same signs (concatenated: 2C channels).
    columns = [main - 0.2, main + 0.2] if reduction else [main]
    split, join = (rows[8] + rows[9]) / 2, (rows[11] + rows[12]) / 2
    if reduction:   # the signs fork to both 1x1 convs; both sums meet at the concat
        ax.plot([main, main], [rows[8], split], **line)
        ax.plot([columns[0], columns[-1]], [split, split], **line)
        ax.plot([columns[0], columns[-1]], [join, join], **line)
        ax.plot([main], [split], "o", color="0.3", markersize=3.5, zorder=2)
    for k, x in enumerate(columns):
        suffix = f" {'ab'[k]}" if reduction else ""
        chain(x, [("1×1 binary conv" + suffix, "binary"), ("× α", "real"), ("+ y", "real")], 9)
        if reduction:
            arrow(x, split, x, rows[9])
            ax.plot([x, x], [rows[11], join], **line)
        else:
            arrow(main, rows[8], x, rows[9])
        skip(rows[6], rows[11], left if k == 0 else right, x)   # y joins every 1x1 branch
    out = "out   (2C×H/2×W/2)" if reduction else "out   (C×H×W)"
    tail = ([("concat → 2C channels", "real")] if reduction else []) + [("RPReLU₂", "real"), (out, "io")]
    chain(main, tail, 12)
    arrow(main, join if reduction else rows[11], main, rows[12])
    ax.set_title("Reduction block (blocks 2, 4, 6, 12); block 1 is wired\nthe same way but with stride 1 "
                 "and shortcut x (no avgpool)" if reduction else
                 "Normal block (blocks 3, 5, 7–11, 13)")


def plot_block_diagram(title: str | None = None):
    """The two ReActNet-A block types of the BN-free (``bf``) network, as a diagram.

    Left a normal block, right a reduction block (stride-2 3×3 conv,
    average-pooled shortcut, two 1×1 convs concatenated to 2C channels);
    block 1 doubles its channels like the right drawing but with stride 1
    and ``x`` itself as the first shortcut, as its panel title says.
    Binary operations (±1 inputs) are orange, real-valued per-channel or
    elementwise ones blue. Drawn from the wiring of
    :class:`bnn_helpers.models.reactnet_a.ReActBlockA`; no model is built.
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 8), layout="constrained")
    for ax, reduction in zip(axes, (False, True)):
        _draw_block(ax, reduction)
    fig.legend(handles=[Patch(fc=_KIND_COLORS["binary"], ec="0.35",
                              label="binary (±1 in; ±1·scale weights in step 2)"),
                        Patch(fc=_KIND_COLORS["real"], ec="0.35",
                              label="real-valued, per channel or elementwise")],
               loc="outside lower center", ncols=2, frameon=False)
    fig.suptitle(title or "BN-free ReActNet-A block (mode bf), no normalization anywhere\n"
                          "α = 0.2; $\\beta_{l,1}$, $\\beta_{l,2}$ = predicted input std of block l's two halves "
                          "(the code stores beta1, beta2 = 1/β)")
    return fig


_SPEED_PATHS = {"float": "float simulation", "reference": "packed reference",
                "native": "packed, native kernel"}


def _wrap_at_commas(text: str, width: int) -> str:
    """Break ``text`` into lines only after its commas, each line at most ``width``
    characters where the pieces allow: "digits bf, batch 64" -> "digits bf,\nbatch 64"."""
    lines = []
    for piece in text.split(", "):
        if lines and len(lines[-1]) + 2 + len(piece) <= width:
            lines[-1] += ", " + piece
        else:
            if lines:
                lines[-1] += ","
            lines.append(piece)
    return "\n".join(lines)


def plot_deployment_summary(sizes: pd.DataFrame, real_ops: pd.DataFrame, latency: pd.DataFrame,
                            ops_network: str = "ReActNet-A", title: str | None = None):
    """Three panels: model size, real-valued operations per block, inference speed.

    The ops panel spans the top row, size and speed share the bottom row;
    ``fig.axes`` stays in the order size, ops, speed.

    ``sizes``: rows with ``model``, ``norm``, ``float32 MB``, ``packed MB``.
    ``real_ops``: real-valued operations per image, index = part (stem,
    block1, ..., head), columns = ``(norm, stage)`` with stage ``float`` or
    ``folded`` (``complexity.inference_op_table`` pivoted); ``ops_network``
    names the network it counts. ``latency``: ms per image, index = network,
    columns among ``float``, ``reference``, ``native`` (``latency_table``
    totals pivoted). Size and speed use logarithmic y axes (the values span
    decades); the ops panel is linear, so that the quarter or so that folding
    removes shows as bar height. Mode colours (bn, bf) appear only in the ops
    panel, whose series are modes; sizes and speed paths use neutral greys.
    """
    # two rows: the wide per-block ops panel on top, size and speed below (readable at notebook width)
    fig = plt.figure(figsize=(13, 10), layout="constrained")
    grid = fig.add_gridspec(2, 2, height_ratios=[1.0, 1.1])
    axes = np.array([fig.add_subplot(grid[1, 0]), fig.add_subplot(grid[0, :]), fig.add_subplot(grid[1, 1])])
    plain_numbers = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")  # 10, not 10^1

    ax = axes[0]
    xs = np.arange(len(sizes))
    light, dark = _neutral_colors(2)          # not modes: no mode colour
    ax.bar(xs - 0.2, sizes["float32 MB"], 0.4, label="float32 checkpoint", color=light, edgecolor="black")
    ax.bar(xs + 0.2, sizes["packed MB"], 0.4, label="packed (bits + folded constants)", color=dark,
           edgecolor="black")
    for x, f, p in zip(xs, sizes["float32 MB"], sizes["packed MB"]):
        ax.text(x, f * 1.25, f"{f / p:.0f}×", ha="center", fontsize="small")   # over the pair, clear of both bars
    ax.set(yscale="log", xticks=xs, xticklabels=list(sizes["norm"]),
           ylabel="size (MB, log scale)", title="Model size: float32 checkpoint vs packed",
           ylim=(sizes["packed MB"].min() / 2, sizes["float32 MB"].max() * 8))
    for model in dict.fromkeys(sizes["model"]):   # one label under the bars of each model, in full
        ax.annotate(_wrap_at_commas(str(model), 20), xy=(xs[(sizes["model"] == model).to_numpy()].mean(), 0),
                    xycoords=("data", "axes fraction"), xytext=(0, -22), textcoords="offset points",
                    ha="center", va="top", fontsize="small")
    ax.set_xlabel("normalization mode, under each model", labelpad=36)

    ax = axes[1]
    series = [("bn", "float", "bn, float simulation"), ("bn", "folded", "bn, folded"),
              ("bf", "float", "bf, float simulation"), ("bf", "folded", "bf, folded")]
    xs = np.arange(len(real_ops))
    for k, ((norm, stage, label), color) in enumerate(zip(series, _label_colors([s[2] for s in series]))):
        # the mode's colour; hatched = before folding, plain = after: the pairs to compare
        ax.bar(xs + (k - 1.5) * 0.2, real_ops[(norm, stage)] / 1e6, 0.2, label=label,
               color=color, hatch="" if stage == "folded" else "//", edgecolor="white")
    values = real_ops.to_numpy() / 1e6
    ax.set(xticks=xs, xticklabels=[p.replace("block", "b") for p in real_ops.index],
           ylim=(0, values.max() * 1.3),
           xlabel="part of the network (stem, blocks 1–13, head)",
           ylabel="real-valued ops per image (millions)",
           title=f"Real-valued ops per image, {ops_network}")
    ax.legend(ncol=4, loc="upper right")

    ax = axes[2]
    paths = [p for p in _SPEED_PATHS if p in latency]
    xs = np.arange(len(latency))
    width = 0.8 / len(paths)
    for k, path in enumerate(paths):
        ax.bar(xs + (k - (len(paths) - 1) / 2) * width, latency[path], width, label=_SPEED_PATHS[path],
               color=_neutral_colors(len(_SPEED_PATHS))[list(_SPEED_PATHS).index(path)], edgecolor="black")
    ms = latency[paths].to_numpy()
    ax.set(xticks=xs, xticklabels=[_wrap_at_commas(str(n), 16) for n in latency.index], yscale="log",
           ylim=(ms.min() / 2, ms.max() * 8), xlabel="network and batch",
           ylabel="CPU ms per image (one thread, log)", title="Inference speed")
    ax.legend(loc="upper right")

    axes[0].legend(loc="upper left")
    for ax in axes[[0, 2]]:
        ax.yaxis.set_major_formatter(plain_numbers)
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    fig.suptitle(title or "Deployment: what packing buys in size, real-valued work and speed")
    return fig


# --------------------------------------------------------------------------
# exploring a parameter: a static grid always, a slider where a front end can show it
# --------------------------------------------------------------------------
def widget_frontend() -> bool:
    """True when ipywidgets imports and the kernel was started by a front end that renders widgets.

    JupyterLab / Jupyter Server set ``JPY_SESSION_NAME`` for the kernels they
    start, VS Code ``VSCODE_PID``, Colab ``COLAB_RELEASE_TAG``; papermill, nbclient
    and ``make tutorial`` set none of them, so an executed notebook gets the
    static figure only. ``BNN_WIDGETS=0`` / ``1`` overrides the guess.
    """
    forced = os.environ.get("BNN_WIDGETS")
    if forced == "0":
        return False
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None or not hasattr(shell, "kernel"):
        return False
    return forced == "1" or any(os.environ.get(k) for k in ("JPY_SESSION_NAME", "VSCODE_PID", "COLAB_RELEASE_TAG"))


def explore(draw, **sliders) -> None:
    """Redraw ``draw(**values)`` under one slider per keyword, where :func:`widget_frontend` allows.

    Each keyword is ``(min, max, step, start)`` for a float slider or a
    sequence of options for a selection slider (its first entry is the start).
    ``draw`` returns a figure. Nothing is built (and nothing drawn) without a
    front end; the caller draws the static small-multiples figure in any case,
    so the executed notebook (and a reader on a code-hosting page) sees the
    same lesson.
    """
    if not sliders:
        raise ValueError("explore needs at least one slider: name=(min, max, step, start) or name=[options]")
    if not widget_frontend():
        return
    import ipywidgets as widgets

    controls = {}
    for name, spec in sliders.items():
        if isinstance(spec, tuple) and len(spec) == 4 and all(isinstance(v, (int, float)) for v in spec):
            lo, hi, step, start = spec
            controls[name] = widgets.FloatSlider(value=start, min=lo, max=hi, step=step, description=name,
                                                 continuous_update=False)
        else:
            controls[name] = widgets.SelectionSlider(options=list(spec), description=name, continuous_update=False)

    def show(**values):
        draw(**values)
        plt.show()

    widgets.interact(show, **controls)


def plot_sign_thresholds(images: Mapping[str, np.ndarray], thresholds: Sequence[float],
                         originals: Mapping[str, np.ndarray] | None = None, title: str | None = None):
    """``sign(x − τ)`` of grey images for several thresholds τ: one row per image, one column per τ.

    ``images``: ``{name: (H, W) intensities}``. Each panel is titled with τ and
    its share of +1 pixels (white = +1, black = −1, grey = 0). ``originals``
    (``{name: RGB array}``) adds the photo itself as a first column.
    """
    if not images or not len(thresholds):
        raise ValueError("plot_sign_thresholds needs at least one image and one threshold")
    ncols = len(thresholds) + (1 if originals else 0)
    height, width = next(iter(images.values())).shape[:2]
    panel_w = 2.9
    fig, axes = plt.subplots(len(images), ncols, squeeze=False, layout="constrained",
                             figsize=(panel_w * ncols, panel_w * height / width * len(images) + 0.9))
    for row, (name, gray) in zip(axes, images.items()):
        panels = list(row)
        if originals:
            panels.pop(0).imshow(originals[name])
            row[0].set_title(f"{name}: photo")
        for ax, tau in zip(panels, thresholds):
            signs = np.sign(gray - tau)
            ax.imshow(signs, cmap="gray", vmin=-1, vmax=1)
            ax.set_title(f"{name}: τ = {tau:.2f}, {float((signs > 0).mean()):.1%} +1")
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title or "sign(x − τ): the threshold τ decides what one bit per pixel keeps (white = +1)")
    return fig


__all__ += ["widget_frontend", "explore", "plot_sign_thresholds"]


def agc_comparison_style() -> dict:
    """Keyword arguments for :func:`plot_run_comparison` in notebook 04's AGC figures.

    Labels as ``results.panel_runs`` gives them (``"AGC λ = 0.02"``, ``"no AGC"``): chance
    at 10 % (ten classes, grey), ``"no AGC"`` dashed, λ = 0.04 and 0.16 in colours other
    than ``"no AGC"``'s orange and the chance line's grey (λ = 0.16 ends on the chance
    line), and a run without AGC that never finished an epoch named in its panel ("diverged before epoch 1 ended") instead of an empty legend entry.
    """
    return dict(chance=10, styles={"no AGC": "--"}, colors={"AGC λ = 0.04": "C4", "AGC λ = 0.16": "C3"},
                unfinished_notes={"no AGC": "diverged before epoch 1 ended"})


__all__ += ["agc_comparison_style"]
