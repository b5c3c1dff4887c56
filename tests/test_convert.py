"""Published-checkpoint conversion: names, round trips, and clear errors."""
import pickle

import pytest
import torch

from bnn_helpers import create_model, list_models
from bnn_helpers.convert import (load_published_checkpoint, published_key_map,
                                 to_published_state_dict)
from bnn_helpers.layers import is_binary_conv


pytestmark = pytest.mark.usefixtures("single_thread")


def build(name, seed, binary_weights=True, num_classes=10, width_mult=0.25):
    torch.manual_seed(seed)
    kwargs = {"stem": "cifar"} if "18" in name else {}
    model = create_model(name, binary_weights=binary_weights, num_classes=num_classes,
                         width_mult=width_mult, **kwargs)
    # random values everywhere (biases, slopes, gains, BN statistics), not the init
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if key.endswith("num_batches_tracked"):
                tensor.fill_(seed + 3)
            elif key.endswith("running_var"):
                tensor.uniform_(0.5, 2.0)
            else:
                tensor.normal_(0, 0.5)
    return model.eval()


def flatten_binary_weights(model, published):
    """Store latent binary conv weights as (out*in*k*k, 1), as ReActNet's HardBinaryConv does."""
    names = published_key_map(model)
    out = dict(published)
    for module_name, module in model.named_modules():
        if is_binary_conv(module):
            key = names[f"{module_name}.weight"]
            out[key] = out[key].reshape(-1, 1)
    return out


def wrap(model, published, how):
    if how == "plain":
        return published
    if how == "state_dict":
        return {"state_dict": published, "epoch": 3}
    if how == "data_parallel":
        return {"state_dict": {f"module.{k}": v for k, v in published.items()}}
    if how == "flattened":
        return flatten_binary_weights(model, published)
    raise AssertionError(how)


def assert_same_model(target, source):
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(target(x), source(x))


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("step", [1, 2])
def test_round_trip_gives_identical_outputs(name, step):
    source = build(name, seed=1, binary_weights=step == 2)
    target = build(name, seed=2, binary_weights=step == 2)
    assert_same_model(load_published_checkpoint(target, to_published_state_dict(source)), source)


@pytest.mark.parametrize("name", ["reactnet_a_bn", "reactnet_18_bf"])
@pytest.mark.parametrize("how", ["state_dict", "data_parallel", "flattened"])
def test_wrapped_prefixed_and_flattened_checkpoints(name, how):
    source = build(name, seed=1)
    checkpoint = wrap(source, to_published_state_dict(source), how)
    assert_same_model(load_published_checkpoint(build(name, seed=2), checkpoint), source)


def test_load_from_file_uses_weights_only(tmp_path):
    source = build("reactnet_a_bf", seed=1)
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"epoch": 255, "best_top1_acc": 68.0,
                "state_dict": {f"module.{k}": v for k, v in to_published_state_dict(source).items()}},
               path)
    target = load_published_checkpoint(build("reactnet_a_bf", seed=2), str(path))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(target(x), source(x))
    # anything that is not plain tensors/containers is refused by weights_only loading
    torch.save({"state_dict": {}, "bad": object()}, tmp_path / "unsafe.pth")
    with pytest.raises(pickle.UnpicklingError):
        load_published_checkpoint(build("reactnet_a_bf", seed=2), tmp_path / "unsafe.pth")


