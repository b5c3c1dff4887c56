"""Run a grid of training settings x normalization modes x seeds, and tabulate it.

A sweep file (``configs/sweeps/*.yaml``) names one config per mode and the
settings to try, each a set of config overrides::

    name: photos_grid                      # results/<name>/ and Figs/<name>.png
    config: configs/photos/reactnet_a_{mode}.yaml
    modes: [bn, none, bf]
    seeds: [0, 1, 2]
    settings:
      adam_5e-4: {optimizer: adam, lr: 5.0e-4}
      sgd_0.1:   {optimizer: sgd, lr: 0.1}

Every run goes through the engine (``python -m bnn_helpers.train``, one thread
each, ``--jobs`` at a time) with ``--track-stats true``; its logs (not its
weights) land in ``results/<name>/<setting>_<mode>_s<seed>/`` with a
``sweep.yaml`` (setting, overrides, wall minutes). Finished runs are skipped,
so an interrupted sweep continues where it stopped. At the end ``grid.csv``
(one row per setting and mode: best and last val top-1 of each step, mean and
std over seeds, minutes per run) and a figure are written::

    python -m bnn_helpers.sweep configs/sweeps/photos_grid.yaml               # everything
    python -m bnn_helpers.sweep configs/sweeps/photos_grid.yaml --seeds 0     # a first pass
    python -m bnn_helpers.sweep configs/sweeps/photos_grid.yaml --table-only  # re-tabulate
"""
from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import yaml

from .config import TrainError
from .paths import repo_root, runs_dir
from .plotting import savefig
from .results import best_per_step, collect_run, load_reference_runs, results_dir

__all__ = ["load_sweep", "planned_runs", "load_grid", "grid_table", "plot_grid", "main"]


def load_sweep(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"sweep file {str(path)!r} not found; e.g. configs/sweeps/photos_grid.yaml")
    sweep = yaml.safe_load(path.read_text())
    missing = {"name", "config", "modes", "seeds", "settings"} - set(sweep or {})
    if missing:
        raise TrainError(f"{path}: missing {', '.join(sorted(missing))} (see bnn_helpers.sweep)")
    return sweep


def planned_runs(sweep: dict, seeds=None, settings=None):
    """``(run name, setting, mode, seed, overrides)`` for every run of the grid, seed-major."""
    unknown = set(settings or ()) - set(sweep["settings"])
    if unknown:
        raise TrainError(f"unknown setting(s) {', '.join(sorted(unknown))}; the sweep has "
                         f"{', '.join(sweep['settings'])}")
    chosen = [s for s in sweep["settings"] if not settings or s in settings]
    for seed, setting, mode in itertools.product(seeds or sweep["seeds"], chosen, sweep["modes"]):
        yield f"{setting}_{mode}_s{seed}", setting, mode, seed, sweep["settings"][setting] or {}


def _finished(folder: Path) -> bool:
    return (folder / "sweep.yaml").is_file() and (folder / "summary.csv").is_file()


def _train(sweep: dict, run: tuple, scratch: Path, root: Path) -> str:
    name, setting, mode, seed, overrides = run
    run_dir = scratch / name
    cwd = repo_root(Path.cwd())
    # the run's config.yaml records --run-dir and is shipped in results/: keep it relative to the repo
    run_dir_arg = (os.path.relpath(run_dir.resolve(), cwd.resolve())
                   if run_dir.resolve().is_relative_to(cwd.resolve()) else str(run_dir))
    cmd = [sys.executable, "-m", "bnn_helpers.train", "--config", sweep["config"].format(mode=mode),
           "--seed", str(seed), "--run-dir", run_dir_arg, "--threads", "1",
           "--track-stats", "true", "--progress", "log", "--overwrite", "true"]
    for key, value in overrides.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    start = time.perf_counter()
    log = scratch / f"{name}.log"
    with open(log, "w") as out:
        rc = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
    # A run that diverges is a result, not a failure: keep the epochs it logged.
    diverged = rc != 0 and "non-finite" in log.read_text()
    if rc != 0 and not (diverged and (run_dir / "summary.csv").is_file()):
        return f"{name}: FAILED (exit {rc}; log: {log})"
    folder = collect_run(run_dir, name, sweep["name"], root)
    minutes = (time.perf_counter() - start) / 60
    (folder / "sweep.yaml").write_text(yaml.safe_dump(
        {"setting": setting, "mode": mode, "seed": seed, "overrides": overrides,
         "wall_minutes": round(minutes, 2), "diverged": diverged}, sort_keys=False))
    return f"{name}: {'diverged' if diverged else 'done'} in {minutes:.1f} min"


def load_grid(name: str, root: str | Path | None = None, table: str = "summary") -> pd.DataFrame:
    """Every run of sweep ``name`` (its ``summary`` or ``stats`` rows) with its setting and wall minutes."""
    root = Path(root or results_dir())
    runs = load_reference_runs(name, table=table, root=root)
    meta = {run: yaml.safe_load((root / name / run / "sweep.yaml").read_text())
            for run in runs["run"].unique()}
    runs.insert(1, "setting", runs["run"].map(lambda r: meta[r]["setting"]))
    runs["wall_minutes"] = runs["run"].map(lambda r: meta[r]["wall_minutes"])
    runs["diverged"] = runs["run"].map(lambda r: bool(meta[r].get("diverged")))
    return runs


