"""Helpers added for notebooks 01, 02 and 05: sign shares, readable and condensed
signal-propagation tables, part counts, seed tables, the published-count
comparison, and the figure options they use."""
import numpy as np
import pandas as pd
import pytest
import torch

from bnn_helpers import create_model
from bnn_helpers import plotting as P
from bnn_helpers.complexity import published_comparison
from bnn_helpers.diagnostics import (count_parts, readable_signal_table, sign_shares,
                                     signal_summary)
from bnn_helpers.results import seed_table


def sp_table(scale=1.0, blocks=4, constant_signs=False):
    """A signal_propagation-shaped table: stem, block1..blockN, head."""
    names = ["stem"] + [f"block{i}" for i in range(1, blocks + 1)] + ["head"]
    n = len(names)
    inner = lambda values: [np.nan] + list(values) + [np.nan]   # noqa: E731  blocks only
    return pd.DataFrame({
        "position": range(n), "name": names,
        "avg_sq_mean": [scale * (i + 1) for i in range(n - 1)] + [4.0],
        "avg_var": [1.0] * (n - 1) + [0.5],
        "branch_var": inner([0.1 * scale] * blocks), "branch_var2": inner([0.0] * blocks),
        "sign_balance1": inner([0.5] * blocks),
        "sign_balance2": inner([1.0 if constant_signs else 0.6 + 0.05 * i for i in range(blocks)])})


