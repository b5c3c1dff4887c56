"""Fused binarization paths against the straightforward autograd composition.

Every layer kind is run twice on the same parameters and input, once as the
package does it and once under ``use_reference()``; values and gradients
(input, latent weight, gain, threshold) must agree to 1e-5 relative.
"""
import itertools

import pytest
import torch
import torch.nn.functional as F

from bnn_helpers import binarize as B
from bnn_helpers import create_model
from bnn_helpers import layers as L

CONVS = [L.ScaledStdConv2d, L.BinaryConv2d, L.BinaryScaledStdConv2d]


def _grads(module, x, upstream, reference):
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    with B.use_reference(reference):
        out = module(x)
    out.backward(upstream)
    grads = {name: p.grad.detach().clone() for name, p in module.named_parameters()}
    grads["input"] = x.grad.detach().clone()
    return out.detach(), grads


def _assert_same(module, x, rtol=1e-5):
    torch.manual_seed(1)
    with torch.no_grad():
        upstream = torch.randn_like(module(x))
    out, fused = _grads(module, x, upstream, reference=False)
    out_ref, ref = _grads(module, x, upstream, reference=True)
    torch.testing.assert_close(out, out_ref, rtol=rtol, atol=rtol * out_ref.abs().max().item())
    assert fused.keys() == ref.keys()
    for name in ref:
        scale = ref[name].abs().max().item()
        torch.testing.assert_close(fused[name], ref[name], rtol=rtol, atol=rtol * scale,
                                   msg=lambda m, n=name: f"{n}: {m}")


def _with_gain(conv, dtype):
    conv = conv.to(dtype)
    if hasattr(conv, "gain"):
        with torch.no_grad():
            conv.gain.copy_(torch.linspace(-1.5, 2.0, conv.out_channels).view(-1, 1, 1, 1))
            conv.gain[1] = 0.0  # a zero gain still needs its gradient
    return conv


