"""bnn_helpers.plotting: figure structure, savefig output, and the figure script's inputs."""
from pathlib import Path

import matplotlib
import matplotlib.ticker
import matplotlib.colors
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from bnn_helpers import plotting as P
from bnn_helpers.binarize import ESTIMATORS
from bnn_helpers.figures import gaussian_batch, init_signal_propagation, photo_batch


def sp_table(scale):
    names = ["stem", "block1", "block2", "head"]
    return pd.DataFrame({"position": range(4), "name": names,
                         "avg_sq_mean": [scale, 2 * scale, 0.0, 1.0],
                         "avg_var": [1.0, 0.5, 0.25, 0.1],
                         "branch_var": [np.nan, 0.3, 0.2, np.nan]})


def data_lines(ax):
    """Lines other than the dashed step dividers."""
    return [l for l in ax.lines if l.get_linestyle() != "--"]


def write_run(folder, epochs=(3, 2), seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for step, n in enumerate(epochs, start=1):
        for epoch in range(n):
            rows.append({"epoch": epoch, "step": step, "lr": 5e-4, "train_loss": rng.random(),
                         "train_top1": 100 * rng.random(), "train_top5": 100.0,
                         "val_loss": rng.random(), "val_top1": 100 * rng.random(),
                         "val_top5": 100.0, "images_per_s": 10.0, "agc_clip_share": 0.1,
                         "elapsed_s": 1.0})
    folder.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(folder / "summary.csv", index=False)
    stats = [{"step": step, "epoch": 0, "iteration": i, "optimizer_step": i + 1,
              "flip_ratio": 0.01 * (i + 1), "weight_sign_balance": 0.5,
              "act_sign_balance": 0.6, "agc_clip_share": 0.0}
             for step in (1, 2) for i in range(4)]
    pd.DataFrame(stats).to_csv(folder / "stats.csv", index=False)
    return folder


def test_signal_propagation_plot_has_one_line_per_variant_per_panel():
    fig = P.plot_signal_propagation({"bn": sp_table(1.0), "bf": sp_table(0.1)})
    assert len(fig.axes) == 3
    for ax in fig.axes:
        assert len(ax.lines) == 2 and ax.get_yscale() == "log"
        assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    assert len(fig.axes[0].lines[0].get_xdata()) == 3  # head left out
    assert fig.axes[-1].get_legend() is not None  # right of the last panel
    fig = P.plot_signal_propagation({"bn": sp_table(1.0)}, branch=False, include_head=True)
    assert len(fig.axes) == 2 and len(fig.axes[0].lines[0].get_xdata()) == 4
    with pytest.raises(ValueError, match="lacks columns"):
        P.plot_signal_propagation({"x": pd.DataFrame({"position": [0]})})


def test_signal_propagation_own_x_range_leaves_no_empty_stem_slot():
    table = sp_table(1.0).assign(sign_balance2=[np.nan, 0.5, 0.7, np.nan])
    shared = P.plot_signal_propagation({"bn": table}, sign_column="sign_balance2")
    own = P.plot_signal_propagation({"bn": table}, sign_column="sign_balance2", own_x_range=True)
    assert shared.axes[3].get_xlim() == shared.axes[0].get_xlim()          # default: one x range, stem slot empty
    assert own.axes[0].get_xlim() == shared.axes[0].get_xlim()             # the stem panel keeps its stem
    assert own.axes[3].get_xlim() == pytest.approx((1 - 0.6, 2 + 0.6))     # blocks-only panel: blocks 1..2 only


def test_signal_propagation_small_ticks_overrides_the_automatic_size():
    table = sp_table(1.0).assign(sign_balance2=[np.nan, 0.5, 0.7, np.nan])
    size = lambda fig: fig.axes[0].get_xticklabels()[0].get_fontsize()
    auto = P.plot_signal_propagation({"bn": table}, sign_column="sign_balance2")
    full = P.plot_signal_propagation({"bn": table}, sign_column="sign_balance2", small_ticks=False)
    assert size(auto) == 8 and size(full) > 8                               # default: small next to "stem"


def test_sign_saturation_plot_averages_the_signs_of_each_block():
    table = sp_table(1.0).assign(sign_window1=[np.nan, 0.2, 0.6, np.nan], sign_window2=[np.nan, 0.4, 0.8, np.nan],
                                 sign_balance1=[np.nan, 1.0, 0.5, np.nan])
    fig = P.plot_sign_saturation({"none": table, "bf": table}, linestyles={"bf": ":"})
    assert len(fig.axes) == 3 and fig.axes[0].get_yscale() == "log"
    window = [l for l in fig.axes[1].lines if l.get_label() == "none"][0]
    assert list(window.get_xdata()) == [1, 2]                       # blocks only, no stem or head
    assert np.allclose(window.get_ydata(), [0.3, 0.7])              # mean of the block's two signs
    assert [l for l in fig.axes[2].lines if l.get_label() == "bf"][0].get_linestyle() == ":"
    with pytest.raises(ValueError, match="sign_window"):
        P.plot_sign_saturation({"x": sp_table(1.0)})


def test_accuracy_curves_continue_step_two_after_step_one(tmp_path):
    runs = {"a": write_run(tmp_path / "a"), "b": write_run(tmp_path / "b", seed=1)}
    fig = P.plot_accuracy_curves(runs)
    assert len(fig.axes) == 2
    for ax in fig.axes:
        assert len(data_lines(ax)) == 4  # 2 runs x (train, val)
        dividers = [l for l in ax.lines if l.get_linestyle() == "--"]
        assert len(dividers) == 1 and dividers[0].get_xdata()[0] == pytest.approx(3.5)
        assert ax.get_legend() is not None and ax.get_ylabel()
    assert list(data_lines(fig.axes[0])[0].get_xdata()) == [1, 2, 3, 4, 5]
    summary = pd.read_csv(runs["a"] / "summary.csv")
    assert list(data_lines(fig.axes[0])[0].get_ydata()) == list(summary["val_top1"])
    with pytest.raises(FileNotFoundError, match="summary.csv"):
        P.plot_accuracy_curves([tmp_path / "missing"])


def test_training_stats_panels(tmp_path):
    fig = P.plot_training_stats([write_run(tmp_path / "run")])
    assert len(fig.axes) == 4
    for ax in fig.axes:
        assert len(data_lines(ax)) == 1
    # optimizer_step restarts in step 2, so it is shifted after step 1.
    assert list(data_lines(fig.axes[0])[0].get_xdata()) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert fig.axes[0].get_yscale() == "log"


def test_estimator_plot_shows_autograd_backward():
    fig = P.plot_estimators(x_range=2.0, points=401)
    forward, backward = fig.axes
    assert len(forward.lines) == 1 + len(ESTIMATORS)
    assert len(backward.lines) == len(ESTIMATORS)
    lines = {l.get_label(): l for l in backward.lines}
    x, y = (np.asarray(v) for v in lines["ApproxSign (sign_approx)"].get_data())
    for point, expected in ((0.0, 2.0), (0.5, 1.0), (-0.5, 1.0), (1.5, 0.0)):
        assert y[np.argmin(np.abs(x - point))] == pytest.approx(expected, abs=1e-9)
    x, y = (np.asarray(v) for v in lines["identity"].get_data())
    assert np.all(y == 1)


def test_weight_histograms_one_panel_per_layer():
    values = {f"blocks.{i}.conv.weight": np.random.default_rng(i).normal(size=100) for i in range(5)}
    fig = P.plot_weight_histograms(values, ncols=4)
    assert len(fig.axes) == 5
    assert all(len(ax.patches) == 60 for ax in fig.axes)


def test_savefig_writes_identical_png_twice(tmp_path, monkeypatch):
    monkeypatch.setenv("BNN_FIGS_DIR", str(tmp_path / "figs"))
    fig = P.plot_estimators(points=101)
    first = P.savefig(fig, "ste").read_bytes()
    path = P.savefig(fig, "ste.png")
    assert path == tmp_path / "figs" / "ste.png"
    assert first.startswith(b"\x89PNG\r\n\x1a\n") and path.read_bytes() == first
    assert b"Software" not in first
    image = plt.imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 100
    with pytest.raises(ValueError, match="PNG"):
        P.savefig(fig, "ste.pdf")
    with pytest.raises(ValueError, match="plain file name"):
        P.savefig(fig, "sub/ste")


def test_figs_dir_walks_up_to_the_repository_root(tmp_path, monkeypatch):
    monkeypatch.delenv("BNN_FIGS_DIR", raising=False)
    (tmp_path / "pyproject.toml").write_text("[project]\n")
    (tmp_path / "bnn_helpers").mkdir()
    nested = tmp_path / "notebooks" / "deeper"
    nested.mkdir(parents=True)
    monkeypatch.chdir(nested)
    assert P.figs_dir() == tmp_path / "Figs"


def test_figure_script_inputs_and_tables():
    photos = photo_batch(8, 64, seed=0)
    assert photos.shape == (8, 3, 64, 64)
    assert torch.equal(photos, photo_batch(8, 64, seed=0))
    assert not torch.equal(photos[0], photos[2])  # different random crops
    assert -3 < float(photos.mean()) < 3 and photos.std() > 0.3
    assert gaussian_batch(2, 8).shape == (2, 3, 8, 8)
    tables = init_signal_propagation(gaussian_batch(4, 32), width_mult=0.25)
    assert list(tables) == ["bn", "none", "bf"]
    assert all(len(t) == 15 for t in tables.values())
    fig = P.plot_signal_propagation(tables)
    assert all(len([l for l in ax.lines if not l.get_label().startswith("_")]) == 3 for ax in fig.axes)  # + the floor line where values clip


def test_predicted_vs_measured_draws_predictions_on_top():
    x = np.arange(5)
    panels = {"toy": {"predicted": {"predicted 1 + l/10": (x, 1 + x / 10)},
                      "measured": {"measured A": (x, 1 + x / 10), "measured B": (x, 0.5 + 0 * x)}},
              "net": {"predicted": {"predicted 1": (x, np.ones(5))}, "measured": {"measured A": (x, 0.1 * (x + 1))}}}
    fig = P.plot_predicted_vs_measured(panels, xlabel="block", ylabel="variance", log={"toy": False})
    toy, net = fig.axes
    assert toy.get_yscale() == "linear" and net.get_yscale() == "log"
    lines = {l.get_label(): l for l in toy.lines}
    assert set(lines) == {"predicted 1 + l/10", "measured A", "measured B"}
    prediction, measured = lines["predicted 1 + l/10"], lines["measured A"]
    assert prediction.get_zorder() > measured.get_zorder()           # visible where a measurement lies on it
    assert prediction.get_linestyle() != "-" and prediction.get_marker() in (None, "None", "")
    assert measured.get_marker() == "o"
    # one colour per measured label, shared across panels
    assert {l.get_label(): l.get_color() for l in net.lines}["measured A"] == measured.get_color()
    assert toy.get_legend() is not None and toy.get_xlabel() == "block"
    with pytest.raises(ValueError, match="predicted"):
        P.plot_predicted_vs_measured({"p": {"expected": {}}}, "x", "y")


def test_predicted_vs_measured_per_panel_xlabels_and_fixed_colours():
    x = np.arange(3)
    panels = {"toy": {"measured": {"A": (x, x + 1.0), "B": (x, x + 2.0)}}, "net": {"measured": {"A": (x, x + 1.0)}}}
    fig = P.plot_predicted_vs_measured(panels, xlabel={"toy": "block l (0: input)", "net": "block l"}, ylabel="v",
                                       colors={"B": "red"})
    toy, net = fig.axes
    assert toy.get_xlabel() == "block l (0: input)" and net.get_xlabel() == "block l"
    colours = {l.get_label(): l.get_color() for l in toy.lines}
    assert colours["B"] == "red" and colours["A"] != "red"


def test_unitwise_ratios_plot_one_box_per_kind_and_the_clip_line():
    ratios = pd.DataFrame({"kind": ["a"] * 5 + ["b"] * 3, "ratio": [0.001, 0.01, 0.1, 1.0, 0.0, 5, 6, 7]})
    fig = P.plot_unitwise_ratios(ratios, clip_factor=0.02)
    (ax,) = fig.axes
    assert ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a (5 units)", "b (3 units)"]
    clip = [l for l in ax.lines if l.get_linestyle() == "--"]
    assert len(clip) == 1 and clip[0].get_xdata()[0] == 0.02
    with pytest.raises(ValueError, match="lacks columns"):
        P.plot_unitwise_ratios(pd.DataFrame({"ratio": [1.0]}), 0.02)


def test_run_comparison_one_panel_per_group_and_a_stopped_run_in_the_legend(tmp_path):
    a, b = write_run(tmp_path / "a", epochs=(4,)), write_run(tmp_path / "b", epochs=(2, 2), seed=1)
    (tmp_path / "stopped").mkdir()
    fig = P.plot_run_comparison({"first": {"on": a, "off": tmp_path / "stopped"}, "second": {"on": b}},
                                chance=10, styles={"off": "--"})
    first, second = fig.axes
    on, off = first.lines[0], first.lines[1]
    assert list(on.get_xdata()) == [1, 2, 3, 4]
    assert list(on.get_ydata()) == list(pd.read_csv(a / "summary.csv")["val_top1"])
    assert len(off.get_xdata()) == 0 and off.get_linestyle() == "--"
    assert [t.get_text() for t in first.get_legend().get_texts()] == ["on", "off (no epoch finished)"]
    assert list(second.lines[0].get_xdata()) == [1, 2, 3, 4]           # step 2 continues after step 1
    assert second.lines[0].get_color() == on.get_color()               # one colour per label
    assert any(l.get_ydata()[0] == 10 for l in first.lines[2:])        # the chance line
    assert all(isinstance(ax.xaxis.get_major_locator(), matplotlib.ticker.MaxNLocator) for ax in fig.axes)


def test_run_comparison_one_epoch_keeps_integer_limits(tmp_path):
    fig = P.plot_run_comparison({"p": {"a": write_run(tmp_path / "a", epochs=(1,))}}, chance=10)
    assert fig.axes[0].get_xlim() == (0.5, 1.5)


def test_run_comparison_fixed_colours(tmp_path):
    a = write_run(tmp_path / "a", epochs=(1,))
    fig = P.plot_run_comparison({"p": {"a": a, "b": a}}, colors={"b": "red"})
    colours = {l.get_label(): l.get_color() for l in fig.axes[0].lines}
    assert colours["b"] == "red" and colours["a"] != "red"


def test_accuracy_curves_draw_the_chance_level(tmp_path):
    fig = P.plot_accuracy_curves({"run": write_run(tmp_path / "run")}, chance=10.0)
    ax_acc, ax_loss = fig.axes
    chance = [l for l in ax_acc.lines if l.get_label().startswith("chance")]
    assert len(chance) == 1 and set(chance[0].get_ydata()) == {10.0}
    guess = [l for l in ax_loss.lines if l.get_label().startswith("uniform guess")]
    assert len(guess) == 1 and guess[0].get_ydata()[0] == pytest.approx(np.log(10))
    assert "chance (10 %)" in [t.get_text() for t in ax_acc.get_legend().get_texts()]
    # integer epoch ticks; y from 0, so the distance to chance is true to scale
    assert all(float(t).is_integer() for t in ax_acc.get_xticks())
    assert ax_acc.get_ylim()[0] == 0 and ax_loss.get_ylim()[0] == 0


def boxes(ax):
    """Texts drawn with a box around them: the diagram's blocks."""
    return [t for t in ax.texts if t.get_bbox_patch() is not None]


def test_block_diagram_has_every_operation_once():
    fig = P.plot_block_diagram()
    normal, reduction = fig.axes
    # normal: x, ×β1, RSign1, 3×3 conv, ×α, +, RPReLU1, ×β2, RSign2, 1×1 conv, ×α, + y, RPReLU2, out
    assert len(boxes(normal)) == 14
    # reduction: the same with two 1×1 branches (conv, ×α, + y each), avgpool and concat
    assert len(boxes(reduction)) == 14 + 3 + 2
    for ax, n_binary in ((normal, 4), (reduction, 5)):
        colors = [t.get_bbox_patch().get_facecolor() for t in boxes(ax)]
        binary = matplotlib.colors.to_rgba(P._KIND_COLORS["binary"])
        assert sum(np.allclose(c, binary) for c in colors) == n_binary   # 2 RSigns + the binary convs
        labels = [t.get_text() for t in boxes(ax)]
        assert {"× 1/$\\beta_{l,1}$", "× 1/$\\beta_{l,2}$"} <= set(labels)   # the notebooks' β_{l,1}, β_{l,2}
        repeated = {label for label in labels if labels.count(label) > 1}
        assert repeated == ({"× α"} if ax is normal else {"× α", "+ y"})   # no box drawn twice
        assert ax.get_title()
    assert "stride 2" in " ".join(t.get_text() for t in boxes(reduction))
    assert "avgpool\n2×2" in [t.get_text() for t in boxes(reduction)]
    assert len(fig.legends) == 1 and len(fig.legends[0].get_texts()) == 2
    assert fig.get_suptitle()


def test_deployment_summary_panels():
    sizes = pd.DataFrame({"model": ["digits", "digits", "ReActNet-A", "ReActNet-A"],
                          "norm": ["bf", "bn", "bf", "bn"], "float32 MB": [7.1, 7.2, 117.3, 117.5],
                          "packed MB": [0.3, 0.3, 7.9, 7.9]})
    parts = ["stem", "block1", "block2", "head"]
    columns = pd.MultiIndex.from_product([["bf", "bn"], ["float", "folded"]])
    real_ops = pd.DataFrame(np.arange(1, 17, dtype=float).reshape(4, 4) * 1e6, index=parts, columns=columns)
    latency = pd.DataFrame({"float": [158.0, 0.44], "reference": [1210.0, 1.1], "native": [41.7, 0.12]},
                           index=["1000-class bf, width 1, 224 px, batch 1", "digits bf, batch 64"])
    fig = P.plot_deployment_summary(sizes, real_ops, latency, ops_network="test net")
    size_ax, ops_ax, speed_ax = fig.axes
    assert len(size_ax.patches) == 2 * len(sizes)
    assert len(ops_ax.patches) == 4 * len(parts) and "test net" in ops_ax.get_title()
    assert len(speed_ax.patches) == 3 * len(latency)
    ratios = [t for t in size_ax.texts if t.get_text().endswith("×")]
    assert [t.get_text() for t in ratios] == ["24×", "24×", "15×", "15×"]
    assert [t.get_position()[0] for t in ratios] == [0, 1, 2, 3]   # centred over each pair of bars
    assert "(" not in ops_ax.get_title()                            # short title; the notes go in the prose
    for ax in fig.axes:
        assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
        assert ax.get_legend() is not None
    assert [ax.get_yscale() for ax in fig.axes] == ["log", "linear", "log"]   # ops linear: folding's ~25 % shows
    # mode colours only where the series are modes: sizes and speed paths are grey
    mode_colors = {matplotlib.colors.to_hex(c) for c in P._colors(3)}
    for ax in (size_ax, speed_ax):
        assert not {matplotlib.colors.to_hex(p.get_facecolor()) for p in ax.patches} & mode_colors
    assert fig.get_suptitle()
    # a path missing from the latency table is left out, not drawn empty
    fig = P.plot_deployment_summary(sizes, real_ops, latency.drop(columns="native"))
    assert len(fig.axes[2].patches) == 2 * len(latency)


def test_display_path_hides_this_machine(tmp_path, monkeypatch):
    from bnn_helpers.paths import display_path

    monkeypatch.setenv("BNN_RUNS_DIR", str(tmp_path / "runs"))
    assert display_path(tmp_path / "runs" / "demo" / "summary.csv") == "<runs>/demo/summary.csv"
    assert display_path(tmp_path / "runs") == "<runs>"
    assert not (tmp_path / "runs").exists()     # naming a path creates no folder
    import tempfile
    assert display_path(Path(tempfile.gettempdir()) / "x" / "y.txt") == "<tmp>/x/y.txt"
    assert display_path("/somewhere/else/file.txt") == "file.txt"


def test_plot_sign_thresholds_titles_each_panel_with_its_share_of_plus_one():
    gray = np.linspace(0, 1, 100).reshape(10, 10)
    fig = P.plot_sign_thresholds({"ramp": gray}, [0.0, 0.5, 0.9], originals={"ramp": np.stack([gray] * 3, -1)})
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0] == "ramp: photo" and len(titles) == 4
    assert titles[1].endswith("99.0% +1") and titles[2].endswith("50.0% +1") and titles[3].endswith("10.0% +1")
    assert "τ = 0.50" in titles[2]
    with pytest.raises(ValueError):
        P.plot_sign_thresholds({}, [0.5])


