"""Regenerate the figures that need no training: ``python -m bnn_helpers.figures``.

* ``Figs/signal_propagation_init_gaussian.png`` and ``..._photos.png``: the
  published step-2 ReActNet-A (full width, 1000 classes) in modes bn / none /
  bf at initialisation, measured in train mode (docs/reference.md §8) on a batch of 8
  inputs of 224x224: N(0, 1) noise, or random crops of scikit-learn's two
  bundled sample photos normalized with the ImageNet mean/std;
* ``Figs/sign_estimators.png``: forward and backward of every sign estimator.

The per-block tables are printed. Everything is seeded: a rerun writes the
same bytes. About a minute per input kind on 2 CPU cores.
"""
from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import torch

from .data import IMAGENET_MEAN, IMAGENET_STD
from .diagnostics import signal_propagation
from .models import create_model
from .plotting import plot_estimators, plot_signal_propagation, savefig, use_style

__all__ = ["photo_batch", "gaussian_batch", "init_signal_propagation", "main"]

NORMS = ("bn", "none", "bf")


def photo_batch(batch: int = 8, size: int = 224, seed: int = 0) -> torch.Tensor:
    """Random ``size`` crops of scikit-learn's bundled photos, ImageNet-normalized, ``(batch, 3, size, size)``."""
    from sklearn.datasets import load_sample_images

    images = load_sample_images().images  # two uint8 photos, 427x640x3
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(batch):
        image = images[i % len(images)]
        h, w = image.shape[:2]
        if h < size or w < size:
            raise ValueError(f"crop size {size} exceeds the sample photo ({h}x{w})")
        top, left = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
        crops.append(image[top:top + size, left:left + size])
    x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def gaussian_batch(batch: int = 8, size: int = 224, seed: int = 0) -> torch.Tensor:
    """N(0, 1) images ``(batch, 3, size, size)``."""
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def init_signal_propagation(x: torch.Tensor, norms=NORMS, width_mult: float = 1.0,
                            seed: int = 0, init=None) -> dict[str, pd.DataFrame]:
    """Signal-propagation tables of freshly initialised step-2 ReActNet-A, in train mode.

    ``init``, if given, is called as ``init(norm, model)`` on each freshly built
    network before it is measured (e.g. to re-initialise its latent weights).
    """
    tables = {}
    for norm in norms:
        torch.manual_seed(seed)
        model = create_model(f"reactnet_a_{norm}", binary_weights=True, width_mult=width_mult)
        if init is not None:
            init(norm, model)
        tables[norm] = signal_propagation(model.train(), x)
    return tables


def _print(title: str, tables: dict[str, pd.DataFrame]) -> None:
    print(f"\n== {title}")
    columns = ["name", "avg_sq_mean", "avg_var", "branch_var", "branch_var2",
               "sign_balance1", "sign_balance2"]
    for norm, table in tables.items():
        print(f"-- {norm} (head row: logits; avg_var = variance across inputs)")
        print(table[columns].to_string(index=False, float_format=lambda v: f"{v:.4g}"))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width-mult", type=float, default=1.0,
                        help="network width (1.0 = published; 0.25 for a quick look)")
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args(argv)

    use_style()
    torch.manual_seed(0)
    suffix = "" if (args.width_mult, args.size, args.batch) == (1.0, 224, 8) else \
        f"_w{args.width_mult:g}_s{args.size}_b{args.batch}".replace(".", "p")
    inputs = {"gaussian": ("N(0, 1) input", gaussian_batch(args.batch, args.size)),
              "photos": ("sample photos", photo_batch(args.batch, args.size))}
    for key, (what, x) in inputs.items():
        tables = init_signal_propagation(x, width_mult=args.width_mult)
        _print(what, tables)
        fig = plot_signal_propagation(
            tables, title=(f"ReActNet-A at initialisation, {what} (step 2, width "
                           f"{args.width_mult:g}, {args.size}×{args.size}, batch {args.batch}, train mode)"))
        print("wrote", savefig(fig, f"signal_propagation_init_{key}{suffix}"))
    print("wrote", savefig(plot_estimators(), "sign_estimators"))


if __name__ == "__main__":
    main()
