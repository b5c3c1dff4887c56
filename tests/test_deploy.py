"""Packed inference: bits, XNOR-popcount conv, folded constants, file format, op counts."""
import copy
import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bnn_helpers import create_model, deploy
from bnn_helpers.bitkernels import PackedActivation, pack_bits, packed_conv2d, popcount, unpack_bits
from bnn_helpers.complexity import inference_op_table
from bnn_helpers.deploy import (PackedBinaryConv2d, PackedSign, exact_sign_thresholds,
                                float_size_bytes, load_packed, pack, packed_size_bytes, save_packed)
from bnn_helpers.diagnostics import compare_predictions, count_sign_ties
from bnn_helpers.layers import BinaryScaledStdConv2d


def _randomize(model, seed=0):
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


@pytest.fixture(scope="module")
def images():
    return torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))


_MODELS, _PACKED = {}, {}


def _model_a(norm):
    if norm not in _MODELS:
        _MODELS[norm] = _randomize(create_model(f"reactnet_a_{norm}", binary_weights=True,
                                                width_mult=0.25, num_classes=10))
    return _MODELS[norm]


def _packed_a(norm):
    if norm not in _PACKED:
        _PACKED[norm] = pack(_model_a(norm))
    return _PACKED[norm]


@pytest.fixture(params=["bf", "bn"])
def model_a(request):
    return _model_a(request.param)


@pytest.fixture
def packed_a(model_a):
    return _packed_a(model_a.norm_mode)


@pytest.fixture
def packed_bn():
    return _packed_a("bn")


# ---------------------------------------------------------------- bits
@pytest.mark.parametrize("word_bits", [8, 64])
def test_pack_unpack_round_trip(word_bits):
    bits = torch.rand(3, 4, 77, generator=torch.Generator().manual_seed(0)) > 0.5
    packed = pack_bits(bits, word_bits)
    assert packed.dtype == torch.uint8
    assert packed.shape[-1] == math.ceil(77 / word_bits) * word_bits // 8
    assert torch.equal(unpack_bits(packed, 77), bits)
    assert torch.equal(unpack_bits(packed, packed.shape[-1] * 8)[..., 77:],
                       torch.zeros(3, 4, packed.shape[-1] * 8 - 77, dtype=torch.bool))


def test_popcount_matches_python_including_sign_bit():
    g = torch.Generator().manual_seed(0)
    words = torch.randint(-2**62, 2**62, (500,), generator=g) * 2 + torch.randint(0, 2, (500,), generator=g)
    words[:3] = torch.tensor([-(1 << 63), -1, 0])
    expected = torch.tensor([bin(int(w) & (2**64 - 1)).count("1") for w in words])
    assert torch.equal(popcount(words), expected)
    small = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(popcount(small), torch.tensor([bin(i).count("1") for i in range(256)]))


# ---------------------------------------------------------------- conv
CONV_CASES = [  # cin, cout, kernel, stride, padding
    (8, 8, 3, 1, 1), (13, 5, 3, 2, 1), (70, 9, 1, 1, 0), (3, 4, 3, 2, 0), (16, 6, 3, 1, 2),
    (64, 3, 3, 2, 1)]


@pytest.mark.parametrize("word_bits", [8, 64])
@pytest.mark.parametrize("cin,cout,k,stride,padding", CONV_CASES)
def test_packed_conv_equals_float_conv(cin, cout, k, stride, padding, word_bits):
    g = torch.Generator().manual_seed(cin * 100 + k)
    signs = torch.randint(0, 2, (cout, cin, k, k), generator=g).float() * 2 - 1
    weight_bits = pack_bits((signs > 0).permute(0, 2, 3, 1), word_bits)
    # ±1 activations (zeros only from the padding), then ternary ones (ties inside)
    pm1 = torch.randint(0, 2, (2, cin, 9, 7), generator=g).float() * 2 - 1
    ternary = torch.randint(-1, 2, (2, cin, 9, 7), generator=g).float()
    for x in (pm1, ternary):
        act = PackedActivation.from_ternary(x, word_bits)
        assert torch.equal(act.to_ternary(), x)
        out = packed_conv2d(act, weight_bits, k, stride, padding)
        assert out.dtype == torch.int32
        assert torch.equal(out.float(), F.conv2d(x, signs, None, stride, padding))


