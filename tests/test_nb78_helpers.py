"""Helpers that keep notebooks 07 and 08 short: GPU estimates, config comparison, figure
ranges and labels, flip reports, train-mode dependence, tampered files, op differences."""
import math

import matplotlib.colors
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

from bnn_helpers import create_model, deploy
from bnn_helpers import plotting as P
from bnn_helpers.complexity import inference_op_table, op_difference
from bnn_helpers.diagnostics import describe_flips, train_mode_dependence
from bnn_helpers.launch import config_changes, format_estimates, gpu_training_estimates


# -- launch.py: planning helpers ------------------------------------------------
def test_gpu_training_estimates_follow_the_formula():
    table = gpu_training_estimates(50e9, {"slow": 100, "fast": 400}, utilisation=(0.1, 0.3),
                                   train_images=1_000_000, epochs=10, gpus=8, loader_images_per_s=500)
    rate = 100e12 * 0.1 / 50e9                                          # 200 images/s
    assert table.loc["slow", ("images/s per GPU", 0.1)] == pytest.approx(rate)
    assert table.loc["slow", ("minutes per epoch, 1 GPU", 0.1)] == pytest.approx(1e6 / rate / 60)
    assert table.loc["slow", ("days, 10 epochs, 8 GPUs", 0.1)] == pytest.approx(10 * 1e6 / (8 * rate) / 86400)
    assert table.loc["fast", ("loader processes per GPU", 0.3)] == pytest.approx(400e12 * 0.3 / 50e9 / 500)
    assert "loader processes per GPU" not in gpu_training_estimates(50e9, {"a": 1}).columns.get_level_values(0)
    with pytest.raises(ValueError):
        gpu_training_estimates(0, {"a": 1})


def test_format_estimates_prints_ranges_low_to_high():
    text = format_estimates(gpu_training_estimates(50e9, {"slow": 100}, utilisation=(0.1, 0.3),
                                                   train_images=1_000_000, epochs=10, gpus=8))
    assert list(text.index) == ["slow: 100 TFLOPS"]
    assert text.loc["slow: 100 TFLOPS", "images/s per GPU"] == "200–600"
    assert text.loc["slow: 100 TFLOPS", "minutes per epoch, 1 GPU"] == "28–83"      # low rate = long epoch
    assert text.loc["slow: 100 TFLOPS", "days, 10 epochs, 8 GPUs"] == "0.0–0.1"


def test_format_estimates_rounds_loader_processes_up():
    loaders = gpu_training_estimates(50e9, {"slow": 100}, utilisation=(0.1, 0.3), loader_images_per_s=90)
    assert loaders["loader processes per GPU"].round(2).values.tolist() == [[2.22, 6.67]]
    assert format_estimates(loaders).loc["slow: 100 TFLOPS", "loader processes per GPU"] == "3–7"


def test_config_changes_hides_machine_paths(tmp_path):
    cfg = {"batch_size": 256, "data_dir": "/path/to/imagenet", "epochs": 256}
    table = config_changes(cfg, {"batch_size": 32, "data_dir": str(tmp_path / "digits"), "unknown": 1})
    assert list(table.index) == ["batch_size", "data_dir"]                   # keys cfg does not know: left out
    assert table.loc["batch_size", "ImageNet run"] == 256 and table.loc["batch_size", "CPU demo"] == 32
    assert table.loc["data_dir", "CPU demo"].startswith("<tmp>") and str(tmp_path) not in table.to_string()


# -- plotting.py -----------------------------------------------------------------
def _stats_run(folder, weight_balance):
    folder.mkdir(parents=True)
    rows = [{"step": step, "epoch": 1, "iteration": i, "optimizer_step": i + 1, "flip_ratio": 1e-3,
             "weight_sign_balance": weight_balance + 1e-5 * i, "act_sign_balance": math.nan if i == 0 else 0.6 + 0.05 * i,
             "agc_clip_share": 0.01} for step in (1, 2) for i in range(5)]
    pd.DataFrame(rows).to_csv(folder / "stats.csv", index=False)
    return folder


def test_training_stats_balance_panels_have_a_minimum_range_and_shared_ticks(tmp_path):
    fig = P.plot_training_stats(_stats_run(tmp_path / "run", 0.5003))
    flips, weights, acts, agc = fig.axes
    low, high = weights.get_ylim()
    assert high - low == pytest.approx(P._MIN_BALANCE_SPAN) and low < 0.5003 < high   # noise reads as flat
    assert acts.get_ylim()[1] - acts.get_ylim()[0] > P._MIN_BALANCE_SPAN              # a real trend keeps its range
    assert all(ax.get_xlim() == flips.get_xlim() for ax in fig.axes)                 # one x axis, one set of ticks
    assert all(list(ax.get_xticks()) == list(flips.get_xticks()) for ax in fig.axes)


