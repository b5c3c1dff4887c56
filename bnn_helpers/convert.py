"""Load checkpoints saved by the published code into our models, and back.

The published BN-free code and ReActNet name their modules differently from
``bnn_helpers.models``. One rule table per architecture (:data:`RULES`) maps
a module path of ours to the published one; the tail of each key
(``weight``, ``bias``, ``gain``, ``running_mean`` ...) is kept. Published
names (ReActNet-A)::

    feature.0.conv1 / feature.0.bn1                  stem conv / BN
    feature.{i}.move11 binary_3x3 bn1 move12 prelu1 move13
               move21 binary_pw | binary_pw_down1, binary_pw_down2
               bn2 | bn2_1, bn2_2   move22 prelu2 move23          block i (1-based)
    fc

ReActNet-18: ``conv1``, ``bn1``, ``layer{s}.{j}.move0 binary_conv bn1 move1
prelu move2 downsample.1 downsample.2``, ``fc``.

Checkpoints may be wrapped in ``{"state_dict": ...}`` and carry the
``module.`` prefix of ``nn.DataParallel``; binary conv latent weights may be
stored flattened as ``(out*in*k*k, 1)`` (ReActNet's ``HardBinaryConv``) and
are reshaped. Anything that does not fit is an error listing every offending
key: nothing is dropped silently. The one tolerance: a missing BatchNorm
``num_batches_tracked`` counter (older checkpoints) is left at its value in
the model, since it never changes outputs.

The beta constants of BN-free models are not stored in checkpoints; build
the model with ``beta_schedule="published"`` (the default) so a converted
checkpoint behaves as it did when trained.

Usage::

    model = create_model("reactnet_a_bf")
    load_published_checkpoint(model, "model_best.pth.tar")
    torch.save({"state_dict": to_published_state_dict(model)}, "for_published_code.pth")
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping

import torch
import torch.nn as nn

from .checkpoints import load_weights_only, strip_data_parallel_prefix
from .models import ReActNet18, ReActNetA
from .models.reactnet_18 import BLOCKS_PER_STAGE

__all__ = ["RULES", "published_key_map", "to_published_state_dict",
           "from_published_state_dict", "load_published_checkpoint", "unwrap_state_dict"]

# (regex on our module path, published module path). Format fields:
# {a}: ReActNet-A feature index (block index + 1); {s}/{j}: ReActNet-18 stage
# (1-based) and block within the stage; {pw}/{bn2}: the names of a block's
# second-half conv/BN, which depend on whether it has one 1x1 conv or two.
RULES = {
    ReActNetA: (
        (r"stem\.conv", "feature.0.conv1"),
        (r"stem\.norm", "feature.0.bn1"),
        (r"blocks\.(?P<i>\d+)\.act1\.shift", "feature.{a}.move11"),
        (r"blocks\.(?P<i>\d+)\.conv3x3", "feature.{a}.binary_3x3"),
        (r"blocks\.(?P<i>\d+)\.norm1", "feature.{a}.bn1"),
        (r"blocks\.(?P<i>\d+)\.rprelu1\.shift_in", "feature.{a}.move12"),
        (r"blocks\.(?P<i>\d+)\.rprelu1\.prelu", "feature.{a}.prelu1"),
        (r"blocks\.(?P<i>\d+)\.rprelu1\.shift_out", "feature.{a}.move13"),
        (r"blocks\.(?P<i>\d+)\.act2\.shift", "feature.{a}.move21"),
        (r"blocks\.(?P<i>\d+)\.conv1x1\.(?P<j>\d+)", "feature.{a}.{pw}"),
        (r"blocks\.(?P<i>\d+)\.norm2\.(?P<j>\d+)", "feature.{a}.{bn2}"),
        (r"blocks\.(?P<i>\d+)\.rprelu2\.shift_in", "feature.{a}.move22"),
        (r"blocks\.(?P<i>\d+)\.rprelu2\.prelu", "feature.{a}.prelu2"),
        (r"blocks\.(?P<i>\d+)\.rprelu2\.shift_out", "feature.{a}.move23"),
        (r"head\.fc", "fc"),
    ),
    ReActNet18: (
        (r"stem\.conv", "conv1"),
        (r"stem\.norm", "bn1"),
        (r"blocks\.(?P<i>\d+)\.act\.shift", "layer{s}.{j}.move0"),
        (r"blocks\.(?P<i>\d+)\.conv", "layer{s}.{j}.binary_conv"),
        (r"blocks\.(?P<i>\d+)\.norm", "layer{s}.{j}.bn1"),
        (r"blocks\.(?P<i>\d+)\.rprelu\.shift_in", "layer{s}.{j}.move1"),
        (r"blocks\.(?P<i>\d+)\.rprelu\.prelu", "layer{s}.{j}.prelu"),
        (r"blocks\.(?P<i>\d+)\.rprelu\.shift_out", "layer{s}.{j}.move2"),
        (r"blocks\.(?P<i>\d+)\.shortcut\.(?P<k>[12])", "layer{s}.{j}.downsample.{k}"),
        (r"head\.fc", "fc"),
    ),
}

def _rules_for(model: nn.Module):
    for cls, rules in RULES.items():
        if isinstance(model, cls):
            return rules
    raise ValueError(f"no published naming known for {type(model).__name__}; "
                     f"supported: {', '.join(c.__name__ for c in RULES)}")


def _format_fields(model: nn.Module, match: re.Match) -> dict:
    groups = match.groupdict()
    if "i" not in groups:
        return {}
    i = int(groups["i"])
    fields = dict(groups)
    if isinstance(model, ReActNetA):
        j = int(groups.get("j") or 0)
        two = len(model.blocks[i].conv1x1) == 2
        fields.update(a=i + 1, pw=f"binary_pw_down{j + 1}" if two else "binary_pw",
                      bn2=f"bn2_{j + 1}" if two else "bn2")
    else:
        fields.update(s=i // BLOCKS_PER_STAGE + 1, j=i % BLOCKS_PER_STAGE)
    return fields


def published_key_map(model: nn.Module) -> dict[str, str]:
    """``{our state-dict key: published key}`` for every entry of ``model.state_dict()``."""
    rules = [(re.compile(rf"{pattern}\.(?P<tail>[^.]+)"), template)
             for pattern, template in _rules_for(model)]
    mapping = {}
    for key in model.state_dict():
        for regex, template in rules:
            match = regex.fullmatch(key)
            if match:
                mapping[key] = (template.format(**_format_fields(model, match))
                                + "." + match["tail"])
                break
        else:
            raise ValueError(f"no published name rule matches {key!r} "
                             f"({type(model).__name__}); extend convert.RULES")
    return mapping


def to_published_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` renamed to the published code's names (same tensors, no copy)."""
    state = model.state_dict()
    return {published: state[ours] for ours, published in published_key_map(model).items()}


