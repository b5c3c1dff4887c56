"""Native 1-bit kernels for packed networks: XOR + popcount on 64-bit words.

:mod:`bnn_helpers.deploy` runs a packed network through these kernels when they
are available and through its pure-PyTorch reference otherwise; both give the
same integers (bit for bit) and the same real values up to float rounding (the
fused ReActNet-A block repeats the reference's float32 operations in the same
order, so in practice the same bits too). ::

    from bnn_helpers import bitconv_native
    bitconv_native.build()                  # optional: otherwise on the first packed forward
    bitconv_native.info()                   # available?, POPCNT used?, library path, build seconds
    with bitconv_native.use_reference():    # force the pure-PyTorch reference
        logits = packed(images)
    rows = bnn_helpers.latency.latency_table(model, images)   # float vs reference vs native, ms

What runs natively (``csrc/bitconv.cpp``, plain C ABI loaded with :mod:`ctypes`)
------------------------------------------------------------------------------
* ``PackedSign``: thresholds -> sign and validity bit planes (SSE2 compares).
* ``PackedBinaryConv2d.integer_forward``: the integer conv, including the
  zero-weight correction, on 64-bit words; 4 output pixels share every weight
  word, the padding is a zero border of the bit planes (valid = 0).
* A whole ReActNet-A block in one call (sign, 3x3 conv, pooled shortcut,
  RPReLU, sign, the 1x1 convs, RPReLU) on channels-last floats: one call per
  block instead of ~20 PyTorch ops, which is what matters for small inputs.

The same library holds the native training weight path of the BN-free convs
(``csrc/weight_path.cpp``, called from :mod:`bnn_helpers.binarize` through
:mod:`bnn_helpers.weight_native`); it follows the switch below, except that a
failed build falls back silently and other dtypes simply take the torch path.

It is built on first use (the first packed forward, or the first CPU float32
training forward of a standardized conv; :mod:`bnn_helpers.bitconv_build`) with the machine's
C++ compiler (``$CXX``, else ``c++``, ``g++`` or ``clang++``) in a few seconds (6 s on a busy 2-core VM) into a cache folder
(``$BNN_NATIVE_CACHE``, else ``$XDG_CACHE_HOME/bnn_helpers/native``, else
``~/.cache/bnn_helpers/native``) under a key of the source, flags, compiler and
platform; later processes just load it. It is compiled without
``-march=native``: the popcount loops exist twice (baseline and POPCNT), the
weight-path loops too (baseline, AVX2 and AVX-512), and the CPU picks at run time, so a cache shared between machines stays correct.
No torch headers and no ninja are needed (a ``torch.utils.cpp_extension``
build of even an empty extension took 42 s and 1.5 GB on that VM, and needs ninja).

Switch (environment variable ``BNN_NATIVE``, or the context managers):
``0`` reference only; ``1`` native required (an error if it cannot be built);
unset/``auto``: native when it builds, else the reference with ONE warning
(:class:`NativeKernelWarning`) per process. Building never happens at import.
The kernels run on CPU float32 tensors; anything else uses the reference.
"""
from __future__ import annotations

import contextlib
import ctypes
import math
import os
import sys
import threading
import warnings
import weakref

import torch
import torch.nn.functional as F

from . import bitconv_build as native_build
from .bitkernels import PackedActivation

__all__ = ["NativeKernelWarning", "build", "available", "info", "mode", "use_reference",
           "use_native", "pack_signs", "conv2d", "block_a", "run_blocks", "runs_natively", "kernel_profile"]

ENV = "BNN_NATIVE"

_lock = threading.Lock()
_state = {"lib": None, "error": None, "noticed": False, "path": None, "build_s": None,
          "override": None}


class NativeKernelWarning(UserWarning):
    """The native kernel could not be built or loaded; the reference is used instead."""


def _reset() -> None:
    """Forget the loaded library, the failure and the notice (for tests)."""
    with _lock:
        _state.update(lib=None, error=None, noticed=False, path=None, build_s=None)


def build(force: bool = False):
    """Build (if needed) and load the native library now; raises on failure.

    ``force=True`` recompiles even when a cached library exists. Returns :func:`info`.
    """
    with _lock:
        if force:
            compiler = native_build.find_compiler()
            if compiler is None:
                raise RuntimeError("no C++ compiler found (set CXX, or install g++ / clang++)")
            path = native_build.library_path(compiler)
            _state["build_s"] = native_build.compile_library(compiler, path)
            _state.update(lib=native_build.load_library(path), path=path, error=None)
        elif _state["lib"] is None:
            lib, path, build_s = native_build.build_and_load()
            _state.update(lib=lib, path=path, build_s=build_s, error=None)
    return info()


