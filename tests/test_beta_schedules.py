"""The BN-free networks' alpha/beta constants are the published ones.

The tables below are the published code's constants (alpha = 0.2), written as
the expected variance ``v = 1/beta**2``; they are not stored in checkpoints, so
a network with other constants computes another function from the same weights.
"""
import importlib

import pytest
import torch
import torch.nn.functional as F

import bnn_helpers

reactnet_a_module = importlib.import_module("bnn_helpers.models.reactnet_a")
reactnet_18_module = importlib.import_module("bnn_helpers.models.reactnet_18")

PUBLISHED_A = [(1.00, 1.04), (1.08, 1.12), (1.00, 1.04), (1.08, 1.12), (1.00, 1.04),
               (1.08, 1.12), (1.00, 1.04), (1.08, 1.12), (1.16, 1.20), (1.24, 1.28),
               (1.32, 1.36), (1.40, 1.44), (1.00, 1.04)]
PUBLISHED_18 = [1.00, 1.00, 1.04, 1.08] + [1.12, 1.00, 1.04, 1.08] * 3
# beta_schedule="nf": the reduction block restarts the count inside itself.
NF_A = [(1.00, 1.04), (1.08, 1.04), (1.08, 1.12), (1.16, 1.04), (1.08, 1.12),
        (1.16, 1.04), (1.08, 1.12), (1.16, 1.20), (1.24, 1.28), (1.32, 1.36),
        (1.40, 1.44), (1.48, 1.04), (1.08, 1.12)]
NF_18 = [1.00, 1.04, 1.08, 1.12] + [1.16, 1.04, 1.08, 1.12] * 3


def variances_a(model):
    """Flat list v1, v2, v1, v2, ... (pytest.approx compares flat sequences)."""
    return [v for b in model.blocks for v in (1 / b.beta1 ** 2, 1 / b.beta2 ** 2)]


def flat(pairs):
    return [v for pair in pairs for v in pair]


@pytest.mark.parametrize("width_mult", [0.25, 0.5, 1.0, 1.5])
@pytest.mark.parametrize("binary_weights", [False, True])
def test_reactnet_a_betas_are_the_published_table(width_mult, binary_weights):
    model = bnn_helpers.create_model("reactnet_a_bf", binary_weights=binary_weights,
                                     num_classes=10, width_mult=width_mult)
    assert variances_a(model) == pytest.approx(flat(PUBLISHED_A), abs=1e-12)
    assert all(b.alpha == 0.2 for b in model.blocks)


@pytest.mark.parametrize("width_mult", [0.25, 0.5, 1.0])
@pytest.mark.parametrize("stem", ["imagenet", "cifar"])
def test_reactnet_18_betas_are_the_published_table(width_mult, stem):
    model = bnn_helpers.create_model("reactnet_18_bf", num_classes=10, width_mult=width_mult,
                                     stem=stem)
    assert [1 / b.beta ** 2 for b in model.blocks] == pytest.approx(PUBLISHED_18, abs=1e-12)
    # The blocks with a shortcut conv are the first of stages 2-4.
    assert [i for i, b in enumerate(model.blocks) if b.has_shortcut_conv] == [4, 8, 12]


def test_nf_schedule_is_the_documented_recurrence():
    model_a = bnn_helpers.create_model("reactnet_a_bf", num_classes=10, width_mult=0.25,
                                       beta_schedule="nf")
    assert variances_a(model_a) == pytest.approx(flat(NF_A), abs=1e-12)
    model_18 = bnn_helpers.create_model("reactnet_18_bf", num_classes=10, width_mult=0.25,
                                        beta_schedule="nf")
    assert [1 / b.beta ** 2 for b in model_18.blocks] == pytest.approx(NF_18, abs=1e-12)


@pytest.mark.parametrize("alpha", [0.1, 0.2, 0.5])
def test_schedule_functions_follow_alpha(alpha):
    betas = reactnet_a_module.beta_schedule_a(reactnet_a_module.STRIDES, alpha)
    a2 = alpha * alpha
    assert 1 / betas[9][0] ** 2 == pytest.approx(1 + 6 * a2)   # block 10: v = 1 + 6 alpha^2
    assert 1 / betas[11][1] ** 2 == pytest.approx(1 + 11 * a2)  # block 12, second half
    shortcut = [False] * 4 + [True, False, False, False] * 3
    betas_18 = reactnet_18_module.beta_schedule_18(shortcut, alpha)
    assert 1 / betas_18[4] ** 2 == pytest.approx(1 + 3 * a2)