def test_explore_builds_no_slider_without_a_front_end(monkeypatch):
    drawn = []
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    monkeypatch.setenv("BNN_WIDGETS", "0")
    assert not P.widget_frontend()
    P.explore(lambda tau: drawn.append(tau), tau=(0.0, 1.0, 0.1, 0.5))
    assert drawn == []
    monkeypatch.setenv("BNN_WIDGETS", "1")
    assert not P.widget_frontend()   # forced on, but no IPython kernel runs under pytest
    with pytest.raises(ValueError):
        P.explore(lambda: None)


def test_explore_builds_sliders_that_call_draw_with_their_start_values(monkeypatch):
    pytest.importorskip("ipywidgets")
    monkeypatch.setattr(P, "widget_frontend", lambda: True)
    calls = []

    def draw(tau, setting):
        calls.append((tau, setting))
        return plt.figure()

    P.explore(draw, tau=(0.0, 1.0, 0.01, 0.6), setting=["SGD lr 0.5", "Adam lr 0.0005"])
    assert calls == [(0.6, "SGD lr 0.5")]


def test_signal_propagation_marks_the_log_floor_and_keeps_the_legend_clear():
    table = sp_table(1.0).assign(branch_var=[np.nan, 1e-9, 0.0, np.nan])   # 1e-9 drawn at the floor, 0 left out
    fig = P.plot_signal_propagation({"none": table, "bf": sp_table(0.1)})
    branch = fig.axes[2]
    line = [l for l in branch.lines if l.get_label() == "none"][0]
    assert line.get_ydata()[1] == pytest.approx(1e-6) and np.isnan(line.get_ydata()[2])
    assert any("10⁻⁶" in t.get_text() for t in branch.texts)                # the floor is said, where it is used
    assert not fig.axes[0].texts                                            # and nowhere else
    assert fig.axes[-1].get_legend() is not None and fig.axes[0].get_legend() is None


