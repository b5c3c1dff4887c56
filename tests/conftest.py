"""Test-wide setup: non-interactive plots, scratch folders, modest threading, and the
fixtures the engine tests share (tiny run settings, a small image folder)."""
import os
import sys

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True, scope="session")
def _scratch_output_dirs(tmp_path_factory):
    """Point figures, checkpoints and runs at scratch folders for the whole session.

    A test must never replace a committed figure or a cached full-size network.
    """
    saved = {k: os.environ.get(k) for k in ("BNN_FIGS_DIR", "BNN_CHECKPOINTS_DIR", "BNN_RUNS_DIR")}
    root = tmp_path_factory.mktemp("bnn_outputs")
    for key in saved:
        os.environ[key] = str(root / key.lower())
    yield root
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for a module: small convs run far slower with two
    threads when the two cores are shared with other work."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_run() -> dict:
    """Settings of a tiny CPU training run: a quarter-width network, 3 batches an epoch, no output."""
    return dict(width_mult=0.25, batch_size=16, max_train_batches=3, workers=0, progress="none",
                lr_schedule="linear", device="cpu", threads=1)


@pytest.fixture
def make_image_folder():
    """``make_image_folder(root, ...)``: an ImageFolder ``train/`` and ``val/`` with one colour
    per class plus noise (learnable); ``bad`` names an extra unreadable file in class0."""
    def make(root, classes=3, train_per_class=8, val_per_class=4, size=32, bad=None):
        import torch
        from PIL import Image

        g = torch.Generator().manual_seed(0)
        for split, n in (("train", train_per_class), ("val", val_per_class)):
            for c in range(classes):
                folder = root / split / f"class{c}"
                folder.mkdir(parents=True)
                for i in range(n):
                    base = torch.zeros(3, 1, 1)
                    base[c % 3] = 200
                    img = (base + 40 * torch.rand(3, size, size, generator=g)).clamp(0, 255).byte()
                    Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
        if bad:
            (root / "train" / "class0" / bad).write_bytes(b"not an image")
        return root

    return make


@pytest.fixture
def two_step_stats_run(tmp_path):
    """A run folder whose ``stats.csv`` has two optimizer steps of every stats column."""
    import pandas as pd

    run = tmp_path / "run"
    run.mkdir()
    pd.DataFrame({"step": [1, 1], "optimizer_step": [1, 2], "flip_ratio": [0.1, 0.01],
                  "weight_sign_balance": 0.5, "act_sign_balance": 0.6,
                  "agc_clip_share": [0.2, 0.3]}).to_csv(run / "stats.csv", index=False)
    return run


@pytest.fixture(autouse=True)
def _close_figures():
    """Close every matplotlib figure a test left open (only if pyplot was imported at all)."""
    yield
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")
