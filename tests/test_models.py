"""Model definitions: exact sizes, no hidden normalization, shapes, gradients, registry.

Expected parameter counts are derived here from docs/reference.md §2 with a formula
written independently of the model code (sum of conv / gain / BN / bias /
PReLU / classifier sizes), then checked against the published numbers.
"""
import pytest
import timm
import torch
import torch.nn as nn

import bnn_helpers
from bnn_helpers import create_model, list_models
from bnn_helpers.models import reactnet_18, reactnet_a

NAMES = [f"{arch}_{norm}" for arch in ("reactnet_a", "reactnet_18") for norm in ("bf", "bn", "none")]
VARIANTS = [(name, step) for name in NAMES for step in (1, 2)]

# docs/reference.md §2, written out here rather than imported from the model code.
SPEC_A_STEM = 32
SPEC_A_OUT = [64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024]
SPEC_A_SPATIAL_224 = [112, 56, 56, 28, 28, 14, 14, 14, 14, 14, 14, 7, 7]
SPEC_18_STAGES = [64, 128, 256, 512]

PUBLISHED_A_PARAMS = {"bf": 29_332_648, "bn": 29_343_592, "none": 29_321_704}


def conv_params(cin, cout, k, norm):
    """A conv of the mode's kind plus what follows it: gain (bf) or BatchNorm affine (bn)."""
    extra = {"bf": cout, "bn": 2 * cout, "none": 0}[norm]
    return cin * cout * k * k + extra


def rprelu_params(c):
    return 3 * c  # shift in, PReLU slope, shift out


def expected_params_a(norm, num_classes=1000):
    total = conv_params(3, SPEC_A_STEM, 3, norm)
    cin = SPEC_A_STEM
    for cout in SPEC_A_OUT:
        total += cin                                   # RSign bias, half 1
        total += conv_params(cin, cin, 3, norm)        # 3x3
        total += rprelu_params(cin)
        total += cin                                   # RSign bias, half 2
        total += (cout // cin) * conv_params(cin, cin, 1, norm)  # one or two 1x1
        total += rprelu_params(cout)
        cin = cout
    return total + cin * num_classes + num_classes


def expected_params_18(norm, stem="imagenet", num_classes=1000):
    total = conv_params(3, SPEC_18_STAGES[0], 7 if stem == "imagenet" else 3, norm)
    cin = SPEC_18_STAGES[0]
    for stage, cout in enumerate(SPEC_18_STAGES):
        for j in range(4):
            total += cin + conv_params(cin, cout, 3, norm) + rprelu_params(cout)
            if stage > 0 and j == 0:
                total += conv_params(cin, cout, 1, norm)  # avgpool -> 1x1 shortcut
            cin = cout
    return total + cin * num_classes + num_classes


def expected_binary_params_a():
    cin, total = SPEC_A_STEM, 0
    for cout in SPEC_A_OUT:
        total += cin * cin * 9 + (cout // cin) * cin * cin
        cin = cout
    return total


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("norm", ["bf", "bn", "none"])
def test_spec_formula_reproduces_published_counts(norm):
    assert expected_params_a(norm) == PUBLISHED_A_PARAMS[norm]


@pytest.mark.parametrize("norm", ["bf", "bn", "none"])
@pytest.mark.parametrize("step", [1, 2])
def test_reactnet_a_parameter_count(norm, step):
    model = reactnet_a(norm, binary_weights=step == 2)
    assert n_params(model) == PUBLISHED_A_PARAMS[norm]
    binary = sum(m.weight.numel() for m in model.modules() if getattr(m, "binary_weights", False)
                 and isinstance(m, nn.Conv2d))
    assert binary == (expected_binary_params_a() if step == 2 else 0)


@pytest.mark.parametrize("norm", ["bf", "bn", "none"])
@pytest.mark.parametrize("step", [1, 2])
@pytest.mark.parametrize("stem,num_classes", [("imagenet", 1000), ("cifar", 10)])
def test_reactnet_18_parameter_count(norm, step, stem, num_classes):
    model = reactnet_18(norm, binary_weights=step == 2, stem=stem, num_classes=num_classes)
    assert n_params(model) == expected_params_18(norm, stem, num_classes)


NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm,
              nn.modules.instancenorm._InstanceNorm, nn.LocalResponseNorm)


@pytest.mark.parametrize("name", NAMES)
def test_normalization_modules_only_in_bn_mode(name):
    model = create_model(name, width_mult=0.25, num_classes=10)
    norms = [m for m in model.modules() if isinstance(m, NORM_TYPES)]
    if name.endswith("_bn"):
        assert norms and all(isinstance(m, nn.BatchNorm2d) for m in norms)
    else:
        assert norms == []


pytestmark = pytest.mark.usefixtures("single_thread")


def _outputs_of_sample0(model, x, companions_a, companions_b, alone=True):
    with torch.no_grad():
        alone = model(x[:1])[0] if alone else None
        with_a = model(torch.cat([x[:1], companions_a]))[0]
        with_b = model(torch.cat([x[:1], companions_b]))[0]
    return alone, with_a, with_b


@pytest.mark.parametrize("name", ["reactnet_a_bf", "reactnet_a_none", "reactnet_18_bf",
                                  "reactnet_18_none"])
@pytest.mark.parametrize("train", [True, False])
def test_bn_free_outputs_do_not_depend_on_batch(name, train):
    torch.manual_seed(0)
    model = create_model(name, width_mult=0.25, num_classes=10, stem="cifar") \
        if "18" in name else create_model(name, width_mult=0.25, num_classes=10)
    model.train(train)
    x = torch.randn(7, 3, 32, 32)
    alone, with_a, with_b = _outputs_of_sample0(model, x, x[1:4], x[4:7] * 3)
    # float rounding may differ with the batch size: compare with a tolerance
    tol = 1e-5 * alone.abs().max().item() + 1e-6
    assert torch.allclose(alone, with_a, rtol=1e-5, atol=tol)
    assert torch.allclose(with_a, with_b, rtol=1e-5, atol=tol)


@pytest.mark.parametrize("name", ["reactnet_a_bn", "reactnet_18_bn"])
def test_bn_outputs_depend_on_batch_in_train_mode_only(name):
    torch.manual_seed(0)
    model = create_model(name, width_mult=0.25, num_classes=10)
    x = torch.randn(7, 3, 32, 32)
    model.train()
    _, with_a, with_b = _outputs_of_sample0(model, x, x[1:4], x[4:7] * 3, alone=False)
    assert (with_a - with_b).abs().max() > 1e-3 * with_a.abs().max()
    model.eval()
    alone, with_a, with_b = _outputs_of_sample0(model, x, x[1:4], x[4:7] * 3)
    tol = 1e-5 * alone.abs().max().item() + 1e-6
    assert torch.allclose(alone, with_a, rtol=1e-5, atol=tol)
    assert torch.allclose(with_a, with_b, rtol=1e-5, atol=tol)


def _forward_backward(model, size):
    model.train()
    x = torch.randn(2, model.in_chans, size, size)
    out = model(x)
    assert out.shape == (2, model.num_classes)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"


@pytest.mark.parametrize("name,step", VARIANTS)
def test_forward_backward_32(name, step):
    # width 1/2 keeps the suite fast on 2 cores; full width is checked at 224 below
    torch.manual_seed(0)
    kwargs = {"stem": "cifar"} if "18" in name else {}
    model = create_model(name, binary_weights=step == 2, num_classes=10, width_mult=0.5, **kwargs)
    _forward_backward(model, 32)


@pytest.mark.parametrize("name,step", VARIANTS)
def test_forward_backward_224_narrow(name, step):
    torch.manual_seed(0)
    model = create_model(name, binary_weights=step == 2, num_classes=10, width_mult=0.25)
    _forward_backward(model, 224)


def _block_output_shapes(model, x):
    shapes = []
    hooks = [b.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:])))
             for b in model.blocks]
    with torch.no_grad():
        out = model(x)
    for h in hooks:
        h.remove()
    return out, shapes