def test_accuracy_curves_loss_band_zooms_the_loss_panel(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    pd.DataFrame([{"epoch": e, "step": s, "train_loss": 2.3, "train_top1": 10.0, "val_loss": 2.31,
                   "val_top1": 11.0} for s in (1, 2) for e in (1, 2)]).to_csv(folder / "summary.csv", index=False)
    fig = P.plot_accuracy_curves({"demo": folder}, chance=10, loss_band=0.5)
    assert fig.axes[1].get_ylim() == pytest.approx((math.log(10) - 0.5, math.log(10) + 0.5))
    assert "± 0.5" in fig.axes[1].get_title()
    with pytest.raises(ValueError, match="loss_band"):
        P.plot_accuracy_curves({"demo": folder}, loss_band=0.5)


def test_wrap_at_commas_breaks_only_after_commas():
    assert P._wrap_at_commas("digits bf, batch 64", 16) == "digits bf,\nbatch 64"
    assert P._wrap_at_commas("1000-class bf, width 1, 224 px, batch 1", 16) == "1000-class bf,\nwidth 1, 224 px,\nbatch 1"
    assert P._wrap_at_commas("short", 16) == "short"


def test_deployment_summary_names_the_models_in_full():
    sizes = pd.DataFrame({"model": ["digits, width 1/4", "ReActNet-A, width 1, 1000 classes"], "norm": ["bf", "bf"],
                          "float32 MB": [7.1, 117.3], "packed MB": [0.3, 7.9]})
    real_ops = pd.DataFrame(np.ones((2, 4)) * 1e6, index=["stem", "head"],
                            columns=pd.MultiIndex.from_product([["bf", "bn"], ["float", "folded"]]))
    latency = pd.DataFrame({"float": [1.0]}, index=["digits bf, batch 64"])
    size_ax, _, speed_ax = P.plot_deployment_summary(sizes, real_ops, latency).axes
    assert [t.get_text() for t in size_ax.get_xticklabels()] == ["bf", "bf"]
    assert [t.get_text() for t in size_ax.texts if "classes" in t.get_text() or "digits" in t.get_text()] == [
        "digits, width 1/4", "ReActNet-A, width 1,\n1000 classes"]
    assert [t.get_text() for t in speed_ax.get_xticklabels()] == ["digits bf,\nbatch 64"]


# -- diagnostics.py ----------------------------------------------------------------
def test_train_mode_dependence_is_zero_without_batchnorm_only():
    g = torch.Generator().manual_seed(0)
    batch, companions = torch.randn(4, 6, generator=g), torch.randn(3, 6, generator=g) + 2
    plain = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    with_bn = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, 3)).eval()
    assert train_mode_dependence(plain, batch, companions) == {"train vs eval mode": 0.0,
                                                               "batch coupling (train mode)": 0.0}
    running_mean = with_bn[1].running_mean.clone()
    result = train_mode_dependence(with_bn, batch, companions)
    assert result["train vs eval mode"] > 1e-3 and result["batch coupling (train mode)"] > 1e-3
    assert not with_bn.training and torch.equal(with_bn[1].running_mean, running_mean)   # the model is untouched
    with pytest.raises(ValueError):
        train_mode_dependence(plain, batch, companions[:1])


def _per_image(flips):
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.5]])
    moved = logits.clone()
    moved[1] = torch.tensor([3.0, 0.0])                      # image 1's prediction changes
    return {"flips": torch.tensor(flips), "rel_err": torch.tensor([1e-7, 1.0, 2e-7]),
            "logits_f": logits, "logits_p": moved}


def test_describe_flips_says_what_happened():
    none = describe_flips(_per_image([0, 0, 0]) | {"rel_err": torch.tensor([1e-7, 3e-7, 2e-7])})
    assert none.startswith("no sign flipped: all 3 images") and "3.0e-07" in none and "\n" not in none
    some = describe_flips(_per_image([0, 4, 0]))
    first, detail = some.split("\n")
    assert first.startswith("4 sign(s) flipped, in 1 image(s)") and "2.0e-07" in first
    assert "image 1: 4 sign(s)" in detail and "different predictions (1 float, 0 packed)" in detail


# -- deploy.py / complexity.py ------------------------------------------------------------
def test_flip_stored_bit_changes_one_byte_and_load_packed_refuses(tmp_path):
    from safetensors.torch import load_file

    packed = deploy.pack(create_model("reactnet_a_bf", binary_weights=True, width_mult=0.25, num_classes=10).eval())
    path = tmp_path / "m.safetensors"
    deploy.save_packed(packed, path)
    tampered = deploy.flip_stored_bit(path, "blocks.3.conv3x3.weight_bits", tmp_path / "t.safetensors")
    original, changed = load_file(path), load_file(tampered)
    assert sum(int((original[k] != changed[k]).sum()) for k in original) == 1
    assert not torch.equal(original["blocks.3.conv3x3.weight_bits"], changed["blocks.3.conv3x3.weight_bits"])
    with pytest.raises(ValueError, match="sha256"):
        deploy.load_packed(tampered)
    with pytest.raises(KeyError):
        deploy.flip_stored_bit(path, "no.such.tensor", tmp_path / "x.safetensors")