# ---------------------------------------------------------------- signs
def test_sign_shares_count_zero_apart_and_add_to_one():
    values = np.array([-2.0, -1.0, 0.0, 0.0, 3.0])
    shares = sign_shares(values)
    assert shares == {"share of +1": 0.2, "share of 0": 0.4, "share of −1": 0.4}
    assert sign_shares(torch.tensor(values)) == shares           # tensors too
    assert sum(sign_shares(np.random.default_rng(0).normal(size=(7, 9))).values()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least one"):
        sign_shares(np.array([]))


# ---------------------------------------------------------------- signal tables
def test_readable_signal_table_renames_and_keeps_numbers():
    table = sp_table()
    view = readable_signal_table(table, rows=["stem", "block2", "head"])
    assert list(view.index) == ["stem", "block2", "head"]
    assert list(view.columns) == ["mean²", "variance", "branch var (3×3 half)", "branch var (1×1 half)",
                                  "share +1 (sign 1)", "share +1 (sign 2)"]
    assert view.loc["block2", "mean²"] == table.loc[2, "avg_sq_mean"]
    assert view.loc["block2", "branch var (1×1 half)"] == 0.0
    assert len(readable_signal_table(table)) == len(table)


def test_signal_summary_one_row_per_table_with_tuple_keys():
    tables = {("noise", "bn"): sp_table(1.0), ("noise", "none"): sp_table(10.0, constant_signs=True)}
    summary = signal_summary(tables, names=("input", "mode"))
    assert summary.index.names == ["input", "mode"] and len(summary) == 2
    bn = summary.loc[("noise", "bn")]
    assert bn["last block mean²"] == 5.0 and bn["max block mean²"] == 5.0   # block4 = position 4 -> 5 * scale
    assert bn["last block variance"] == 1.0
    assert bn["logit variance across inputs"] == 0.5 and bn["logit mean²"] == 4.0
    assert bn["logit var / mean²"] == pytest.approx(0.125)
    assert bn["min share +1, sign 2, blocks 3+"] == pytest.approx(0.7)      # blocks 3, 4: 0.7, 0.75
    assert summary.loc[("noise", "none"), "min share +1, sign 2, blocks 3+"] == 1.0
    plain = signal_summary({"bn": sp_table()})
    assert list(plain.index) == ["bn"]


# ---------------------------------------------------------------- structure
def test_count_parts_of_reactnet_a_in_each_mode():
    bn = count_parts(create_model("reactnet_a_bn", binary_weights=True, num_classes=10, width_mult=0.25))
    assert (bn[["blocks", "RSign", "RPReLU", "binary 3×3 convs", "binary 1×1 convs", "normalization layers"]]
            .tolist() == [13, 26, 26, 13, 18, 32])
    assert bn["num_batches_tracked counters"] == 32                        # one per BatchNorm layer
    assert bn["buffer values"] == bn["running mean + var values"] + bn["num_batches_tracked counters"]
    step1 = count_parts(create_model("reactnet_a_bn", binary_weights=False, num_classes=10, width_mult=0.25))
    assert step1["binary 3×3 convs"] == step1["binary 1×1 convs"] == 0   # real weights in step 1
    bf = count_parts(create_model("reactnet_a_bf", binary_weights=True, num_classes=10, width_mult=0.25))
    assert bf["normalization layers"] == bf["buffer values"] == 0 and bf["binary 1×1 convs"] == 18


# ---------------------------------------------------------------- tables of runs and counts
def test_seed_table_mean_std_min_max_in_first_appearance_order():
    runs = pd.DataFrame({"estimator": ["b", "b", "a"], "seed": [0, 1, 0], "val_top1": [90.0, 94.0, 50.0]})
    table = seed_table(runs, by="estimator", value="val_top1")
    assert list(table.index) == ["b", "a"] and list(table.columns) == ["mean", "std", "min", "max"]
    assert table.loc["b"].tolist() == pytest.approx([92.0, np.sqrt(8.0), 90.0, 94.0])
    assert np.isnan(table.loc["a", "std"])                               # one seed: no spread


def test_published_comparison_rounds_like_the_paper():
    total = pd.Series({"real_params": 1_000, "binary_params": 2_000, "bops": 4.8249e9,
                       "flops": 1.19e7, "ops": 8.7e7})
    published = {"params": 3_000, "bops": 4.82e9, "flops": 0.12e8, "ops": 0.87e8}
    table = published_comparison(total, published)
    assert list(table.index) == ["parameters", "BOPs", "FLOPs", "OPs"]
    assert table["match"].all()
    assert table.loc["BOPs", "ours"] == "4.82×10⁹" and table.loc["parameters", "ours"] == "3,000"
    assert not published_comparison(pd.concat([total.drop("ops"), pd.Series({"ops": 8.8e7})]), published).loc["OPs", "match"]


# ---------------------------------------------------------------- figures
def test_signal_propagation_sign_panel_titles_and_block_only_ticks():
    tables = {"bn": sp_table(1.0), "none": sp_table(10.0, constant_signs=True)}
    fig = P.plot_signal_propagation(tables, include_head=True, sign_column="sign_balance2",
                                    branch_title="Residual branch (3×3 half), before it is added",
                                    legend_title="mode")
    assert len(fig.axes) == 4
    squared, variance, branch, signs = fig.axes
    assert branch.get_title() == "Residual branch (3×3 half), before it is added"
    assert signs.get_yscale() == "linear" and "second sign" in signs.get_title()
    none_line = [line for line in signs.lines if line.get_label() == "none"][0]
    assert np.nanmax(none_line.get_ydata()) == 1.0
    labels = lambda ax: [t.get_text() for t in ax.get_xticklabels()]   # noqa: E731
    assert labels(squared)[0] == "stem" and labels(squared)[-1] == "head"
    assert labels(branch) == labels(signs) == ["1", "2", "3", "4"]      # no stem or head without data
    assert branch.get_xlim() == squared.get_xlim()                       # same x range in every panel
    assert signs.get_legend().get_title().get_text() == "mode"
    default = P.plot_signal_propagation({"bn": sp_table()})
    assert len(default.axes) == 3 and default.axes[2].get_title() == "Residual branch (half 1) before α"
    assert default.axes[-1].get_legend().get_title().get_text() == "variant"


def test_logit_spread_plots_absolute_and_relative_variance():
    tables = {(kind, norm): sp_table(s) for kind in ("photos", "noise") for norm, s in (("bn", 1.0), ("bf", 0.1))}
    summary = signal_summary(tables, names=("input", "mode"))
    fig = P.plot_logit_spread(summary)
    absolute, relative = fig.axes
    assert absolute.get_yscale() == relative.get_yscale() == "log"
    assert [t.get_text() for t in relative.get_xticklabels()] == ["bn", "bf"]
    assert len(relative.lines) == 2 and not relative.patches             # one marker series per input, no bars
    heights = sorted(y for line in relative.lines for y in line.get_ydata())
    assert heights == pytest.approx([0.125] * 4)                         # 2 modes x 2 inputs
    assert all(line.get_linestyle() == "None" for line in relative.lines)
    assert relative.get_legend().get_title().get_text() == "input batch"
    with pytest.raises(ValueError, match="signal_summary"):
        P.plot_logit_spread(summary.reset_index(level=0, drop=True))


def test_estimator_legend_sits_below_both_panels():
    fig = P.plot_estimators(points=201)
    fig.canvas.draw()
    assert all(ax.get_legend() is None for ax in fig.axes)   # inside, a legend would cover |x| < 1
    (legend,) = fig.legends
    # each estimator's entry pairs its two panels' line styles; the legend title explains them once
    assert [t.get_text() for t in legend.get_texts()] == ["sign(x) (forward)", "identity",
                                                          "clipped (sign_ste)", "ApproxSign (sign_approx)"]
    assert "broken line = surrogate" in legend.get_title().get_text()
    forward, backward = fig.axes
    assert all(line.get_linestyle() == "--" for line in forward.lines[1:])
    assert all(line.get_linestyle() == "-" for line in backward.lines)
    # later (thinner) estimators on top: ApproxSign stays visible where it lies on the clipped STE (|x| > 1)
    for ax in (forward, backward):
        orders = [line.get_zorder() for line in ax.lines[-len(backward.lines):]]
        assert orders == sorted(orders) and len(set(orders)) == len(orders)
    top = legend.get_window_extent().y1
    assert all(top < ax.xaxis.label.get_window_extent().y0 for ax in fig.axes)


def test_block_diagram_arrows_are_straight_and_clear_of_their_boxes():
    fig = P.plot_block_diagram()
    normal, reduction = fig.axes
    assert "block 1" in reduction.get_title()
    for ax in (normal, reduction):
        arrows = [t for t in ax.texts if getattr(t, "arrow_patch", None) is not None]
        assert arrows
        for a in arrows:
            (x0, y0), (x1, y1) = a.xyann, a.xy
            assert x0 == x1 or y0 == y1                                  # vertical or horizontal only
        boxes = {t.get_text(): t for t in ax.texts if t.get_bbox_patch() is not None}
        conv = [t for name, t in boxes.items() if name.startswith("3×3 binary conv")][0]
        into_conv = [a for a in arrows if a.xy == conv.get_position()][0]
        into_sign = [a for a in arrows if a.xy == boxes["RSign₁: sign(· + b₁)"].get_position()][0]
        # the two-line conv box is taller: its arrow stops further from the centre
        assert into_conv.arrow_patch.shrinkB > into_sign.arrow_patch.shrinkB + 3
        height = conv.get_window_extent().height * 72 / fig.dpi / 2
        assert into_conv.arrow_patch.shrinkB > height


def test_init_signal_propagation_init_hook():
    import torch
    from bnn_helpers.figures import gaussian_batch, init_signal_propagation
    seen = []

    def reinit(norm, model):
        seen.append(norm)
        from bnn_helpers.layers import BinaryConv2d
        for m in model.modules():
            if isinstance(m, BinaryConv2d):
                torch.nn.init.normal_(m.weight)

    x = gaussian_batch(2, 32)
    plain = init_signal_propagation(x, norms=("none",), width_mult=0.25)
    mixed = init_signal_propagation(x, norms=("none",), width_mult=0.25, init=reinit)
    assert seen == ["none"]
    assert not plain["none"]["avg_var"].equals(mixed["none"]["avg_var"])   # the hook ran before measuring