def _try_load():
    if _state["lib"] is not None or _state["error"] is not None:
        return _state["lib"]
    with _lock:
        if _state["lib"] is None and _state["error"] is None:
            try:
                lib, path, build_s = native_build.build_and_load()
                _state.update(lib=lib, path=path, build_s=build_s)
            except Exception as err:  # noqa: BLE001 -- any failure means: use the reference
                _state["error"] = " ".join(str(err).split()) or type(err).__name__
    return _state["lib"]


def available() -> bool:
    """Whether the native library is (or can now be) built and loaded."""
    return _try_load() is not None


def info() -> dict:
    """``available``, ``mode``, ``popcnt`` (hardware instruction used), ``openmp``
    (the weight path runs on torch's OpenMP pool), ``path``, ``build_s`` (seconds this
    process spent compiling; None if it loaded a cached build) and ``error`` (why it
    is unavailable)."""
    lib = _state["lib"]
    return {"available": lib is not None, "mode": mode(),
            "popcnt": bool(lib.bnn_uses_popcnt()) if lib is not None else None,
            "openmp": bool(lib.bnn_ws_openmp()) if lib is not None else None,
            "path": str(_state["path"]) if _state["path"] else None,
            "build_s": _state["build_s"], "error": _state["error"]}


# ------------------------------------------------------------------ switch
def mode() -> str:
    """``"off"`` (reference), ``"on"`` (native required) or ``"auto"``."""
    if _state["override"] is not None:
        return _state["override"]
    value = os.environ.get(ENV, "auto").strip().lower()
    if value in ("0", "off", "false", "no", "reference"):
        return "off"
    if value in ("1", "on", "true", "yes", "native", "require"):
        return "on"
    return "auto"


@contextlib.contextmanager
def _override(value):
    saved = _state["override"]
    _state["override"] = value
    try:
        yield
    finally:
        _state["override"] = saved


def use_reference():
    """Context manager: packed models use the pure-PyTorch reference inside it."""
    return _override("off")


def use_native():
    """Context manager: packed models must use the native kernels (error if unavailable)."""
    return _override("on")


def _caller_stacklevel() -> int:
    """Stack level of the first frame outside bnn_helpers and torch (the user's call)."""
    skip = (os.path.dirname(__file__), os.path.dirname(torch.__file__))
    level, frame = 1, sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(skip):
        level, frame = level + 1, frame.f_back
    return level if frame is not None else 2


def _lib_for(x: torch.Tensor, dtype=torch.float32):
    """The library to run ``x`` natively, or None (reference)."""
    m = mode()
    if m == "off" or x.device.type != "cpu" or x.dtype != dtype:
        if m == "on":
            raise RuntimeError(f"the native kernels take CPU {dtype} tensors, got "
                               f"{x.device.type} {x.dtype}")
        return None
    lib = _try_load()
    if lib is None:
        if m == "on":
            raise RuntimeError(f"{ENV}=1 / use_native(), but the native kernel is unavailable: "
                               f"{_state['error']}")
        if not _state["noticed"]:
            _state["noticed"] = True
            warnings.warn(f"bnn_helpers: native 1-bit kernel unavailable ({_state['error']}); "
                          f"packed models run the pure-PyTorch reference instead (same results, "
                          f"slower). Set {ENV}=0 to silence.", NativeKernelWarning,
                          stacklevel=_caller_stacklevel())
    return lib


def runs_natively(x: torch.Tensor) -> bool:
    """Whether a packed network given ``x`` would run the native kernels (warns once if not)."""
    return _lib_for(x) is not None


# ------------------------------------------------------------------ layers
_CACHE = weakref.WeakKeyDictionary()  # module -> {name: (sources, versions, value)}


def _cached(module, name: str, make):
    """``make()``, cached for ``module`` until one of its buffers is replaced or modified
    in place (``load_state_dict`` included). Kept outside the module: copies, pickles
    and state dicts of packed models never see it."""
    entries = _CACHE.setdefault(module, {})
    entry = entries.get(name)
    if entry is not None:
        sources, versions, value = entry
        if all(bufs.get(key) is t and t._version == v
               for (bufs, key, t), v in zip(sources, versions)):
            return value
    sources = [(m._buffers, key, t) for m in module.modules()
               for key, t in m._buffers.items() if t is not None]
    value = make()
    entries[name] = (sources, [t._version for _, _, t in sources], value)
    return value


def _weight_words(weight_bits: torch.Tensor) -> torch.Tensor:
    """uint8 ``(O, K, K, B)`` -> int64 words ``(O, K, K, ceil(B / 8))`` (zero-padded)."""
    extra = -weight_bits.shape[-1] % 8
    if extra:
        weight_bits = F.pad(weight_bits, (0, extra))
    return weight_bits.contiguous().view(torch.int64).clone()


