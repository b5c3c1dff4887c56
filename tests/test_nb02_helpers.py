"""Helpers added for notebook 02: the thread choice, part counts without buffers,
block rows of a signal table, the binarization gap readings and the per-seed lead."""
import numpy as np
import pandas as pd
import pytest

from bnn_helpers import create_model
from bnn_helpers.diagnostics import binarization_readings, block_rows, count_parts
from bnn_helpers.results import lead_per_seed
from bnn_helpers.runtime import notebook_threads


def test_notebook_threads_one_only_when_the_cores_are_busy():
    assert notebook_threads(load=1.6, cores=2) == 1
    assert notebook_threads(load=1.4, cores=2) is None
    assert notebook_threads() in (1, None)


def test_count_parts_without_buffers_keeps_the_layer_counts():
    net = create_model("reactnet_a_bn", binary_weights=True, num_classes=10, width_mult=0.25)
    full, layers = count_parts(net), count_parts(net, with_buffers=False)
    assert list(layers.index) == list(full.index[:6])
    assert layers.tolist() == [13, 26, 26, 13, 18, 32]


def test_block_rows_slices_blocks_by_number():
    names = ["stem", "block1", "block2", "block3", "head"]
    table = pd.DataFrame({"name": names, "avg_var": [0.0, 1.0, 2.0, 3.0, 9.0]})
    assert block_rows(table, 2).avg_var.tolist() == [2.0, 3.0]
    assert block_rows(table, 1, 2).index.tolist() == ["block1", "block2"]


def test_binarization_readings_from_a_gap_table():
    index = pd.MultiIndex.from_product([["bn", "none"], ["step 1 (real weights)", "step 2 start (binarized)"]],
                                       names=["mode", "weights"])
    gap = pd.DataFrame({"eval mode (running stats)": [80.0, 10.0, 90.0, 70.0],
                        "train mode (batch stats)": [80.0, 40.0, 90.0, 70.0]}, index=index)
    r = binarization_readings(gap)
    assert r["bn drop"] == 70.0 and r["none drop"] == 20.0 and r["step 1, lower of the two"] == 80.0
    assert r["given back by batch stats"] == 30.0 and r["still below step 1"] == 40.0
    assert r["% of the drop given back"] == pytest.approx(3000 / 70)


def test_lead_per_seed_is_leader_minus_other_per_seed_and_step():
    best = pd.DataFrame({"mode": ["bn", "none"] * 4, "seed": [0, 0, 1, 1] * 2, "step": [1] * 4 + [2] * 4,
                         "best": [90.0, 95.0, 91.0, 94.0, 92.0, 97.0, 93.0, 96.0]})
    lead = lead_per_seed(best, "none", "bn")
    assert lead.index.tolist() == [0, 1] and lead.columns.tolist() == [1, 2]
    assert np.allclose(lead.to_numpy(), [[5.0, 5.0], [3.0, 3.0]])


def test_coupling_table_train_eval_rows_and_restores_the_mode():
    import torch
    from bnn_helpers.diagnostics import coupling_table
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten())
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten())
    net.eval()
    x = torch.randn(9, 3, 5, 5)
    table = coupling_table({"bn": net, "plain": plain}, x[:1], x[1:5], x[5:9])
    assert list(table.index) == ["train mode", "eval mode"] and list(table.columns) == ["bn", "plain"]
    assert table.loc["train mode", "bn"] > 0.01
    assert table.loc["eval mode", "bn"] < 1e-6 and table["plain"].max() < 1e-6
    assert not net.training and plain.training   # each network's own flag is back


def test_epoch_table_and_step2_dips_and_mean_best(tmp_path, monkeypatch):
    from bnn_helpers import results as R
    for label, top1 in (("a", [10.0, 20.0]), ("b", [30.0, 40.0])):
        (tmp_path / label).mkdir()
        pd.DataFrame({"epoch": [1, 2], "val_top1": top1, "val_loss": [2.0, 1.0]}).to_csv(tmp_path / label / "summary.csv", index=False)
    table = R.epoch_table({"a": tmp_path / "a", "b": tmp_path / "b"})
    assert list(table.columns) == ["a val_top1", "b val_top1", "a val_loss", "b val_loss"]
    assert table.loc[2, "b val_top1"] == 40.0 and list(table.index) == [1, 2]
    monkeypatch.setattr(R, "results_dir", lambda: tmp_path)
    for mode, seed, log in (("bn", 0, [50.0, 60.0, 30.0, 40.0]), ("none", 0, [70.0, 80.0, 75.0, 90.0])):
        run = tmp_path / "demo" / f"{mode}_s{seed}"
        run.mkdir(parents=True)
        pd.DataFrame({"step": [1, 1, 2, 2], "epoch": [1, 2, 1, 2], "val_top1": log}).to_csv(run / "summary.csv", index=False)
    dips = R.step2_dips("demo", seeds=(0,))
    assert dips.loc[0, "bn"] == 30.0 and dips.loc[0, "none"] == 5.0
    best = pd.DataFrame({"mode": ["bn", "bn", "none", "bf"], "seed": [0, 1, 0, 0], "step": [1, 1, 1, 1],
                         "best": [90.0, 92.0, 95.0, 80.0]})
    mb = R.mean_best(best, modes=("bn", "none"))
    assert list(mb.index) == ["bn", "none"] and mb.loc["bn", 1] == 91.0
