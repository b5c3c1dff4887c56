"""The reference-run loader (bnn_helpers.results) and the runs the repository ships."""
from __future__ import annotations

import pandas as pd
import pytest
import yaml

from bnn_helpers import results as R


def _fake_run(folder, name, model, seed, top1_by_step, stats=True):
    run = folder / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": model, "seed": seed}))
    rows = [{"step": step, "epoch": e + 1, "val_top1": v}
            for step, values in top1_by_step.items() for e, v in enumerate(values)]
    pd.DataFrame(rows).to_csv(run / "summary.csv", index=False)
    if stats:
        pd.DataFrame({"step": [1, 2], "optimizer_step": [1, 1], "flip_ratio": [0.0, 0.01]}).to_csv(
            run / "stats.csv", index=False)


@pytest.fixture
def fake_results(tmp_path, monkeypatch):
    monkeypatch.setattr(R, "results_dir", lambda: tmp_path)
    _fake_run(tmp_path / "demo", "bf_s0", "reactnet_a_bf", 0, {1: [50.0, 70.0, 60.0], 2: [80.0, 90.0]})
    _fake_run(tmp_path / "demo", "bn_s1", "reactnet_a_bn", 1, {1: [20.0, 30.0], 2: [40.0, 35.0]})
    return tmp_path


def test_load_reference_runs_is_one_tidy_table(fake_results):
    curves = R.load_reference_runs("demo")
    assert list(curves.columns[:3]) == ["run", "mode", "seed"]
    assert set(curves["run"]) == {"bf_s0", "bn_s1"} and len(curves) == 5 + 4
    assert set(zip(curves["mode"], curves["seed"])) == {("bf", 0), ("bn", 1)}
    stats = R.load_reference_runs("demo", "stats")
    assert len(stats) == 4 and "flip_ratio" in stats


def test_best_per_step_takes_best_and_last_epoch(fake_results):
    best = R.best_per_step(R.load_reference_runs("demo")).set_index(["mode", "step"])
    assert best.loc[("bf", 1), "best"] == 70.0 and best.loc[("bf", 1), "last"] == 60.0
    assert best.loc[("bn", 2), "best"] == 40.0 and best.loc[("bn", 2), "last"] == 35.0


def test_missing_sets_and_tables_say_what_to_do(fake_results):
    with pytest.raises(FileNotFoundError, match="make reference-runs"):
        R.load_reference_runs("absent")
    with pytest.raises(ValueError, match="summary, stats"):
        R.load_reference_runs("demo", "weights")
    _fake_run(fake_results / "nostats", "bf_s0", "reactnet_a_bf", 0, {1: [1.0]}, stats=False)
    with pytest.raises(FileNotFoundError, match="--track-stats"):
        R.load_reference_runs("nostats", "stats")


def test_collect_run_copies_logs_not_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(R, "results_dir", lambda: tmp_path / "results")
    run = tmp_path / "run"
    (run / "step1").mkdir(parents=True)
    for name in ("config.yaml", "summary.csv", "stats.csv", "step1/best.pth"):
        (run / name).write_text("x")
    target = R.collect_run(run, "bf_s0", "demo")
    assert sorted(p.name for p in target.iterdir()) == ["config.yaml", "stats.csv", "summary.csv"]


def test_shipped_digits_20ep_runs_are_complete():
    # The set the README and notebook 06 quote: 3 modes x 3 seeds, 20 epochs per step, with stats.
    curves = R.load_reference_runs("digits_20ep")
    assert sorted(set(zip(curves["mode"], curves["seed"]))) == sorted(
        (mode, seed) for mode in ("bf", "bn", "none") for seed in (0, 1, 2))
    per_run = curves.groupby(["mode", "seed", "step"])["epoch"].apply(sorted)
    assert all(epochs == list(range(1, 21)) for epochs in per_run) and len(per_run) == 18
    stats = R.load_reference_runs("digits_20ep", "stats")
    assert set(zip(stats["mode"], stats["seed"])) == set(zip(curves["mode"], curves["seed"]))


