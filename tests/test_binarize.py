"""Forward values and surrogate gradients of every sign function, on chosen inputs."""
import math

import pytest
import torch

from bnn_helpers import binarize as B

X = torch.tensor([-2.0, -1.0, -0.75, -0.5, 0.0, 0.25, 0.5, 1.0, 1.5], dtype=torch.float64)
SIGN = torch.tensor([-1.0, -1.0, -1.0, -1.0, 0.0, 1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
# d/dx by hand: identity 1; clipped 1[|x| <= 1]; ApproxSign 2+2x on [-1,0), 2-2x on [0,1), else 0.
GRAD = {
    "identity": [1, 1, 1, 1, 1, 1, 1, 1, 1],
    "ste": [0, 1, 1, 1, 1, 1, 1, 1, 0],
    "approx": [0, 0, 0.5, 1.0, 2.0, 1.5, 1.0, 0, 0],
}


@pytest.mark.parametrize("name", sorted(B.ESTIMATORS))
def test_forward_is_exact_sign_including_zero(name):
    x = X.clone().requires_grad_()
    out = B.get_estimator(name)(x)
    assert torch.equal(out.detach(), SIGN)
    assert out[4].item() == 0.0  # torch.sign(0) == 0, as in the published network


@pytest.mark.parametrize("name", sorted(B.ESTIMATORS))
def test_backward_matches_hand_computed(name):
    x = X.clone().requires_grad_()
    upstream = torch.arange(1, 10, dtype=torch.float64)
    B.get_estimator(name)(x).backward(upstream)
    expected = torch.tensor(GRAD[name], dtype=torch.float64) * upstream
    torch.testing.assert_close(x.grad, expected, rtol=0, atol=1e-12)


def test_reference_compositions_give_the_same_gradients():
    for fast, slow in ((B.sign_approx, B.reference_sign_approx), (B.sign_ste, B.reference_sign_ste)):
        x1 = torch.linspace(-1.5, 1.5, 61, dtype=torch.float64).requires_grad_()
        x2 = x1.detach().clone().requires_grad_()
        fast(x1).sum().backward()
        slow(x2).sum().backward()
        torch.testing.assert_close(x1.grad, x2.grad)


def test_unknown_estimator_lists_choices():
    with pytest.raises(ValueError, match="approx"):
        B.get_estimator("tanh")


def test_binarize_weight_two_values_per_channel_and_clamped_gradient():
    w = torch.tensor([[0.5, -1.5, 0.25, -0.25], [2.0, 0.0, -0.5, 0.5]],
                     dtype=torch.float64).view(2, 4, 1, 1).requires_grad_()
    out = B.binarize_weight(w)
    a = torch.tensor([0.625, 0.75], dtype=torch.float64).view(2, 1, 1, 1)  # mean |w| per row
    torch.testing.assert_close(out.detach(), a * torch.sign(w.detach()), rtol=0, atol=0)
    out.backward(torch.ones_like(out))
    # straight through clamp(w, -1, 1): 1 inside [-1, 1], 0 outside; not scaled by a.
    expected = (w.detach().abs() <= 1).double()
    assert torch.equal(w.grad, expected)


def test_scale_is_detached():
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    B.binarize_weight(w).backward(g)
    assert torch.equal(w.grad, g * (w.detach().abs() <= 1))


def test_standardized_weights_have_zero_mean_and_variance_one_over_fan_in():
    w = torch.rand(16, 8, 3, 3, dtype=torch.float64) * 1e-3 + 5.0
    w_hat = B.standardize_weight(w)
    fan_in = 8 * 9
    torch.testing.assert_close(w_hat.mean(dim=(1, 2, 3)), torch.zeros(16, dtype=torch.float64),
                               atol=1e-12, rtol=0)
    # std + eps in the denominator, so slightly below 1/fan_in: exact formula below.
    std = w.std(dim=(1, 2, 3), unbiased=False)
    expected = (std / (std + B.WS_EPS)) ** 2 / fan_in
    torch.testing.assert_close(w_hat.var(dim=(1, 2, 3), unbiased=False), expected)
    assert abs(w_hat.var(unbiased=False).item() * fan_in - 1) < 0.1


def test_standardized_binary_weight_values():
    w = torch.rand(4, 3, 3, 3, dtype=torch.float64) * 1e-3
    gain = torch.tensor([1.0, 2.0, 0.5, -1.0], dtype=torch.float64).view(4, 1, 1, 1)
    out = B.binarize_standardized_weight(w, gain)
    w_hat = B.reference_standardize_weight(w)
    scale = w_hat.abs().mean(dim=(1, 2, 3), keepdim=True)
    assert torch.equal(torch.sign(out), torch.sign(w_hat) * torch.sign(gain))
    torch.testing.assert_close(out, torch.sign(w_hat) * scale * gain, rtol=1e-12, atol=0)
    for c in range(4):
        assert len(torch.unique(out[c].abs())) == 1


@pytest.mark.parametrize("with_gain", [False, True])
def test_fused_weight_paths_match_reference_gradients(with_gain):
    torch.manual_seed(0)
    w1 = (torch.rand(6, 5, 3, 3, dtype=torch.float64) * 1e-3).requires_grad_()
    w2 = w1.detach().clone().requires_grad_()
    g1 = (torch.rand(6, 1, 1, 1, dtype=torch.float64) + 0.5).requires_grad_() if with_gain else None
    g2 = g1.detach().clone().requires_grad_() if with_gain else None
    upstream = torch.randn(6, 5, 3, 3, dtype=torch.float64)
    for fused, reference in ((B.binarize_standardized_weight, B.reference_binarize_standardized_weight),
                             (B.standardize_weight, B.reference_standardize_weight)):
        for t in (w1, w2, g1, g2):
            if t is not None:
                t.grad = None
        fused(w1, g1).backward(upstream)
        reference(w2, g2).backward(upstream)
        torch.testing.assert_close(w1.grad, w2.grad, rtol=1e-9, atol=1e-12)
        if with_gain:
            torch.testing.assert_close(g1.grad, g2.grad, rtol=1e-9, atol=1e-12)


def test_gradcheck_standardization():
    w = torch.randn(3, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    gain = torch.rand(3, 1, 1, 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: B.standardize_weight(a, b), (w, gain))


def test_fan_in_scale():
    w = torch.randn(2, 50, 1, 1, dtype=torch.float64)
    w_hat = B.standardize_weight(w, eps=0.0)
    assert math.isclose(w_hat[0].pow(2).sum().item(), 1.0, rel_tol=1e-9)