def test_seed_bands_mean_line_and_min_max_band_per_mode(tmp_path):
    rows = [{"mode": m, "seed": s, "step": step, "epoch": e, "val_top1": 10.0 * e + s + (5 if m == "bf" else 0)}
            for m in ("bn", "bf") for s in (0, 2) for step in (1, 2) for e in (1, 2)]
    table = pd.DataFrame(rows)
    fig = P.plot_seed_bands({"left": table, "right": table}, modes=("bn", "bf"), chance=10)
    assert len(fig.axes) == 2
    ax = fig.axes[0]
    bn = [l for l in ax.lines if l.get_label().startswith("bn")][0]
    assert list(bn.get_xdata()) == [1, 2, 3, 4]                 # step 2 continues after step 1
    assert list(bn.get_ydata()) == [11.0, 21.0, 11.0, 21.0]     # mean of seeds 0 and 2
    assert "2 seeds" in bn.get_label() and "band" in bn.get_label() and len(ax.collections) == 2   # one band per mode
    assert [l for l in ax.lines if l.get_linestyle() == "--"][0].get_xdata()[0] == pytest.approx(2.5)
    assert len(fig.legends) == 1 and ax.get_legend() is None and ax.get_ylabel()   # one legend, outside the panels
    with pytest.raises(ValueError, match="lacks columns"):
        P.plot_seed_bands({"x": table.drop(columns="seed")})


