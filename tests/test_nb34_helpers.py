"""Helpers of notebooks 03 and 04: signal propagation of a plain list of blocks, the tables read
from it, tidy prediction tables and their figure, parameter kinds for AGC, and cached training
runs whose divergence is an outcome."""
import math

import matplotlib

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

from bnn_helpers import create_model
from bnn_helpers import diagnostics as D
from bnn_helpers import plotting as P
from bnn_helpers.config import DivergedError, TrainError, load_config
from bnn_helpers.results import outcomes_table
from bnn_helpers.train import TrainingOutcome, run_or_load_outcome, settings_name


class Scale(nn.Module):
    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return self.factor * x


# --------------------------------------------------------------------------- signal propagation
def test_signal_propagation_of_a_list_of_blocks_measures_the_input_and_every_block():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5)
    table = D.signal_propagation([Scale(2.0), Scale(0.5), nn.ReLU()], x)
    assert list(table["name"]) == ["input", "block1", "block2", "block3"]       # no head row
    assert list(table["position"]) == [0, 1, 2, 3]
    expected = [D.channel_statistics(t) for t in (x, 2 * x, x, torch.relu(x))]
    assert table["avg_sq_mean"].to_numpy() == pytest.approx([m for m, _ in expected], rel=1e-5)
    assert table["avg_var"].to_numpy() == pytest.approx([v for _, v in expected], rel=1e-5)
    assert table["avg_var"].iloc[1] == pytest.approx(4 * table["avg_var"].iloc[0], rel=1e-5)
    assert table["branch_var"].isna().all()                     # plain blocks have no branch hook point
    # an nn.ModuleList works the same, and the stem/blocks/head form is unchanged (head row)
    assert D.signal_propagation(nn.ModuleList([Scale(2.0)]), x)["name"].tolist() == ["input", "block1"]
    model = create_model("reactnet_a_bf", binary_weights=True, num_classes=10, width_mult=0.25)
    assert D.signal_propagation(model.train(), torch.randn(2, 3, 32, 32))["name"].iloc[-1] == "head"
    with pytest.raises(TypeError, match="list of modules"):
        D.signal_propagation([], x)
    with pytest.raises(TypeError, match="list of modules"):
        D.signal_propagation([Scale(1.0), "not a module"], x)


def _toy_table():
    return pd.DataFrame({"name": ["stem", "block1", "block2", "block3", "head"],
                         "avg_var": [1.0, 0.5, 0.25, 0.2, 0.002],
                         "avg_sq_mean": [0.0, 0.1, 0.2, 0.3, 0.01],
                         "sign_balance1": [np.nan, 0.5, 0.9, 0.8, np.nan],
                         "sign_balance2": [np.nan, 0.6, 0.7, np.nan, np.nan],
                         "sign_window1": [np.nan, 1.0, 0.5, 0.0, np.nan],
                         "sign_window2": [np.nan, 1.0, 0.5, np.nan, np.nan]})


def test_block_input_variance_is_the_previous_rows_variance():
    entering = D.block_input_variance(_toy_table())
    assert list(entering.index) == ["block1", "block2", "block3"]
    assert entering.tolist() == [1.0, 0.5, 0.25]


def test_sign_entropy_bits_known_values():
    assert D.sign_entropy_bits(0.5) == pytest.approx(1.0)
    assert D.sign_entropy_bits(0.0) == 0.0 and D.sign_entropy_bits(1.0) == 0.0
    assert math.copysign(1.0, D.sign_entropy_bits(1.0)) == 1.0               # not -0.0
    p = 0.9
    assert D.sign_entropy_bits(p) == pytest.approx(-(p * math.log2(p) + (1 - p) * math.log2(1 - p)))
    assert D.sign_entropy_bits([0.5, 0.1, 0.9]) == pytest.approx([1.0, 0.469, 0.469], abs=1e-3)


def test_signal_summary_reads_logits_signs_and_window():
    summary = D.signal_summary({"toy": _toy_table()}, first_block=2).loc["toy"]
    assert summary["logit variance across inputs"] == pytest.approx(0.002)
    assert summary["logit var / last block var"] == pytest.approx(0.002 / 0.2)
    assert (summary["+1 share min"], summary["+1 share max"]) == (0.7, 0.9)      # blocks 2 and 3 only
    assert summary["+1 share mean"] == pytest.approx(0.8)
    assert summary["bits per sign"] == pytest.approx(D.sign_entropy_bits(0.8))
    assert summary["STE window share"] == pytest.approx(0.6)                     # every sign: (1+1+.5+.5+0)/5
    with pytest.raises(ValueError, match="head"):
        D.signal_summary({"toy": _toy_table().iloc[:-1]})


