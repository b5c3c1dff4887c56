"""The input sizes a network takes (issue #20): the analysis that the engine checks
``--image-size`` with agrees with a real forward pass."""
import pytest
import torch

from bnn_helpers.models import create_model

torch.set_num_threads(1)


@pytest.mark.parametrize("name, kwargs, smallest", [
    ("reactnet_a_bf", {}, 31),
    ("reactnet_a_bn", {}, 31),
    ("reactnet_18_bf", {"stem": "imagenet"}, 29),
    ("reactnet_18_none", {"stem": "cifar"}, 8),
])
def test_feature_map_sizes_match_a_real_forward(name, kwargs, smallest):
    model = create_model(name, num_classes=10, width_mult=0.25, **kwargs).eval()
    assert model.min_input_size() == smallest
    assert not model.fits_input_size(smallest - 1) and model.fits_input_size(224)
    for size in (smallest, 32, 64):
        sides = []
        record = lambda module, inputs, output: sides.append(output.shape[-1])  # noqa: E731
        hooks = [m.register_forward_hook(record) for m in (model.stem, *model.blocks)]
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
        for hook in hooks:
            hook.remove()
        assert sides == model.feature_map_sizes(size), size
    with pytest.raises(ValueError, match=f"its smallest input is {smallest} px"):
        model.check_input_size(smallest - 1)


def test_too_small_input_fails_deep_inside_without_the_check():
    model = create_model("reactnet_a_bf", num_classes=10, width_mult=0.25).eval()
    with torch.no_grad(), pytest.raises(RuntimeError):  # what the engine's check turns into one line
        model(torch.zeros(1, 3, 16, 16))
