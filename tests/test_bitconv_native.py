"""Native 1-bit kernels (bnn_helpers.bitconv_native) against the pure-PyTorch reference.

The library is compiled at most once per source version (cached on disk, see
``bitconv_native``); these tests load it once per session. The reference in
``deploy`` is the oracle: integer results must be equal bit for bit, real values
within a few float32 ulps of their scale.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bnn_helpers import bitconv_build, bitconv_native, create_model, deploy
from bnn_helpers.bitconv_native import NativeKernelWarning, use_native, use_reference
from bnn_helpers.bitkernels import PackedActivation
from bnn_helpers.deploy import PackedBinaryConv2d, PackedSign, pack
from bnn_helpers.diagnostics import compare_predictions
from bnn_helpers.latency import latency_table
from bnn_helpers.packed_layers import _pack_weight_signs

EPS = torch.finfo(torch.float32).eps


@pytest.fixture(scope="module")
def native(single_thread):
    try:
        return bitconv_native.build()
    except RuntimeError as err:  # no compiler on this machine: only the fallback tests apply
        pytest.skip(f"native kernel unavailable: {err}")


def _randomize(model, seed):
    """Non-trivial step-2 weights: random latent weights, biases, slopes, gains, BN stats."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("prelu.weight"):
                p.copy_(torch.rand(p.shape, generator=g) * 0.5)
            elif name.endswith("gain"):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 if p.dim() == 4 else 0.1))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 20 + 1)
    return model.eval()


_MODELS = {}


def _model_a(norm):
    """Width-1/4 ReActNet-A; the bn one has exact zero weights in two binary convs."""
    if norm not in _MODELS:
        model = _randomize(create_model(f"reactnet_a_{norm}", binary_weights=True,
                                        width_mult=0.25, num_classes=10), seed=len(_MODELS))
        if norm == "bn":
            with torch.no_grad():
                model.blocks[0].conv3x3.weight[1, :, 0, 2] = 0.0
                model.blocks[6].conv1x1[0].weight[3, 100] = 0.0
        _MODELS[norm] = model
    return _MODELS[norm]


@pytest.fixture(scope="module")
def images():
    return torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(7))


needs_native = pytest.mark.usefixtures("native")


def _both(fn):
    with use_reference():
        expected = fn()
    with use_native():
        got = fn()
    return expected, got


# ---------------------------------------------------------------- sign packing
@needs_native
@pytest.mark.parametrize("word_bits", [8, 64])
@pytest.mark.parametrize("channels", [3, 65, 130])
def test_pack_signs_equal_reference_with_ties(channels, word_bits):
    g = torch.Generator().manual_seed(channels)
    lower = torch.randn(channels, generator=g)
    upper = lower + torch.rand(channels, generator=g) * (torch.rand(channels, generator=g) > 0.5)
    sign = PackedSign(lower, upper, word_bits)
    x = torch.randn(3, channels, 5, 4, generator=g)
    pick = torch.randint(0, 5, x.shape, generator=g)           # ties, boundaries, NaN, inf
    c = (1, channels, 1, 1)
    x = torch.where(pick == 0, lower.view(c).expand_as(x), x)
    x = torch.where(pick == 1, upper.view(c).expand_as(x), x)
    x = torch.where(pick == 2, ((lower + upper) / 2).view(c).expand_as(x), x)
    x[0, 0, 0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    expected, got = _both(lambda: sign(x))
    assert torch.equal(got.bits, expected.bits) and torch.equal(got.valid, expected.valid)
    assert (got.channels, got.word_bits) == (channels, word_bits)
    assert (got.to_ternary() == 0).any()                       # ties are really there


# ---------------------------------------------------------------- convolution
def _conv_case(cin, cout, k, stride, padding, word_bits, seed, zero_weights):
    g = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (cout, cin, k, k), generator=g).float() * 2 - 1
    if zero_weights:
        signs.view(-1)[torch.randperm(signs.numel(), generator=g)[:5]] = 0.0
    zeros = torch.nonzero(signs == 0)
    conv = PackedBinaryConv2d(_pack_weight_signs(signs, word_bits), torch.ones(cout), cin, k,
                              stride, padding, word_bits, zeros)
    return conv, signs, g


@needs_native
@pytest.mark.parametrize("batch", [1, 5])                      # row tiles / image tiles + rest
@pytest.mark.parametrize("word_bits", [8, 64])
@pytest.mark.parametrize("k,stride,padding", [(3, 1, 1), (3, 2, 1), (3, 1, 0), (3, 2, 0),
                                              (1, 1, 0), (1, 2, 0), (1, 1, 1)])
