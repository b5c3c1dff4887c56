"""The native BN-free weight path (csrc/weight_path.cpp via bnn_helpers.weight_native).

Three implementations of the same functions are compared: the native kernel, the
torch fused path (``bitconv_native.use_reference()``) and the reference autograd
composition, the latter in float64 from the same float32 weights (the truth up to
float32 rounding). Tolerances are float32 rounding: 1e-5 relative to the largest
entry of the tensor, as tests/test_fused.py uses. Every test that exercises the
native path checks the call counter, so none can pass on the fallback.
"""
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from bnn_helpers import binarize as B
from bnn_helpers import bitconv_build, bitconv_native, weight_native
from bnn_helpers import layers as L

RTOL = 1e-5
EPS32 = torch.finfo(torch.float32).eps
FUNCS = {"binarize": (B.binarize_standardized_weight, B.reference_binarize_standardized_weight),
         "standardize": (B.standardize_weight, B.reference_standardize_weight)}


@pytest.fixture(scope="module")
def lib():
    try:
        bitconv_native.build()
    except RuntimeError as err:  # no compiler here: the fallback is all that can run
        pytest.skip(f"native library unavailable: {err}")
    return bitconv_native._state["lib"]


class Counted:
    """Native calls made inside the block (forward, backward)."""

    def __enter__(self):
        self.start = dict(weight_native.calls)
        return self

    def __exit__(self, *exc):
        self.forward = weight_native.calls["forward"] - self.start["forward"]
        self.backward = weight_native.calls["backward"] - self.start["backward"]


def _weights(shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(shape, generator=g) * 0.7 + 0.3).to(dtype)
    gain = torch.linspace(-1.5, 2.0, shape[0]).view(-1, 1, 1, 1).to(dtype)
    gain[min(1, shape[0] - 1)] = 0.0  # a zero gain still needs its gradient
    up = torch.randn(shape, generator=g).to(dtype)
    return w, gain, up


def _run(fn, w, gain, up):
    """Forward and (grad_w, grad_gain) of ``fn(w, gain)`` for upstream gradient ``up``."""
    w = w.detach().clone().requires_grad_()
    gain = None if gain is None else gain.detach().clone().requires_grad_()
    out = fn(w, gain)
    inputs = (w,) if gain is None else (w, gain)
    grads = torch.autograd.grad(out, inputs, up)
    return out.detach(), grads


def _close(got, want, what):
    want = want.to(got.dtype)
    scale = want.abs().max().item()
    torch.testing.assert_close(got, want, rtol=RTOL, atol=RTOL * scale, msg=lambda m: f"{what}: {m}")


def _clear_signs(w):
    """Entries whose sign(w - mean) float32 rounding cannot flip (mean from float64)."""
    w64 = w.double()
    mean = w64.mean(dim=tuple(range(1, w.dim())), keepdim=True)
    return (w64 - mean).abs() > 8 * EPS32 * (mean.abs() + w64.abs()), torch.sign(w64 - mean)


SHAPES = [(6, 1, 1, 1), (6, 1, 3, 3), (8, 6, 3, 3), (8, 64, 1, 1), (4, 512, 3, 3),
          (3, 1024, 3, 3)]  # n = 1, 9, 54, 64, 4608, 9216


