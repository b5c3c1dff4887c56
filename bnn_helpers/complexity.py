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

:func:`inference_op_table` counts, per block, the real-valued operations a step-2
network does at inference before and after :func:`bnn_helpers.deploy.pack` folds
its constants; :func:`op_difference` subtracts two networks' counts part by part.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn as nn

from .hooks import eval_mode, removing_hooks
from .layers import is_binary_conv
from .models.reactnet_18 import ReActNet18
from .models.reactnet_a import ReActBlockA, ReActNetA

__all__ = ["LayerCost", "layer_costs", "complexity_table", "total_complexity", "stage_table", "published_comparison",
           "format_table", "print_summary", "COST_COLUMNS", "inference_op_table", "op_difference", "OP_KINDS",
           "size_table", "real_ops_by_part", "folding_summary", "size_overview", "size_readings"]

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

    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.randn((1, *shape), generator=torch.Generator().manual_seed(0)).to(device)
    with removing_hooks() as handles, eval_mode(model), torch.no_grad():
        handles += [module.register_forward_hook(lambda m, i, o, name=name: hook(m, i, o, name))
                    for name, module in model.named_modules()]
        model(x)
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


def _block_range(numbers: pd.Series) -> str:
    """``"6–11"``, ``"1"`` or ``""`` (stem, head) for the block numbers of one stage."""
    if numbers.isna().all():
        return ""
    low, high = int(numbers.min()), int(numbers.max())
    return str(low) if low == high else f"{low}–{high}"


def stage_table(table: pd.DataFrame) -> pd.DataFrame:
    """Group a per-block :func:`complexity_table` by output resolution ("stage").

    One row for the stem, one per resolution of the blocks' outputs (e.g.
    ``14×14``, with the 1-based block numbers it holds in ``blocks``), one for
    the head and a ``total``; columns ``blocks``, ``params`` (real + binary),
    ``bops``, ``flops``, ``ops``. Stages keep network order.
    """
    rows = table[table["name"] != "total"].copy()
    rows["stage"] = [name if name in ("stem", "head") else f"{shape[1]}×{shape[2]}"
                     for name, shape in zip(rows["name"], rows["out_shape"])]
    # blocks.0 is block 1 in the paper's numbering
    rows["block"] = [int(name.split(".")[1]) + 1 if name.startswith("blocks.") else None
                     for name in rows["name"]]
    stages = rows.groupby("stage", sort=False).agg(
        blocks=("block", _block_range),
        real=("real_params", "sum"), binary=("binary_params", "sum"),
        bops=("bops", "sum"), flops=("flops", "sum"), ops=("ops", "sum"))
    stages.insert(1, "params", stages.pop("real") + stages.pop("binary"))
    stages.loc["total"] = ["", *stages[["params", "bops", "flops", "ops"]].sum()]
    return stages


# (row, column of complexity_table's total, unit power of ten the paper prints in; 0: exact)
_PUBLISHED_UNITS = (("parameters", "params", 0), ("BOPs", "bops", 9), ("FLOPs", "flops", 8), ("OPs", "ops", 8))