def grid_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (setting, mode): seeds, best/last val top-1 per step and minutes, mean and std."""
    keys = ["setting", "mode", "seed"]
    best = best_per_step(runs, by=keys)
    wide = best.pivot_table(index=keys, columns="step", values=["best", "last"])
    wide.columns = [f"step{step}_{kind}" for kind, step in wide.columns]
    wide = wide.join(runs.groupby(keys)[["wall_minutes", "diverged"]].first()).reset_index()
    measures = [c for c in wide.columns if c not in keys + ["diverged"]]
    table = wide.groupby(keys[:2], sort=False).agg(
        seeds=("seed", "count"), diverged=("diverged", "sum"),
        **{f"{c}_{fn}": (c, fn) for c in measures for fn in ("mean", "std")})
    return table.reset_index()


def plot_grid(runs: pd.DataFrame, modes=("bn", "none", "bf"), settings=None, title: str | None = None):
    """Best val top-1 of the last step per setting and mode.

    Bars = mean over seeds with a ±1 std error bar and one dot per seed (both only
    where a bar has several seeds), the mean printed on each bar. ``settings`` fixes the order of the groups (default: as
    they appear in ``runs``).
    """
    import matplotlib.pyplot as plt

    from .plotting import _colors, use_style

    use_style()
    best = best_per_step(runs, by=["setting", "mode", "seed"])
    last_step = best["step"].max()
    best = best[best["step"] == last_step]
    settings = list(settings or dict.fromkeys(runs["setting"]))
    fig, ax = plt.subplots(figsize=(1.8 * len(settings) + 2.0, 4.0), layout="constrained")
    width = 0.8 / len(modes)
    for j, (mode, color) in enumerate(zip(modes, _colors(len(modes)))):
        for i, setting in enumerate(settings):
            vals = best[(best["setting"] == setting) & (best["mode"] == mode)]["best"]
            if vals.empty:
                continue
            x = i + (j - (len(modes) - 1) / 2) * width
            std = vals.std(ddof=1) if len(vals) > 1 else None   # one seed: no error bar at all
            ax.bar(x, vals.mean(), width * 0.9, yerr=std, capsize=3, color=color,
                   label=mode if i == 0 else None)
            if len(vals) > 1:                                  # one seed: the bar is the seed, no dot on it
                ax.plot([x] * len(vals), vals, "k.", ms=4)
            ax.text(x, 3, f"{vals.mean():.0f}", ha="center", va="bottom", fontsize=8, color="white")
    ax.set_xticks(range(len(settings)), settings)
    ax.set_xlabel("optimizer and learning rate")
    ax.set_ylabel(f"best val top-1, step {last_step} (%)")
    ax.set_ylim(0, 100)
    ax.legend(title="mode", ncol=len(modes), loc="upper left")
    seeds = runs.groupby(["setting", "mode"])["seed"].nunique()
    per_bar = f"{seeds.min()}" if seeds.min() == seeds.max() else f"{seeds.min()}–{seeds.max()}"
    ax.set_title(title or f"{runs['run'].nunique()} runs, {per_bar} seed(s) per bar: "
                 "mean; ± std and dots (seeds) where a bar has several seeds")
    return fig


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep", help="sweep file, e.g. configs/sweeps/photos_grid.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", help="only these seeds")
    parser.add_argument("--settings", nargs="+", help="only these settings")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--table-only", action="store_true", help="only re-tabulate results")
    parser.add_argument("--scratch", help="run directories with weights (default <runs>/sweeps)")
    parser.add_argument("--results", help="where results/<name>/ goes (default: the repo's results/)")
    args = parser.parse_args(argv)
    try:
        sweep = load_sweep(args.sweep)
        root = Path(args.results) if args.results else results_dir()
        todo = [r for r in planned_runs(sweep, args.seeds, args.settings)
                if not _finished(root / sweep["name"] / r[0])]
    except TrainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = 0
    if not args.table_only and todo:
        scratch = Path(args.scratch or runs_dir() / "sweeps") / sweep["name"]
        scratch.mkdir(parents=True, exist_ok=True)
        print(f"{len(todo)} runs to do, {args.jobs} at a time", flush=True)
        with ThreadPoolExecutor(args.jobs) as pool:
            for line in pool.map(lambda run: _train(sweep, run, scratch, root), todo):
                print(line, flush=True)
                failed += "FAILED" in line
    try:
        runs = load_grid(sweep["name"], root)
        order = {name: i for i, name in enumerate(sweep["settings"])}
        runs = runs.sort_values("setting", key=lambda c: c.map(order), kind="stable")
    except FileNotFoundError:
        print(f"error: no finished run of {sweep['name']} under {root}: run the sweep "
              "without --table-only first", file=sys.stderr)
        return 1
    table = grid_table(runs)
    out = root / sweep["name"]
    table.round(2).to_csv(out / "grid.csv", index=False)
    figure = savefig(plot_grid(runs, settings=list(sweep["settings"])), sweep["name"])
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.round(1).to_string(index=False))
    print(f"wrote {out / 'grid.csv'} and {figure}")
    if failed:
        print(f"error: {failed} run(s) failed; see their logs above, fix, and rerun the same "
              "command (finished runs are kept)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