def test_zero_padding_is_not_minus_one():
    """All-(+1) input and weights: a corner output sees 4 valid pixels of 9, so dot = 4."""
    act = PackedActivation.from_ternary(torch.ones(1, 8, 5, 5))
    out = packed_conv2d(act, pack_bits(torch.ones(1, 3, 3, 8, dtype=torch.bool)), 3, 1, 1)
    assert out[0, 0, 0, 0] == 4 * 8 and out[0, 0, 0, 1] == 6 * 8 and out[0, 0, 2, 2] == 9 * 8


def test_packed_binary_conv_layer_matches_effective_weight():
    conv = BinaryScaledStdConv2d(12, 6, 3, stride=2, padding=1)
    with torch.no_grad():
        conv.weight.normal_()
        conv.gain.uniform_(-1, 1)          # negative gains flip the stored signs
    conv.eval()
    from bnn_helpers.packed_layers import Packer
    packed, shift = Packer(8).conv(conv, nn.Identity(), 0.5)
    assert torch.equal(shift, torch.zeros(6))
    assert torch.equal(packed.signs(), torch.sign(conv.effective_weight().detach()))
    x = torch.randint(-1, 2, (3, 12, 8, 8)).float()
    with torch.no_grad():
        expected = 0.5 * conv(x)
    got = packed(PackedActivation.from_ternary(x))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- sign thresholds
@pytest.mark.parametrize("beta", [1.0, 0.8164966, 1 / math.sqrt(1.04), 0.37])
def test_sign_thresholds_reproduce_float_rsign_exactly(beta):
    g = torch.Generator().manual_seed(3)
    bias = torch.randn(1, 32, 1, 1, generator=g)
    lower, upper = exact_sign_thresholds(beta, bias)
    # the floats within 40 ulps of each boundary, where rounding matters
    around = torch.cat([upper, lower])
    steps = torch.arange(-40, 41, dtype=torch.float32)
    x = around[None, :] + steps[:, None] * torch.finfo(torch.float32).eps * around.abs()[None, :]
    x = torch.cat([x, torch.randn(200, 64, generator=g)], 0)
    x = torch.cat([x[:, :32], x[:, 32:]], 0).T.reshape(1, 32, -1, 1)   # (1, C, many, 1)
    expected = torch.sign((x * beta if beta != 1.0 else x) + bias)
    act = PackedSign(lower, upper)(x)
    assert torch.equal(act.to_ternary(), expected)


def test_sign_threshold_keeps_exact_ties():
    bias = torch.tensor([0.3, -1.25, 0.0]).view(1, 3, 1, 1)
    x = torch.tensor([-0.3, 1.25, 0.0]).view(1, 3, 1, 1)              # x + b == 0 exactly
    lower, upper = exact_sign_thresholds(1.0, bias)
    act = PackedSign(lower, upper)(x)
    assert torch.equal(act.to_ternary(), torch.zeros(1, 3, 1, 1))


def test_sign_threshold_rejects_non_positive_beta():
    with pytest.raises(ValueError, match="beta > 0"):
        exact_sign_thresholds(-0.5, torch.zeros(4))


# ---------------------------------------------------------------- whole networks
def test_packed_reactnet_a_reproduces_float_logits(model_a, packed_a, images):
    packed = packed_a
    with torch.no_grad():
        expected = model_a(images)
    got = packed(images)
    assert expected.std() > 0.1                      # non-trivial network
    bound = 1e-5 * expected.abs().max().item()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=bound)
    # predictions: equal wherever the top-2 margin exceeds what the tolerance above allows
    # (atol + rtol*|logit| <= 2*bound per logit)
    assert compare_predictions(expected, got, 2 * bound)["disagree"] == 0


def test_packed_blocks_store_bits_and_one_scale_per_channel():
    model_a = _model_a("bn")
    packed = pack(model_a, word_bits=64)
    convs = [m for m in packed.modules() if isinstance(m, PackedBinaryConv2d)]
    assert len(convs) == sum(1 + len(b.conv1x1) for b in model_a.blocks)
    for conv in convs:
        assert conv.weight_bits.dtype == torch.uint8
        assert conv.weight_bits.shape[-1] * 8 == math.ceil(conv.in_channels / 64) * 64
        assert conv.scale.shape == (conv.out_channels,)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in packed.modules())
    with pytest.raises(RuntimeError, match="inference-only"):
        packed.train()