def test_published_names():
    """Names from the published code, spelled out here (issue #3)."""
    a_bn = set(to_published_state_dict(build("reactnet_a_bn", seed=0)))
    assert {"feature.0.conv1.weight", "feature.0.bn1.running_var", "feature.1.move11.bias",
            "feature.1.binary_3x3.weight", "feature.1.bn1.weight", "feature.1.move12.bias",
            "feature.1.prelu1.weight", "feature.1.move13.bias", "feature.1.move21.bias",
            "feature.1.binary_pw_down1.weight", "feature.1.binary_pw_down2.weight",
            "feature.1.bn2_1.bias", "feature.1.bn2_2.running_mean", "feature.1.move22.bias",
            "feature.1.prelu2.weight", "feature.1.move23.bias", "feature.3.binary_pw.weight",
            "feature.3.bn2.weight", "feature.13.move23.bias", "fc.weight", "fc.bias"} <= a_bn
    assert not any(k.startswith("feature.14.") for k in a_bn)

    a_bf = set(to_published_state_dict(build("reactnet_a_bf", seed=0)))
    assert {"feature.0.conv1.gain", "feature.1.binary_3x3.gain",
            "feature.2.binary_pw_down2.gain", "feature.3.binary_pw.gain"} <= a_bf
    assert not any(".bn" in k for k in a_bf)

    r18 = set(to_published_state_dict(build("reactnet_18_bn", seed=0)))
    assert {"conv1.weight", "bn1.weight", "layer1.0.move0.bias", "layer1.0.binary_conv.weight",
            "layer1.0.bn1.running_var", "layer1.0.move1.bias", "layer1.0.prelu.weight",
            "layer1.0.move2.bias", "layer2.0.downsample.1.weight",
            "layer2.0.downsample.2.running_mean", "layer4.3.prelu.weight", "fc.weight"} <= r18
    assert not any(k.startswith("layer1.0.downsample") or k.startswith("layer2.1.downsample")
                   for k in r18)


@pytest.mark.parametrize("name", list_models())
def test_key_map_is_one_to_one(name):
    mapping = published_key_map(build(name, seed=0))
    assert len(set(mapping.values())) == len(mapping)


def test_missing_and_unexpected_keys_are_listed_together():
    model = build("reactnet_a_bn", seed=0)
    published = to_published_state_dict(model)
    del published["feature.2.move11.bias"]
    del published["fc.bias"]
    published["feature.2.binary_pw.weight"] = torch.zeros(8, 8, 1, 1)
    published["feature.0.bn2.weight"] = torch.zeros(8)
    with pytest.raises(ValueError) as err:
        load_published_checkpoint(build("reactnet_a_bn", seed=1), published)
    message = str(err.value)
    for key in ("feature.2.move11.bias", "fc.bias", "feature.2.binary_pw.weight",
                "feature.0.bn2.weight"):
        assert key in message
    assert "missing keys (2)" in message and "unexpected keys (2)" in message


def test_wrong_class_count_names_key_and_shapes():
    published = to_published_state_dict(build("reactnet_18_bf", seed=0, num_classes=10))
    target = build("reactnet_18_bf", seed=1, num_classes=100)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError) as err:
        load_published_checkpoint(target, published)
    message = str(err.value)
    assert "fc.weight" in message and "(10, 128)" in message and "(100, 128)" in message
    assert "fc.bias" in message and "num_classes=100" in message
    # nothing was loaded
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_wrong_width_or_mode_is_refused():
    published = to_published_state_dict(build("reactnet_a_bf", seed=0, width_mult=0.25))
    with pytest.raises(ValueError, match="shape mismatch"):
        load_published_checkpoint(build("reactnet_a_bf", seed=1, width_mult=0.5), published)
    with pytest.raises(ValueError, match="unexpected keys .*gain"):
        load_published_checkpoint(build("reactnet_a_none", seed=1), published)
    flat = dict(published)
    flat["feature.1.binary_3x3.weight"] = flat["feature.1.binary_3x3.weight"].reshape(-1, 2)
    with pytest.raises(ValueError, match="feature.1.binary_3x3.weight"):
        load_published_checkpoint(build("reactnet_a_bf", seed=1), flat)


def test_missing_batch_counter_is_tolerated():
    source = build("reactnet_18_bn", seed=0)
    published = {k: v for k, v in to_published_state_dict(source).items()
                 if not k.endswith("num_batches_tracked")}
    target = load_published_checkpoint(build("reactnet_18_bn", seed=1), published)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(target(x), source(x))


def test_not_a_state_dict():
    with pytest.raises(ValueError, match="state dict"):
        load_published_checkpoint(build("reactnet_18_bf", seed=0), [1, 2, 3])