def _f32(t: torch.Tensor, n: int | None = None) -> torch.Tensor:
    t = t.detach().reshape(-1).to(torch.float32)
    if n is not None and t.numel() == 1 and n != 1:
        t = t.expand(n)
    return t.contiguous()


def pack_signs(sign_module, x: torch.Tensor):
    """Native ``PackedSign.forward``; None when the reference must run."""
    lib = _lib_for(x)
    if lib is None or x.dim() != 4:
        return None
    n, c, h, w = x.shape
    lower, upper = sign_module.lower, sign_module.upper
    if lower.numel() != c or lower.dtype != torch.float32 or upper.dtype != torch.float32:
        return None
    wb = sign_module.word_bits
    nbytes = math.ceil(c / wb) * wb // 8
    xh = x.permute(0, 2, 3, 1).contiguous()
    bits = torch.empty(n, h, w, nbytes, dtype=torch.uint8)
    valid = torch.empty_like(bits)
    lib.bnn_pack_signs(xh.data_ptr(), n * h * w, c, lower.contiguous().data_ptr(),
                       upper.contiguous().data_ptr(), bits.data_ptr(), valid.data_ptr(), nbytes)
    return PackedActivation(bits, valid, c, wb)


def conv2d(conv_module, act):
    """Native ``PackedBinaryConv2d.integer_forward`` (zero weights included); or None."""
    lib = _lib_for(act.bits, torch.uint8)
    wbits = conv_module.weight_bits
    if lib is None or act.bits.dtype != torch.uint8 or act.bits.dim() != 4 \
            or act.bits.shape[-1] != wbits.shape[-1] or act.valid.shape != act.bits.shape:
        return None
    k, s, p = conv_module.kernel_size, conv_module.stride, conv_module.padding
    n, h, w, nbytes = act.bits.shape
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    if ho < 1 or wo < 1:
        return None
    words = _cached(conv_module, "words", lambda: _weight_words(wbits))
    zw = conv_module.zero_weights.to(torch.int64).contiguous()
    o = words.shape[0]
    out = torch.empty(n, o, ho, wo, dtype=torch.int32)
    bits, valid = act.bits.contiguous(), act.valid.contiguous()
    lib.bnn_conv(bits.data_ptr(), valid.data_ptr(), n, h, w, nbytes, words.data_ptr(), o, k, s, p,
                 zw.data_ptr(), zw.shape[0], out.data_ptr(), o * ho * wo, 1, ho * wo)
    return out


# ------------------------------------------------------------------ fused ReActNet-A block
class _PlanA:
    """Everything one ``bnn_block_a`` call needs, kept alive with the struct pointing at it."""

    def __init__(self, block):
        c3, pws = block.conv3x3, list(block.conv1x1)
        c = c3.in_channels
        if (c3.kernel_size, c3.padding, c3.stride) != (3, 1, block.stride) or block.stride not in (1, 2) \
                or any((pw.kernel_size, pw.stride, pw.padding, pw.in_channels) != (1, 1, 0, c)
                       for pw in pws):
            raise ValueError("not a ReActNet-A block layout")
        cout = sum(pw.out_channels for pw in pws)
        if any(pw.out_channels != c for pw in pws):
            raise ValueError("1x1 convs must keep the channel count")
        zw1, offset = [], 0
        for pw in pws:
            z = pw.zero_weights.to(torch.int64).reshape(-1, 4).clone()
            z[:, 0] += offset
            zw1.append(z)
            offset += pw.out_channels
        r1, r2 = block.rprelu1, block.rprelu2
        self.keep = {
            "lower1": _f32(block.sign1.lower), "upper1": _f32(block.sign1.upper),
            "w3": _weight_words(c3.weight_bits),
            "zw3": c3.zero_weights.to(torch.int64).reshape(-1, 4).contiguous(),
            "scale1": _f32(c3.scale), "shift_in1": _f32(r1.shift_in, c),
            "slope1": _f32(r1.slope, c), "shift_out1": _f32(r1.shift_out, c),
            "lower2": _f32(block.sign2.lower), "upper2": _f32(block.sign2.upper),
            "w1": torch.cat([_weight_words(pw.weight_bits) for pw in pws]).contiguous(),
            "zw1": torch.cat(zw1).contiguous(),
            "scale2": torch.cat([_f32(pw.scale) for pw in pws]).contiguous(),
            "shift_in2": _f32(r2.shift_in, cout), "slope2": _f32(r2.slope, cout),
            "shift_out2": _f32(r2.shift_out, cout)}
        sizes = {"lower1": c, "upper1": c, "scale1": c, "shift_in1": c, "slope1": c,
                 "shift_out1": c, "lower2": c, "upper2": c, "scale2": cout, "shift_in2": cout,
                 "slope2": cout, "shift_out2": cout}
        if any(self.keep[k].numel() != v for k, v in sizes.items()):
            raise ValueError("per-channel constants do not match the channel counts")
        wd = self.keep["w3"].shape[-1]
        if wd != math.ceil(c / 64) or self.keep["w1"].shape[-1] != wd:
            raise ValueError("weight words do not match the channel count")
        self.c, self.cout, self.stride = c, cout, block.stride
        self.modules = list(block.modules())  # for the hook check of run_blocks
        fields = {k: v.data_ptr() for k, v in self.keep.items()}
        self.struct = native_build.BlockA(C=c, Cout=cout, stride=block.stride, Wd=wd,
                              nzw3=self.keep["zw3"].shape[0], nzw1=self.keep["zw1"].shape[0],
                              pool_scale=float(block.pool_scale), unused=0.0, **fields)
        self.ref = ctypes.byref(self.struct)


