"""Layers: effective weights, equality with F.conv2d, gradients, bad arguments."""
import pytest
import torch
import torch.nn.functional as F

from bnn_helpers import layers as L

CONVS = [L.ScaledStdConv2d, L.BinaryConv2d, L.BinaryScaledStdConv2d]


@pytest.mark.parametrize("cls", CONVS)
@pytest.mark.parametrize("kernel,stride,padding", [(3, 1, 1), (3, 2, 1), (1, 1, 0)])
def test_conv_equals_functional_conv_with_effective_weight(cls, kernel, stride, padding):
    torch.manual_seed(0)
    conv = cls(6, 10, kernel, stride=stride, padding=padding)
    x = torch.randn(2, 6, 9, 9)
    expected = F.conv2d(x, conv.effective_weight(), None, stride, padding)
    torch.testing.assert_close(conv(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("cls", [L.BinaryConv2d, L.BinaryScaledStdConv2d])
def test_binary_weights_take_two_values_per_channel(cls):
    conv = cls(4, 5, 3)
    with torch.no_grad():
        conv.weight.normal_()  # the all-positive init would give a single value
    w = conv.effective_weight().detach()
    for c in range(5):
        values = torch.unique(w[c])
        assert len(values) == 2 and torch.allclose(values[0], -values[1])


def test_latent_binary_init_is_uniform_in_0_to_1e_3():
    w = L.BinaryConv2d(64, 64, 3).weight
    assert w.min() >= 0 and w.max() < 1e-3 and w.std() > 1e-4


def test_all_positive_init_needs_standardization():
    # Without standardization every binary weight is +1 at init; with it, about half.
    plain = L.BinaryConv2d(32, 32, 3).effective_weight()
    standardized = L.BinaryScaledStdConv2d(32, 32, 3).effective_weight()
    assert (plain > 0).float().mean() == 1.0
    assert 0.4 < (standardized > 0).float().mean() < 0.6


def test_scaled_std_conv_keeps_unit_variance():
    torch.manual_seed(0)
    conv = L.ScaledStdConv2d(256, 64, 3, padding=0)
    y = conv(torch.randn(8, 256, 12, 12))
    assert abs(y.var().item() - 1) < 0.1


@pytest.mark.parametrize("cls", CONVS)
def test_gradients_reach_latent_weights_and_gain(cls):
    conv = cls(3, 4, 3, padding=1)
    conv(torch.randn(2, 3, 5, 5)).square().sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    if hasattr(conv, "gain"):
        assert conv.gain.grad.abs().sum() > 0


def test_rsign_and_rprelu():
    sign = L.RSign(3)
    with torch.no_grad():
        sign.shift.bias.copy_(torch.tensor([0.5, 0.0, -0.5]).view(1, 3, 1, 1))
    x = torch.full((1, 3, 1, 1), -0.25)
    assert sign(x).flatten().tolist() == [1.0, -1.0, -1.0]

    act = L.RPReLU(2)
    with torch.no_grad():
        act.shift_in.bias.fill_(1.0)
        act.shift_out.bias.fill_(-2.0)
    x = torch.tensor([-3.0, 1.0]).view(1, 2, 1, 1)
    # -3+1 = -2 -> 0.25*-2 = -0.5 -> -2.5 ; 1+1 = 2 -> 2 -> 0
    assert act(x).flatten().tolist() == [-2.5, 0.0]


@pytest.mark.parametrize("cls", CONVS)
def test_bad_arguments_raise_clear_errors(cls):
    with pytest.raises(ValueError, match="kernel_size must be a positive integer"):
        cls(3, 4, 0)
    with pytest.raises(ValueError, match="in_channels"):
        cls(0, 4, 3)
    conv = cls(3, 4, 3)
    with pytest.raises(ValueError, match=r"expects input of shape \(N, 3, H, W\)"):
        conv(torch.randn(1, 5, 8, 8))


def test_unknown_estimator_in_rsign():
    with pytest.raises(ValueError, match="unknown sign estimator"):
        L.RSign(4, estimator="sigmoid")


def test_make_conv_kinds():
    assert type(L.make_conv("bf", True, 4, 4, 3)) is L.BinaryScaledStdConv2d
    assert type(L.make_conv("bn", True, 4, 4, 3)) is L.BinaryConv2d
    assert type(L.make_conv("bf", False, 4, 4, 3)) is L.ScaledStdConv2d
    assert type(L.make_conv("none", False, 4, 4, 3)) is torch.nn.Conv2d
    assert L.is_binary_conv(L.make_conv("none", True, 4, 4, 1))
    assert not L.is_binary_conv(L.make_conv("bf", False, 4, 4, 1))