@pytest.mark.parametrize("cin,cout", [(3, 7), (65, 66), (130, 9)])
def test_conv_equals_reference(cin, cout, k, stride, padding, word_bits, batch):
    conv, signs, g = _conv_case(cin, cout, k, stride, padding, word_bits,
                                seed=cin * 1000 + k * 100 + stride * 10 + padding,
                                zero_weights=(cin + k + stride) % 2 == 0)
    for h, w in ((9, 7), (1, 1), (2, 5)):
        if (h + 2 * padding - k) < 0 or (w + 2 * padding - k) < 0:
            continue
        x = torch.randint(-1, 2, (batch, cin, h, w), generator=g).float()  # zeros = ties
        act = PackedActivation.from_ternary(x, word_bits)
        expected, got = _both(lambda: conv.integer_forward(act))
        assert got.dtype == torch.int32 and got.shape == expected.shape
        assert torch.equal(got, expected), (h, w)
        assert torch.equal(got.float(), F.conv2d(x, signs, None, stride, padding))


@needs_native
def test_conv_all_plus_one_counts_padding_as_zero():
    conv = PackedBinaryConv2d(_pack_weight_signs(torch.ones(1, 64, 3, 3), 64), torch.ones(1), 64,
                              3, 1, 1, 64)
    with use_native():
        out = conv.integer_forward(PackedActivation.from_ternary(torch.ones(1, 64, 5, 5), 64))
    assert out[0, 0, 0, 0] == 4 * 64 and out[0, 0, 0, 1] == 6 * 64 and out[0, 0, 2, 2] == 9 * 64


# ---------------------------------------------------------------- fused ReActNet-A block
@needs_native
@pytest.mark.parametrize("word_bits", [8, 64])
@pytest.mark.parametrize("norm", ["bf", "bn"])
def test_fused_blocks_equal_reference(norm, word_bits, images):
    packed = pack(_model_a(norm), word_bits)
    assert norm != "bn" or packed.blocks[0].conv3x3.zero_weights.shape[0] > 0
    with torch.no_grad(), use_reference():
        x = packed.stem(images[:5])
    for i, block in enumerate(packed.blocks):
        with torch.no_grad(), use_reference():
            g1 = block.sign1(x)
            dot3 = block.conv3x3.integer_forward(g1)
            expected = block(x)
            # what the 1x1 convs saw in the reference: sign2 of y
            pooled = (F.avg_pool2d(x, 2, 2, divisor_override=1) * block.pool_scale
                      if block.stride == 2 else x)
            y = block.rprelu1(pooled + block.conv3x3(g1))
            g2 = block.sign2(y)
            dot1 = torch.cat([conv.integer_forward(g2) for conv in block.conv1x1], 1)
        with use_native():
            got, got3, got1 = bitconv_native.block_a(block, x, return_dots=True)
        assert torch.equal(got3, dot3), i                      # integer parts: bit-exact
        assert torch.equal(got1, dot1), i
        tol = 8 * EPS * expected.abs().max().item()            # a few ulps of the block's scale
        torch.testing.assert_close(got, expected, rtol=0, atol=tol)
        x = expected


@needs_native
@pytest.mark.parametrize("word_bits", [8, 64])
@pytest.mark.parametrize("norm", ["bf", "bn"])
@pytest.mark.parametrize("batch", [1, 6])
def test_packed_reactnet_a_native_equals_reference(norm, word_bits, batch, images, monkeypatch):
    packed = pack(_model_a(norm), word_bits)
    x = images[:batch]
    with use_reference():
        expected = packed(x)

    def reference_used(*args, **kwargs):
        raise AssertionError("the reference ran inside use_native()")

    monkeypatch.setattr(deploy, "packed_conv2d", reference_used)
    monkeypatch.setattr(deploy, "pack_bits", reference_used)
    with use_native():
        got = packed(x)
    assert expected.abs().max() > 0.1
    bound = 64 * EPS * expected.abs().max().item()
    torch.testing.assert_close(got, expected, rtol=0, atol=bound)
    # predictions: equal wherever the top-2 margin exceeds what that tolerance allows
    assert compare_predictions(expected, got, bound)["disagree"] == 0


@needs_native
def test_packed_reactnet_18_native_layers_equal_reference(images):
    model = _randomize(create_model("reactnet_18_bn", binary_weights=True, width_mult=0.25,
                                    num_classes=10, stem="cifar"), seed=4)
    packed = pack(model, 64)
    expected, got = _both(lambda: packed(images[:2]))
    torch.testing.assert_close(got, expected, rtol=0, atol=64 * EPS * expected.abs().max().item())