def unwrap_state_dict(checkpoint: Mapping) -> dict[str, torch.Tensor]:
    """Take ``checkpoint["state_dict"]`` if present and strip a ``module.`` prefix."""
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"expected a state dict or a checkpoint dict, got {type(checkpoint).__name__}")
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, Mapping):
        raise ValueError("checkpoint['state_dict'] is not a mapping of tensors")
    return strip_data_parallel_prefix(state)


def _fit_shape(value: torch.Tensor, target: torch.Tensor):
    """``value`` in ``target``'s shape, or None when it cannot be."""
    if value.shape == target.shape:
        return value
    # ReActNet's HardBinaryConv stores its latent weight as (out*in*k*k, 1).
    if (target.dim() == 4 and value.dim() == 2 and value.shape[1] == 1
            and value.numel() == target.numel()):
        return value.reshape(target.shape)
    return None


def from_published_state_dict(model: nn.Module, checkpoint: Mapping) -> dict[str, torch.Tensor]:
    """Translate a published state dict into ``model``'s names and shapes (checked, not loaded)."""
    state = unwrap_state_dict(checkpoint)
    ours_to_published = published_key_map(model)
    target = model.state_dict()
    converted, missing, mismatched = {}, [], []
    for ours, published in ours_to_published.items():
        if published not in state:
            if not ours.endswith("num_batches_tracked"):
                missing.append(published)
            continue
        value = _fit_shape(state[published], target[ours])
        if value is None:
            mismatched.append(f"{published} (-> {ours}): checkpoint {tuple(state[published].shape)}"
                              f" vs model {tuple(target[ours].shape)}")
            continue
        converted[ours] = value
    unexpected = sorted(set(state) - set(ours_to_published.values()))
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch ({len(mismatched)}): {'; '.join(mismatched)}")
    if problems:
        raise ValueError(
            f"checkpoint does not fit {type(model).__name__}(norm={getattr(model, 'norm', '?')!r}, "
            f"binary_weights={getattr(model, 'binary_weights', '?')}, "
            f"num_classes={getattr(model, 'num_classes', '?')}, "
            f"width_mult={getattr(model, 'width_mult', '?')}) — build the model that matches "
            f"the checkpoint. " + " | ".join(problems))
    return converted


def load_published_checkpoint(model: nn.Module, path_or_state_dict) -> nn.Module:
    """Load a checkpoint of the published code (a path or an already loaded dict) into ``model``.

    Files are read with ``torch.load(weights_only=True)`` on the CPU; a file that fails to
    load raises :class:`~bnn_helpers.config.CorruptCheckpointError` (truncated or damaged)
    or :class:`~bnn_helpers.config.RefusedCheckpointError` (a refused pickle, naming the
    global it holds; also a ``pickle.UnpicklingError``).
    """
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        checkpoint = load_weights_only(path_or_state_dict)
    else:
        checkpoint = path_or_state_dict
    converted = from_published_state_dict(model, checkpoint)
    # strict=False only admits the tolerated missing num_batches_tracked counters;
    # every other key was checked above.
    model.load_state_dict(converted, strict=False)
    return model