def test_labels_of_one_mode_share_its_colour():
    colors = P._label_colors(["bn · init", "bn · trained", "bf (nf β)", "none, photos", "toy"])
    assert colors[0] == colors[1] and len({colors[0], colors[2], colors[3], colors[4]}) == 4
    assert P._label_colors(["bf"])[0] == colors[2]


def test_labels_without_modes_take_the_palette_in_order():
    assert P._label_colors(["Adam", "SGD"]) == list(P._colors(2))


def test_accuracy_curves_one_legend_right_and_loss_title(tmp_path):
    runs = {"a": write_run(tmp_path / "a"), "b": write_run(tmp_path / "b", seed=1)}
    fig = P.plot_accuracy_curves(runs, chance=10.0, legend="right", loss_title="Loss: train KD, val CE")
    assert all(ax.get_legend() is None for ax in fig.axes) and len(fig.legends) == 1
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[:4] == ["a val", "a train", "b val", "b train"] and "chance (10 %)" in labels
    assert fig.axes[1].get_title() == "Loss: train KD, val CE"
    with pytest.raises(ValueError, match="legend"):
        P.plot_accuracy_curves(runs, legend="inside")


def test_accuracy_curves_single_run_plain_labels(tmp_path):
    fig = P.plot_accuracy_curves({"": write_run(tmp_path / "a")}, chance=10.0, legend="right", title="demo run")
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[:2] == ["val", "train"] and fig.get_suptitle() == "demo run"


