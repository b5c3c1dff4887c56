"""Package helpers that notebook 06 uses for its tables and figures (results, diagnostics,
plotting, photos): seed summaries, shares above chance, signal tables by position, the
seed-band legend, image grids and photo patches for display."""
import numpy as np
import pandas as pd
import pytest
import torch

from bnn_helpers import plotting as P
from bnn_helpers.diagnostics import signal_by_position
from bnn_helpers.photos import one_per_class, to_display
from bnn_helpers.results import seed_summary, share_above_chance, stats_by_mode, stats_readings, mode_gaps
from bnn_helpers.results import saturation_readings


def best_table():
    """Best top-1 per (mode, seed) and step, as notebook 06 builds it."""
    rows = [("bn", 0, 1, 20.0), ("bn", 0, 2, 30.0), ("bn", 1, 1, 24.0), ("bn", 1, 2, 31.0),
            ("bf", 0, 1, 80.0), ("bf", 0, 2, 90.0)]
    runs = pd.DataFrame(rows, columns=["mode", "seed", "step", "val_top1"])
    return runs.groupby(["mode", "seed", "step"])["val_top1"].max().unstack("step")


def test_seed_summary_mean_std_range_and_text():
    table = seed_summary(best_table(), order=["bn", "bf"])
    assert list(table.index) == [("bn", 1), ("bn", 2), ("bf", 1), ("bf", 2)]   # display order kept
    bn1 = table.loc[("bn", 1)]
    assert bn1["mean"] == 22.0 and bn1["std"] == pytest.approx(np.std([20, 24], ddof=1))
    assert (bn1["min"], bn1["max"], bn1["seeds"]) == (20.0, 24.0, 2)
    assert bn1["mean ± std"] == "22.0 ± 2.8" and bn1["min–max"] == "20.0–24.0"
    bf2 = table.loc[("bf", 2)]
    assert np.isnan(bf2["std"]) and bf2["mean ± std"] == "90.0"                # one seed: no spread
    with pytest.raises(ValueError, match="mode, seed"):
        seed_summary(pd.DataFrame({1: [1.0]}))


def test_share_above_chance_is_one_definition_for_numbers_and_series():
    assert share_above_chance(55.0, 100.0, 10.0) == pytest.approx(0.5)
    assert share_above_chance(10.0, 80.0, 10.0) == 0.0
    shares = share_above_chance(pd.Series({"a": 15.7, "b": 74.2}), pd.Series({"b": 80.2, "a": 25.5}), 10)
    assert shares["a"] == pytest.approx(5.7 / 15.5) and shares["b"] == pytest.approx(64.2 / 70.2)


def test_stats_by_mode_flips_balance_range_start_end_and_clipping():
    rows = []
    for mode, flip in (("bn", 0.01), ("bf", 0.002)):
        for seed in (0, 1):
            for step in (1, 2):
                for k in range(3):
                    balance = 0.5 - 0.01 * k * (step == 2) + 0.001 * seed
                    rows.append({"mode": mode, "seed": seed, "step": step, "optimizer_step": 2 * k,
                                 "flip_ratio": flip / step, "weight_sign_balance": balance,
                                 "act_sign_balance": 0.6 + 0.1 * (step == 2), "agc_clip_share": 0.9 if mode == "bn" else 0.2})
    table = stats_by_mode(pd.DataFrame(rows), order=["bf", "bn"])
    assert list(table.index) == ["bf", "bn"]
    assert table.loc["bn", "flip_step1"] == pytest.approx(0.01) and table.loc["bf", "flip_step2"] == pytest.approx(0.001)
    assert table.loc["bn", "balance_start"] == pytest.approx(0.5) and table.loc["bn", "balance_end"] == pytest.approx(0.48)
    assert table.loc["bn", "balance_min"] == pytest.approx(0.4905) and table.loc["bn", "balance_max"] == pytest.approx(0.5005)
    assert (table.loc["bn", "act_min"], table.loc["bn", "act_max"]) == pytest.approx((0.6, 0.7))
    assert table.loc["bf", "agc_clip_share"] == pytest.approx(0.2)
    assert stats_by_mode(pd.DataFrame(rows), seed=1).loc["bn", "balance_end"] == pytest.approx(0.481)


