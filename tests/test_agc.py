"""Adaptive gradient clipping: timm's clipping, our clip count and classifier exclusion."""
import copy

import pytest
import torch
import torch.nn as nn
from timm.utils import adaptive_clip_grad

from bnn_helpers import create_model
from bnn_helpers.agc import clip_gradients, clip_gradients_, clipped_units, parameters_except_classifier


def _layer_with_grads():
    """Two output units: unit 0's gradient is tiny (kept), unit 1's huge (clipped)."""
    layer = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        layer.weight.fill_(1.0)                        # |w_unit| = 2
    layer.weight.grad = torch.tensor([[1e-4] * 4, [10.0] * 4])
    return layer


def test_clipped_units_known_answer():
    layer = _layer_with_grads()
    assert clipped_units(layer.weight, clip_factor=0.02, eps=1e-3).flatten().tolist() == [False, True]


def test_clip_gradients_equals_timm_and_reports_the_share():
    ours, theirs = _layer_with_grads(), _layer_with_grads()
    share = clip_gradients(ours.parameters(), clip_factor=0.02, eps=1e-3)
    adaptive_clip_grad(theirs.parameters(), clip_factor=0.02, eps=1e-3)
    assert share == pytest.approx(0.5)
    assert torch.equal(ours.weight.grad, theirs.weight.grad)
    assert ours.weight.grad[1].norm() == pytest.approx(0.02 * 2.0)   # rescaled to the bound


def test_in_place_clipping_gives_timms_bits_on_a_network():
    """Every kind of parameter (conv rows, gains, zero-initialised shifts, 1-D), with
    gradients scaled so that some units are clipped and others kept."""
    torch.manual_seed(0)
    ours = create_model("reactnet_a_bf", num_classes=10, width_mult=0.25, binary_weights=True)
    ours(torch.randn(4, 3, 32, 32)).logsumexp(1).sum().backward()
    for i, p in enumerate(q for q in ours.parameters() if q.grad is not None):
        p.grad.mul_(10.0 ** (i % 5 - 2))
    theirs = copy.deepcopy(ours)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        b.grad = None if a.grad is None else a.grad.clone()
    params = parameters_except_classifier(ours)
    expected = torch.cat([clipped_units(p).flatten().float() for p in params]).mean()
    share = clip_gradients_(params)
    adaptive_clip_grad(parameters_except_classifier(theirs), clip_factor=0.02, eps=1e-3)
    assert 0.05 < float(expected) < 0.95                  # both branches are exercised
    assert float(share) == pytest.approx(float(expected))
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert (a.grad is None and b.grad is None) or torch.equal(a.grad, b.grad)


def test_clip_gradients_without_gradients_is_zero():
    layer = nn.Linear(3, 3)
    assert float(clip_gradients_(layer.parameters())) == 0.0


def test_parameters_except_classifier_skips_the_head_and_frozen_ones():
    model = create_model("reactnet_a_bf", num_classes=10, width_mult=0.25)
    head = {id(p) for p in model.get_classifier().parameters()}
    params = parameters_except_classifier(model)
    assert params and not head & {id(p) for p in params}
    frozen = copy.deepcopy(model)
    frozen.stem.conv.weight.requires_grad_(False)
    assert len(parameters_except_classifier(frozen)) == len(params) - 1


def test_a_tensor_with_no_clipped_unit_is_not_rewritten():
    """On CPU the pass is skipped when every unit keeps its gradient (a factor of exactly 1)."""
    layer = _layer_with_grads()
    layer.weight.grad[1] = 1e-4                       # now both units are kept
    version = layer.weight.grad._version
    assert float(clip_gradients_(layer.parameters())) == 0.0
    assert layer.weight.grad._version == version
    clipped = _layer_with_grads()
    clip_gradients_(clipped.parameters())
    assert clipped.weight.grad._version > 0          # one clipped unit: the pass runs