def test_evaluation_bars_grey_groups_and_chance():
    table = pd.DataFrame({"eval": [10.0, 90.0], "train": [12.0, 91.0]},
                         index=pd.Index(["x", "y"], name="network"))
    fig = P.plot_evaluation_bars(table, title="t", chance=10, legend_title="evaluation")
    ax = fig.axes[0]
    bars = [p for p in ax.patches if p.get_height() > 0]
    assert [round(b.get_height(), 1) for b in bars] == [10.0, 90.0, 12.0, 91.0]
    assert len({b.get_facecolor() for b in bars}) == 2                       # one grey per column
    assert all(abs(c[0] - c[1]) < 1e-9 and abs(c[1] - c[2]) < 1e-9 for c in (b.get_facecolor() for b in bars))
    assert ax.get_ylim() == (0, 100) and ax.get_xlabel() == "network"
    assert "chance (10 %)" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_variance_prediction_gives_modes_their_colour_and_others_distinct_ones():
    x = np.arange(4)
    toy = P.prediction_table(x, 1 + x / 25, {"identity": 1 + x / 25, "prelu": 0.4 + 0 * x}, panel="toy")
    net = P.prediction_table(x[1:], np.ones(3), {"bf": [0.3, 0.1, 0.05], "bf + gain": [2.0, 10.0, 50.0]}, panel="net")
    fig = P.plot_variance_prediction(toy, net, title="t")
    left, right = fig.axes
    assert left.get_yscale() == "linear" and right.get_yscale() == "log"
    assert left.get_xlabel() == "block index l (0: input)" and right.get_xlabel() == "block index l"
    colours = {l.get_label(): matplotlib.colors.to_hex(l.get_color()) for ax in fig.axes for l in ax.lines}
    modes = {m: matplotlib.colors.to_hex(c) for m, c in P.mode_colors().items()}
    assert colours["bf"] == modes["bf"]
    measured = ["identity", "prelu", "bf + gain"]
    assert len({colours[k] for k in measured}) == 3 and not {colours[k] for k in measured} & set(modes.values())
    with pytest.raises(ValueError, match="one panel"):
        P.plot_variance_prediction(pd.concat([toy, net]), net)