def test_mode_gaps_per_setting():
    acc = pd.DataFrame({"bn": [78.0, 60.0], "none": [68.0, 65.0], "bf": [81.0, 62.0]}, index=["a", "b"])
    gaps = mode_gaps(acc)
    assert list(gaps.columns) == ["spread", "none below bn", "none below bf", "bf above bn"]
    assert gaps.loc["a"].tolist() == [13.0, 10.0, 13.0, 3.0] and gaps.loc["b"].tolist() == [5.0, -5.0, -3.0, 2.0]
    with pytest.raises(ValueError, match="none"):
        mode_gaps(acc.drop(columns="none"))


def sp_table(window=(0.2, 0.6), scale=1.0):
    """A signal_propagation-like table: stem, two blocks with two signs each, head."""
    return pd.DataFrame({"position": range(4), "name": ["stem", "block1", "block2", "head"],
                         "avg_var": [1.0, 2.0 * scale, 4.0 * scale, 0.5],
                         "branch_var": [np.nan, 0.1, 0.2, np.nan], "branch_var2": [np.nan, 0.5, 0.6, np.nan],
                         "sign_window1": [np.nan, window[0], window[1], np.nan],
                         "sign_window2": [np.nan, window[0] + 0.2, window[1] + 0.2, np.nan],
                         "sign_windowless": [9.0, 9.0, 9.0, 9.0]})   # not a numbered sign column


def test_signal_by_position_columns_prefixes_and_blocks():
    tables = {"a": sp_table(), "b": sp_table(scale=10.0)}
    var = signal_by_position(tables, "avg_var")
    assert list(var.columns) == ["a", "b"] and list(var.index) == ["stem", "block1", "block2", "head"]
    assert var.loc["head", "b"] == 0.5 and var.loc["block2", "b"] == 40.0
    branch = signal_by_position(tables, "branch_var", blocks_only=True)   # the named column alone,
    assert list(branch["a"]) == [0.1, 0.2]                                 # not averaged with branch_var2
    window = signal_by_position(tables, "sign_window", blocks_only=True)
    assert list(window.index) == [1, 2] and window.index.name == "block"
    assert np.allclose(window["a"], [0.3, 0.7])          # mean of the block's two signs, not "sign_windowless"
    with pytest.raises(ValueError, match="sign_balance"):
        signal_by_position(tables, "sign_balance")


def test_sign_saturation_plot_names_the_window_in_the_series_notation():
    table = sp_table().assign(sign_balance1=[np.nan, 0.6, 0.7, np.nan])
    fig = P.plot_sign_saturation({"none · init": table, "none · trained": table})
    assert fig.axes[1].get_ylabel() == "share with |x + b| < 1"
    assert np.allclose(fig.axes[1].lines[0].get_ydata(), [0.3, 0.7])


def test_seed_bands_have_one_legend_outside_the_panels_with_the_chance_line():
    rows = [{"mode": m, "seed": s, "step": step, "epoch": e, "val_top1": 20.0 * e + s}
            for m in ("bn", "bf") for s in (0, 1) for step in (1, 2) for e in (1, 2)]
    fig = P.plot_seed_bands({"left": pd.DataFrame(rows), "right": pd.DataFrame(rows)},
                            modes=("bn", "bf"), chance=10)
    assert all(ax.get_legend() is None for ax in fig.axes)       # nothing drawn over the data
    assert len(fig.legends) == 1
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[:2] == ["bn: mean of 2 seeds, band min–max", "bf: mean of 2 seeds, band min–max"]
    assert "chance (10 %)" in labels and len(labels) == 3           # once, not once per panel


def test_seed_bands_shade_the_epochs_at_learning_rate_zero():
    rows = [{"mode": "bn", "seed": 0, "step": step, "epoch": e, "val_top1": 20.0 * e, "lr": 0.0 if e == 2 else 1e-3}
            for step in (1, 2) for e in (1, 2)]
    fig = P.plot_seed_bands({"only": pd.DataFrame(rows)}, modes=("bn",), mark_lr_zero=True)
    spans = [p for p in fig.axes[0].patches]
    assert len(spans) == 2                                          # epochs 2 and 4 (step 2's second)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels.count("epoch at learning rate 0") == 1


def test_sign_saturation_marks_half_inside_the_window():
    table = sp_table().assign(sign_balance1=[np.nan, 0.6, 0.7, np.nan])
    fig = P.plot_sign_saturation({"none · init": table})
    assert any(list(l.get_ydata()) == [0.5, 0.5] for l in fig.axes[1].lines)