def test_op_difference_after_folding_is_only_the_bn_stem_bias():
    nets = {n: create_model(f"reactnet_a_{n}", binary_weights=True, width_mult=0.25, num_classes=10).eval()
            for n in ("bf", "bn")}
    ops = pd.concat([inference_op_table(m, (3, 32, 32)) for m in nets.values()])
    diff = op_difference(ops)
    assert list(diff.index)[0] == "stem" and list(diff.index)[-1] == "head"
    assert (diff.drop(index="stem") == 0).all().all()
    assert diff.loc["stem", "shift"] == diff.loc["stem", "real_ops"] == nets["bn"].stem.conv.out_channels * 16 ** 2
    assert (op_difference(ops, stage="float").drop(index=["stem", "head"])["real_ops"] != 0).any()
    with pytest.raises(ValueError, match="no rows"):
        op_difference(ops, minuend="none")


def test_stats_overview_reads_the_stats_table():
    from bnn_helpers.results import stats_overview
    stats = pd.DataFrame({"step": [1, 1, 1, 1, 2, 2, 2, 2], "epoch": [1, 1, 2, 2, 1, 1, 2, 2],
                          "flip_ratio": [4e-3, 3e-3, 1e-3, 2e-3, 8e-3, 6e-3, 5e-3, 7e-3],
                          "weight_sign_balance": [0.5, 0.501, 0.502, 0.5, 0.5, 0.5, 0.5, 0.503],
                          "act_sign_balance": [np.nan, 0.7, 0.71, 0.69, np.nan, 0.72, 0.7, 0.68],
                          "agc_clip_share": [0.1, 0.2, 0.05, 0.1, 0.1, 0.1, 0.1, 0.3]})
    o = stats_overview(stats)
    assert o["first_act_missing"] == [True, True] and o["act_recorded"] == o["rows"] - 2 == 6
    assert o["weight_balance"] == (0.5, 0.503) and o["act_balance"] == (0.68, 0.72)
    assert o["agc_clip_share"] == (0.05, 0.3)
    assert o["last_step1_flip"] == 2e-3 and o["first_step2_flip"] == 8e-3
    assert o["epoch2_below_epoch1"] == {1: True, 2: False}      # step 2: 7e-3 is not below 6e-3


def test_format_stats_overview_prints_one_line_per_panel():
    from bnn_helpers.results import format_stats_overview
    o = {"first_act_missing": [True, True], "act_recorded": 6, "rows": 8, "weight_balance": (0.5, 0.503),
         "act_balance": (0.68, 0.72), "agc_clip_share": (0.05, 0.3), "last_step1_flip": 2e-3,
         "first_step2_flip": 8e-3, "epoch2_below_epoch1": {np.int64(1): True, np.int64(2): False}}
    lines = format_stats_overview(o).splitlines()
    assert lines[0].endswith("{1: True, 2: False}")
    assert len(lines) == 4 and "2.0e-03" in lines[0] and "8.0e-03" in lines[0]
    assert "0.50000–0.50300" in lines[1] and "0.68–0.72" in lines[2] and "6 of 8" in lines[2]
    assert lines[3] == "AGC clipped share: 5.0%–30.0%"


def test_checkpoint_table_lists_every_checkpoint_of_a_run(tmp_path):
    from bnn_helpers.results import checkpoint_table
    for step in (1, 2):
        (tmp_path / f"step{step}").mkdir()
        for which, epoch in (("best", 1), ("last", 2)):
            torch.save({"model": {}, "num_classes": 10, "step": step, "epoch": epoch, "best_top1": 12.5,
                        "config": {"model": "reactnet_a_bf", "loss": "kd", "agc": True}},
                       tmp_path / f"step{step}" / f"{which}.pth")
    table = checkpoint_table(tmp_path)
    assert table.file.tolist() == ["step1/best.pth", "step1/last.pth", "step2/best.pth", "step2/last.pth"]
    assert table.step.tolist() == [1, 1, 2, 2] and table.epoch.tolist() == [1, 2, 1, 2]
    assert (table.num_classes == 10).all() and (table.loss == "kd").all() and table.agc.all()


def test_training_stats_legend_can_be_left_out(tmp_path):
    run = _stats_run(tmp_path / "run", 0.5)
    assert len(P.plot_training_stats(run).legends) == 1
    assert not P.plot_training_stats(run, legend=False).legends
    assert not P.plot_training_stats(run, columns=["flip_ratio"], legend=False).legends