def test_run_comparison_sharey_gives_every_panel_one_y_range(tmp_path):
    a, b = write_run(tmp_path / "a", epochs=(4,)), write_run(tmp_path / "b", epochs=(2,), seed=1)
    fig = P.plot_run_comparison({"p": {"a": a}, "q": {"b": b}}, sharey=True)
    first, second = fig.axes
    assert first.get_ylim() == second.get_ylim()
    first.set_ylim(0, 100)
    assert second.get_ylim() == (0, 100)


def test_signal_propagation_zeros_at_floor_draws_exact_zeros_and_says_so():
    table = sp_table(1.0).assign(branch_var=[np.nan, 1e-9, 0.0, np.nan])
    fig = P.plot_signal_propagation({"none": table}, zeros_at_floor=True)
    line = fig.axes[2].lines[0]
    assert line.get_ydata()[1] == pytest.approx(1e-6) and line.get_ydata()[2] == pytest.approx(1e-6)
    assert any("exact 0" in t.get_text() for t in fig.axes[2].texts)


def test_training_stats_linestyles_draw_dashed_lines_on_top(two_step_stats_run):
    run = two_step_stats_run
    fig = P.plot_training_stats({"bn": run, "none": run}, columns=["flip_ratio"], linestyles={"bn": "--"})
    dashed, solid = fig.axes[0].lines[:2]
    assert dashed.get_linestyle() == "--" and solid.get_linestyle() == "-"
    assert dashed.get_zorder() > solid.get_zorder()


