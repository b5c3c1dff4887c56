"""bnn_helpers: binary neural networks without batch normalization, in PyTorch.

Companion package of the tutorial series in ``notebooks/``; see README.md.

    import bnn_helpers
    model = bnn_helpers.create_model("reactnet_a_bf", num_classes=10, width_mult=0.25)
    run_dir = bnn_helpers.train_run("configs/digits/reactnet_a_bf.yaml", {"epochs": 2})
    command = bnn_helpers.launch("configs/imagenet/reactnet_a_bf.yaml", nproc=8, dry_run=True)

Submodules: ``binarize``, ``layers``, ``models``, ``complexity``, ``convert``,
``data``, ``losses``, ``agc``, ``train``, ``launch``, ``diagnostics``,
``plotting``, ``figures``, ``deploy``, ``paths``.
"""
from . import binarize, layers, models, paths  # noqa: F401  (light, always needed)
from .launch import launch
from .models import create_model, list_models
from .train import run as train_run

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "launch", "train_run", "__version__"]