def test_packed_reactnet_18_reproduces_float_logits(images):
    model = _randomize(create_model("reactnet_18_bn", binary_weights=True, width_mult=0.25,
                                    num_classes=10, stem="cifar"), seed=4)
    with torch.no_grad():
        expected = model(images[:4])
    got = pack(model)(images[:4])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def test_pack_rejects_step1_model():
    with pytest.raises(ValueError, match="binary_weights=True"):
        pack(create_model("reactnet_a_bf", binary_weights=False, width_mult=0.25, num_classes=10))


def test_zero_weights_stay_exact(images, tmp_path):
    """sign(w) = 0 cannot be one bit: stored as +1 plus a listed correction."""
    model = copy.deepcopy(_model_a("bn"))
    with torch.no_grad():
        model.blocks[0].conv3x3.weight[0, :, 1, 1] = 0.0           # centre taps of channel 0
        model.blocks[3].conv1x1[0].weight[2, 5] = 0.0
    packed = pack(model)
    assert packed.blocks[0].conv3x3.zero_weights.shape == (model.blocks[0].in_channels, 4)
    assert packed.blocks[3].conv1x1[0].zero_weights.tolist() == [[2, 5, 0, 0]]
    x = torch.randint(-1, 2, (2, model.blocks[0].in_channels, 6, 6)).float()
    assert torch.equal(packed.blocks[0].conv3x3.integer_forward(PackedActivation.from_ternary(x)),
                       F.conv2d(x, torch.sign(model.blocks[0].conv3x3.weight.detach()),
                                None, 1, 1).int())
    with torch.no_grad():
        expected = model(images[:4])
    torch.testing.assert_close(packed(images[:4]), expected, rtol=1e-5,
                               atol=1e-5 * expected.abs().max().item())
    path = tmp_path / "zeros.safetensors"
    save_packed(packed, path)
    assert torch.equal(load_packed(path).blocks[3].conv1x1[0].zero_weights,
                       packed.blocks[3].conv1x1[0].zero_weights)


def test_count_sign_ties_sees_inputs_on_the_threshold():
    model = create_model("reactnet_a_bf", binary_weights=True, width_mult=0.25, num_classes=10)
    counts = count_sign_ties(model, torch.zeros(1, 3, 32, 32))   # stem output 0, bias 0
    assert counts["zeros"] >= 8 * 16 * 16 and 0 < counts["fraction"] <= 1
    assert count_sign_ties(_model_a("bf"), torch.randn(1, 3, 32, 32))["sign_outputs"] > 0


# ---------------------------------------------------------------- sizes and files
def test_sizes(model_a, packed_a):
    packed = packed_a
    bits = sum(m.weight_bits.numel() for m in packed.modules() if isinstance(m, PackedBinaryConv2d))
    binary_params = sum(m.weight.numel() for m in model_a.modules()
                        if getattr(m, "binary_weights", False) and isinstance(m, nn.Conv2d))
    assert bits * 8 >= binary_params and bits * 8 < binary_params + 8 * 9 * 1024
    assert packed_size_bytes(packed) == sum(t.numel() * t.element_size()
                                            for t in packed.state_dict().values())
    assert packed_size_bytes(packed) < float_size_bytes(model_a) / 3
    parts = deploy.packed_size_breakdown(packed)
    assert sum(parts.values()) == packed_size_bytes(packed) and parts["binary weight bits"] == bits
    assert parts["stem + classifier (float32)"] >= 4 * model_a.head.fc.weight.numel()
    assert parts["per-channel constants"] > 0


def test_save_load_round_trip(packed_bn, images, tmp_path):
    packed = packed_bn
    path = tmp_path / "model.safetensors"
    save_packed(packed, path)
    loaded = load_packed(path)
    assert loaded.config == packed.config
    assert torch.equal(loaded(images[:2]), packed(images[:2]))
    with open(path, "rb") as f:
        assert b"pickle" not in f.read(200)


def _rewrite(path, change):
    from safetensors.torch import load_file, safe_open, save_file
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path), metadata=meta)


