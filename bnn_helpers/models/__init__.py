"""Model registry: ``create_model("reactnet_a_bf", ...)``, ``list_models()``.

Every variant is also registered with timm, so after ``import bnn_helpers``
``timm.create_model("reactnet_a_bf", binary_weights=False, num_classes=10)``
works. The real-valued teacher of the CPU tutorial is registered with timm as
``float_cnn`` (:mod:`.small_cnn`); :func:`list_models` lists the binary networks.
"""
from __future__ import annotations

from functools import partial

from timm.models import register_model

from ._common import NORMS, BinaryNet
from .reactnet_18 import ReActNet18, reactnet_18
from .reactnet_a import ReActNetA, reactnet_a
from .small_cnn import SmallTeacherCNN, float_cnn

__all__ = ["create_model", "list_models", "reactnet_a", "reactnet_18", "ReActNetA",
           "ReActNet18", "BinaryNet", "ARCHITECTURES", "SmallTeacherCNN", "float_cnn",
           "reactnet_a_bf", "reactnet_a_bn", "reactnet_a_none",
           "reactnet_18_bf", "reactnet_18_bn", "reactnet_18_none"]

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


def _timm_build(name: str, pretrained: bool, kwargs: dict) -> BinaryNet:
    """What every timm entry point below does: refuse ``pretrained``, drop timm's own keys."""
    if pretrained:
        raise ValueError(
            f"no pretrained weights are hosted for {name!r}; load a published checkpoint "
            "with bnn_helpers.convert.load_published_checkpoint(model, path)")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    return create_model(name, **kwargs)


# timm entry points, one per registered name (written out so that each name can be found).
@register_model
def reactnet_a_bf(pretrained: bool = False, **kwargs) -> BinaryNet:
    """ReActNet-A, BN-free (scaled weight standardization); see :func:`create_model`."""
    return _timm_build("reactnet_a_bf", pretrained, kwargs)


@register_model
def reactnet_a_bn(pretrained: bool = False, **kwargs) -> BinaryNet:
    """ReActNet-A with BatchNorm; see :func:`create_model`."""
    return _timm_build("reactnet_a_bn", pretrained, kwargs)


@register_model
def reactnet_a_none(pretrained: bool = False, **kwargs) -> BinaryNet:
    """ReActNet-A with neither BatchNorm nor weight standardization; see :func:`create_model`."""
    return _timm_build("reactnet_a_none", pretrained, kwargs)


@register_model
def reactnet_18_bf(pretrained: bool = False, **kwargs) -> BinaryNet:
    """ReActNet-18, BN-free (scaled weight standardization); see :func:`create_model`."""
    return _timm_build("reactnet_18_bf", pretrained, kwargs)


@register_model
def reactnet_18_bn(pretrained: bool = False, **kwargs) -> BinaryNet:
    """ReActNet-18 with BatchNorm; see :func:`create_model`."""
    return _timm_build("reactnet_18_bn", pretrained, kwargs)


@register_model
def reactnet_18_none(pretrained: bool = False, **kwargs) -> BinaryNet:
    """ReActNet-18 with neither BatchNorm nor weight standardization; see :func:`create_model`."""
    return _timm_build("reactnet_18_none", pretrained, kwargs)