def test_series_colors_keep_mode_colours_for_modes_only():
    colours = P.series_colors(["s = 1", "bf", "s = 0.25", "s = 1"])
    modes = P.mode_colors()
    assert list(colours) == ["s = 1", "bf", "s = 0.25"] and colours["bf"] == modes["bf"]
    assert colours["s = 1"] != colours["s = 0.25"] and not {colours["s = 1"], colours["s = 0.25"]} & set(modes.values())
    # plot_predicted_vs_measured uses the same rule by default
    x = np.arange(3)
    fig = P.plot_predicted_vs_measured({"p": {"measured": {"s = 1": (x, x + 1.0), "s = 0.25": (x, x + 2.0)}}}, "x", "y")
    drawn = {l.get_label(): matplotlib.colors.to_hex(l.get_color()) for l in fig.axes[0].lines}
    assert drawn["s = 0.25"] == matplotlib.colors.to_hex(colours["s = 0.25"])


def test_unitwise_ratios_plot_marks_the_floor_only_when_a_ratio_is_below_it():
    below = pd.DataFrame({"kind": ["a", "a", "b"], "ratio": [1e-8, 0.1, 1.0]})
    (ax,) = P.plot_unitwise_ratios(below, clip_factor=0.02).axes
    floor = [l for l in ax.lines if l.get_linestyle() == ":"]
    assert len(floor) == 1 and floor[0].get_xdata()[0] == 1e-6
    assert any("plotting floor" in t.get_text() for t in ax.texts)
    (ax,) = P.plot_unitwise_ratios(below.assign(ratio=[1e-3, 0.1, 1.0]), clip_factor=0.02).axes
    assert not [l for l in ax.lines if l.get_linestyle() == ":"] and not ax.texts
    plt.close("all")