@needs_native
def test_plan_follows_in_place_changes(images):
    packed = pack(_model_a("bf"))
    with use_native():
        before = packed(images[:1])
        packed.blocks[4].conv3x3.weight_bits.bitwise_not_()   # flip every weight of one conv
        after = packed(images[:1])
    with use_reference():
        expected = packed(images[:1])
    assert not torch.equal(before, after)
    torch.testing.assert_close(after, expected, rtol=0, atol=64 * EPS * expected.abs().max().item())


# ---------------------------------------------------------------- switch and fallback
@needs_native
def test_environment_switch(monkeypatch):
    monkeypatch.setenv("BNN_NATIVE", "0")
    assert bitconv_native.mode() == "off"
    monkeypatch.setenv("BNN_NATIVE", "1")
    assert bitconv_native.mode() == "on"
    with use_reference():
        assert bitconv_native.mode() == "off"
    monkeypatch.delenv("BNN_NATIVE")
    assert bitconv_native.mode() == "auto"
    assert bitconv_native.info()["available"]


def test_fallback_when_the_build_fails_warns_once(monkeypatch, images):
    packed = pack(_model_a("bf"))
    with use_reference():
        expected = packed(images[:2])

    def no_build():
        raise RuntimeError("no C++ compiler found (simulated)")

    saved = dict(bitconv_native._state)
    monkeypatch.delenv("BNN_NATIVE", raising=False)
    monkeypatch.setattr(bitconv_build, "build_and_load", no_build)
    bitconv_native._reset()
    try:
        with pytest.warns(NativeKernelWarning) as record:
            first, second = packed(images[:2]), packed(images[:2])
        notices = [w for w in record if issubclass(w.category, NativeKernelWarning)]
        assert len(notices) == 1
        message = str(notices[0].message)
        assert "\n" not in message and "simulated" in message and "reference" in message
        assert torch.equal(first, expected) and torch.equal(second, expected)
        assert not bitconv_native.available() and "simulated" in bitconv_native.info()["error"]
        with use_native(), pytest.raises(RuntimeError, match="unavailable"):
            packed(images[:2])
    finally:
        bitconv_native._state.update(saved)


def test_no_compiler_is_a_clear_reason(monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", "")
    assert bitconv_build.find_compiler() is None
    with pytest.raises(RuntimeError, match="no C.. compiler"):
        bitconv_build.build_and_load()


def test_import_never_builds(tmp_path):
    cache = tmp_path / "cache"
    code = ("import bnn_helpers, bnn_helpers.deploy as d, bnn_helpers.bitconv_native as b; "
            "assert b._state['lib'] is None and b._state['error'] is None")
    env = {**os.environ, "BNN_NATIVE_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=300)
    assert not cache.exists()


# ---------------------------------------------------------------- measurements
@needs_native
def test_latency_table_rows(images):
    model = _model_a("bf")
    rows = latency_table(model, images[:2], reps=1, warmup=0)
    totals = {r["path"]: r["ms"] for r in rows if r["part"] == "total"}
    assert set(totals) == {"float", "reference", "native"} and min(totals.values()) > 0
    for path in ("reference", "native"):
        parts = {r["part"]: r["ms"] for r in rows if r["path"] == path and r["part"] != "total"}
        total = parts.pop("profiled total")
        assert {"profiled pack signs", "profiled popcount conv"} <= set(parts)
        assert sum(parts.values()) == pytest.approx(total)
    assert all(r["batch"] == 2 and r["ms_per_image"] == pytest.approx(r["ms"] / 2) for r in rows)


@needs_native
def test_benchmark_quick_checks_equality(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import packed_inference
    finally:
        sys.path.pop(0)
    out = tmp_path / "packed.json"
    result = packed_inference.main(["--quick", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["meta"]["quick"] and len(saved["results"]) == len(result["results"]) == 2
    for r in saved["results"]:
        assert r["check"]["ok"] and r["check"]["integer_mismatches"] == 0
        assert r["check"]["integer_dots"] > 0 and r["native_ms"] > 0 and r["float_ms"] > 0


@needs_native
def test_forward_hooks_inside_blocks_still_fire(images):
    """A hook on a packed conv (as notebook 08 uses) disables the fused call, not the hook."""
    packed = pack(_model_a("bf"))
    with use_reference():
        expected = packed(images[:2])
    seen = []
    handle = packed.blocks[2].conv1x1[0].register_forward_hook(
        lambda mod, inputs, out: seen.append(mod.integer_forward(inputs[0])))
    try:
        with use_native():
            got = packed(images[:2])
    finally:
        handle.remove()
    assert len(seen) == 1 and seen[0].dtype == torch.int32
    torch.testing.assert_close(got, expected, rtol=0, atol=64 * EPS * expected.abs().max().item())