def test_tampered_files_fail_clearly(packed_bn, tmp_path):
    path = tmp_path / "model.safetensors"
    save_packed(packed_bn, path)
    original = path.read_bytes()

    data = bytearray(original)
    data[-5] ^= 0x01                                         # one bit of the last tensor
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        load_packed(path)

    path.write_bytes(original)
    _rewrite(path, lambda t: t.pop("blocks.0.conv3x3.scale"))
    with pytest.raises(ValueError, match="sha256"):
        load_packed(path)

    path.write_bytes(original)
    _rewrite(path, lambda t: t.__setitem__("head.bias", t["head.bias"][:5].clone()))
    with pytest.raises(ValueError, match="sha256"):
        load_packed(path)

    path.write_bytes(original[: len(original) // 2])          # truncated
    with pytest.raises(ValueError, match="safetensors"):
        load_packed(path)

    from safetensors.torch import save_file
    save_file({"x": torch.zeros(2)}, str(path))                # no header
    with pytest.raises(ValueError, match="header"):
        load_packed(path)


def test_header_is_json_with_config(packed_bn, tmp_path):
    from safetensors import safe_open
    path = tmp_path / "model.safetensors"
    save_packed(packed_bn, path)
    with safe_open(str(path), framework="pt") as f:
        header = json.loads(f.metadata()["bnn_helpers"])
    assert header["config"]["arch"] == "reactnet_a" and len(header["sha256"]) == 64


# ---------------------------------------------------------------- op table
def test_inference_op_table_folding():
    tables = {norm: inference_op_table(_model_a(norm), (3, 32, 32)).set_index(["part", "stage"])
              for norm in ("bf", "bn")}
    bf, bn = tables["bf"], tables["bn"]
    blocks = [p for p in bf.index.get_level_values(0).unique() if p.startswith("block")]
    for part in blocks:
        # after folding a bn block does exactly the real ops of a bf block
        assert bn.loc[(part, "folded"), "real_ops"] == bf.loc[(part, "folded"), "real_ops"]
        assert bn.loc[(part, "float"), "real_ops"] > bn.loc[(part, "folded"), "real_ops"]
        assert bf.loc[(part, "float"), "real_ops"] > bf.loc[(part, "folded"), "real_ops"]
        assert bn.loc[(part, "float"), "bops"] == bn.loc[(part, "folded"), "bops"]
    block1 = bf.loc[("block1", "folded")]                     # 8 -> 16 channels at 16x16
    assert block1["scale"] == (8 + 16) * 256 and block1["sign"] == 2 * 8 * 256
    complexity = pytest.importorskip("bnn_helpers.complexity")
    total_bops = bf.xs("folded", level="stage")["bops"].sum()
    assert total_bops == complexity.total_complexity(_model_a("bf"), (3, 32, 32))["bops"]


def test_measurements_live_outside_deployment_code():
    """Op tables, sign-tie counts and latency tables have one home each, not in deploy."""
    from bnn_helpers import bitconv_native, bitkernels, deploy

    assert deploy.packed_conv2d is bitkernels.packed_conv2d and deploy.pack_bits is bitkernels.pack_bits
    for name in ("count_sign_ties", "inference_op_table"):
        assert not hasattr(deploy, name)
    assert not hasattr(bitconv_native, "latency_table")


def test_deployment_code_does_not_import_pandas():
    import subprocess
    import sys

    code = ("import sys, bnn_helpers.deploy, bnn_helpers.bitkernels, bnn_helpers.bitconv_native; "
            "print('pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_compare_packed_runs_the_three_checks(model_a, packed_a, images):
    from bnn_helpers.diagnostics import binary_conv_io, compare_packed

    labels = torch.arange(len(images)) % 10
    logits_f, logits_p, seen = binary_conv_io(model_a, packed_a, images)
    names = [n for n, m in model_a.named_modules() if isinstance(m, BinaryScaledStdConv2d)
             or getattr(m, "binary_weights", False) and isinstance(m, nn.Conv2d)]
    assert set(seen["float"]) == set(seen["packed"]) == set(names)
    x_p, dot = seen["packed"]["blocks.1.conv3x3"]
    assert set(x_p.unique().tolist()) <= {-1.0, 0.0, 1.0} and dot.dtype == torch.int32
    row, per_image = compare_packed(model_a, packed_a, images, labels)
    assert row["digits"] == len(images) and row["integer results wrong"] == 0
    assert row["argmax differs (decided)"] == 0 and row["sign outputs"] > 0
    assert row["top-1 float %"] == 100 * float((logits_f.argmax(1) == labels).float().mean())
    assert per_image["flips"].shape == (len(images),)
    if row["sign flips"] == 0:
        assert row["max rel. logit diff (no flip)"] < 1e-4


def test_size_table_one_row_per_mode_with_the_ratio(model_a, packed_a):
    from bnn_helpers.complexity import size_table

    table = size_table({"m": model_a}, {"m": packed_a}, 32, "tiny")
    row = table.iloc[0]
    assert list(table["model"]) == ["tiny"] and row["norm"] == "m"
    assert row["packed MB"] == pytest.approx(deploy.packed_size_bytes(packed_a) / 1e6)
    assert row["float32 / packed"] == pytest.approx(row["float32 MB"] / row["packed MB"])
    assert row["parameters"] == sum(p.numel() for p in model_a.parameters())


def test_latency_summary_and_profile_shares_from_rows(monkeypatch):
    import pandas as pd

    from bnn_helpers import latency as L

    def fake_table(model, images, packed=None, reps=5, **kwargs):
        return [{"path": "float", "part": "total", "ms": 2.0, "ms_per_image": 1.0, "batch": 2},
                {"path": "reference", "part": "total", "ms": 6.0, "ms_per_image": 3.0, "batch": 2},
                {"path": "reference", "part": "profiled popcount conv", "ms": 3.0, "ms_per_image": 1.5, "batch": 2},
                {"path": "reference", "part": "profiled pack signs", "ms": 1.0, "ms_per_image": 0.5, "batch": 2},
                {"path": "reference", "part": "profiled total", "ms": 4.0, "ms_per_image": 2.0, "batch": 2}]

    monkeypatch.setattr(L, "latency_table", fake_table)
    timing = L.timing_table({"net a": (None, None, None), "net b": (None, None, None)})
    assert isinstance(timing, pd.DataFrame) and set(timing["network"]) == {"net a", "net b"}
    summary = L.latency_summary(timing)
    assert list(summary.columns) == ["float", "reference", "reference / float"]   # no native row: no ratio
    assert summary.loc["net a", "reference / float"] == pytest.approx(3.0)
    shares = L.profile_shares(timing)
    assert shares.loc[("net b", "reference"), "popcount conv"] == pytest.approx(75.0)
    assert shares.loc[("net b", "reference"), "pack signs"] == pytest.approx(25.0)


def test_threshold_shift_ulps_counts_moved_thresholds():
    from bnn_helpers.diagnostics import threshold_shift_ulps
    model = _model_a("bf")
    packed = copy.deepcopy(_packed_a("bf"))
    shifts = threshold_shift_ulps(model, packed)
    channels = sum(b.act1.shift.bias.numel() + b.act2.shift.bias.numel() for b in model.blocks)
    assert shifts.shape == (channels,) and (shifts <= 2).all()
    # move one threshold by exactly one float spacing: that channel reads 1 ulp more
    sign, block = packed.blocks[0].sign1, model.blocks[0]
    t = -block.act1.shift.bias.flatten()[0] / block.beta1
    with torch.no_grad():
        sign.lower[0] = sign.upper[0] = torch.nextafter(t, torch.tensor(math.inf))
    assert threshold_shift_ulps(model, packed)[0] == 1


def test_size_readings_one_row_per_model():
    import pandas as pd

    from bnn_helpers.complexity import size_readings

    def row(model, norm, f32, packed, consts):
        return {"model": model, "norm": norm, "float32 MB": f32, "packed MB": packed,
                "1 bit/binary + 32 bit/real MB": packed, "binary weight bits MB": 1.0,
                "stem + classifier (float32) MB": 0.5, "per-channel constants MB": consts,
                "float32 / packed": f32 / packed}

    sizes = pd.DataFrame([row("a", "bf", 40.0, 2.0, 0.5), row("a", "bn", 41.0, 2.0, 0.5),
                          row("b", "bf", 40.0, 2.0, 0.5), row("b", "bn", 39.0, 2.2, 0.7)])
    r = size_readings(sizes)
    assert list(r.index) == ["a", "b"]
    assert r.loc["a", "bf ratio"] == 20.0 and r.loc["a", "bn ratio"] == 20.5
    assert r.loc["a", "stem + classifier %"] == 25.0 and r.loc["a", "constants %"] == 25.0
    assert r.loc["a", "ratio without constants"] == 40.0 / 1.5
    assert r.loc["a", ["same packed parts", "bn float32 larger", "within accounting"]].all()
    assert not r.loc["b", "same packed parts"] and not r.loc["b", "bn float32 larger"]