def test_signal_summary_window_equals_the_mean_over_every_sign_call():
    torch.manual_seed(0)
    model = create_model("reactnet_a_bf", binary_weights=True, num_classes=10, width_mult=0.25).train()
    x = torch.randn(4, 3, 32, 32)
    with D.ste_window_shares(model) as shares:
        table = D.signal_propagation(model, x)
    assert D.signal_summary({"bf": table}).loc["bf", "STE window share"] == pytest.approx(float(np.mean(shares)), rel=1e-6)


# --------------------------------------------------------------------------- AGC units by kind
def test_unitwise_ratios_separates_shifts_from_prelu_slopes_and_counts_gain_units():
    torch.manual_seed(0)
    model = create_model("reactnet_a_bf", binary_weights=False, num_classes=10, width_mult=0.25)
    model(torch.randn(4, 3, 32, 32)).logsumexp(1).sum().backward()
    table = D.unitwise_ratios(model)
    prelus = [m for m in model.modules() if isinstance(m, nn.PReLU)]
    shifts = [n for n, p in model.named_parameters() if n.endswith("bias") and n.startswith("blocks")]
    counts = table["kind"].value_counts()
    assert counts["PReLU slopes"] == len(prelus)                 # a (C,) slope is one unit
    assert counts["biases and shifts"] == len(shifts)            # a (1, C, 1, 1) shift is one unit
    gains = sum(p.shape[0] for n, p in model.named_parameters() if n.endswith(".gain") and n.startswith("blocks"))
    assert counts["WS gains"] == gains                            # a (C, 1, 1, 1) gain: C one-element units
    # the shifts start at 0: their ratio is |G| / eps; the slopes start at 0.25
    assert all(float(p.detach().abs().max()) == 0.0 for n, p in model.named_parameters() if n in shifts)
    assert all(torch.allclose(m.weight, torch.full_like(m.weight, 0.25)) for m in prelus)