@pytest.mark.parametrize("kind", sorted(FUNCS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("with_gain", [True, False])
def test_native_matches_torch_and_composition(lib, kind, shape, with_gain):
    fused, reference = FUNCS[kind]
    w, gain, up = _weights(shape)
    gain = gain if with_gain else None
    with Counted() as native_calls:
        out, grads = _run(fused, w, gain, up)
    assert (native_calls.forward, native_calls.backward) == (1, 1)
    with bitconv_native.use_reference(), Counted() as torch_calls:
        out_t, grads_t = _run(fused, w, gain, up)
    assert (torch_calls.forward, torch_calls.backward) == (0, 0)
    out_r, grads_r = _run(reference, w.double(), None if gain is None else gain.double(),
                          up.double())
    assert out.dtype == torch.float32 and all(g.dtype == torch.float32 for g in grads)
    for want, name in ((out_t, "torch"), (out_r, "float64 composition")):
        _close(out, want, f"forward vs {name}")
    for got, want_t, want_r, name in zip(grads, grads_t, grads_r, ("grad_w", "grad_gain")):
        # n = 1: the true gradient is 0 and the torch path returns the float32 rounding
        # of a*g - a*g with a = gain/eps ~ 1e5 (not 0); native and composition give 0.
        if w[0].numel() > 1:
            _close(got, want_t, f"{name} vs torch")
        _close(got, want_r, f"{name} vs float64 composition")
    if kind == "binarize":
        clear, sign = _clear_signs(w)
        g = torch.ones(shape[0], 1, 1, 1) if gain is None else gain
        expected = (sign * torch.sign(g)).expand_as(out)
        nonzero = clear & (g != 0).expand_as(out)
        assert torch.equal(torch.sign(out)[nonzero], expected[nonzero].float())
        for c in range(shape[0]):  # one multiply: every entry of a channel is +-m or 0
            assert len(out[c].abs().unique()) == 1


def test_single_weight_and_constant_channels(lib):
    # n = 1: w - mean is exactly 0, so the output and the gradients are 0.
    w, gain, up = _weights((5, 1, 1, 1))
    with Counted() as calls:
        out, (grad_w, grad_gain) = _run(B.binarize_standardized_weight, w, gain, up)
    assert calls.forward == calls.backward == 1
    assert not out.any() and not grad_w.any() and not grad_gain.any()
    # A constant channel (std = 0): output 0, gradient c/s * gain * (g - mean g), no NaN.
    w, gain, up = _weights((4, 8, 3, 3), seed=1)
    w[2] = 0.3
    for fused, reference in FUNCS.values():
        with Counted() as calls:
            out, grads = _run(fused, w, gain, up)
        assert calls.forward == calls.backward == 1
        assert not out[2].any() and all(torch.isfinite(g).all() for g in grads)
        _, grads_r = _run(reference, w.double(), gain.double(), up.double())
        for got, want, name in zip(grads, grads_r, ("grad_w", "grad_gain")):
            _close(got, want, name)
        n = w[0].numel()
        a = gain[2].double() / n ** 0.5 / B.WS_EPS
        _close(grads[0][2], a * (up[2].double() - up[2].double().mean()), "constant channel")


def _bits(fn, w, gain, up):
    out, grads = _run(fn, w, gain, up)
    return [out, *grads]


@pytest.mark.parametrize("kind", sorted(FUNCS))
def test_thread_count_and_isa_do_not_change_bits(lib, kind):
    fused = FUNCS[kind][0]
    w, gain, up = _weights((384, 96, 3, 3))  # 330K weights: several threads
    threads = torch.get_num_threads()
    try:
        results = []
        for t in (1, 2, 5):
            torch.set_num_threads(t)
            results.append(_bits(fused, w, gain, up))
        torch.set_num_threads(1)
        try:
            for level in weight_native.SIMD_LEVELS:  # each ISA build of the same loops
                assert weight_native.simd(lib, level) in weight_native.SIMD_LEVELS
                results.append(_bits(fused, w, gain, up))
        finally:
            weight_native.simd(lib, "best")
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


def test_float64_and_other_layouts_use_torch(lib):
    w, gain, up = _weights((4, 3, 3, 3), dtype=torch.float64)
    for fused, reference in FUNCS.values():
        with Counted() as calls:
            out, grads = _run(fused, w, gain, up)
        assert (calls.forward, calls.backward) == (0, 0)
        out_r, grads_r = _run(reference, w, gain, up)
        _close(out, out_r, "float64 forward")
        for got, want in zip(grads, grads_r):
            _close(got, want, "float64 gradient")
    w32 = torch.randn(3, 3, 3, 4).permute(3, 0, 1, 2)  # not contiguous
    with Counted() as calls:
        B.binarize_standardized_weight(w32)
        B.binarize_standardized_weight(torch.randn(4, 3, 3, 3), torch.ones(4, 1, 1, 1).double())
    assert calls.forward == 0


def test_switches_select_torch_path(lib, monkeypatch):
    w, gain, up = _weights((4, 3, 3, 3))
    monkeypatch.setenv("BNN_NATIVE", "0")
    with Counted() as calls:
        _run(B.binarize_standardized_weight, w, gain, up)
    monkeypatch.delenv("BNN_NATIVE")
    with bitconv_native.use_reference(), Counted() as calls_ctx:
        _run(B.standardize_weight, w, gain, up)
    assert calls.forward == calls_ctx.forward == 0
    # Huge float32 channels: the clamp may clip, the masked torch backward must run.
    monkeypatch.setattr(B, "_clamp_never_clips", lambda w: False)
    with Counted() as calls:
        _run(B.binarize_standardized_weight, w, gain, up)
        _run(B.standardize_weight, w, gain, up)  # no clamp there: still native
    assert calls.forward == calls.backward == 1


def test_failed_build_falls_back_silently(monkeypatch):
    saved = dict(bitconv_native._state)

    def no_build():
        raise RuntimeError("no C++ compiler found (simulated)")

    monkeypatch.delenv("BNN_NATIVE", raising=False)
    monkeypatch.setattr(bitconv_build, "build_and_load", no_build)
    bitconv_native._reset()
    try:
        w, gain, up = _weights((4, 3, 3, 3))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with Counted() as calls:
                out, grads = _run(B.binarize_standardized_weight, w, gain, up)
        assert calls.forward == 0
        out_r, _ = _run(B.reference_binarize_standardized_weight, w, gain, up)
        _close(out, out_r, "fallback forward")
        with bitconv_native.use_native(), pytest.raises(RuntimeError, match="unavailable"):
            B.binarize_standardized_weight(w, gain)
    finally:
        bitconv_native._state.update(saved)


def test_build_without_openmp_still_gives_the_same_bits(lib, monkeypatch, tmp_path):
    """A compiler without -fopenmp (simulated by an unknown flag) gets the std::thread build."""
    monkeypatch.setenv("BNN_NATIVE_CACHE", str(tmp_path))
    monkeypatch.setattr(bitconv_build, "OPENMP_FLAGS", ("-fno-such-flag-in-any-compiler",))
    plain, _, _ = bitconv_build.build_and_load()
    assert plain.bnn_ws_openmp() == 0
    w, gain, up = _weights((64, 128, 3, 3))
    outputs = []
    for library in (lib, plain):
        monkeypatch.setattr(weight_native, "lib_for", lambda *a, _l=library: _l)
        with Counted() as calls:
            outputs.append(_run(B.binarize_standardized_weight, w, gain, up))
        assert calls.forward == calls.backward == 1
    (out_a, grads_a), (out_b, grads_b) = outputs
    assert torch.equal(out_a, out_b) and all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))