def _plan_a(block):
    return _cached(block, "plan", lambda: _PlanA(block))


def _block_a_nhwc(lib, plan, x, dots=False):
    n, h, w, c = x.shape
    s = plan.stride
    ho, wo = (h - 1) // s + 1, (w - 1) // s + 1
    out = torch.empty(n, ho, wo, plan.cout, dtype=torch.float32)
    d3 = torch.empty(n, ho, wo, c, dtype=torch.int32) if dots else None
    d1 = torch.empty(n, ho, wo, plan.cout, dtype=torch.int32) if dots else None
    lib.bnn_block_a(plan.ref, x.data_ptr(), n, h, w, out.data_ptr(),
                    d3.data_ptr() if dots else None, d1.data_ptr() if dots else None)
    return out, d3, d1


def _fits(plan, shape) -> bool:
    n, h, w, c = shape
    return c == plan.c and (plan.stride == 1 or (h % 2 == 0 and w % 2 == 0))


def block_a(block, x: torch.Tensor, return_dots: bool = False):
    """One packed ReActNet-A block natively on NCHW ``x``; None when it must use the reference.

    With ``return_dots`` also the integer results of the 3x3 conv and of the (stacked)
    1x1 convs, NCHW int32, for comparing with the reference's ``integer_forward``.
    """
    lib = _lib_for(x)
    if lib is None or x.dim() != 4:
        return None
    try:
        plan = _plan_a(block)
    except ValueError:
        return None
    xh = x.permute(0, 2, 3, 1).contiguous()
    if not _fits(plan, xh.shape):
        return None
    out, d3, d1 = _block_a_nhwc(lib, plan, xh, return_dots)
    out = out.permute(0, 3, 1, 2).contiguous()
    if not return_dots:
        return out
    return out, d3.permute(0, 3, 1, 2).contiguous(), d1.permute(0, 3, 1, 2).contiguous()


def _hooked(plans) -> bool:
    """Whether a forward hook would see the modules inside the blocks."""
    from torch.nn.modules import module as torch_module

    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for p in plans for m in p.modules)


def run_blocks(blocks, x: torch.Tensor):
    """All blocks of a packed ReActNet-A natively (channels-last inside); None -> per module.

    A fused call bypasses the blocks' submodules, so when any of them carries a
    forward hook (or a global one is set), None is returned and the blocks run
    module by module (their signs and convs still natively), so the hooks fire.
    """
    lib = _lib_for(x)
    if lib is None or x.dim() != 4:
        return None
    try:
        plans = [_plan_a(b) for b in blocks]
    except ValueError:
        return None
    if _hooked(plans):
        return None
    h = x.permute(0, 2, 3, 1).contiguous()
    for plan in plans:
        if not _fits(plan, h.shape):
            return None  # the reference reports the shape problem
        h = _block_a_nhwc(lib, plan, h)[0]
    return h.permute(0, 3, 1, 2).contiguous()


@contextlib.contextmanager
def kernel_profile():
    """The kernels' own time counters over the block: yields a dict that, on exit, holds
    seconds spent packing signs, in popcount loops and in the fused real-valued epilogue."""
    lib = _state["lib"]
    if lib is None:
        raise RuntimeError("the native kernels are not loaded; call build() first")
    spent = {}
    lib.bnn_profile(1)
    try:
        yield spent
        ns = (ctypes.c_double * 3)()
        lib.bnn_profile_read(ns)
        spent.update(pack_signs=ns[0] * 1e-9, popcount=ns[1] * 1e-9, epilogue=ns[2] * 1e-9)
    finally:
        lib.bnn_profile(0)

