"""bnn_helpers: binary neural networks without batch normalization, in PyTorch.

Companion package of the tutorial series in ``notebooks/``; see README.md.

    import bnn_helpers
    model = bnn_helpers.create_model("reactnet_a_bf", num_classes=10, width_mult=0.25)
    run_dir = bnn_helpers.train_run("configs/digits/reactnet_a_bf.yaml", {"epochs": 2})
    command = bnn_helpers.launch("configs/imagenet/reactnet_a_bf.yaml", nproc=8, dry_run=True)

Submodules: ``binarize``, ``layers``, ``models``, ``complexity``, ``convert``,
``data``, ``losses``, ``teacher``, ``agc``, ``training_step``, ``checkpoints``,
``train`` (entry points) with ``engine``, ``preflight``, ``run_dir``, ``runtime``,
``progress``; ``launch``, ``diagnostics``, ``hooks``, ``plotting``, ``figures``,
``deploy`` with ``packed_layers``, ``bitkernels``, ``bitconv_native``, ``latency``;
``paths``, ``results``.
"""
from . import binarize, layers, models, paths  # noqa: F401  (light, always needed)
from .launch import launch
from .models import create_model, list_models


def train_run(config=None, overrides=None, **kwargs):
    """In-process training run; see :func:`bnn_helpers.train.run`.

    Imported on call so that ``python -m bnn_helpers.train`` does not find the
    module already loaded by the package import.
    """
    from .train import run

    return run(config, overrides, **kwargs)


__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "launch", "train_run", "__version__"]
