"""Parameter, memory and operation counts of binary networks, ReActNet's way.

Counting convention (ReActNet, Liu et al. 2020; see docs/reference.md §7):

* **BOPs** – binary operations: convolutions whose weights *and* input are
  binary, i.e. convs with ``binary_weights`` True
  (:func:`bnn_helpers.layers.is_binary_conv`) fed by a tensor whose values
  are all in {-1, 0, +1} (a sign output). ``in * out * H_out * W_out * k^2 / groups``.
* **FLOPs** – every other convolution and the classifier, same formula
  (``in * out`` for a linear layer). Two consequences worth knowing:
  in step-1 models (``binary_weights=False``) the block convs see binary
  activations but have real weights, so they count as FLOPs, not BOPs; and
  ReActNet-18's shortcut conv, which sees the real-valued ``x*beta``, counts
  as FLOPs even in step 2.
* **OPs** = BOPs / 64 + FLOPs.
* BatchNorm, PReLU, learnable biases, pooling, additions and sign are not
  counted in any of the three.

Parameters: *binary* are the latent weights of binary convs (1 bit each at
inference), *real* are all others (32 bits each: real convs, weight-
standardization gains, BN affine parameters, biases, PReLU slopes, the
classifier). ``size_bits`` = binary + 32 * real. BN running statistics are
buffers, not parameters: at inference they fold with the affine parameters
into one scale and one shift per channel, so the size already holds what BN
needs.

What BN costs at inference (the question of the paper) is reported apart:
``bn_params`` = 2 real values per BN channel (the folded scale and shift) and
``bn_madds`` = one multiply-add per BN output element.

Operations come from forward hooks on one input of the requested resolution
(batch 1, eval mode, no autograd); the model's train/eval mode is restored.

Usage::

    df = complexity_table(model, 224)      # one row per block + "total"
    print(format_table(df))
    print_summary(model, 224)
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn as nn

from .layers import is_binary_conv

__all__ = ["LayerCost", "layer_costs", "complexity_table", "total_complexity",
           "format_table", "print_summary", "COST_COLUMNS"]

BITS_PER_REAL = 32
_COUNTED = (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)
BOPS_PER_OP = 64

#: Numeric columns of the table, in order.
COST_COLUMNS = ("real_params", "binary_params", "size_bits", "bops", "flops", "ops",
                "bn_params", "bn_madds")


@dataclass
class LayerCost:
    """Costs attributed to one module (one row of ``layer_costs``)."""

    name: str
    kind: str
    out_shape: tuple = ()
    real_params: int = 0
    binary_params: int = 0
    bops: int = 0
    flops: int = 0
    bn_params: int = 0
    bn_madds: int = 0

    @property
    def size_bits(self) -> int:
        return self.binary_params + BITS_PER_REAL * self.real_params

    @property
    def ops(self) -> float:
        return self.bops / BOPS_PER_OP + self.flops


def _is_sign_output(x: torch.Tensor) -> bool:
    return bool(((x == 1) | (x == -1) | (x == 0)).all())


def _normalize_input_size(model: nn.Module, input_size) -> tuple[int, int, int]:
    in_chans = getattr(model, "in_chans", 3)
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    input_size = tuple(int(s) for s in input_size)
    if len(input_size) == 2:
        return (in_chans, *input_size)
    if len(input_size) == 3:
        return input_size
    raise ValueError(f"input_size must be H, (H, W) or (C, H, W), got {input_size!r}")


def _mult_adds(module: nn.Module, output: torch.Tensor) -> int:
    """``in * out * H_out * W_out * k^2 / groups`` per sample (``in * out`` for Linear)."""
    if isinstance(module, nn.Linear):
        return module.in_features * module.out_features * (output[0].numel() // module.out_features)
    k = module.kernel_size[0] * module.kernel_size[1]
    spatial = output.shape[2] * output.shape[3]
    return module.in_channels * module.out_channels * spatial * k // module.groups


def _measure(model: nn.Module, input_size):
    """Run one forward pass with hooks; return (rows by module name, output shape by module name)."""
    shape = _normalize_input_size(model, input_size)
    rows: "OrderedDict[str, LayerCost]" = OrderedDict()
    for name, module in model.named_modules():
        counted = isinstance(module, _COUNTED)
        if not counted and not any(True for _ in module.parameters(recurse=False)):
            continue
        row = LayerCost(name, type(module).__name__)
        for pname, param in module.named_parameters(recurse=False):
            if pname == "weight" and is_binary_conv(module):
                row.binary_params += param.numel()
            else:
                row.real_params += param.numel()
        rows[name] = row
    shapes: dict[str, tuple] = {}

    def hook(module, inputs, output, name):
        if not isinstance(output, torch.Tensor):
            return
        shapes[name] = tuple(output.shape[1:])
        if not isinstance(module, _COUNTED):
            return
        row = rows[name]
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            row.bn_params += 2 * module.num_features
            row.bn_madds += output[0].numel()
        elif is_binary_conv(module) and _is_sign_output(inputs[0]):
            row.bops += _mult_adds(module, output)
        else:
            row.flops += _mult_adds(module, output)

    handles = [module.register_forward_hook(lambda m, i, o, name=name: hook(m, i, o, name))
               for name, module in model.named_modules()]
    was_training = model.training
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        generator = torch.Generator().manual_seed(0)
        x = torch.randn((1, *shape), generator=generator).to(device)
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    for name, row in rows.items():
        row.out_shape = shapes.get(name, ())
    return rows, shapes


def layer_costs(model: nn.Module, input_size) -> list[LayerCost]:
    """One :class:`LayerCost` per module that owns parameters or is counted.

    Rows follow ``model.named_modules()`` order; parameters are attributed to
    the module that owns them directly.
    """
    return list(_measure(model, input_size)[0].values())


def _group_of(name: str) -> str:
    """``blocks.3.conv1x1.0`` -> ``blocks.3``; ``stem.conv`` -> ``stem``."""
    parts = name.split(".")
    if parts[0] == "blocks" and len(parts) > 1:
        return ".".join(parts[:2])
    return parts[0] if parts[0] else "(model)"


def complexity_table(model: nn.Module, input_size, by: str = "block") -> pd.DataFrame:
    """Costs per block (``by="block"``: stem, blocks.i, head) or per layer, plus a ``total`` row.

    Columns: ``name``, ``out_shape`` (the row's output shape without the batch) and :data:`COST_COLUMNS`. ``size_bits`` counts 1 bit per binary
    and 32 per real parameter; ``ops = bops / 64 + flops``.
    """
    if by not in ("block", "layer"):
        raise ValueError(f"unknown by={by!r}; valid: block, layer")
    costs, shapes = _measure(model, input_size)
    records: "OrderedDict[str, dict]" = OrderedDict()
    for cost in costs.values():
        key = cost.name if by == "layer" else _group_of(cost.name)
        rec = records.setdefault(key, {"name": key, "out_shape": shapes.get(key, ()),
                                       **{c: 0 for c in COST_COLUMNS}})
        for column in COST_COLUMNS:
            rec[column] += getattr(cost, column)
    df = pd.DataFrame(list(records.values()), columns=["name", "out_shape", *COST_COLUMNS])
    total = {"name": "total", "out_shape": (), **{c: df[c].sum() for c in COST_COLUMNS}}
    df = pd.concat([df, pd.DataFrame([total])], ignore_index=True)
    df["ops"] = df["ops"].astype(float)
    return df


def total_complexity(model: nn.Module, input_size) -> dict:
    """The ``total`` row of :func:`complexity_table` as a dict (plus ``params``)."""
    row = complexity_table(model, input_size).iloc[-1]
    out = {c: row[c].item() for c in COST_COLUMNS}
    out["params"] = out["real_params"] + out["binary_params"]
    return out


def _eng(value: float) -> str:
    """``4.82e9`` style for large counts, plain integers below 10 000."""
    if value == 0:
        return "0"
    if abs(value) < 1e4:
        return f"{value:.0f}" if float(value).is_integer() else f"{value:.2f}"
    return f"{value:.3g}".replace("e+0", "e").replace("e+", "e")


def format_table(df: pd.DataFrame) -> str:
    """Readable text version of :func:`complexity_table` (sizes in MB = 1e6 bytes)."""
    shown = pd.DataFrame({
        "name": df["name"],
        "out (C,H,W)": [("x".join(map(str, s)) if s else "") for s in df["out_shape"]],
        "real params": df["real_params"].map(_eng),
        "binary params": df["binary_params"].map(_eng),
        "size MB": (df["size_bits"] / 8e6).map(lambda v: f"{v:.3f}"),
        "BOPs": df["bops"].map(_eng),
        "FLOPs": df["flops"].map(_eng),
        "OPs": df["ops"].map(_eng),
        "BN params": df["bn_params"].map(_eng),
        "BN madds": df["bn_madds"].map(_eng),
    })
    return shown.to_string(index=False)


def print_summary(model: nn.Module, input_size, by: str = "block") -> pd.DataFrame:
    """Print the per-block table and a one-line total in ReActNet's units; return the table."""
    df = complexity_table(model, input_size, by)
    print(format_table(df))
    t = df.iloc[-1]
    print(f"params {t['real_params'] + t['binary_params']:,} "
          f"(real {t['real_params']:,}, binary {t['binary_params']:,}); "
          f"size {t['size_bits'] / 8e6:.2f} MB; "
          f"BOPs {t['bops'] / 1e9:.2f}e9, FLOPs {t['flops'] / 1e8:.2f}e8, "
          f"OPs {t['ops'] / 1e8:.2f}e8")
    return df