@pytest.mark.parametrize("cls", CONVS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("size,kernel,stride", [(9, 3, 1), (7, 3, 2), (2, 3, 1), (1, 3, 1),
                                                (4, 3, 2), (5, 1, 1)])
def test_conv_layers_match_composition(cls, dtype, size, kernel, stride):
    torch.manual_seed(0)
    conv = _with_gain(cls(6, 8, kernel, stride=stride, padding=kernel // 2), dtype)
    if cls is not L.BinaryConv2d:
        with torch.no_grad():  # latent weights with a non-trivial mean and spread
            conv.weight.normal_(0.3, 0.7)
    x = torch.randn(3, 6, size, size, dtype=dtype)
    _assert_same(conv, x)


def test_binary_conv_gradient_at_clamp_boundaries():
    conv = L.BinaryConv2d(2, 3, 1).double()
    values = torch.tensor([-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5])
    with torch.no_grad():
        conv.weight.copy_(values[torch.arange(6) % 7].view(3, 2, 1, 1))
    _assert_same(conv, torch.randn(4, 2, 3, 3, dtype=torch.float64), rtol=0)
    w = conv.weight
    conv.zero_grad()
    B.binarize_weight(w).backward(torch.ones_like(w))
    assert torch.equal(w.grad, (w.abs() <= 1).to(w.dtype))  # +-1 inclusive, 1.5 clipped


@pytest.mark.parametrize("estimator", sorted(B.ESTIMATORS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rsign_matches_composition_on_boundaries(estimator, dtype):
    rsign = L.RSign(3, estimator).to(dtype)
    with torch.no_grad():
        rsign.shift.bias.copy_(torch.tensor([0.0, 0.25, -0.5]).view(1, 3, 1, 1))
    grid = torch.tensor([-2.0, -1.0, -0.75, -0.5, 0.0, 0.5, 0.75, 1.0, 2.0, 1e-8, -1e-8, 0.3])
    # channel c gets grid - bias, so x + bias hits 0 and +-1 exactly in every channel
    x = (grid.view(1, 1, 3, 4) - rsign.shift.bias.detach().view(1, 3, 1, 1)).to(dtype)
    x = torch.cat([x, torch.randn(2, 3, 3, 4, dtype=dtype)])
    _assert_same(rsign, x, rtol=1e-6)


def test_estimator_slopes_at_0_and_pm1():
    x = torch.tensor([-1.0, 0.0, 1.0, 0.5, -1.5], dtype=torch.float64, requires_grad=True)
    expected = {"identity": [1, 1, 1, 1, 1], "ste": [1, 1, 1, 1, 0], "approx": [0, 2, 0, 1, 0]}
    for name, slope in expected.items():
        (grad,) = torch.autograd.grad(B.get_estimator(name)(x).sum(), x)
        assert grad.tolist() == slope, name
        (grad_ref,) = torch.autograd.grad(B.REFERENCE_ESTIMATORS[name](x).sum(), x)
        assert grad_ref.tolist() == slope, name


def test_saved_tensors_are_compact():
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    saved_ste = B.sign_ste(x).grad_fn.saved_tensors
    assert [t.dtype for t in saved_ste] == [torch.bool]
    saved_approx = B.sign_approx(x).grad_fn.saved_tensors
    assert len(saved_approx) == 1 and saved_approx[0] is x


def _saved_bytes(model, x, reference):
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with B.use_reference(reference), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum()
    return total


def test_package_saves_less_for_backward_than_composition():
    torch.manual_seed(0)
    model = create_model("reactnet_a_bf", binary_weights=True, width_mult=0.25, num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    assert _saved_bytes(model, x, False) < 0.5 * _saved_bytes(model, x, True)


@pytest.mark.parametrize("variant,step,size", [("bf", 2, 32), ("bf", 1, 32), ("bn", 2, 64)])
def test_whole_network_gradients_match_composition(variant, step, size):
    # bn needs >1 value per channel in its last BatchNorms (1x1 maps at 32x32 input),
    # else it divides rounding noise by sqrt(eps) and no two paths agree.
    torch.manual_seed(0)
    model = create_model(f"reactnet_a_{variant}", binary_weights=step == 2, width_mult=0.125,
                         num_classes=10).double()
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    y = torch.tensor([3, 7])
    grads = {}
    for reference in (False, True):
        model.zero_grad(set_to_none=True)
        with B.use_reference(reference):
            F.cross_entropy(model(x), y).backward()
        grads[reference] = {n: p.grad.clone() for n, p in model.named_parameters()}
    for name, ref in grads[True].items():
        torch.testing.assert_close(grads[False][name], ref, rtol=1e-5,
                                   atol=1e-5 * ref.abs().max().item(), msg=name)


def test_forward_is_exactly_sign_times_scale_times_gain():
    torch.manual_seed(0)
    w = torch.randn(5, 4, 3, 3) * 0.01 + 0.02
    gain = torch.tensor([1.0, -2.0, 0.5, 3.0, 0.7]).view(5, 1, 1, 1)
    out = B.binarize_standardized_weight(w, gain)
    ref = B.reference_binarize_standardized_weight(w, gain)
    assert torch.equal(torch.sign(out), torch.sign(ref))
    for c in range(5):
        magnitudes = out[c].abs().unique()
        assert len(magnitudes) == 1  # one multiply: every entry is exactly +-(scale*gain)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=0)


def test_weight_clamp_never_clips_after_standardization():
    """The fused backward skips the STE mask: |w_hat| <= sqrt(1 - 1/n) < 1 always."""
    torch.manual_seed(0)
    for n in (1, 2, 9, 100, 4608):
        w = torch.randn(64, n, dtype=torch.float64)
        w[:, 0] += 1e6  # one huge outlier per channel, the worst case
        w_hat = B.reference_standardize_weight(w.view(64, n, 1, 1))
        assert w_hat.abs().max().item() <= (1 - 1 / n) ** 0.5 + 1e-12


def test_masked_weight_path_matches_composition(monkeypatch):
    # The low-precision fallback computes the STE mask; check it on float64.
    monkeypatch.setattr(B, "_clamp_never_clips", lambda w: False)
    conv = _with_gain(L.BinaryScaledStdConv2d(3, 4, 3, padding=1), torch.float64)
    _assert_same(conv, torch.randn(2, 3, 5, 5, dtype=torch.float64))


@pytest.mark.parametrize("size,kernel,stride,padding", [
    case for case in itertools.product((1, 2, 3), (3, 5), (1, 2), (1, 2))
    if case[0] + 2 * case[3] >= case[1]])
def test_small_output_matmul_path_equals_conv2d(size, kernel, stride, padding):
    torch.manual_seed(0)
    conv = L.BinaryConv2d(4, 5, kernel, stride=stride, padding=padding).double()
    with torch.no_grad():
        conv.weight.normal_()
    x = torch.randn(2, 4, size, size, dtype=torch.float64, requires_grad=True)
    out = conv(x)
    expected = F.conv2d(x, conv.effective_weight(), None, stride, padding)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    upstream = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, conv.weight), upstream)
    want = torch.autograd.grad(expected, (x, conv.weight), upstream)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_small_output_plan_drops_padding_taps():
    conv = L.BinaryConv2d(4, 4, 3, padding=1)
    assert conv._small_output_plan((1, 1)) == ((1, 1, 1, 0), (1, 1, 1, 0))  # centre tap only
    assert conv._small_output_plan((9, 9)) is None  # large output: F.conv2d
    assert L.BinaryConv2d(4, 4, 1)._small_output_plan((1, 1)) is None


# --------------------------------------------------------------------------
# eval-mode cache
# --------------------------------------------------------------------------
def _count_effective_weight(monkeypatch, cls):
    calls = []
    original = cls.effective_weight

    def counted(self):
        calls.append(1)
        return original(self)

    monkeypatch.setattr(cls, "effective_weight", counted)
    return calls


@pytest.mark.parametrize("cls", CONVS)
def test_eval_cache_reused_until_parameters_change(cls, monkeypatch):
    torch.manual_seed(0)
    conv = cls(3, 4, 3, padding=1)
    calls = _count_effective_weight(monkeypatch, cls)
    x = torch.randn(2, 3, 6, 6)
    conv.eval()
    with torch.no_grad():
        first = conv(x)
        second = conv(x)
    assert len(calls) == 1 and torch.equal(first, second)

    # a training step changes the latent weights: the cache must not survive it
    conv.train()
    opt = torch.optim.SGD(conv.parameters(), lr=0.5)
    conv(x).square().sum().backward()
    opt.step()
    conv.eval()
    calls.clear()
    with torch.no_grad():
        after_step = conv(x)
        fresh = F.conv2d(x, conv.effective_weight(), None, 1, 1)
    assert len(calls) == 2  # recomputed once by forward, once explicitly above
    torch.testing.assert_close(after_step, fresh, rtol=0, atol=0)
    assert not torch.equal(after_step, first)

    # load_state_dict copies in place: still invalidates
    other = cls(3, 4, 3, padding=1)
    with torch.no_grad():
        other.weight.normal_()
    conv.load_state_dict(other.state_dict())
    with torch.no_grad():
        loaded = conv(x)
        torch.testing.assert_close(loaded, F.conv2d(x, other.effective_weight(), None, 1, 1),
                                   rtol=0, atol=0)


def test_eval_cache_off_in_training_with_grad_or_when_disabled(monkeypatch):
    conv = L.BinaryScaledStdConv2d(3, 4, 3, padding=1)
    calls = _count_effective_weight(monkeypatch, L.BinaryScaledStdConv2d)
    x = torch.randn(1, 3, 5, 5)
    conv(x), conv(x)  # training mode
    conv.eval()
    conv(x), conv(x)  # eval but grad enabled: gradients must reach the weights
    conv.cache_eval_weight = False
    with torch.no_grad():
        conv(x), conv(x)
    assert len(calls) == 6


def test_use_reference_switch_and_context():
    assert not B.reference_enabled()
    with B.use_reference():
        assert B.reference_enabled()
        with B.use_reference(False):
            assert not B.reference_enabled()
        assert B.reference_enabled()
    assert not B.reference_enabled()
    B.use_reference(True)
    try:
        assert B.reference_enabled()
    finally:
        B.use_reference(False)
    assert not B.reference_enabled()