def test_run_comparison_unfinished_note_replaces_the_empty_legend_entry(tmp_path):
    a = write_run(tmp_path / "a", epochs=(2,))
    (tmp_path / "stopped").mkdir()
    fig = P.plot_run_comparison({"p": {"on": a, "off": tmp_path / "stopped"}},
                                unfinished_notes={"off": "diverged in epoch 1"})
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["on"]
    assert [t.get_text() for t in ax.texts] == ["off: diverged in epoch 1"]


def test_plot_evaluation_bars_wraps_group_labels():
    import matplotlib.pyplot as plt
    import pandas as pd
    from bnn_helpers.plotting import plot_evaluation_bars
    table = pd.DataFrame({"eval": [50.0, 60.0]}, index=["bn, step 1, trained at batch 4", "bf"])
    fig = plot_evaluation_bars(table, chance=10, wrap=20)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == ["bn, step 1, trained\nat batch 4", "bf"]
    plt.close(fig)


def test_plot_slope_grid_colours_s025_like_the_prelu_toy():
    x = np.arange(4)
    grid = pd.concat([P.prediction_table(x, 1 + 0.04 * x, {f"trunk slope s = {s:g}": 0.5 + 0 * x for s in (0.25, 1.0)},
                                         panel=f"α = {a:g}", prediction="predicted 1 + l·α²") for a in (0.1, 0.2)])
    fig = P.plot_slope_grid(grid, title="grid")
    assert len(fig.axes) == 2 and all(ax.get_yscale() == "linear" for ax in fig.axes)
    prelu = P.series_colors(["identity toy", "PReLU toy"])["PReLU toy"]
    lines = {line.get_label(): line.get_color() for line in fig.axes[0].get_lines()}
    assert matplotlib.colors.same_color(lines["trunk slope s = 0.25"], prelu)
    assert matplotlib.colors.same_color(lines["trunk slope s = 1"], "C9")


def test_agc_comparison_style_draws_with_plot_run_comparison(tmp_path):
    style = P.agc_comparison_style()
    assert style["styles"]["no AGC"] == "--" and style["chance"] == 10
    assert style["colors"]["AGC λ = 0.16"] not in ("k", "black", "grey", "gray", "C7")   # visible on the chance line
    fig = P.plot_run_comparison({"p": {"AGC λ = 0.02": write_run(tmp_path / "a", epochs=(1, 2)),
                                       "no AGC": tmp_path / "stopped"}}, **style)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert any("diverged before epoch 1 ended" in t for t in texts)
    plt.close(fig)