# --------------------------------------------------------------------------- predicted vs measured
def test_prediction_table_is_tidy_with_the_ratio():
    x = np.arange(3)
    table = P.prediction_table(x, 1 + x, {"A": [1.0, 2.0, 3.0], "B": [0.5, 1.0, 1.5]}, panel="toy",
                               prediction="1 + l")
    assert list(table.columns) == P.PREDICTION_COLUMNS and len(table) == 6
    assert table.query("series == 'A'")["ratio"].tolist() == [1.0, 1.0, 1.0]
    assert table.query("series == 'B'")["ratio"].tolist() == [0.5, 0.5, 0.5]
    assert set(table["panel"]) == {"toy"} and set(table["prediction"]) == {"1 + l"}
    with pytest.raises(ValueError, match="shape"):
        P.prediction_table(x, [1.0, 2.0], {"A": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match="series 'A'"):
        P.prediction_table(x, 1 + x, {"A": [1.0]})


def test_predicted_vs_measured_from_a_table_with_one_figure_legend():
    x = np.arange(4)
    table = pd.concat([P.prediction_table(x, 1 + x / 10, {"A": 1 + x / 10, "B": 0.5 + 0 * x}, "left", "p1"),
                       P.prediction_table(x, np.ones(4), {"A": 0.1 * (x + 1)}, "right", "p2")])
    fig = P.plot_predicted_vs_measured(table, xlabel="block", ylabel="variance", log={"left": False},
                                       legend="figure")
    left, right = fig.axes
    assert left.get_title() == "left" and right.get_title() == "right"
    assert left.get_yscale() == "linear" and right.get_yscale() == "log"
    assert left.get_legend() is None and right.get_legend() is None and len(fig.legends) == 1
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["A", "B", "p1", "p2"]
    lines = {l.get_label(): l for l in left.lines}
    assert lines["p1"].get_zorder() > lines["A"].get_zorder()
    dashes = {l.get_label(): l._unscaled_dash_pattern for l in left.lines + right.lines}
    assert dashes["p2"] != dashes["p1"]                           # one dash pattern per prediction label
    assert {l.get_label(): l.get_color() for l in right.lines}["A"] == lines["A"].get_color()
    np.testing.assert_allclose(lines["B"].get_ydata(), 0.5)
    # the dict form and per-panel legends still work
    fig = P.plot_predicted_vs_measured({"p": {"measured": {"A": (x, x + 1.0)}}}, "x", "y")
    assert fig.axes[0].get_legend() is not None and not fig.legends
    with pytest.raises(ValueError, match="legend"):
        P.plot_predicted_vs_measured(table, "x", "y", legend="inside")
    with pytest.raises(ValueError, match="prediction_table"):
        P.plot_predicted_vs_measured(pd.DataFrame({"x": [1]}), "x", "y")


# --------------------------------------------------------------------------- training stats subset
def test_training_stats_can_draw_one_panel(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    pd.DataFrame({"step": [1, 1, 1], "optimizer_step": [1, 2, 3], "flip_ratio": [0.1, 0.01, 0.0],
                  "weight_sign_balance": 0.5, "act_sign_balance": 0.6,
                  "agc_clip_share": [0.2, 0.3, 0.25]}).to_csv(run / "stats.csv", index=False)
    fig = P.plot_training_stats({"Adam lr 0.0005": run}, columns=["agc_clip_share"])
    (ax,) = fig.axes
    assert fig.get_suptitle() == "AGC clipped share" and ax.get_title() == ""      # one title, not two
    assert ax.get_legend() is None and len(fig.legends) == 1
    assert list(ax.lines[0].get_ydata()) == [0.2, 0.3, 0.25]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["Adam lr 0.0005"]
    assert len(P.plot_training_stats({"a": run}).axes) == 4
    with pytest.raises(ValueError, match="unknown stats column"):
        P.plot_training_stats({"a": run}, columns=["loss"])


# --------------------------------------------------------------------------- cached runs and divergence
@pytest.fixture
def quick(tiny_run):
    return dict(tiny_run, model="float_cnn", dataset="digits", step="1", max_train_batches=2,
                eval_batch_size=360, epochs=1)


def test_settings_name_changes_with_results_not_with_driving_settings(quick):
    cfg = load_config(None, quick)
    assert settings_name(cfg, "nb04") == settings_name(load_config(None, dict(quick, threads=2, progress="log")),
                                                       "nb04")
    assert settings_name(cfg, "nb04") != settings_name(load_config(None, dict(quick, lr=0.1)), "nb04")
    assert settings_name(cfg, "nb04").startswith("nb04_") and len(settings_name(cfg)) == len("run_") + 10


def test_run_or_load_outcome_caches_finished_runs_and_reports_divergence(tmp_path, quick, monkeypatch):
    monkeypatch.setenv("BNN_RUNS_DIR", str(tmp_path))
    first = run_or_load_outcome(None, prefix="t", **quick)
    assert isinstance(first, TrainingOutcome) and first == (first.run_dir, False, "finished")
    assert first.run_dir.parent == tmp_path and first.run_dir.name.startswith("t_")
    stamp = (first.run_dir / "summary.csv").stat().st_mtime_ns
    assert run_or_load_outcome(None, prefix="t", **quick) == first          # loaded, not trained again
    assert (first.run_dir / "summary.csv").stat().st_mtime_ns == stamp
    other = run_or_load_outcome(None, prefix="t", **dict(quick, lr=1e-3))
    assert other.run_dir != first.run_dir

    diverged = run_or_load_outcome(None, prefix="t", **dict(quick, model="reactnet_a_bf", lr=1e30))
    assert diverged.diverged and diverged.message.startswith("loss became non-finite in step 1, epoch 1")
    assert ";" not in diverged.message and not diverged.run_dir.exists()
    table = outcomes_table({("adam", 0.02): first, ("adam", None): diverged}, keys=("setting", "AGC λ"))
    assert table[["setting", "AGC λ", "outcome"]].values.tolist() == [["adam", "0.02", "finished"],
                                                                       ["adam", "off", "diverged"]]
    assert table["stopped at"].tolist() == ["", diverged.message]
    assert table["epochs done"].tolist() == [1, 0] and math.isnan(table["final val top-1 %"].iloc[1])
    with pytest.raises(ValueError, match="column names"):
        outcomes_table({("adam",): first}, keys=("setting", "AGC λ"))
    # an error that is not a divergence is raised, and DivergedError is a TrainError
    assert issubclass(DivergedError, TrainError)
    with pytest.raises(TrainError):
        run_or_load_outcome(None, prefix="t", **dict(quick, model="no_such_model"))


def test_run_or_load_outcome_does_not_report_an_interrupted_run_as_finished(tmp_path, quick, monkeypatch):
    import bnn_helpers.train as T

    monkeypatch.setenv("BNN_RUNS_DIR", str(tmp_path))
    monkeypatch.setattr(T, "run_or_load", lambda config, overrides: tmp_path / "stopped")   # what a SIGINT leaves
    with pytest.raises(KeyboardInterrupt, match="interrupted"):
        run_or_load_outcome(None, prefix="t", **quick)


# --------------------------------------------------------------------------- selecting and tabulating runs
def _outcomes():
    return pd.DataFrame({"setting": ["adam", "adam", "sgd", "sgd"], "AGC λ": ["0.02", "off", "0.02", "0.01"],
                         "outcome": ["finished", "finished", "finished", "diverged"],
                         "top1": [90.0, 91.0, 80.0, float("nan")], "run_dir": ["a1", "a0", "s1", "s2"]})


def test_panel_runs_selects_orders_and_labels():
    from pathlib import Path
    from bnn_helpers.results import panel_runs
    table = _outcomes()
    assert panel_runs(table, {"setting": "adam"}, "AGC λ", ["off", "0.02", "0.5"]) == {
        "AGC λ = off": Path("a0"), "AGC λ = 0.02": Path("a1")}                 # order of values; 0.5 skipped
    assert list(panel_runs(table, {"setting": "adam"}, "AGC λ", ["0.02", "off"], label={"off": "no AGC"})) == [
        "AGC λ = 0.02", "no AGC"]
    assert panel_runs(table, {"AGC λ": "0.02"}, "setting", ["sgd", "adam"], label=str.upper) == {
        "SGD": Path("s1"), "ADAM": Path("a1")}
    assert list(panel_runs(table, {}, "run_dir", ["s2"], label="{value}!")) == ["s2!"]


def test_pivot_tables_and_format_tables():
    from bnn_helpers.results import format_tables, pivot_tables
    tables = pivot_tables(_outcomes(), "setting", "AGC λ", ["top1", "outcome"])
    assert list(tables) == ["top1", "outcome"] and tables["top1"].loc["adam", "off"] == 91.0
    text = format_tables({"top1": tables["top1"]})
    assert text.startswith("top1 (rows: setting, columns: AGC λ)\n") and " - " in text + " " and "91" in text
    assert format_tables({"a": tables["top1"], "b": tables["top1"]}).count("\n\n") == 1


def test_sweep_tables_grids_and_diverged_lines():
    from bnn_helpers.results import sweep_tables
    table = _outcomes().assign(**{"stopped at": ["", "", "", "loss became non-finite"]})
    tables, text = sweep_tables(table, "setting", "AGC λ", ["top1"])
    assert list(tables) == ["top1", "outcome"] and tables["outcome"].loc["sgd", "0.01"] == "diverged"
    assert text.startswith("top1 (rows: setting, columns: AGC λ)\n") and "outcome (rows" not in text
    assert text.endswith("diverged: sgd, AGC λ 0.01: loss became non-finite")
    assert sweep_tables(table.iloc[:3], "setting", "AGC λ", ["top1"])[1].endswith("no run diverged")


def test_training_stats_epoch_lines(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    pd.DataFrame({"step": 1, "optimizer_step": range(1, 9), "flip_ratio": 0.1, "weight_sign_balance": 0.5,
                  "act_sign_balance": 0.5, "agc_clip_share": 0.2}).to_csv(run / "stats.csv", index=False)
    (ax,) = P.plot_training_stats({"a": run}, columns=["agc_clip_share"], epoch_steps=3).axes
    dotted = [line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == ":"]
    assert dotted == [3.5, 6.5] and "epoch boundaries" in ax.get_xlabel()
    (ax,) = P.plot_training_stats({"a": run}, columns=["agc_clip_share"]).axes
    assert len(ax.lines) == 1 and "epoch" not in ax.get_xlabel()


def test_training_stats_colors_fix_some_labels(two_step_stats_run):
    run = two_step_stats_run
    fig = P.plot_training_stats({"a": run, "b": run}, columns=["agc_clip_share"], colors={"b": "k"})
    first, second = fig.axes[0].lines
    assert matplotlib.colors.to_hex(second.get_color()) == "#000000"
    assert matplotlib.colors.to_hex(first.get_color()) != "#000000"


def test_scaled_outputs_scales_only_inside_the_with():
    model = nn.Sequential(nn.Linear(3, 3), nn.PReLU(), nn.Linear(3, 2), nn.PReLU())
    x = torch.randn(4, 3)
    with torch.no_grad():
        plain = model[1](model[0](x))
        with D.scaled_outputs(model, nn.PReLU, 2.0):
            assert torch.allclose(model[1](model[0](x)), 2 * plain)
        assert torch.allclose(model[1](model[0](x)), plain)           # hooks removed
        with pytest.raises(RuntimeError):
            with D.scaled_outputs(model, nn.PReLU, 2.0):
                raise RuntimeError("forward failed")
        assert torch.allclose(model[1](model[0](x)), plain)