# -- launch.py: notebook 07's estimate and demo helpers ----------------------------
def test_cpu_demo_overrides_keep_sizes_and_add_the_cpu_settings(tmp_path, monkeypatch):
    from bnn_helpers.launch import cpu_demo_overrides

    monkeypatch.chdir(tmp_path)
    demo = cpu_demo_overrides(tmp_path / "data", tmp_path / "runs", width_mult=0.25, epochs=2)
    assert list(demo)[:3] == ["data_dir", "width_mult", "epochs"] and demo["epochs"] == 2
    assert demo["device"] == "cpu" and demo["amp"] == "none" and demo["lr_schedule"] == "linear"
    assert demo["output_dir"] == "runs" and demo["data_dir"] == str(tmp_path / "data")


def test_training_flop_per_image_counts_student_three_times_and_teacher_once():
    from bnn_helpers.launch import training_flop_per_image

    small = training_flop_per_image("reactnet_a_bf", "resnet18", count_size=32, size=32)
    scaled = training_flop_per_image("reactnet_a_bf", "resnet18", count_size=32, size=64)
    assert small["flop_per_image"] == 2 * (3 * small["student_macs"] + small["teacher_macs"])
    assert math.isclose(scaled["flop_per_image"], 4 * small["flop_per_image"])
    assert small["student_macs"] > 0 and small["teacher_macs"] > 0


def test_loader_images_per_second_times_the_config_transforms(tmp_path):
    from bnn_helpers.launch import loader_images_per_second
    from bnn_helpers.paths import repo_root

    rate = loader_images_per_second(str(repo_root() / "configs/imagenet/reactnet_a_bf.yaml"), tmp_path / "jpegs",
                                    images=2, size=(64, 48))
    assert rate > 0 and (tmp_path / "jpegs" / "train" / "digit_0").is_dir()


def test_loader_provisioning_rounds_up_and_compares_with_the_workers():
    from bnn_helpers.launch import loader_provisioning

    # 100 TFLOPS at 10 / 30 % and 1e12 FLOP per image: 10 and 30 images/s; 4 images/s per loader -> 2.5 and 7.5.
    table = loader_provisioning(gpu_training_estimates(1e12, {"slow": 100, "fast": 400}, (0.1, 0.3),
                                                       loader_images_per_s=4.0), workers=8, cpus_per_node=96)
    assert table["loaders per GPU"].tolist() == ["3–8", "10–30"]
    assert table["workers=8 enough"].tolist() == [True, False]
    assert table["CPUs per 8-GPU node (max)"].tolist() == [72, 248] and table["within 96 CPUs"].tolist() == [True, False]


def test_accuracy_curves_legend_loc_places_each_panels_legend(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    pd.DataFrame([{"epoch": e, "step": s, "train_loss": 2.3, "train_top1": 10.0, "val_loss": 2.31,
                   "val_top1": 11.0} for s in (1, 2) for e in (1, 2)]).to_csv(folder / "summary.csv", index=False)
    fig = P.plot_accuracy_curves({"": folder}, chance=10, loss_band=0.5, legend_loc="lower left")
    assert not fig.legends and all(ax.get_legend()._loc == 3 for ax in fig.axes)   # 3: "lower left"
    styles = [[h.get_linestyle() for h in ax.get_legend().legend_handles] for ax in fig.axes]
    assert all(len(set(s)) == len(s) for s in styles)                               # distinct styles per legend
    fig = P.plot_accuracy_curves({"": folder}, chance=10, legend_loc={"top1": "upper right"})
    assert fig.axes[0].get_legend()._loc == 1 and fig.axes[1].get_legend()._loc == 0   # the other keeps "best"


def test_training_stats_ylabels_replace_some_panels_labels(tmp_path):
    label = "share of weight signs flipped per optimizer step"
    fig = P.plot_training_stats(_stats_run(tmp_path / "run", 0.5), ylabels={"flip_ratio": label})
    assert fig.axes[0].get_ylabel() == label
    assert fig.axes[1].get_ylabel() == "share of +1 weights"                         # the others keep theirs


def test_accuracy_curves_colour_a_mode_label_by_its_mode(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    pd.DataFrame([{"epoch": e, "step": 1, "train_loss": 2.3, "train_top1": 10.0, "val_loss": 2.31,
                   "val_top1": 11.0} for e in (1, 2)]).to_csv(folder / "summary.csv", index=False)
    green = matplotlib.colors.to_hex(P.mode_colors()["bf"])
    line = P.plot_accuracy_curves({"bf": folder}).axes[0].lines[0]
    assert matplotlib.colors.to_hex(line.get_color()) == green
    line = P.plot_accuracy_curves({"": folder}).axes[0].lines[0]           # no mode: the palette's first colour
    assert matplotlib.colors.to_hex(line.get_color()) != green