def _randomize(module, generator):
    """Non-trivial values for every parameter (biases, slopes, gains, latent weights)."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.3)


def _binary_weight(w, gain, eps=1e-5):
    """Scaled-WS binary weight, written out: gain * mean|w_hat| * sign(w_hat)."""
    fan_in = w[0].numel()
    mean = w.mean(dim=(1, 2, 3), keepdim=True)
    std = w.std(dim=(1, 2, 3), keepdim=True, unbiased=False)
    w_hat = (w - mean) / (std + eps) / fan_in ** 0.5
    scale = w_hat.abs().mean(dim=(1, 2, 3), keepdim=True)
    return gain * scale * torch.sign(w_hat)


def _rprelu(x, rprelu):
    return rprelu.shift_out.bias + F.prelu(x + rprelu.shift_in.bias, rprelu.prelu.weight)


def _rsign(x, rsign):
    return torch.sign(x + rsign.shift.bias)


@pytest.mark.parametrize("block_index", [1, 8, 11])  # reduction, deep stride-1, reduction + doubling
def test_float64_hand_built_reactnet_a_block_equals_package_block(block_index):
    torch.manual_seed(0)
    model = bnn_helpers.create_model("reactnet_a_bf", binary_weights=True, num_classes=10,
                                     width_mult=0.25).double().eval()
    block = model.blocks[block_index]
    _randomize(block, torch.Generator().manual_seed(block_index))
    v1, v2 = PUBLISHED_A[block_index]
    beta1, beta2, alpha = v1 ** -0.5, v2 ** -0.5, 0.2
    x = torch.randn(2, block.in_channels, 8, 8, dtype=torch.float64)

    h = F.conv2d(_rsign(x * beta1, block.act1),
                 _binary_weight(block.conv3x3.weight, block.conv3x3.gain),
                 stride=block.stride, padding=1)
    shortcut = F.avg_pool2d(x * beta1, 2) if block.stride == 2 else x
    y = _rprelu(shortcut + alpha * h, block.rprelu1)
    g = _rsign(y * beta2, block.act2)
    halves = [alpha * F.conv2d(g, _binary_weight(conv.weight, conv.gain)) + y
              for conv in block.conv1x1]
    expected = _rprelu(torch.cat(halves, dim=1), block.rprelu2)

    with torch.no_grad():
        got = block(x)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("block_index", [2, 4])  # identity shortcut, shortcut conv
def test_float64_hand_built_reactnet_18_block_equals_package_block(block_index):
    model = bnn_helpers.create_model("reactnet_18_bf", binary_weights=True, num_classes=10,
                                     width_mult=0.25, stem="cifar").double().eval()
    block = model.blocks[block_index]
    _randomize(block, torch.Generator().manual_seed(block_index))
    beta, alpha = PUBLISHED_18[block_index] ** -0.5, 0.2
    x = torch.randn(2, block.in_channels, 8, 8, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(7))

    branch = F.conv2d(_rsign(x * beta, block.act),
                      _binary_weight(block.conv.weight, block.conv.gain),
                      stride=block.stride, padding=1)
    if block.has_shortcut_conv:
        pool, conv = block.shortcut[0], block.shortcut[1]
        shortcut = F.conv2d(pool(x * beta), _binary_weight(conv.weight, conv.gain))
    else:
        shortcut = x
    expected = _rprelu(alpha * branch + shortcut, block.rprelu)

    with torch.no_grad():
        got = block(x)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_reactnet_18_identity_shortcut_does_not_see_beta():
    """Changing beta moves the sign input only: with the branch silenced, out = RPReLU(x)."""
    model = bnn_helpers.create_model("reactnet_18_bf", num_classes=10, width_mult=0.25,
                                     stem="cifar").double().eval()
    block = model.blocks[3]
    assert not block.has_shortcut_conv
    x = torch.randn(2, block.in_channels, 8, 8, dtype=torch.float64)
    outs = []
    for beta in (1.0, 0.5, 0.9):
        block.beta, block.alpha = beta, 0.0
        with torch.no_grad():
            outs.append(block(x))
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], rtol=0, atol=0)
    torch.testing.assert_close(outs[0], _rprelu(x, block.rprelu), rtol=0, atol=0)
