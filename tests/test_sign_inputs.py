"""diagnostics.sign_inputs and plotting.plot_sign_input_histograms."""
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from bnn_helpers import create_model
from bnn_helpers import diagnostics as D
from bnn_helpers import plotting as P
from bnn_helpers.layers import RSign


def _tiny(mode):
    torch.manual_seed(0)
    return create_model(f"reactnet_a_{mode}", num_classes=10, width_mult=0.125)


def test_sign_inputs_are_the_shifted_inputs_of_every_rsign_of_the_block():
    model = _tiny("bn").train()
    x = torch.randn(4, 3, 32, 32)
    seen = []
    handles = [m.register_forward_hook(lambda mod, inp, out: seen.append((mod, inp[0])))
               for m in model.blocks[0].modules() if isinstance(m, RSign)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    running = model.blocks[0].norm1.running_mean.clone()
    values = D.sign_inputs(model, x, max_values=10**9)
    with torch.no_grad():
        expected = torch.cat([m.shift(u).flatten() for m, u in seen]).double().numpy()
    np.testing.assert_array_equal(np.sort(values["block1"]), np.sort(expected))
    assert set(values) == {f"block{i}" for i in range(1, len(model.blocks) + 1)}
    assert torch.equal(model.blocks[0].norm1.running_mean, running)   # BN statistics restored
    assert not any(m._forward_hooks for m in model.modules())          # hooks removed


def test_sign_inputs_subsample_is_reproducible_and_capped():
    model = _tiny("bf").eval()
    x = torch.randn(2, 3, 32, 32)
    a, b = D.sign_inputs(model, x, max_values=50), D.sign_inputs(model, x, max_values=50)
    assert all(v.size <= 50 for v in a.values())
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_plot_sign_input_histograms_draws_one_panel_per_network_and_block():
    rng = np.random.default_rng(0)
    inputs = {"bn": {"block1": rng.normal(size=1000), "block2": rng.normal(size=1000)},
              "none": {"block1": 50 * rng.normal(size=1000), "block2": rng.normal(size=1000)}}
    fig = P.plot_sign_input_histograms(inputs, ["block1", "block2"])
    axes = fig.axes
    assert len(axes) == 4
    # Titles report the shares: about 68 % of a unit normal lies inside |u| < 1.
    share = float(np.mean(np.abs(inputs["bn"]["block1"]) < 1))
    assert f"{share:.0%} in window" in axes[0].get_title()
    assert all(ax.get_xscale() == "symlog" for ax in axes)
    plt.close(fig)
    with pytest.raises(ValueError, match="block9"):
        P.plot_sign_input_histograms(inputs, ["block9"])


def test_sign_input_shares_counts_values_strictly_inside_the_interval():
    seen = {"a": {"block1": np.array([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0]), "block2": torch.tensor([0.2, 3.0])},
            "b": {"block1": np.array([-0.1, -0.2]), "block2": np.array([5.0, -5.0])}}
    window = D.sign_input_shares(seen)
    assert list(window.index) == ["a", "b"] and list(window.columns) == ["block1", "block2"]
    assert window.loc["a", "block1"] == pytest.approx(3 / 6) and window.loc["a", "block2"] == 0.5
    assert window.loc["b", "block1"] == 1.0 and window.loc["b", "block2"] == 0.0
    below = D.sign_input_shares(seen, -1.0, 0.0)
    assert below.loc["a", "block1"] == pytest.approx(1 / 6) and below.loc["b", "block1"] == 1.0
    values = np.random.default_rng(0).normal(size=1000)
    assert D.sign_input_shares({"x": {"b": values}}).iloc[0, 0] == pytest.approx(D.ste_window_share(values))


def test_plot_sign_input_histograms_sharey_gives_every_panel_one_y_range():
    rng = np.random.default_rng(0)
    inputs = {"a": {"block1": rng.normal(size=1000), "block2": np.zeros(1000) + 0.5},
              "b": {"block1": 50 * rng.normal(size=1000), "block2": rng.normal(size=1000)}}
    fig = P.plot_sign_input_histograms(inputs, ["block1", "block2"], sharey=True)
    assert len({ax.get_ylim() for ax in fig.axes}) == 1 and fig.axes[0].get_ylim()[1] >= 1.0
    plt.close(fig)
    fig = P.plot_sign_input_histograms(inputs, ["block1", "block2"])
    assert len({ax.get_ylim() for ax in fig.axes}) > 1
    plt.close(fig)


def _fresh_tables_and_inputs():
    torch.manual_seed(0)
    inputs = {"photos": torch.randn(4, 3, 32, 32) + 0.5, "N(0,1) noise": torch.randn(4, 3, 32, 32)}
    tables, seen = {k: {} for k in inputs}, {}
    for norm in ("bn", "none", "bf"):
        torch.manual_seed(0)
        model = create_model(f"reactnet_a_{norm}", binary_weights=True, width_mult=0.25).train()
        for kind, x in inputs.items():
            tables[kind][norm] = D.signal_propagation(model, x)
            seen[f"{norm} · {kind}"] = D.sign_inputs(model, x)
    return tables, seen


def test_init_and_window_readings_agree_with_the_tables_they_read():
    tables, seen = _fresh_tables_and_inputs()
    r = D.init_signal_readings(tables)
    bf = D.block_rows(tables["photos"]["bf"], 4)
    assert r["bf on photos, blocks 4+: smallest mean² / variance"] == pytest.approx((bf.avg_sq_mean / bf.avg_var).min())
    last = [D.block_rows(tables[k][m]).avg_sq_mean.iloc[-1] for k in tables for m in ("bn", "none")]
    assert r["bn, none, both inputs: smallest last-block mean²"] == pytest.approx(min(last))
    assert r["bn, both inputs: smallest branch variance (3×3 half)"] <= r["bn, both inputs: largest branch variance (3×3 half)"]
    w = D.sign_window_readings(seen)
    window = D.sign_input_shares(seen)
    mid = [f"block{i}" for i in range(3, 14)]
    assert w["bf, both inputs, blocks 3+: smallest window share"] == pytest.approx(
        window.loc[["bf · photos", "bf · N(0,1) noise"], mid].min().min())
    assert 0.0 <= w["none on noise, blocks 5+: smallest share > 0"] <= 1.0 and len(w) == 7
