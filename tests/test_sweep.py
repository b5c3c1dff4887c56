"""The photos dataset and the sweep runner (a two-run grid through the real engine)."""
import pandas as pd
import pytest
import torch
import yaml

from bnn_helpers import sweep
from bnn_helpers.data import build_datasets
from bnn_helpers.photos import PHOTO_CLASSES, load_photo_patches, load_photos


def test_photos_are_21_distinct_bundled_photos():
    photos = load_photos()
    assert len(photos) == len(PHOTO_CLASSES) == 21
    for photo in photos:
        assert photo.shape[0] == 3 and photo.min() >= 0 and photo.max() <= 1
        assert min(photo.shape[1:]) >= 64  # room for the largest patch in both splits
    for i, a in enumerate(photos):  # no photo twice (skimage's cat is chelsea)
        for b in photos[i + 1:]:
            assert a.shape != b.shape or not torch.equal(a, b)


def test_photo_patches_are_balanced_normalised_and_fixed():
    (xt, yt), (xv, yv) = load_photo_patches(32, train_per_class=20, val_per_class=5)
    assert xt.shape == (21 * 20, 3, 32, 32) and xv.shape == (21 * 5, 3, 32, 32)
    assert torch.equal(torch.bincount(yt), torch.full((21,), 20))
    assert torch.equal(torch.bincount(yv), torch.full((21,), 5))
    mean, std = xt.mean(dim=(0, 2, 3)), xt.std(dim=(0, 2, 3))
    assert torch.allclose(mean, torch.zeros(3), atol=1e-4) and torch.allclose(std, torch.ones(3), atol=1e-4)
    (xt2, _), (xv2, _) = load_photo_patches(32, train_per_class=20, val_per_class=5)
    assert torch.equal(xt, xt2) and torch.equal(xv, xv2)  # independent of any training seed


def test_engine_builds_the_photos_dataset():
    train, val, classes = build_datasets({"dataset": "photos"})
    assert classes == 21 and len(train) == 21 * 300 and len(val) == 21 * 60
    assert train[0][0].shape == (3, 32, 32)


def _write_sweep(tmp_path, settings):
    spec = {"name": "tiny_grid", "config": "configs/digits/reactnet_a_{mode}.yaml",
            "modes": ["bf", "none"], "seeds": [0], "settings": settings}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_sweep_runs_tabulates_and_skips_finished_runs(tmp_path, capsys):
    base = {"epochs": 1, "max_train_batches": 2, "width_mult": 0.125, "batch_size": 16}
    path = _write_sweep(tmp_path, {"quick": base})
    args = [str(path), "--results", str(tmp_path / "results"), "--scratch", str(tmp_path / "runs")]
    assert sweep.main(args) == 0
    out = capsys.readouterr().out
    assert "2 runs to do" in out and out.count(": done in") == 2
    grid = pd.read_csv(tmp_path / "results" / "tiny_grid" / "grid.csv")
    assert list(grid["mode"]) == ["bf", "none"] and list(grid["seeds"]) == [1, 1]
    assert {"step1_best_mean", "step2_best_mean", "step2_last_mean", "wall_minutes_mean"} <= set(grid)
    assert grid["step2_best_mean"].between(0, 100).all()
    meta = yaml.safe_load((tmp_path / "results/tiny_grid/quick_bf_s0/sweep.yaml").read_text())
    assert meta["overrides"] == base and meta["diverged"] is False
    assert sweep.main(args) == 0
    assert "runs to do" not in capsys.readouterr().out  # finished runs are not repeated


def test_sweep_reports_failed_runs_and_exits_nonzero(tmp_path, capsys):
    path = _write_sweep(tmp_path, {"broken": {"epochs": 1, "optimizer": "rmsprop"}})
    args = [str(path), "--results", str(tmp_path / "results"), "--scratch", str(tmp_path / "runs")]
    assert sweep.main(args) == 1
    captured = capsys.readouterr()
    assert captured.out.count("FAILED") == 2 and "error:" in captured.err


def test_sweep_rejects_unknown_settings_and_missing_files(tmp_path, capsys):
    path = _write_sweep(tmp_path, {"quick": {}})
    assert sweep.main([str(path), "--settings", "nope"]) == 2
    assert "unknown setting(s) nope" in capsys.readouterr().err
    assert sweep.main([str(tmp_path / "missing.yaml")]) == 2


def test_plot_grid_draws_error_bars_only_for_bars_with_several_seeds():
    import matplotlib
    matplotlib.use("Agg")
    from bnn_helpers.sweep import load_grid, plot_grid
    runs = load_grid("photos_grid")         # the shipped grid: 1 seed for two settings, 3 for two
    fig = plot_grid(runs)
    bars = [c for c in fig.axes[0].containers if hasattr(c, "errorbar")]
    seeds = runs.groupby(["setting", "mode"])["seed"].nunique()
    assert len(bars) == len(seeds)
    with_bars = sum(c.errorbar is not None for c in bars)
    assert with_bars == int((seeds > 1).sum()) and 0 < with_bars < len(bars)
    dots = [l for l in fig.axes[0].lines if l.get_marker() == "."]
    assert len(dots) == with_bars                                 # seed dots only on bars with several seeds
