"""Model registry: ``create_model("reactnet_a_bf", ...)``, ``list_models()``.

Every variant is also registered with timm, so after ``import bnn_helpers``
``timm.create_model("reactnet_a_bf", binary_weights=False, num_classes=10)``
works.
"""
from __future__ import annotations

from functools import partial

from timm.models import register_model

from ._common import NORMS, BinaryNet
from .reactnet_18 import ReActNet18, reactnet_18
from .reactnet_a import ReActNetA, reactnet_a

__all__ = ["create_model", "list_models", "reactnet_a", "reactnet_18", "ReActNetA",
           "ReActNet18", "BinaryNet", "ARCHITECTURES"]

ARCHITECTURES = {"reactnet_a": reactnet_a, "reactnet_18": reactnet_18}
_REGISTRY = {f"{arch}_{norm}": partial(fn, norm=norm)
             for arch, fn in ARCHITECTURES.items() for norm in NORMS}


def list_models() -> list[str]:
    """Names accepted by :func:`create_model` (and by ``timm.create_model``)."""
    return sorted(_REGISTRY)


def create_model(name: str, **kwargs) -> BinaryNet:
    """Build a registered model, e.g. ``create_model("reactnet_a_bf", binary_weights=False)``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(list_models())}")
    if "norm" in kwargs:
        raise ValueError(f"the model name fixes the norm mode; use e.g. "
                         f"'{name.rsplit('_', 1)[0]}_{kwargs['norm']}' instead of norm=")
    return _REGISTRY[name](**kwargs)


def _timm_entry(name):
    def build(pretrained: bool = False, **kwargs):
        if pretrained:
            raise ValueError(
                f"no pretrained weights are hosted for {name!r}; load a published checkpoint "
                "with bnn_helpers.convert.load_published_checkpoint(model, path)")
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(key, None)
        return create_model(name, **kwargs)

    build.__name__ = name
    build.__qualname__ = name
    build.__module__ = __name__
    build.__doc__ = f"timm entry point for {name} (see bnn_helpers.models.create_model)."
    return build


for _name in _REGISTRY:
    globals()[_name] = register_model(_timm_entry(_name))
