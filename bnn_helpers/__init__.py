"""bnn_helpers: binary neural networks without batch normalization, in PyTorch.

Companion package of the tutorial series in ``notebooks/``; see README.md.
"""
from .models import create_model, list_models

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "__version__"]