def published_comparison(total: pd.Series, published: dict) -> pd.DataFrame:
    """Our counts next to published ones, ours rounded the way the paper prints them.

    ``total``: the ``total`` row of :func:`complexity_table`; ``published``:
    ``{"params": int, "bops": ..., "flops": ..., "ops": ...}``. ReActNet's table
    gives parameters exactly, BOPs in units of 10⁹ and FLOPs / OPs in units of
    10⁸, with two decimals. Rows parameters, BOPs, FLOPs, OPs; columns ``ours``
    and ``published`` (printed strings) and ``match`` (equal at that precision).
    """
    ours = {"params": int(total["real_params"] + total["binary_params"]),
            **{k: float(total[k]) for k in ("bops", "flops", "ops")}}
    rows = {}
    for row, key, power in _PUBLISHED_UNITS:
        if power == 0:
            rows[row] = (f"{ours[key]:,}", f"{int(published[key]):,}", ours[key] == int(published[key]))
        else:
            mine, theirs = round(ours[key] / 10 ** power, 2), round(published[key] / 10 ** power, 2)
            sup = str(power).translate(str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹"))
            rows[row] = (f"{mine:.2f}×10{sup}", f"{theirs:.2f}×10{sup}", mine == theirs)
    return pd.DataFrame.from_dict(rows, orient="index", columns=["ours", "published", "match"])


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


# --------------------------------------------------------------------------
# what packed inference leaves (see bnn_helpers.deploy)
# --------------------------------------------------------------------------
OP_KINDS = ("scale", "shift", "sign", "prelu", "residual_add", "pooling", "real_macs")


def _record_shapes(model, input_size):
    """(input, output) shape of the stem and of every block, per image."""
    shapes = {}
    parts = [("stem", model.stem)] + [(f"blocks.{i}", b) for i, b in enumerate(model.blocks)]
    with removing_hooks() as handles, eval_mode(model), torch.no_grad():
        handles += [m.register_forward_hook(
            lambda mod, inp, out, key=name: shapes.__setitem__(key, (tuple(inp[0].shape[1:]),
                                                                     tuple(out.shape[1:]))))
            for name, m in parts]
        model(torch.zeros(1, *input_size))
    return shapes


def _block_ops(block, shape_in, shape_out, norm: str, folded: bool) -> dict:
    """Real ops and BOPs of one block, per image (see :func:`inference_op_table`)."""
    bn = norm == "bn" and not folded
    ops = dict.fromkeys(OP_KINDS, 0)
    c_in, h_in, w_in = shape_in
    c_out, h_out, w_out = shape_out
    e_in, e_out, px_out = c_in * h_in * w_in, c_out * h_out * w_out, h_out * w_out
    if isinstance(block, ReActBlockA):
        e_mid = c_in * px_out
        conv_outs = e_mid + e_out                       # conv3x3 outputs + all 1x1 outputs
        ops["bops"] = c_in * c_in * 9 * px_out + len(block.conv1x1) * c_in * c_in * px_out
        ops["sign"] = e_in + e_mid
        ops["prelu"] = e_mid + e_out
        ops["residual_add"] = e_mid + e_out
        ops["pooling"] = 4 * e_mid if block.stride == 2 else 0
        ops["shift"] = 2 * (e_mid + e_out) + (0 if folded else e_in + e_mid)
        if folded:
            ops["scale"] = conv_outs
        else:
            ops["scale"] = (conv_outs * (1 + (block.alpha != 1.0))
                            + e_in * (block.beta1 != 1.0) + e_mid * (block.beta2 != 1.0))
        if bn:
            ops["scale"] += conv_outs
            ops["shift"] += conv_outs
    else:
        ops["bops"] = c_in * c_out * 9 * px_out
        ops["sign"] = e_in
        ops["prelu"] = ops["residual_add"] = e_out
        sc = block.has_shortcut_conv
        ops["real_macs"] = c_in * c_out * px_out if sc else 0     # ±1 weights: additions
        ops["pooling"] = 4 * c_in * px_out if sc and block.stride != 1 else 0
        ops["shift"] = 2 * e_out + (0 if folded else e_in)
        beta_mul = block.beta != 1.0
        if folded:
            ops["scale"] = e_out * (1 + sc) + e_in * (beta_mul and not sc)
        else:
            ops["scale"] = e_out * (1 + (block.alpha != 1.0) + sc) + e_in * beta_mul
        if bn:
            ops["scale"] += e_out * (1 + sc)
            ops["shift"] += e_out * (1 + sc)
    return ops


def inference_op_table(model: nn.Module, input_size=(3, 224, 224)) -> pd.DataFrame:
    """Binary ops and real-valued operations left at inference, per block, per image.

    One row per (part, stage): ``stage="float"`` counts what the float
    simulation does around each binary conv (beta multiplies, RSign biases,
    the weight magnitude and alpha as separate multiplies, BN as a scale and a
    shift per element); ``stage="folded"`` counts what :func:`bnn_helpers.deploy.pack` leaves (one
    scale per conv output, BN shifts inside the RPReLU bias, sign as a
    threshold compare, beta inside the thresholds and the pool constant).
    Columns: ``bops`` (XNOR-popcount MACs), ``scale`` (multiplies by a
    constant), ``shift`` (adds of a constant), ``sign`` (compares), ``prelu``,
    ``residual_add``, ``pooling`` (4 per 2x2 average output, 8 per 3x3 max
    output, adds for the global pool), ``real_macs`` (stem, classifier, and the
    additions of ReActNet-18's binary-weight shortcut on real input) and
    ``real_ops`` (their sum, everything except ``bops``).
    """
    if not isinstance(model, (ReActNetA, ReActNet18)) or not model.binary_weights:
        raise ValueError("inference_op_table needs a step-2 ReActNetA or ReActNet18 "
                         "(binary_weights=True)")
    input_size = tuple(input_size)
    if len(input_size) != 3:
        raise ValueError(f"input_size must be (C, H, W), got {input_size}")
    shapes = _record_shapes(model, input_size)
    rows = []
    for stage in ("float", "folded"):
        (c0, h0, w0), (cs, hs, ws) = shapes["stem"]
        conv = model.stem.conv
        h_conv = (h0 + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1
        w_conv = (w0 + 2 * conv.padding[1] - conv.kernel_size[1]) // conv.stride[1] + 1
        e_conv = cs * h_conv * w_conv
        stem = dict.fromkeys(OP_KINDS, 0)
        stem["bops"] = 0
        stem["real_macs"] = e_conv * c0 * conv.kernel_size[0] * conv.kernel_size[1]
        if model.norm_mode == "bn":
            stem["shift"] = e_conv
            stem["scale"] = 0 if stage == "folded" else e_conv
        stem["pooling"] = 8 * cs * hs * ws if isinstance(model.stem.pool, nn.MaxPool2d) else 0
        rows.append({"part": "stem", "stage": stage, **stem})
        for i, block in enumerate(model.blocks):
            shape_in, shape_out = shapes[f"blocks.{i}"]
            rows.append({"part": f"block{i + 1}", "stage": stage,
                         **_block_ops(block, shape_in, shape_out, model.norm_mode, stage == "folded")})
        c, h, w = shapes[f"blocks.{len(model.blocks) - 1}"][1]
        fc = model.get_classifier()
        head = dict.fromkeys(OP_KINDS, 0)
        head.update(bops=0, pooling=c * h * w, real_macs=fc.in_features * fc.out_features,
                    shift=fc.out_features)
        rows.append({"part": "head", "stage": stage, **head})
    df = pd.DataFrame(rows, columns=["part", "stage", "bops", *OP_KINDS])
    df["real_ops"] = df[list(OP_KINDS)].sum(axis=1)
    df.insert(0, "norm", model.norm_mode)
    return df


def op_difference(ops: pd.DataFrame, minuend: str = "bn", subtrahend: str = "bf",
                  stage: str = "folded", nonzero_only: bool = False) -> pd.DataFrame:
    """Per part and kind of operation, ``minuend``'s count minus ``subtrahend``'s at ``stage``.

    ``ops``: :func:`inference_op_table` of both networks, concatenated (column
    ``norm`` tells them apart). Index = part (stem, block1, ..., head, in table
    order), columns = ``bops``, the :data:`OP_KINDS` and ``real_ops``. A row of
    zeros means the two networks do the same operations in that part;
    ``nonzero_only=True`` keeps only the parts where they differ.
    """
    columns = ["bops", *OP_KINDS, "real_ops"]
    sides = []
    for norm in (minuend, subtrahend):
        part = ops[(ops["norm"] == norm) & (ops["stage"] == stage)]
        if part.empty:
            raise ValueError(f"ops has no rows for norm={norm!r}, stage={stage!r}")
        sides.append(part.set_index("part")[columns])
    if list(sides[0].index) != list(sides[1].index):
        raise ValueError("the two networks have different parts; compare the same architecture")
    diff = sides[0] - sides[1]
    return diff[(diff != 0).any(axis=1)] if nonzero_only else diff


def real_ops_by_part(ops: pd.DataFrame) -> pd.DataFrame:
    """Real-valued operations per image, one row per part, one column per (norm, stage).

    ``ops``: :func:`inference_op_table` of one or more networks, concatenated.
    Rows in table order (stem, block1, ..., head); columns a (``norm``,
    ``stage``) MultiIndex, e.g. ``("bf", "folded")``.
    """
    return ops.pivot_table(index="part", columns=["norm", "stage"], values="real_ops", sort=False)


def folding_summary(ops: pd.DataFrame) -> pd.DataFrame:
    """What folding removes, per network: one row per ``norm`` of ``ops`` (:func:`inference_op_table`).

    Columns, in millions per image: ``float M`` and ``folded M`` (real-valued
    operations of the float simulation and after ``pack``), ``folded in blocks M``
    (the folded ones inside the binary blocks, stem and head left out),
    ``BOPs/64 M`` (ReActNet's way of counting the binary ops); ``removed %``
    (share of the real operations that folding removes); ``blocks`` and
    ``blocks with fewer ops`` (how many blocks folding makes cheaper).
    """
    rows = {}
    for norm, table in ops.groupby("norm", sort=False):
        before, after = (table[table["stage"] == s].set_index("part") for s in ("float", "folded"))
        blocks = after.index.str.startswith("block")
        rows[norm] = {"float M": before["real_ops"].sum() / 1e6, "folded M": after["real_ops"].sum() / 1e6,
                      "folded in blocks M": after["real_ops"][blocks].sum() / 1e6,
                      "BOPs/64 M": after["bops"].sum() / 64e6,
                      "removed %": 100 * (1 - after["real_ops"].sum() / before["real_ops"].sum()),
                      "blocks": int(blocks.sum()),
                      "blocks with fewer ops": int((after["real_ops"][blocks] < before["real_ops"][blocks]).sum())}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("norm")


def size_overview(sizes: pd.DataFrame) -> pd.DataFrame:
    """The columns of a :func:`size_table` that the size discussion reads, with short names.

    Index (``model``, ``norm``); columns ``float32 MB``, ``packed MB`` and the
    packed file's parts ``binary bits MB``, ``stem + classifier MB`` (float32)
    and ``constants MB`` (per-channel), then ``float32 / packed``.
    """
    columns = {"float32 MB": "float32 MB", "packed MB": "packed MB", "binary weight bits MB": "binary bits MB",
               "stem + classifier (float32) MB": "stem + classifier MB",
               "per-channel constants MB": "constants MB", "float32 / packed": "float32 / packed"}
    return sizes.set_index(["model", "norm"])[list(columns)].rename(columns=columns)


def size_table(nets: dict, packs: dict, resolution: int, label: str) -> pd.DataFrame:
    """Float32 vs packed size of each network in ``nets`` (``{mode: model}``, packed in ``packs``).

    One row per mode: parameters, float32 MB, packed MB, the usual accounting
    (1 bit per binary and 32 per real parameter, counted at ``resolution``),
    the packed file's parts (``deploy.packed_size_breakdown``) and the ratio
    ``float32 / packed``; column ``model`` holds ``label``.
    """
    from . import deploy

    rows = []
    for mode, net in nets.items():
        counted = total_complexity(net, resolution)
        rows.append({"model": label, "norm": mode, "parameters": counted["params"],
                     "float32 MB": deploy.float_size_bytes(net) / 1e6,
                     "packed MB": deploy.packed_size_bytes(packs[mode]) / 1e6,
                     "1 bit/binary + 32 bit/real MB": counted["size_bits"] / 8e6,
                     **{k + " MB": v / 1e6 for k, v in deploy.packed_size_breakdown(packs[mode]).items()}})
    table = pd.DataFrame(rows)
    table["float32 / packed"] = table["float32 MB"] / table["packed MB"]
    return table


def size_readings(sizes: pd.DataFrame, numeric_checks: bool = False) -> pd.DataFrame:
    """One row per model of a ``size_table`` (or several, concatenated) with both modes ``bf`` and ``bn``.

    Columns: ``bf ratio`` and ``bn ratio`` (float32 / packed); for ``bf`` the
    percentage of the packed file taken by the float stem and classifier
    (``stem + classifier %``) and by the per-channel constants (``constants %``),
    and the ratio the model would reach without the constants
    (``ratio without constants``); and three checks: ``same packed parts``
    (``bf`` and ``bn`` pack to the same binary bits, float parts and constants),
    ``bn float32 larger`` (BN's parameters before folding) and
    ``within accounting`` (every packed size at most 5 % above the usual
    1 bit per binary + 32 bits per real parameter).

    ``numeric_checks=True`` gives the numbers behind the three checks instead:
    ``bn − bf packed parts MB`` (largest difference of the packed parts; 0 when
    they are the same), ``bn − bf float32 MB`` and ``packed / accounting``
    (largest packed size over that accounting).
    """
    parts = ["binary weight bits MB", "stem + classifier (float32) MB", "per-channel constants MB"]
    rows = {}
    for label, t in sizes.set_index("norm").groupby("model", sort=False):
        bf, bn = t.loc["bf"], t.loc["bn"]
        rows[label] = {"bf ratio": bf["float32 / packed"], "bn ratio": bn["float32 / packed"],
                       "stem + classifier %": 100 * bf[parts[1]] / bf["packed MB"],
                       "constants %": 100 * bf[parts[2]] / bf["packed MB"],
                       "ratio without constants": bf["float32 MB"] / (bf["packed MB"] - bf[parts[2]]),
                       "same packed parts": bool((bf[parts] == bn[parts]).all()),
                       "bn float32 larger": bool(bn["float32 MB"] > bf["float32 MB"]),
                       "within accounting": bool((t["packed MB"] <= 1.05 * t["1 bit/binary + 32 bit/real MB"]).all())}
        if numeric_checks:
            for key in ("same packed parts", "bn float32 larger", "within accounting"):
                del rows[label][key]
            rows[label].update({"bn − bf packed parts MB": float((bn[parts] - bf[parts]).abs().max()),
                                "bn − bf float32 MB": bn["float32 MB"] - bf["float32 MB"],
                                "packed / accounting": float((t["packed MB"] / t["1 bit/binary + 32 bit/real MB"]).max())})
    return pd.DataFrame.from_dict(rows, orient="index")