def test_full_width_reactnet_a_forward_224_follows_spec():
    model = reactnet_a("bf").eval()
    out, shapes = _block_output_shapes(model, torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
    assert shapes == [(c, s, s) for c, s in zip(SPEC_A_OUT, SPEC_A_SPATIAL_224)]


@pytest.mark.parametrize("width_mult", [0.25, 0.5])
def test_width_mult_scales_channels_and_keeps_strides(width_mult):
    model = reactnet_a("bf", num_classes=10, width_mult=width_mult)
    _, shapes = _block_output_shapes(model, torch.randn(1, 3, 224, 224))
    assert shapes == [(int(c * width_mult), s, s) for c, s in zip(SPEC_A_OUT, SPEC_A_SPATIAL_224)]
    assert model.get_classifier().in_features == int(1024 * width_mult)
    assert model.width_mult == width_mult

    model18 = reactnet_18("bn", num_classes=10, width_mult=width_mult, stem="cifar")
    _, shapes = _block_output_shapes(model18, torch.randn(1, 3, 32, 32))
    expected = [(int(c * width_mult), 32 >> s, 32 >> s)
                for s, c in enumerate(SPEC_18_STAGES) for _ in range(4)]
    assert shapes == expected
    assert model18.get_classifier().in_features == int(512 * width_mult)


def test_list_models_and_package_export():
    assert sorted(list_models()) == sorted(NAMES)
    assert bnn_helpers.create_model is create_model


@pytest.mark.parametrize("name", NAMES)
def test_timm_registry_round_trip(name):
    ours = create_model(name, binary_weights=False, num_classes=10, width_mult=0.25)
    theirs = timm.create_model(name, binary_weights=False, num_classes=10, width_mult=0.25)
    assert type(ours) is type(theirs)
    assert {k: v.shape for k, v in ours.state_dict().items()} == \
        {k: v.shape for k, v in theirs.state_dict().items()}


def test_unknown_names_and_modes_list_valid_choices():
    with pytest.raises(ValueError) as err:
        create_model("reactnet_b_bf")
    assert all(name in str(err.value) for name in NAMES)
    with pytest.raises(ValueError, match="bf, bn, none"):
        reactnet_a(norm="gn")
    with pytest.raises(ValueError, match="bf, bn, none"):
        reactnet_18(norm="layernorm")
    with pytest.raises(ValueError, match="published, nf"):
        reactnet_a(beta_schedule="constant")
    with pytest.raises(ValueError, match="imagenet, cifar"):
        reactnet_18(stem="tiny")
    with pytest.raises(ValueError, match="reactnet_a_bn"):
        create_model("reactnet_a_bf", norm="bn")


def test_timm_pretrained_raises_clear_error():
    with pytest.raises(ValueError, match="load_published_checkpoint"):
        timm.create_model("reactnet_a_bf", pretrained=True)


def test_bad_input_shape_is_a_clear_error():
    model = create_model("reactnet_18_bf", width_mult=0.25, num_classes=10, stem="cifar")
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        model(torch.randn(2, 1, 32, 32))
