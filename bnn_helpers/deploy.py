"""Deploy a trained binary network: packed bits, XNOR-popcount convolutions, folded constants.

``pack(model)`` turns a step-2 ReActNet-A or ReActNet-18 (``binary_weights=True``,
any of the ``bf`` / ``bn`` / ``none`` modes) into an inference-only
:class:`PackedBinaryNet` that reproduces the float simulation's logits::

    packed = pack(model)                       # eval semantics, no autograd
    logits = packed(images)
    save_packed(packed, "model.safetensors")   # safetensors + JSON header, no pickle
    packed = load_packed("model.safetensors")  # checksum-verified
    packed_size_bytes(packed), float_size_bytes(model)

What is stored
--------------
* Every binary conv keeps its weights as bits (1 = +1, 0 = -1), channels
  packed into words of ``word_bits`` (8: one uint8; 64: one int64 — the
  channel count is padded to a whole word, so narrow layers waste less with
  8), laid out ``(out, ky, kx, channel words)`` and saved as bytes, plus ONE
  real scale per output channel.
* Activations entering a binary conv are packed the same way, per pixel along
  the channels (``(N, H, W, channel words)``), as two bit planes: the sign and
  a validity mask (see *zeros* below).

What is folded (all exact algebra; only float rounding changes)
----------------------------------------------------------------
Write ``dot`` for the integer XNOR-popcount result of a binary conv and
``c = gain * mean|w_hat|`` (bf) or ``c = mean|w|`` (bn/none) for the per-channel
magnitude of its effective weight ``c * sign(w_hat)``.

* Conv output: ``alpha * conv(...) = (alpha * c) * dot`` -> scale ``alpha*c``.
* BatchNorm after a binary conv (eval): ``BN(z) = z*g/sqrt(v+eps) + (b - m*g/sqrt(v+eps))``,
  so ``alpha*BN(c*dot) = s*dot + t`` with ``s = alpha*c*g/sqrt(v+eps)`` and
  ``t = alpha*(b - m*g/sqrt(v+eps))``. It stays an *affine* map, not a pure
  threshold, because the result is added to a real residual before the next
  sign. The shift ``t`` needs no op of its own: the sum feeds an RPReLU whose
  first step adds a per-channel bias, so ``t`` is added into that bias
  (``RPReLU(x' + s*dot + t) = b_out + P(x' + s*dot + (t + b_in))``). After
  folding, a bn block does exactly the real ops of a bf block.
* BatchNorm after the real stem conv folds into its weights and a bias.
* RSign with the block's beta: ``sign(x*beta + b) = sign(x - (-b/beta))`` for
  ``beta > 0`` -> a per-channel threshold comparison, no multiply, no add.
  Rounding could make ``fl(fl(x*beta) + b)`` and ``x - (-b/beta)`` disagree for
  ``x`` within a few ulps of the threshold, so the thresholds are not just
  ``-b/beta``: :func:`exact_sign_thresholds` searches the floats around it for
  the interval that the float simulation maps to 0, and the packed sign uses
  it. The packed signs equal the float simulation's signs bit for bit.
* Reduction shortcut ``avgpool(x*beta1)`` = ``sum2x2(x) * (beta1/4)``.
  (ReActNet-18's shortcut conv sees ``avgpool(x*beta)``: beta joins that conv's scale.)

Not folded here, though possible: RPReLU's output bias ``b_out`` could move
into the next thresholds and the next RPReLU's input bias (and the last one
into the classifier bias), saving one add per element; see
:func:`bnn_helpers.complexity.inference_op_table` for what is left.

Zeros: padding and ties
-----------------------
The published network pads the sign activations with 0, which is neither +1
nor -1, and ``torch.sign`` gives 0 when an RSign input sits exactly on its
threshold (measure-zero in real arithmetic, possible in float; count them with
:func:`bnn_helpers.diagnostics.count_sign_ties`). Both are handled exactly with a validity bit per
activation: padded positions and ties have valid = 0 and contribute 0, so over
the unfolded window ::

    dot = popcount(valid) - 2 * popcount((act XOR weight) AND valid)

which equals ``conv2d(sign activations, sign(weights))`` exactly (integers).
A weight exactly at 0 (``sign(w_hat) = 0`` with a non-zero scale) cannot be
stored in one bit either. It is rare but real (random latent weights give
about one per 2**24: a full-size network at initialisation has one or two),
so each packed conv also lists those positions (``zero_weights``, usually
empty); their bits say +1 and the dot is corrected by a small conv of the
activations over just those positions, which keeps it exact.

How close the packed model is
-----------------------------
Exact: the integer dots, and every sign given the same real input. Not
exact: the real parts. The float simulation convolves with float weights
``c * sign`` and rounds while it accumulates; the packed model multiplies an
exact integer by one scale; pooling order differs slightly. Each block agrees
to ~1e-7 relative. A binary network can amplify that: an activation within
an ulp of its threshold may take the other sign and the change propagates.
Measured on random non-trivial weights at width 0.25, 32x32, batch 64:
ReActNet-A bf/bn/none and ReActNet-18 bf/bn agree to max|diff| / max|logit|
< 5e-7 with identical argmax; one ReActNet-18 ``none`` network (logits ~600,
nothing normalizes it) had one such flip and 1.4 % of the logit scale. So
compare with a tolerance and by argmax, as for the float simulation across
batch sizes.

"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import bitconv_native as _native
# Re-exported: notebook 08 uses deploy.pack_bits, deploy.packed_conv2d, deploy.PackedActivation.
from .bitkernels import (WORD_BITS, PackedActivation, check_word_bits, pack_bits, packed_conv2d,  # noqa: F401
                         popcount, unpack_bits)
from .packed_layers import (Packer, PackedBinaryConv2d, PackedHead, PackedRPReLU, PackedSign,  # noqa: F401
                            PackedStem, PackedWeightConv2d, exact_sign_thresholds)
from .models import create_model
from .models.reactnet_18 import ReActBlock18, ReActNet18
from .models.reactnet_a import ReActBlockA, ReActNetA

__all__ = [
    "WORD_BITS", "pack_bits", "unpack_bits", "popcount", "PackedActivation",
    "exact_sign_thresholds", "PackedSign", "PackedBinaryConv2d", "PackedWeightConv2d",
    "packed_conv2d", "PackedRPReLU", "PackedStem", "PackedHead", "PackedBlockA",
    "PackedBlock18", "PackedBinaryNet", "pack", "save_packed", "load_packed", "flip_stored_bit",
    "packed_size_bytes", "packed_size_breakdown", "float_size_bytes",
]

FORMAT_NAME = "bnn_helpers.packed"
FORMAT_VERSION = 1


# --------------------------------------------------------------------------
# blocks and networks
# --------------------------------------------------------------------------
class PackedBlockA(nn.Module):
    """ReActNet-A block with every constant folded (see the module docstring)."""

    def __init__(self, block: ReActBlockA, packer: Packer):
        super().__init__()
        alpha = block.alpha
        self.stride = block.stride
        self.sign1 = PackedSign.from_rsign(block.act1, block.beta1, packer.word_bits)
        self.conv3x3, shift1 = packer.conv(block.conv3x3, block.norm1, alpha)
        # avgpool(x*beta1) = sum2x2(x) * beta1/4
        self.register_buffer("pool_scale", torch.tensor(block.beta1 / 4.0))
        self.rprelu1 = PackedRPReLU.from_rprelu(block.rprelu1, shift1)
        self.sign2 = PackedSign.from_rsign(block.act2, block.beta2, packer.word_bits)
        convs, shifts = zip(*(packer.conv(c, n, alpha) for c, n in zip(block.conv1x1, block.norm2)))
        self.conv1x1 = nn.ModuleList(convs)
        self.rprelu2 = PackedRPReLU.from_rprelu(block.rprelu2, torch.cat(shifts))

    def forward(self, x):
        h = self.conv3x3(self.sign1(x))
        if self.stride == 2:
            shortcut = F.avg_pool2d(x, 2, 2, divisor_override=1) * self.pool_scale
        else:
            shortcut = x
        y = self.rprelu1(shortcut + h)
        g = self.sign2(y)
        out = torch.cat([conv(g) + y for conv in self.conv1x1], dim=1)
        return self.rprelu2(out)


class PackedBlock18(nn.Module):
    """ReActNet-18 block with every constant folded; the shortcut conv sees real input."""

    def __init__(self, block: ReActBlock18, packer: Packer):
        super().__init__()
        self.stride = block.stride
        self.sign = PackedSign.from_rsign(block.act, block.beta, packer.word_bits)
        self.conv, shift = packer.conv(block.conv, block.norm, block.alpha)
        if block.has_shortcut_conv:
            pool, conv, norm = block.shortcut
            self.pool = isinstance(pool, nn.AvgPool2d)
            # shortcut(x*beta) = beta * conv(avgpool(x)): beta joins the conv's scale
            self.shortcut, sc_shift = packer.conv(conv, norm, block.beta, PackedWeightConv2d)
            shift = shift + sc_shift
        else:
            self.pool, self.shortcut = False, None
        self.register_buffer("shortcut_scale", torch.tensor(float(block.beta)))
        self.rprelu = PackedRPReLU.from_rprelu(block.rprelu, shift)

    def forward(self, x):
        branch = self.conv(self.sign(x))
        if self.shortcut is not None:
            shortcut = self.shortcut(F.avg_pool2d(x, 2, 2) if self.pool else x)
        else:
            shortcut = x * self.shortcut_scale
        return self.rprelu(branch + shortcut)


class PackedBinaryNet(nn.Module):
    """Inference-only packed network; ``config`` rebuilds its skeleton (see :func:`load_packed`)."""

    def __init__(self, stem: PackedStem, blocks, head: PackedHead, config: dict):
        super().__init__()
        self.stem, self.blocks, self.head = stem, nn.ModuleList(blocks), head
        self.config = dict(config)
        super().train(False)

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError("a packed model is inference-only; train the float model "
                               "and call bnn_helpers.deploy.pack again")
        return super().train(False)

    @torch.no_grad()
    def forward(self, x):
        in_chans = self.config["in_chans"]
        if x.dim() != 4 or x.shape[1] != in_chans:
            raise ValueError(f"expected images of shape (N, {in_chans}, H, W), got {tuple(x.shape)}")
        x = self.stem(x.float())
        fused = all(isinstance(b, PackedBlockA) for b in self.blocks)
        native = _native.run_blocks(self.blocks, x) if fused else None  # one native call per block
        if native is not None:
            return self.head(native)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def _model_config(model) -> dict:
    if isinstance(model, ReActNetA):
        arch, extra = "reactnet_a", {}
    elif isinstance(model, ReActNet18):
        arch, extra = "reactnet_18", {"stem": model.stem_kind}
    else:
        raise ValueError(f"pack supports ReActNetA and ReActNet18 models, got {type(model).__name__}")
    return {"arch": arch, "norm": model.norm_mode, "num_classes": model.num_classes,
            "width_mult": model.width_mult, "in_chans": model.in_chans,
            "alpha": model.alpha, "beta_schedule": model.beta_schedule, **extra}


def pack(model: nn.Module, word_bits: int = 8) -> PackedBinaryNet:
    """Fold and bit-pack a step-2 ReActNet-A / ReActNet-18 (eval semantics) for inference.

    ``word_bits`` 8 packs channels into uint8 words, 64 into int64 words (channel
    counts are padded to a whole word). The float model is not modified.
    """
    check_word_bits(word_bits)
    config = {**_model_config(model), "word_bits": word_bits}
    if not model.binary_weights:
        raise ValueError("pack needs a step-2 model (binary_weights=True); step-1 models "
                         "have real weights")
    packer = Packer(word_bits)
    block_cls = PackedBlockA if config["arch"] == "reactnet_a" else PackedBlock18
    with torch.no_grad():
        blocks = [block_cls(b, packer) for b in model.blocks]
        packed = PackedBinaryNet(PackedStem.from_stem(model.stem), blocks,
                                 PackedHead(model.get_classifier()), config)
    return packed


# --------------------------------------------------------------------------
# file format
# --------------------------------------------------------------------------
def _tensor_digest(tensors: dict) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _state_tensors(packed: PackedBinaryNet) -> dict:
    return {k: v.detach().cpu().contiguous() for k, v in packed.state_dict().items()}


def save_packed(packed: PackedBinaryNet, path) -> None:
    """Write ``packed`` as safetensors; the metadata holds the config and a sha256."""
    from safetensors.torch import save_file

    if not isinstance(packed, PackedBinaryNet):
        raise ValueError("save_packed expects the result of bnn_helpers.deploy.pack(model)")
    tensors = _state_tensors(packed)
    header = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "config": packed.config,
              "sha256": _tensor_digest(tensors)}
    save_file(tensors, os.fspath(path), metadata={"bnn_helpers": json.dumps(header)})


def _skeleton(config: dict) -> PackedBinaryNet:
    kwargs = {k: config[k] for k in ("num_classes", "width_mult", "in_chans", "alpha",
                                     "beta_schedule")}
    if config["arch"] == "reactnet_18":
        kwargs["stem"] = config["stem"]
    model = create_model(f"{config['arch']}_{config['norm']}", binary_weights=True, **kwargs)
    return pack(model.eval(), config["word_bits"])


def load_packed(path) -> PackedBinaryNet:
    """Read a file written by :func:`save_packed`; fails if any tensor was changed."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    path = os.fspath(path)
    fix = "re-export it with bnn_helpers.deploy.save_packed(pack(model), path)"
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err}); {fix}") from None
    try:
        header = json.loads(meta["bnn_helpers"])
        config, expected = header["config"], header["sha256"]
    except (KeyError, TypeError, json.JSONDecodeError):
        raise ValueError(f"{path}: no bnn_helpers packed-model header; {fix}") from None
    if header.get("format") != FORMAT_NAME or header.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format {header.get('format')!r} v{header.get('version')} is "
                         f"not {FORMAT_NAME!r} v{FORMAT_VERSION}; {fix}")
    if _tensor_digest(tensors) != expected:
        raise ValueError(f"{path}: sha256 of the tensors does not match the header (file "
                         f"modified or corrupted); {fix}")
    packed = _skeleton(config)
    for name, module in packed.named_modules():
        key = f"{name}.zero_weights"
        if isinstance(module, PackedBinaryConv2d) and key in tensors:
            module.zero_weights = torch.zeros_like(tensors[key])   # variable length
    reference = packed.state_dict()
    missing, unexpected = sorted(set(reference) - set(tensors)), sorted(set(tensors) - set(reference))
    wrong = [k for k in reference if k in tensors and tensors[k].shape != reference[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(f"{path}: tensors do not fit the {config['arch']} config (missing "
                         f"{missing[:3]}, unexpected {unexpected[:3]}, wrong shape {wrong[:3]}); {fix}")
    packed.load_state_dict(tensors, strict=True)
    return packed


def flip_stored_bit(path, tensor_name: str, dest, bit: int = 0) -> Path:
    """Copy the safetensors file ``path`` to ``dest`` with one bit of ``tensor_name`` flipped.

    Flips bit ``bit`` (0 = least significant) of the tensor's first stored byte,
    e.g. one weight's sign in a ``weight_bits`` tensor, leaving the header alone:
    the copy is still a valid safetensors file, and only the checksum of
    :func:`load_packed` can tell. Returns ``dest`` as a ``Path``.
    """
    if not 0 <= bit < 8:
        raise ValueError(f"bit must be 0..7 (a bit of one byte), got {bit}")
    raw = bytearray(Path(path).read_bytes())
    header_len = int.from_bytes(raw[:8], "little")           # safetensors: u64 length, JSON header, data
    header = json.loads(raw[8:8 + header_len])
    if tensor_name not in header or tensor_name == "__metadata__":
        raise KeyError(f"{path}: no tensor {tensor_name!r}")
    start, _ = header[tensor_name]["data_offsets"]
    raw[8 + header_len + start] ^= 1 << bit
    dest = Path(dest)
    dest.write_bytes(bytes(raw))
    return dest


def packed_size_bytes(model: nn.Module, word_bits: int = 8) -> int:
    """Bytes of all tensors of the packed model (packs a float model first)."""
    packed = model if isinstance(model, PackedBinaryNet) else pack(model, word_bits)
    return sum(t.numel() * t.element_size() for t in packed.state_dict().values())


def packed_size_breakdown(packed: PackedBinaryNet) -> dict[str, int]:
    """Bytes of the packed model by kind of tensor; the values sum to :func:`packed_size_bytes`.

    ``binary weight bits``, ``stem + classifier (float32)`` (the real-valued
    layers), ``per-channel constants`` (scales, thresholds, RPReLU) and
    ``zero-weight list`` (the rare latent weights that are exactly 0).
    """
    parts = dict.fromkeys(("binary weight bits", "stem + classifier (float32)",
                           "per-channel constants", "zero-weight list"), 0)
    for key, t in packed.state_dict().items():
        kind = ("binary weight bits" if key.endswith("weight_bits") else
                "zero-weight list" if key.endswith("zero_weights") else
                "stem + classifier (float32)" if key.split(".")[0] in ("stem", "head") else
                "per-channel constants")
        parts[kind] += t.numel() * t.element_size()
    return parts


def float_size_bytes(model: nn.Module) -> int:
    """Bytes of the float32 checkpoint (parameters and buffers of the state dict)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())