def test_image_grid_one_titled_panel_per_image():
    fig = P.plot_image_grid(torch.zeros(5, 8, 8), [f"label {i}" for i in range(5)], ncols=3, cmap="gray_r",
                            title="five")
    shown = [ax for ax in fig.axes if ax.images]
    assert len(fig.axes) == 6 and len(shown) == 5                   # 2 x 3 grid, the last panel empty
    assert [ax.get_title() for ax in shown] == [f"label {i}" for i in range(5)]
    assert not any(ax.axison for ax in fig.axes) and fig._suptitle.get_text() == "five"
    fig = P.plot_image_grid(np.ones((2, 4, 4, 3)) / 2, ["a", "b"], ncols=2)
    assert fig.axes[0].images[0].get_array().shape == (4, 4, 3)
    with pytest.raises(ValueError, match="one title per image"):
        P.plot_image_grid(torch.zeros(2, 4, 4), ["only one"], ncols=2)


def test_photos_for_display_and_one_per_class():
    x = torch.stack([torch.full((3, 2, 2), v) for v in (-1.0, 0.0, 3.0)])
    x[:, 1] *= 2                                                     # channels differ in scale
    shown = to_display(x)
    assert shown.shape == (3, 2, 2, 3) and float(shown.min()) == 0.0 and float(shown.max()) == 1.0
    assert torch.allclose(shown[1, 0, 0], torch.full((3,), 0.25))   # same place in every channel's range
    assert one_per_class(torch.tensor([2, 0, 0, 1, 2])) == [1, 3, 0]


def test_stats_readings_hold_on_notebook_06s_numbers_and_fail_when_one_does_not():
    by_mode = pd.DataFrame({"flip_step1": [0.0064, 0.0064, 0.0010], "flip_step2": [0.0007, 0.0008, 0.0010],
                            "balance_min": [0.5001, 0.4932, 0.4996], "balance_max": [0.5001, 0.4950, 0.5000],
                            "balance_start": [0.5005, 0.4989, 0.5004], "balance_end": [0.5006, 0.4917, 0.4998],
                            "act_min": [0.7061, 0.6019, 0.7060], "act_max": [0.7091, 0.6061, 0.7240],
                            "agc_clip_share": [0.9886, 0.7925, 0.1236]}, index=["bn", "none", "bf"])
    readings = stats_readings(by_mode)
    assert readings["holds"].all() and len(readings) == 8
    assert list(readings.columns) == ["measured", "bound", "holds"]
    assert readings.loc["step 1: bf flips less", "measured"] == "6.4× less"
    broken = stats_readings(by_mode.assign(flip_step1=[0.0064, 0.0064, 0.0030]))   # bf flips only about 2x less
    assert not broken.loc["step 1: bf flips less", "holds"]
    assert broken["holds"].drop("step 1: bf flips less").all()


def test_saturation_readings_hold_on_notebook_06s_numbers_and_fail_when_one_does_not():
    blocks = pd.RangeIndex(1, 14, name="block")
    def table(**columns):   # constant per column, with the values notebook 06 measured where it matters
        return pd.DataFrame({k: np.full(13, v, dtype=float) for k, v in columns.items()}, index=blocks)
    stream = table(**{"bn · init": 1.2, "bn · trained": 1.5, "none · init": 0.3, "none · trained": 0.95,
                      "bf · init": 0.12, "bf · trained": 0.27})
    stream.loc[11] = [6.7, 10.8, 0.9, 17.0, 0.14, 2.9]
    window = table(**{"bn · init": 0.18, "bn · trained": 0.39, "none · init": 0.41, "none · trained": 0.61,
                      "bf · init": 0.96, "bf · trained": 0.67})
    window.loc[:8, "none · init"] = 0.8                      # below half from block 9 on only
    plus = table(**{"bn · init": 0.6, "bn · trained": 0.6, "none · init": 0.6, "none · trained": 0.5,
                    "bf · init": 0.6, "bf · trained": 0.62})
    plus.loc[13, "bf · init"] = 0.95
    readings = saturation_readings(stream, window, plus)
    assert readings["holds"].all() and len(readings) == 9
    assert readings.loc["trained none: stream grows, block 1 to 11", "measured"] == "17.9×"
    failed = saturation_readings(stream, window.assign(**{"none · trained": 0.45}), plus)   # trained none saturated
    assert not failed.loc["trained none and bf: in window, every block", "holds"]
    assert failed["holds"][[k for k in failed.index if "stream" in k or "+1" in k]].all()


