"""Reference runs shipped with the repository, as tidy tables.

Long runs take too long to repeat in a notebook, so their logs are committed
under ``results/<set>/<run>/`` (``config.yaml``, ``summary.csv`` and, when the
run tracked them, ``stats.csv``; no weights). Each set's ``README.md`` gives
the one command that regenerates it (``make reference-runs``)::

    from bnn_helpers.results import load_reference_runs
    curves = load_reference_runs("digits_20ep")            # one row per (run, step, epoch)
    stats = load_reference_runs("digits_20ep", "stats")    # one row per recorded stat
    best = best_per_step(curves)                            # best/last val top-1 per run and step

Columns added to the engine's own: ``run`` (folder name), ``mode`` (the
network's normalization mode, from its config), ``seed``.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
import yaml

from .paths import repo_root

__all__ = ["REFERENCE_SETS", "results_dir", "load_reference_runs", "best_per_step", "lead_per_seed", "seed_table", "seed_summary",
           "share_above_chance", "final_epoch", "outcomes_table", "collect_run", "read_runs", "stats_by_mode", "stats_readings",
           "saturation_readings", "mode_gaps",
           "panel_runs", "pivot_tables", "format_tables", "stats_overview",
           "format_stats_overview", "checkpoint_table", "first_and_last", "key_text", "stats_min", "sweep_tables",
           "epoch_table", "step2_dips", "mean_best", "grid_table", "paired_by_seed", "agc_sweep_readings",
           "mode_progress", "first_above", "step_top1"]

# Sets the repository ships, and the file every run of the set must have.
REFERENCE_SETS = {"digits_20ep": "summary.csv", "photos_grid": "summary.csv"}
TABLES = ("summary", "stats")


def results_dir() -> Path:
    return repo_root(Path(__file__).parent) / "results"


def load_reference_runs(name: str = "digits_20ep", table: str = "summary",
                        root: str | Path | None = None) -> pd.DataFrame:
    """Every run of the reference set ``name`` as one DataFrame (``table``: summary or stats).

    ``root`` is the folder holding the sets (default: the repository's ``results/``).
    """
    if table not in TABLES:
        raise ValueError(f"table must be one of {', '.join(TABLES)}, got {table!r}")
    folder = Path(root or results_dir()) / name
    runs = sorted(p for p in folder.glob("*/") if (p / "summary.csv").is_file())
    if not runs:
        raise FileNotFoundError(f"no reference runs under {folder}; regenerate them with "
                                f"`make reference-runs` (see {folder / 'README.md'})")
    frames = []
    for run in runs:
        config = yaml.safe_load((run / "config.yaml").read_text())
        path = run / f"{table}.csv"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; the run was not made with --track-stats true")
        frame = pd.read_csv(path)
        frame.insert(0, "seed", config["seed"])
        frame.insert(0, "mode", config["model"].rsplit("_", 1)[-1])
        frame.insert(0, "run", run.name)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def read_runs(run_dirs: Mapping, keys=("mode", "seed"), table: str = "summary") -> pd.DataFrame:
    """The ``table``.csv of several run directories as one DataFrame.

    ``run_dirs``: ``{key: run directory}``; a tuple key is spread over the
    columns named by ``keys`` (a plain key fills ``keys[0]``). A summary with
    ``elapsed_s`` (seconds since its step began) gains ``epoch_s``, the
    seconds each epoch took.
    """
    if table not in TABLES:
        raise ValueError(f"table must be one of {', '.join(TABLES)}, got {table!r}")
    if not run_dirs:
        raise ValueError("read_runs needs at least one run: {key: run directory}")
    frames = []
    for key, run in run_dirs.items():
        values = key if isinstance(key, tuple) else (key,)
        if len(values) > len(keys):
            raise ValueError(f"key {key!r} has more parts than the column names {keys!r}")
        path = Path(run) / f"{table}.csv"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; is {run} a finished training run?")
        frames.append(pd.read_csv(path).assign(**dict(zip(keys, values))))
    runs = pd.concat(frames, ignore_index=True)
    if table == "summary" and "elapsed_s" in runs.columns:
        by = [k for k in keys if k in runs.columns] + ["step"]
        runs["epoch_s"] = runs.groupby(by)["elapsed_s"].diff().fillna(runs["elapsed_s"])
    return runs


def best_per_step(summary: pd.DataFrame, by=("mode", "seed")) -> pd.DataFrame:
    """Best and last-epoch val top-1 of every run and step (columns best, last).

    ``by`` names the columns that identify a run (a sweep adds ``setting``).
    """
    ordered = summary.sort_values(["run", "step", "epoch"])
    grouped = ordered.groupby([*by, "step"])["val_top1"]
    return pd.DataFrame({"best": grouped.max(), "last": grouped.last()}).reset_index()


def step_top1(runs: pd.DataFrame, by=("norm",)) -> pd.DataFrame:
    """Best and last-epoch val top-1 per run and training step, rounded to 0.1 point.

    ``runs``: :func:`read_runs` output (one row per epoch). Index (``by``...,
    ``step``); columns ``best_val_top1`` and ``last_val_top1``.
    """
    grouped = runs.groupby([*by, "step"])
    return grouped.agg(best_val_top1=("val_top1", "max"), last_val_top1=("val_top1", "last")).round(1)


def lead_per_seed(best: pd.DataFrame, leader: str, other: str, value: str = "best") -> pd.DataFrame:
    """``leader``'s ``value`` minus ``other``'s, one row per seed, one column per step (points).

    ``best``: a :func:`best_per_step` table (columns mode, seed, step and ``value``).
    """
    wide = best.pivot_table(index="seed", columns=["step", "mode"], values=value)
    return wide.xs(leader, axis=1, level="mode") - wide.xs(other, axis=1, level="mode")


def seed_table(runs: pd.DataFrame, by: str, value: str) -> pd.DataFrame:
    """Mean, standard deviation over seeds, min and max of ``value`` per ``by`` group.

    ``runs``: one row per run (e.g. columns estimator, seed, val_top1). The
    standard deviation is the sample one (``ddof=1``), NaN for a group with one
    run; groups keep their order of first appearance.
    """
    grouped = runs.groupby(by, sort=False)[value]
    table = grouped.agg(["mean", "min", "max"])
    table.insert(1, "std", grouped.std(ddof=1))
    return table


def seed_summary(best: pd.DataFrame, order=None) -> pd.DataFrame:
    """Mean, sample std, min, max and count over seeds, one row per (mode, step), plus two printable columns.

    ``best``: one row per (mode, seed), one column per step (e.g. the best val top-1
    of each run and step, ``summary.groupby(["mode", "seed", "step"])["val_top1"].max().unstack("step")``).
    Returns the columns ``mean``, ``std`` (ddof 1; NaN for one seed), ``min``, ``max``,
    ``seeds``, ``"mean ± std"`` (``"80.2 ± 1.6"``, or ``"80.2"`` for one seed) and
    ``"min–max"``, indexed by (mode, step); ``order`` lists the modes in display order.
    """
    if best.index.nlevels < 2:
        raise ValueError("seed_summary needs one row per (mode, seed): index levels (mode, seed)")
    long = best.stack().rename("value").reset_index()
    mode, step = best.index.names[0] or "level_0", long.columns[-2]
    table = seed_table(long, [mode, step], "value").sort_index()   # mean, std, min, max
    table["seeds"] = long.groupby([mode, step])["value"].count()
    if order is not None:
        table = table.reindex(list(order), level=0)
    table["mean ± std"] = [f"{m:.1f}" if pd.isna(s) else f"{m:.1f} ± {s:.1f}" for m, s in zip(table["mean"], table["std"])]
    table["min–max"] = [f"{a:.1f}–{b:.1f}" for a, b in zip(table["min"], table["max"])]
    return table.rename_axis(["mode", "step"])


def share_above_chance(accuracy, reference, chance: float):
    """The part of ``reference``'s accuracy above chance that ``accuracy`` still has above chance.

    ``(accuracy − chance) / (reference − chance)``: 1 = all of it, 0 = back at chance,
    negative = below chance. Works on numbers, numpy arrays and pandas objects (aligned
    by index). Accuracies in the same unit as ``chance`` (e.g. percent and 10 for ten classes).
    """
    return (accuracy - chance) / (reference - chance)


def stats_by_mode(stats: pd.DataFrame, order=None, seed=None) -> pd.DataFrame:
    """One row per mode summarizing training statistics (the rows of several runs' ``stats.csv``).

    ``stats``: ``read_runs(runs, keys=("mode", "seed"), table="stats")`` (columns mode, seed,
    step, optimizer_step and the ``StatsRecorder`` columns). Per mode:

    * ``flip_step1``, ``flip_step2``: mean flip ratio per optimizer step in each training step;
    * ``balance_min``, ``balance_max``: range of the weight sign balance's per-step means;
    * ``balance_start``, ``balance_end``: the weight sign balance of ``seed`` (default: the
      smallest seed) in its first recorded row of step 1 and its last of step 2;
    * ``act_min``, ``act_max``: range of the activation sign balance's per-step means;
    * ``agc_clip_share``: mean AGC clipped share over all rows.

    Means run over all seeds' rows. ``order`` lists the modes in display order.
    """
    per_step = stats.groupby(["mode", "step"])[["flip_ratio", "weight_sign_balance", "act_sign_balance"]].mean()
    flips = per_step["flip_ratio"].unstack("step")
    seed = stats["seed"].min() if seed is None else seed
    one = stats[stats["seed"] == seed].sort_values(["step", "optimizer_step"]).groupby("mode")["weight_sign_balance"]
    by_mode = per_step.groupby(level="mode")
    table = pd.DataFrame({
        "flip_step1": flips.get(1), "flip_step2": flips.get(2),
        "balance_min": by_mode["weight_sign_balance"].min(), "balance_max": by_mode["weight_sign_balance"].max(),
        "balance_start": one.first(), "balance_end": one.last(),
        "act_min": by_mode["act_sign_balance"].min(), "act_max": by_mode["act_sign_balance"].max(),
        "agc_clip_share": stats.groupby("mode")["agc_clip_share"].mean()})
    return table.reindex(list(order)) if order is not None else table


def _readings(rows) -> pd.DataFrame:
    """``[(reading, measured text, bound text, holds)]`` -> a table indexed by reading."""
    table = pd.DataFrame(rows, columns=["reading", "measured", "bound", "holds"]).set_index("reading")
    table["holds"] = table["holds"].astype(bool)
    return table


def stats_readings(by_mode: pd.DataFrame) -> pd.DataFrame:
    """Notebook 06's readings of the digits training statistics, each checked against its bound.

    ``by_mode``: ``stats_by_mode(...)`` with rows ``bn``, ``none``, ``bf``. Returns one row per
    reading with the numbers compared (``measured``), the ``bound`` they are held to and
    ``holds`` (bool). The bounds leave margins of several times the measured differences (seeds, CPUs):
    weight signs balanced; ``none`` drifting below ½ at the end; activation signs unbalanced and
    closest to ½ in ``none``; under 1 % flips per step in step 2; ``bn`` and ``none`` flipping alike
    in step 1 and ``bf`` over 4× less; AGC clipping ``bf`` < ``none`` < ``bn``.
    """
    flip1, clip = by_mode["flip_step1"], by_mode["agc_clip_share"]
    balance = by_mode[["balance_min", "balance_max", "balance_start"]]
    others = by_mode.drop("none")
    lo, hi = balance.min().min(), balance.max().max()
    act_lo, act_hi = by_mode["act_min"].min(), by_mode["act_max"].max()
    end_none, end_others = by_mode.loc["none", "balance_end"], others["balance_end"].min()
    act_none, act_others = by_mode.loc["none", "act_max"], others["act_min"].min()
    flip2 = by_mode["flip_step2"].max()
    alike = abs(flip1["bn"] / flip1["none"] - 1)
    fewer = min(flip1["bn"], flip1["none"]) / flip1["bf"]
    return _readings([
        ("weight signs balanced", f"{lo:.4f}–{hi:.4f}", "within 0.49–0.51", lo > 0.49 and hi < 0.51),
        ("none's weight signs drift below 1/2", f"none {end_none:.4f}, others ≥ {end_others:.4f}",
         "none < others − 0.004", end_none < end_others - 0.004),
        ("activation signs unbalanced", f"{act_lo:.4f}–{act_hi:.4f}", "within 0.55–0.8",
         act_lo > 0.55 and act_hi < 0.8),
        ("activations closest to 1/2 in none", f"none ≤ {act_none:.4f}, others ≥ {act_others:.4f}",
         "none's max < others' min", act_none < act_others),
        ("step 2: few flips per step", f"at most {flip2:.4f}", "< 0.01", flip2 < 0.01),
        ("step 1: bn and none flip alike", f"differ by {alike:.1%}", "< 25 %", alike < 0.25),
        ("step 1: bf flips less", f"{fewer:.1f}× less", "> 4×", fewer > 4),
        ("AGC clips bf < none < bn", f"{clip['bf']:.2f} < {clip['none']:.2f} < {clip['bn']:.2f}",
         "ordered; bn > 0.9, bf < 0.5", clip["bf"] < clip["none"] < clip["bn"] and clip["bn"] > 0.9 and clip["bf"] < 0.5)])


def saturation_readings(stream: pd.DataFrame, window: pd.DataFrame, plus: pd.DataFrame) -> pd.DataFrame:
    """Notebook 06's readings of sign saturation in the photo networks, each checked against its bound.

    The three tables come from ``diagnostics.signal_by_position(..., blocks_only=True)``: rows are
    blocks 1..13, columns ``"{mode} · init"`` (the step-1 network at initialisation, where training
    starts) and ``"{mode} · trained"`` (step 2, trained) for ``bn``, ``none``, ``bf``.
    ``stream``: residual-stream variance after each block (``avg_var``); ``window``: share of the
    signs' shifted inputs with |x + b| < 1 (``sign_window``); ``plus``: share of +1 signs
    (``sign_balance``). Returns one row per reading with ``measured``, ``bound`` and ``holds``.
    Block 11 is the last block before the reduction block 12, whose pooled shortcut lowers the variance.
    """
    trained = [f"{m} · trained" for m in ("bn", "none", "bf")]
    inside_trained = window[["none · trained", "bf · trained"]].min().min()
    growth = stream.loc[11, "none · trained"] / stream.loc[1, "none · trained"]
    big11, bf11 = stream.loc[11, ["none · trained", "bn · trained"]].min(), stream.loc[11, "bf · trained"]
    start_none, start_bn = window.loc[9:, "none · init"].max(), window["bn · init"].min()
    bn_min, bn_13 = window["bn · trained"].min(), window.loc[13, "bn · trained"]
    bf13_init, bf13 = plus.loc[13, "bf · init"], plus.loc[13, "bf · trained"]
    p_lo, p_hi = plus[trained].min().min(), plus[trained].max().max()
    return _readings([
        ("trained none: stream grows, block 1 to 11", f"{growth:.1f}×", "> 10×", growth > 10),
        ("trained none and bn vs bf: stream at block 11", f"≥ {big11:.1f} vs {bf11:.1f}", "> 2× bf's",
         big11 > 2 * bf11),
        ("start none: in window, blocks 9-13", f"at most {start_none:.2f}", "< 0.5", start_none < 0.5),
        ("start bn: in window, lowest block", f"{start_bn:.2f}", f"< start none's {window['none · init'].min():.2f}",
         start_bn < window["none · init"].min()),
        ("trained none and bf: in window, every block", f"at least {inside_trained:.2f}", "> 0.5",
         inside_trained > 0.5),
        ("trained bn: in window, lowest block", f"{bn_min:.2f}", f"< {inside_trained:.2f} − 0.1",
         bn_min < inside_trained - 0.1),
        ("trained bn: in window, block 13", f"{bn_13:.2f}", "< 0.5", bn_13 < 0.5),
        ("bf block 13: share of +1, start → trained", f"{bf13_init:.2f} → {bf13:.2f}", "drops by > 0.2",
         bf13 < bf13_init - 0.2),
        ("trained blocks: share of +1", f"{p_lo:.2f}–{p_hi:.2f}", "within 0.3–0.9 (none constant)",
         p_lo > 0.3 and p_hi < 0.9)])


def mode_gaps(accuracy: pd.DataFrame) -> pd.DataFrame:
    """Gaps between the three modes, one row per row of ``accuracy`` (e.g. per setting of a sweep).

    ``accuracy``: columns ``bn``, ``none``, ``bf`` (e.g. best step-2 top-1, mean over seeds).
    Returns the columns ``spread`` (best minus worst mode), ``none below bn``,
    ``none below bf`` and ``bf above bn``, in the unit of ``accuracy`` (points).
    """
    missing = {"bn", "none", "bf"} - set(accuracy.columns)
    if missing:
        raise ValueError(f"mode_gaps needs the columns bn, none, bf; missing {sorted(missing)}")
    modes = accuracy[["bn", "none", "bf"]]
    return pd.DataFrame({"spread": modes.max(axis=1) - modes.min(axis=1),
                         "none below bn": modes["bn"] - modes["none"],
                         "none below bf": modes["bf"] - modes["none"],
                         "bf above bn": modes["bf"] - modes["bn"]})


def final_epoch(run_dir: str | Path) -> dict:
    """A run's last epoch in one row: epochs done, final train loss and val top-1, mean AGC clipped share.

    A run that stopped before its first epoch ended (no ``summary.csv`` or no
    rows: it diverged at once) gives 0 epochs and NaN for the rest; the clipped
    share is NaN for a run without AGC.
    """
    path = Path(run_dir) / "summary.csv"
    summary = pd.read_csv(path) if path.is_file() else pd.DataFrame()
    if not len(summary):
        return {"epochs done": 0, "final train loss": float("nan"), "final val top-1 %": float("nan"),
                "mean clipped share": float("nan")}
    last = summary.iloc[-1]
    share = summary["agc_clip_share"].mean() if "agc_clip_share" in summary else float("nan")
    return {"epochs done": len(summary), "final train loss": float(last.get("train_loss", float("nan"))),
            "final val top-1 %": float(last.get("val_top1", float("nan"))), "mean clipped share": float(share)}


def key_text(value) -> str:
    """A run key's part as :func:`outcomes_table` writes it: a number with ``:g``
    (``0.02`` -> ``"0.02"``), ``None`` as ``"off"``, anything else with ``str``."""
    return "off" if value is None else f"{value:g}" if isinstance(value, (int, float)) else str(value)


def stats_min(run_dirs: Mapping[str, str | Path], column: str) -> pd.Series:
    """``{label: smallest value of column in the run's stats.csv}`` for ``{label: run directory}``
    (e.g. the smallest per-step ``agc_clip_share`` of each run)."""
    return pd.Series({label: float(pd.read_csv(Path(run) / "stats.csv")[column].min())
                      for label, run in run_dirs.items()}, dtype=float)


def outcomes_table(runs: Mapping, keys=("setting",)) -> pd.DataFrame:
    """One row per training run: its key, how it ended, and its :func:`final_epoch`.

    ``runs``: ``{key: outcome}`` with outcomes of
    :func:`bnn_helpers.train.run_or_load_outcome` (``run_dir``, ``diverged``,
    ``message``); a tuple key is spread over the columns named by ``keys``.
    Key parts are written as text, so that they index a pivot: numbers with
    ``:g``, ``None`` as ``"off"``. Columns: the keys, ``outcome`` ("finished" or
    "diverged"), ``stopped at`` (where a diverged run stopped, else ""), the
    columns of :func:`final_epoch`, and ``run_dir``.
    """
    if not runs:
        raise ValueError("outcomes_table needs at least one run: {key: outcome}")
    rows = []
    for key, (run_dir, diverged, message) in runs.items():
        values = key if isinstance(key, tuple) else (key,)
        if len(values) != len(keys):
            raise ValueError(f"key {key!r} does not match the column names {tuple(keys)!r}")
        rows.append({**{k: key_text(v) for k, v in zip(keys, values)},
                     "outcome": "diverged" if diverged else "finished", "stopped at": message if diverged else "",
                     **final_epoch(run_dir), "run_dir": Path(run_dir)})
    return pd.DataFrame(rows)


def panel_runs(table: pd.DataFrame, where: Mapping[str, str], column: str, values,
               label="{column} = {value}") -> dict[str, Path]:
    """``{label: run_dir}`` of the rows of an :func:`outcomes_table` that match ``where``,
    one per entry of ``values`` in ``column``, in that order (values without a row are skipped).

    ``label``: a format string with ``{column}`` and ``{value}``, a mapping
    ``{value: label}`` (missing values fall back to the default format), or a callable
    ``value -> label``. Feeds :func:`bnn_helpers.plotting.plot_run_comparison` and
    :func:`bnn_helpers.plotting.plot_training_stats`.
    """
    rows = table
    for key, wanted in where.items():
        rows = rows[rows[key] == wanted]
    chosen = dict(zip(rows[column], rows["run_dir"]))

    def name(value):
        if callable(label):
            return label(value)
        if isinstance(label, Mapping):
            return label.get(value, f"{column} = {value}")
        return label.format(column=column, value=value)

    return {name(v): Path(chosen[v]) for v in values if v in chosen}


def pivot_tables(table: pd.DataFrame, index: str, columns: str, values) -> dict[str, pd.DataFrame]:
    """``{value column: table.pivot(index, columns, value column)}`` for each of ``values``."""
    return {value: table.pivot(index=index, columns=columns, values=value) for value in values}


def sweep_tables(table: pd.DataFrame, index: str, columns: str, values,
                 digits: int = 3) -> tuple[dict[str, pd.DataFrame], str]:
    """An :func:`outcomes_table` as one grid per measure, for reading and for asserts.

    Returns ``(tables, text)``: ``tables`` is :func:`pivot_tables` of ``values``
    plus ``"outcome"`` (``{name: rows index x columns columns}``); ``text`` is
    :func:`format_tables` of the ``values`` grids, followed by one line per
    diverged run (its index, its column and where it stopped), or "no run diverged".
    """
    tables = pivot_tables(table, index, columns, [*values, "outcome"])
    text = format_tables({v: tables[v] for v in values}, digits)
    stopped = table[table["outcome"] == "diverged"]
    lines = [f"{row[index]}, {columns} {row[columns]}: {row['stopped at']}" for _, row in stopped.iterrows()]
    return tables, text + "\n\n" + ("diverged: " + "; ".join(lines) if lines else "no run diverged")


def format_tables(tables: Mapping[str, pd.DataFrame], digits: int = 3) -> str:
    """Tables one after another, each under its name with the row and column axis names;
    numbers to ``digits`` significant digits, missing entries as "-"."""
    blocks = []
    for name, frame in tables.items():
        axes = f" (rows: {frame.index.name}, columns: {frame.columns.name})" if frame.index.name else ""
        body = frame.to_string(float_format=lambda v: f"{v:.{digits}g}", na_rep="-")
        blocks.append(f"{name}{axes}\n{body}")
    return "\n\n".join(blocks)


def collect_run(run_dir: str | Path, name: str, set_name: str = "digits_20ep",
                root: str | Path | None = None) -> Path:
    """Copy a finished run's logs (not its weights) into ``<root>/<set_name>/<name>/``."""
    run_dir = Path(run_dir)
    target = Path(root or results_dir()) / set_name / name
    target.mkdir(parents=True, exist_ok=True)
    for file in ("config.yaml", "summary.csv", "stats.csv"):
        if (run_dir / file).is_file():
            shutil.copy2(run_dir / file, target / file)
    return target


def stats_overview(stats: pd.DataFrame) -> dict:
    """The numbers a ``stats.csv`` figure is read by (one row per recorded optimizer step).

    Returns a dict: ``first_act_missing`` (the activation sign balance is empty
    in the first row of every training step: one bool per step),
    ``act_recorded`` (non-empty activation-balance rows) and ``rows``,
    ``weight_balance`` / ``act_balance`` / ``agc_clip_share`` as (min, max),
    ``last_step1_flip`` and ``first_step2_flip`` (flip ratio of the last row of
    step 1 and of the first row of step 2; NaN without step 2) and
    ``epoch2_below_epoch1`` (per step with two or more epochs: every flip ratio
    of epoch 2 lies below every one of epoch 1).
    """
    first = stats.groupby("step").head(1)
    flips = stats.groupby(["step", "epoch"]).flip_ratio
    high, low = flips.max(), flips.min()
    later = {step: bool(high[step, 2] < low[step, 1]) for step in stats.step.unique()
             if (step, 2) in high.index and (step, 1) in low.index}
    step2 = first[first.step == 2].flip_ratio
    return {"first_act_missing": first.act_sign_balance.isna().tolist(),
            "act_recorded": int(stats.act_sign_balance.count()), "rows": len(stats),
            "weight_balance": (stats.weight_sign_balance.min(), stats.weight_sign_balance.max()),
            "act_balance": (stats.act_sign_balance.min(), stats.act_sign_balance.max()),
            "agc_clip_share": (stats.agc_clip_share.min(), stats.agc_clip_share.max()),
            "last_step1_flip": float(stats[stats.step == 1].flip_ratio.iloc[-1]),
            "first_step2_flip": float(step2.iloc[0]) if len(step2) else float("nan"),
            "epoch2_below_epoch1": later}


def first_and_last(stats: pd.DataFrame, column: str, by=("mode", "step", "seed")) -> pd.DataFrame:
    """First and last recorded value of ``column`` per run, in optimizer-step order.

    ``stats``: a ``stats.csv`` table (``load_reference_runs(..., "stats")``), one
    row per recorded optimizer step. Returns one row per group of ``by`` (by
    default one training step of one run) with columns ``first_step`` (the
    optimizer step of the first record), ``first`` and ``last``. Empty cells
    (the activation balance of a step's first row) are skipped.
    """
    rows = stats.dropna(subset=[column]).sort_values("optimizer_step")
    return rows.groupby(list(by)).agg(first_step=("optimizer_step", "first"),
                                      first=(column, "first"), last=(column, "last"))


def format_stats_overview(o: dict) -> str:
    """The numbers of :func:`stats_overview` as four printed lines, one per figure panel."""
    (w_lo, w_hi), (a_lo, a_hi), (c_lo, c_hi) = o["weight_balance"], o["act_balance"], o["agc_clip_share"]
    return "\n".join([
        f"flip ratio: last step-1 value {o['last_step1_flip']:.1e}, first step-2 value {o['first_step2_flip']:.1e}; "
        f"epoch 2 below epoch 1 (per step): {({int(k): v for k, v in o['epoch2_below_epoch1'].items()})}",
        f"weight sign balance: {w_lo:.5f}–{w_hi:.5f}",
        f"activation sign balance: {a_lo:.2f}–{a_hi:.2f}; empty in the first row of each step: "
        f"{o['first_act_missing']} ({o['act_recorded']} of {o['rows']} rows recorded)",
        f"AGC clipped share: {c_lo:.1%}–{c_hi:.1%}"])


def checkpoint_table(run_dir: str | Path) -> pd.DataFrame:
    """One row per engine checkpoint ``step*/{last,best}.pth`` of a run directory.

    Columns: ``file`` (relative to ``run_dir``), ``step``, ``epoch``,
    ``best_top1``, ``num_classes`` (as stored in the checkpoint) and, from the
    config the checkpoint carries, ``model``, ``loss`` and ``agc``.
    """
    from .checkpoints import read_checkpoint

    run_dir, rows = Path(run_dir), []
    for path in sorted(run_dir.glob("step*/*.pth")):
        ckpt = read_checkpoint(path)
        rows.append({"file": path.relative_to(run_dir).as_posix(), "step": ckpt["step"], "epoch": ckpt["epoch"],
                     "best_top1": ckpt["best_top1"], "num_classes": ckpt["num_classes"],
                     **{key: ckpt["config"].get(key) for key in ("model", "loss", "agc")}})
    return pd.DataFrame(rows)


def epoch_table(run_dirs: Mapping[str, str | Path], columns=("val_top1", "val_loss")) -> pd.DataFrame:
    """Per-epoch columns of several runs side by side: one row per epoch, columns ``"{label} {column}"``.

    ``run_dirs``: ``{label: run folder}`` (each with a ``summary.csv``, one row per
    epoch of a one-step run). Columns are grouped by ``columns``, then by label, so
    that e.g. every run's ``val_top1`` stands next to the others'.
    """
    logs = {label: pd.read_csv(Path(d) / "summary.csv").set_index("epoch") for label, d in run_dirs.items()}
    return pd.DataFrame({f"{label} {column}": log[column] for column in columns for label, log in logs.items()})


def step2_dips(name: str = "digits_20ep", modes=("bn", "none"), seeds=(0, 1, 2)) -> pd.DataFrame:
    """Val top-1 lost when step 2 starts, per seed (rows) and mode (columns), in points.

    For each reference run ``{mode}_s{seed}`` of set ``name``: the val top-1 of step 1's
    last epoch minus that of step 2's first epoch (positive: a drop).
    """
    def dip(mode, seed):
        log = pd.read_csv(results_dir() / name / f"{mode}_s{seed}" / "summary.csv")
        return log[log.step == 1].val_top1.iloc[-1] - log[log.step == 2].val_top1.iloc[0]
    return pd.DataFrame({m: [dip(m, s) for s in seeds] for m in modes}, index=pd.Index(list(seeds), name="seed"))


def mean_best(best: pd.DataFrame, modes=None, value: str = "best") -> pd.DataFrame:
    """Mean over seeds of ``value`` (a :func:`best_per_step` column): one row per mode, one column per step.

    ``modes`` keeps (and orders) only those modes; ``None`` keeps all.
    """
    table = best.pivot_table(index="mode", columns="step", values=value)
    return table if modes is None else table.loc[list(modes)]


def grid_table(measure, index: Mapping, columns: Mapping) -> pd.DataFrame:
    """``measure(row value, column value)`` for every pair, as a table labelled by the keys.

    ``index`` and ``columns`` map a label to the value passed to ``measure``::

        grid_table(lambda opt, clip: moved(*opt, clip),
                   {"Adam": (torch.optim.Adam, {"lr": 5e-4})}, {"no AGC": False, "AGC": True})

    gives one row ("Adam") and two columns ("no AGC", "AGC").
    """
    return pd.DataFrame([[measure(r, c) for c in columns.values()] for r in index.values()],
                        index=list(index), columns=list(columns))


def paired_by_seed(table: pd.DataFrame, column: str, on: str, off: str,
                   value: str = "final val top-1 %", difference: str = "on − off") -> pd.DataFrame:
    """One row per seed of an :func:`outcomes_table` with ``seed`` and ``column`` keys:
    ``value`` of the run with ``column == on``, of the run with ``column == off``, and
    their difference (column ``difference``); the column axis is named ``column``."""
    grid = table.pivot(index="seed", columns=column, values=value)[[on, off]]
    grid[difference] = grid[on] - grid[off]
    return grid


def agc_sweep_readings(grids: Mapping[str, pd.DataFrame], lam: str, stable=("adam", "sgd"),
                       high: str = "sgd, high") -> pd.Series:
    """Notebook 04's readings of its AGC runs, as named numbers to print and assert.

    ``grids``: the ``tables`` of :func:`sweep_tables` (rows: setting, columns: AGC λ as
    text, ``"off"`` without AGC) with ``final val top-1 %``, ``final train loss``,
    ``mean clipped share`` and ``outcome``; ``lam`` is the paper's λ as text ("0.02").
    The ``stable`` settings ("stable runs") are read at ``lam`` and without AGC; the
    ``high`` setting ("high lr") at every λ of its row (the sweep): "λ ≤ paper's" are the
    λ up to ``lam``, "largest λ" the sweep's largest.
    """
    top1, loss, share, outcome = (grids[k] for k in ("final val top-1 %", "final train loss",
                                                      "mean clipped share", "outcome"))
    pair = top1.loc[list(stable), [lam, "off"]]
    swept = [c for c in top1.columns if c != "off" and pd.notna(top1.loc[high, c])]
    small = [c for c in swept if float(c) <= float(lam)]
    largest = max(swept, key=float)
    at_lam = share.loc[[*stable, high], lam]
    return pd.Series({
        "stable runs: lowest final top-1 %": float(pair.min().min()),
        "stable runs: largest |AGC − no AGC| (pp)": float((pair[lam] - pair["off"]).abs().max()),
        "high lr, λ ≤ paper's: lowest final top-1 %": float(top1.loc[high, small].min()),
        "high lr, no AGC: diverged (1 = yes)": float(outcome.loc[high, "off"] == "diverged"),
        "high lr, λ below the largest: diverged runs": float((outcome.loc[high, [c for c in swept if c != largest]] == "diverged").sum()),
        "high lr, largest λ: final top-1 %": float(top1.loc[high, largest]),
        "high lr, largest λ: final train loss": float(loss.loc[high, largest]),
        "paper's λ: smallest mean clipped share": float(at_lam.min()),
        "paper's λ: largest mean clipped share": float(at_lam.max())})


def mode_progress(summary: pd.DataFrame, order=None) -> pd.DataFrame:
    """How far each mode got in a set of two-step runs, one row per mode (notebook 06, section 3).

    ``summary``: ``read_runs(runs, keys=("mode", "seed"))`` (columns mode, seed, step, epoch,
    val_top1). Columns, val top-1 in % and gaps in points:

    * ``worst run``: the lowest best-of-step val top-1 over all seeds and both steps;
    * ``step-1 best``: the best step-1 val top-1, mean over seeds;
    * ``step-1 above bn``: that minus ``bn``'s (NaN without a ``bn`` row);
    * ``step-2 gain``: last minus first step-2 epoch, mean over seeds (still rising if > 0).

    ``order`` lists the modes in display order.
    """
    best = summary.groupby(["mode", "seed", "step"])["val_top1"].max()
    step1 = best.xs(1, level="step").groupby("mode").mean()
    step2 = summary[summary["step"] == 2].sort_values("epoch").groupby(["mode", "seed"])["val_top1"]
    table = pd.DataFrame({"worst run": best.groupby("mode").min(), "step-1 best": step1,
                          "step-1 above bn": step1 - step1.get("bn", np.nan),
                          "step-2 gain": (step2.last() - step2.first()).groupby("mode").mean()})
    return table.reindex(list(order)) if order is not None else table


def first_above(per_epoch: pd.Series, threshold: float) -> tuple:
    """``(epoch, value)`` of the first epoch whose value exceeds ``threshold``; ``(nan, nan)`` if none does.

    ``per_epoch``: e.g. val top-1 indexed by epoch, in epoch order.
    """
    above = per_epoch[per_epoch > threshold]
    return (above.index[0], above.iloc[0]) if len(above) else (np.nan, np.nan)


if __name__ == "__main__":  # python -m bnn_helpers.results RUN_DIR NAME [SET]
    import sys

    if len(sys.argv) not in (3, 4):
        sys.exit("usage: python -m bnn_helpers.results RUN_DIR NAME [SET]")
    print(collect_run(*sys.argv[1:]))
