"""Table helpers that keep notebooks 07 and 08 short (complexity, config, diagnostics, results)."""
import pandas as pd
import pytest
import torch

from bnn_helpers import create_model, deploy
from bnn_helpers.complexity import (folding_summary, inference_op_table, op_difference, real_ops_by_part,
                                    size_overview, size_readings, size_table)
from bnn_helpers.config import differing_keys
from bnn_helpers.diagnostics import mode_dependence_table, packed_equality_table
from bnn_helpers.results import step_top1


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    return {n: create_model(f"reactnet_a_{n}", binary_weights=True, width_mult=0.25, num_classes=10).eval()
            for n in ("bf", "bn")}


@pytest.fixture(scope="module")
def ops(nets):
    return pd.concat([inference_op_table(m, (3, 32, 32)) for m in nets.values()])


def test_op_difference_nonzero_only_keeps_the_stem(ops, nets):
    diff = op_difference(ops, nonzero_only=True)
    assert list(diff.index) == ["stem"]
    assert diff["shift"].item() == nets["bn"].stem.conv.out_channels * 16 ** 2
    assert len(op_difference(ops)) > 1   # the default keeps every part


def test_real_ops_by_part_and_folding_summary(ops):
    table = real_ops_by_part(ops)
    assert table.index[0] == "stem" and table.index[-1] == "head"
    assert table[("bf", "folded")].sum() == ops.query("norm == 'bf' and stage == 'folded'")["real_ops"].sum()
    folding = folding_summary(ops)
    assert list(folding.index) == ["bf", "bn"]
    assert folding.loc["bf", "folded M"] * 1e6 == pytest.approx(table[("bf", "folded")].sum())
    assert folding.loc["bf", "removed %"] == pytest.approx(100 * (1 - table[("bf", "folded")].sum()
                                                                   / table[("bf", "float")].sum()))
    assert (folding["blocks with fewer ops"] == folding["blocks"]).all() and (folding["blocks"] == 13).all()
    assert (folding["folded in blocks M"] < folding["folded M"]).all()


def test_size_overview_and_numeric_readings(nets):
    packs = {n: deploy.pack(m) for n, m in nets.items()}
    sizes = size_table(nets, packs, 32, "tiny")
    overview = size_overview(sizes)
    assert list(overview.columns) == ["float32 MB", "packed MB", "binary bits MB", "stem + classifier MB",
                                      "constants MB", "float32 / packed"]
    assert overview.index.names == ["model", "norm"]
    checks = size_readings(sizes, numeric_checks=True).iloc[0]
    flags = size_readings(sizes).iloc[0]
    assert (checks["bn − bf packed parts MB"] == 0) == flags["same packed parts"]
    assert (checks["bn − bf float32 MB"] > 0) == flags["bn float32 larger"]
    assert (checks["packed / accounting"] <= 1.05) == flags["within accounting"]
    assert "same packed parts" not in checks.index


def test_equality_and_mode_dependence_tables(nets):
    packs = {n: deploy.pack(m) for n, m in nets.items()}
    x, y = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.arange(4)
    table, results = packed_equality_table(nets, packs, x, y)
    assert list(table.index) == ["bf", "bn"] and set(results) == {"bf", "bn"}
    assert (table["integer results wrong"] == 0).all() and "RSign ties (exact 0)" in table
    coupling = mode_dependence_table(nets, x[:2], x[2:])
    assert list(coupling.index) == ["bf", "bn"]
    assert coupling.loc["bf"].max() < 1e-5 and coupling.loc["bn", "train vs eval mode"] > 1e-5


def test_step_top1_best_and_last_per_step():
    runs = pd.DataFrame({"norm": ["bf"] * 4, "step": [1, 1, 2, 2], "epoch": [1, 2, 1, 2],
                         "val_top1": [50.04, 40.0, 60.0, 70.06]})
    table = step_top1(runs)
    assert table.loc[("bf", 1), "best_val_top1"] == 50.0 and table.loc[("bf", 1), "last_val_top1"] == 40.0
    assert table.loc[("bf", 2)].tolist() == [70.1, 70.1]


def test_differing_keys_lists_only_the_keys_that_change():
    configs = {"a": {"model": "x", "lr": 1.0, "name": "a"}, "b": {"model": "y", "lr": 1.0, "name": "b"}}
    assert differing_keys(configs) == ["model", "name"]
    assert differing_keys({"a": {"k": 1}, "b": {}}) == ["k"]