def test_final_epoch_reads_the_last_row_and_handles_a_run_that_never_finished_an_epoch(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    pd.DataFrame({"epoch": [1, 2], "train_loss": [2.0, 1.5], "val_top1": [40.0, 55.0],
                  "agc_clip_share": [0.2, 0.4]}).to_csv(run / "summary.csv", index=False)
    row = R.final_epoch(run)
    assert row["epochs done"] == 2 and row["final train loss"] == 1.5 and row["final val top-1 %"] == 55.0
    assert row["mean clipped share"] == pytest.approx(0.3)
    empty = R.final_epoch(tmp_path / "diverged")            # no summary.csv at all
    assert empty["epochs done"] == 0 and pd.isna(empty["final val top-1 %"]) and pd.isna(empty["mean clipped share"])
    pd.DataFrame({"epoch": [1], "train_loss": [2.0], "val_top1": [40.0]}).to_csv(run / "summary.csv", index=False)
    assert pd.isna(R.final_epoch(run)["mean clipped share"])  # no AGC column


def test_read_runs_concatenates_live_runs_with_their_keys(tmp_path):
    from bnn_helpers.results import read_runs

    runs = {}
    for mode, seed in (("bn", 0), ("bf", 1)):
        folder = tmp_path / f"{mode}{seed}"
        folder.mkdir()
        pd.DataFrame({"step": [1, 1, 2, 2], "epoch": [1, 2, 1, 2], "val_top1": [1.0, 2.0, 3.0, 4.0],
                      "elapsed_s": [2.0, 5.0, 1.0, 4.5]}).to_csv(folder / "summary.csv", index=False)
        pd.DataFrame({"step": [1], "flip_ratio": [0.1]}).to_csv(folder / "stats.csv", index=False)
        runs[mode, seed] = folder
    table = read_runs(runs)
    assert len(table) == 8 and set(zip(table["mode"], table["seed"])) == {("bn", 0), ("bf", 1)}
    assert table["epoch_s"].tolist()[:4] == [2.0, 3.0, 1.0, 3.5]      # per step, from its own start
    stats = read_runs({"bn": runs["bn", 0]}, keys=("mode",), table="stats")
    assert stats["mode"].tolist() == ["bn"] and "epoch_s" not in stats
    with pytest.raises(FileNotFoundError, match="summary.csv"):
        read_runs({"x": tmp_path / "missing"})
    with pytest.raises(ValueError, match="table"):
        read_runs(runs, table="weights")


def test_first_and_last_reads_each_run_in_optimizer_step_order():
    stats = pd.DataFrame({"mode": ["bf"] * 4 + ["bn"] * 2, "step": [1, 1, 2, 2, 1, 1], "seed": 0,
                          "optimizer_step": [20, 10, 30, 40, 10, 20],
                          "share": [0.6, 0.5, None, 0.7, 0.4, 0.45]})
    table = R.first_and_last(stats, "share")
    assert table.loc[("bf", 1, 0)].tolist() == [10, 0.5, 0.6]      # rows sorted by optimizer step first
    assert table.loc[("bf", 2, 0)].tolist() == [40, 0.7, 0.7]      # the empty cell is skipped
    assert table.loc[("bn", 1, 0), "last"] == 0.45


def test_key_text_writes_run_keys_as_outcomes_table_does():
    assert [R.key_text(v) for v in (0.02, 0.5, None, "sgd", 3)] == ["0.02", "0.5", "off", "sgd", "3"]


def test_stats_min_reads_the_smallest_value_per_run(two_step_stats_run):
    smallest = R.stats_min({"a": two_step_stats_run, "b": str(two_step_stats_run)}, "agc_clip_share")
    assert list(smallest.index) == ["a", "b"] and smallest.tolist() == [0.2, 0.2]


def test_grid_table_calls_the_measure_for_every_labelled_pair():
    grid = R.grid_table(lambda r, c: 10 * r + c, {"a": 1, "b": 2}, {"x": 0, "y": 5})
    assert list(grid.index) == ["a", "b"] and list(grid.columns) == ["x", "y"]
    assert grid.loc["b", "y"] == 25 and grid.loc["a", "x"] == 10


def test_paired_by_seed_puts_on_off_and_their_difference_side_by_side():
    table = pd.DataFrame({"seed": ["0", "0", "1", "1"], "AGC λ": ["0.02", "off", "0.02", "off"],
                          "final val top-1 %": [90.0, 92.0, 88.0, 85.0]})
    grid = R.paired_by_seed(table, "AGC λ", "0.02", "off", difference="AGC − no AGC")
    assert list(grid.columns) == ["0.02", "off", "AGC − no AGC"]
    assert list(grid["AGC − no AGC"]) == [-2.0, 3.0] and grid.columns.name == "AGC λ"


def test_agc_sweep_readings_reads_the_grids_by_name():
    idx, cols = ["adam", "sgd", "sgd, high"], ["0.01", "0.02", "0.16", "off"]
    nan = float("nan")
    top1 = pd.DataFrame([[nan, 91.0, nan, 93.0], [nan, 87.0, nan, 86.0], [92.0, 84.0, 9.0, nan]], idx, cols)
    loss = pd.DataFrame([[nan, 0.3, nan, 0.3], [nan, 0.7, nan, 0.7], [0.5, 0.8, 15.0, nan]], idx, cols)
    share = pd.DataFrame([[nan, 0.2, nan, nan], [nan, 0.4, nan, nan], [0.5, 0.3, 0.05, nan]], idx, cols)
    outcome = pd.DataFrame([["-", "finished", "-", "finished"], ["-", "finished", "-", "finished"],
                            ["finished", "finished", "finished", "diverged"]], idx, cols)
    r = R.agc_sweep_readings({"final val top-1 %": top1, "final train loss": loss, "mean clipped share": share,
                              "outcome": outcome}, "0.02")
    assert r["stable runs: lowest final top-1 %"] == 86.0 and r["stable runs: largest |AGC − no AGC| (pp)"] == 2.0
    assert r["high lr, λ ≤ paper's: lowest final top-1 %"] == 84.0
    assert r["high lr, no AGC: diverged (1 = yes)"] == 1.0 and r["high lr, λ below the largest: diverged runs"] == 0.0
    assert r["high lr, largest λ: final top-1 %"] == 9.0 and r["high lr, largest λ: final train loss"] == 15.0
    assert (r["paper's λ: smallest mean clipped share"], r["paper's λ: largest mean clipped share"]) == (0.2, 0.4)