def test_openmp_build_shares_torchs_runtime(lib):
    """With OpenMP, loading the library must not map a second OpenMP runtime next to torch's."""
    if not lib.bnn_ws_openmp():
        pytest.skip("built without OpenMP")
    if not Path("/proc/self/maps").exists():
        pytest.skip("no /proc/self/maps")
    probe = ("import torch\n"
             "from pathlib import Path\n"
             "from bnn_helpers import bitconv_native\n"
             "omp = lambda: sorted({l.split()[-1] for l in Path('/proc/self/maps').read_text()"
             ".splitlines() if 'gomp' in l or 'libomp' in l or 'iomp' in l})\n"
             "before = omp(); bitconv_native.build(); print(before == omp(), before)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("True"), out.stdout


def test_only_needed_gradients_and_compact_saved_tensors(lib):
    w, gain, up = _weights((8, 6, 3, 3))
    w.requires_grad_()
    out = B.binarize_standardized_weight(w, gain)  # gain is a constant here
    saved = out.grad_fn.saved_tensors
    assert saved[0] is w and sum(t.numel() for t in saved[1:]) <= 5 * w.shape[0]
    (grad_w,) = torch.autograd.grad(out, (w,), up)
    frozen = w.detach()
    gain = gain.clone().requires_grad_()
    with Counted() as calls:
        (grad_gain,) = torch.autograd.grad(B.binarize_standardized_weight(frozen, gain), (gain,), up)
    assert calls.backward == 1
    _, (grad_w_ref, grad_gain_ref) = _run(B.binarize_standardized_weight, w, gain, up)
    assert torch.equal(grad_w, grad_w_ref) and torch.equal(grad_gain, grad_gain_ref)


def test_nan_weight_gives_nan_channel(lib):
    w, gain, _ = _weights((3, 4, 3, 3))
    w[1, 0, 0, 0] = float("nan")
    with Counted() as calls:
        out = B.binarize_standardized_weight(w, gain)
    assert calls.forward == 1
    assert torch.isnan(out[1]).all() and not torch.isnan(out[[0, 2]]).any()


@pytest.mark.parametrize("cls", [L.BinaryScaledStdConv2d, L.ScaledStdConv2d])
def test_layers_train_through_native_path(lib, cls):
    torch.manual_seed(0)
    conv = cls(6, 8, 3, padding=1)
    x = torch.randn(2, 6, 5, 5)
    with Counted() as calls:
        conv(x).square().sum().backward()
    assert calls.forward == calls.backward == 1
    grads = {n: p.grad.clone() for n, p in conv.named_parameters()}
    conv.zero_grad(set_to_none=True)
    with B.use_reference():
        conv(x).square().sum().backward()
    for name, p in conv.named_parameters():
        _close(grads[name], p.grad, name)


def test_create_graph_raises_a_clear_error(lib):
    w, gain, up = _weights((4, 3, 3, 3))
    w.requires_grad_()
    out = B.binarize_standardized_weight(w, gain)
    with pytest.raises(RuntimeError, match="not twice differentiable"):
        torch.autograd.grad(out, (w,), up, create_graph=True)
    out = B.reference_standardize_weight(w, gain)  # the composition is, as it says
    (grad_w,) = torch.autograd.grad(out, (w,), up, create_graph=True)
    (second,) = torch.autograd.grad(grad_w.square().sum(), (w,))
    assert torch.isfinite(second).all()