def two_step_summary():
    """read_runs-like rows: two modes, two seeds, two epochs per step."""
    rows = []
    for mode, base in (("bn", 20.0), ("bf", 80.0)):
        for seed in (0, 1):
            for step in (1, 2):
                for epoch in (1, 2):
                    rows.append((mode, seed, step, epoch, base + 10 * (step - 1) + 2 * epoch + seed))
    return pd.DataFrame(rows, columns=["mode", "seed", "step", "epoch", "val_top1"])


def test_mode_progress_worst_run_step1_gap_and_step2_gain():
    from bnn_helpers.results import mode_progress
    table = mode_progress(two_step_summary(), order=["bn", "bf"])
    assert list(table.index) == ["bn", "bf"]
    assert table.loc["bn", "worst run"] == 24.0                 # seed 0, step 1, best epoch
    assert table.loc["bn", "step-1 best"] == 24.5 and table.loc["bf", "step-1 above bn"] == 60.0
    assert table.loc["bn", "step-1 above bn"] == 0.0 and (table["step-2 gain"] == 2.0).all()


def test_first_above_returns_epoch_and_value_or_nan():
    from bnn_helpers.results import first_above
    top1 = pd.Series([10.0, 35.0, 41.0, 50.0], index=[1, 2, 3, 4])
    assert first_above(top1, 40.0) == (3, 41.0)
    epoch, value = first_above(top1, 60.0)
    assert np.isnan(epoch) and np.isnan(value)


def test_block_and_logits_one_row_per_table():
    from bnn_helpers.diagnostics import block_and_logits

    def table(scale):
        return pd.DataFrame({"name": ["stem", "block13", "head"], "avg_sq_mean": [1.0, 2 * scale, 0.0],
                             "avg_var": [1.0, 3 * scale, 5 * scale], "branch_var": [0.0, scale, np.nan]})
    step2 = {"bn · init": table(1.0), "bn · trained": table(2.0)}
    rows = block_and_logits(step2)
    assert list(rows.index) == ["bn · init", "bn · trained"]
    assert rows.loc["bn · trained", "avg_var"] == 6.0 and rows.loc["bn · init", "logit variance"] == 5.0


def test_evaluate_ways_one_row_per_network_one_column_per_way():
    from bnn_helpers.diagnostics import evaluate_ways
    torch.manual_seed(0)
    x = torch.randn(12, 3)
    right, wrong = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    y = right(x).argmax(1).detach()
    with torch.no_grad():
        wrong.weight.copy_(-right.weight)
        wrong.bias.copy_(-right.bias)
    table = evaluate_ways({"right": right, "wrong": wrong}, x, y, {"eval, batch 4": (4, False), "train, batch 1": (1, True)})
    assert list(table.index) == ["right", "wrong"] and list(table.columns) == ["eval, batch 4", "train, batch 1"]
    assert (table.loc["right"] == 100.0).all() and (table.loc["wrong"] == 0.0).all()


def test_step2_start_means_over_seeds(monkeypatch):
    import bnn_helpers.checkpoints as checkpoints
    from bnn_helpers.diagnostics import step2_start
    x, y = torch.zeros(4, 2), torch.tensor([0, 0, 1, 1])

    class Constant(torch.nn.Module):      # predicts class 0 for every input: 50 % top-1
        def forward(self, x):
            return torch.tensor([[1.0, 0.0]]).expand(len(x), 2)
    monkeypatch.setattr(checkpoints, "load_trained", lambda run_dir, step, binary_weights: Constant())
    runs = {(mode, seed): f"{mode}{seed}" for seed in (0, 1) for mode in ("bn", "bf")}
    table = step2_start(runs, two_step_summary(), x, y)
    assert list(table.index) == ["bn", "bf"]
    assert table.loc["bn", "step 1 best"] == 24.5 and table.loc["bf", "after 1 epoch of step 2"] == 92.5
    assert table.loc["bn", "binarized, eval mode"] == 50.0 and np.isnan(table.loc["bf", "binarized, train-mode BN"])
