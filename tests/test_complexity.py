"""Operation and parameter counting (ReActNet's convention) and the notebook table."""
import pytest
import torch.nn as nn

from bnn_helpers import create_model
from bnn_helpers.complexity import (COST_COLUMNS, complexity_table, format_table, layer_costs,
                                    print_summary, stage_table, total_complexity)
from bnn_helpers.layers import BinaryConv2d, RSign

# The layout of docs/reference.md §2, independent of the model code.
SPEC_A_OUT = [64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024]
SPEC_A_SPATIAL_224 = [112, 56, 56, 28, 28, 14, 14, 14, 14, 14, 14, 7, 7]


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def reactnet_a_bf_224():
    model = create_model("reactnet_a_bf")
    return model, complexity_table(model, 224)


def spec_bops_a():
    """Binary 3x3 (C->C, stride at the block) and one or two 1x1 (C->C) per block."""
    cin, total = 32, 0
    for cout, s in zip(SPEC_A_OUT, SPEC_A_SPATIAL_224):
        total += cin * cin * 9 * s * s + (cout // cin) * cin * cin * s * s
        cin = cout
    return total


def test_reactnet_a_matches_published_counts(reactnet_a_bf_224):
    _, df = reactnet_a_bf_224
    total = df.iloc[-1]
    assert total["name"] == "total"
    assert abs(total["bops"] / 4.82e9 - 1) < 0.01
    assert abs(total["ops"] / 0.87e8 - 1) < 0.01
    # published to two significant digits: 0.12e8 (stem 10.8e6 + classifier 1.02e6)
    assert round(total["flops"] / 1e8, 2) == 0.12
    assert total["flops"] == 3 * 32 * 9 * 112 * 112 + 1024 * 1000
    assert total["bops"] == spec_bops_a()
    assert total["ops"] == pytest.approx(total["bops"] / 64 + total["flops"])
    assert total["real_params"] + total["binary_params"] == 29_332_648
    assert abs(total["binary_params"] / 28.2e6 - 1) < 0.01
    assert total["size_bits"] == total["binary_params"] + 32 * total["real_params"]
    assert total["bn_params"] == 0 and total["bn_madds"] == 0


def test_table_rows_and_totals(reactnet_a_bf_224):
    model, df = reactnet_a_bf_224
    names = ["stem", *[f"blocks.{i}" for i in range(len(model.blocks))], "head", "total"]
    assert list(df["name"]) == names
    for column in COST_COLUMNS:
        assert df[column].iloc[:-1].sum() == pytest.approx(df[column].iloc[-1])
    shapes = list(df["out_shape"].iloc[1:-2])
    assert shapes == [(c, s, s) for c, s in zip(SPEC_A_OUT, SPEC_A_SPATIAL_224)]
    text = format_table(df)
    assert "total" in text and "blocks.12" in text and "4.82e9" in text


def test_stage_table_groups_blocks_by_resolution(reactnet_a_bf_224):
    _, df = reactnet_a_bf_224
    stages = stage_table(df)
    assert list(stages.index) == ["stem", "112×112", "56×56", "28×28", "14×14", "7×7", "head", "total"]
    assert list(stages["blocks"]) == ["", "1", "2–3", "4–5", "6–11", "12–13", "", ""]
    total = df.iloc[-1]
    for column in ("bops", "flops", "ops"):
        assert stages[column].iloc[:-1].sum() == pytest.approx(total[column])
        assert stages.loc["total", column] == pytest.approx(total[column])
    assert stages.loc["total", "params"] == total["real_params"] + total["binary_params"]


def test_bn_cost_is_reported_and_not_counted_in_ops():
    bn = create_model("reactnet_a_bn")
    t = complexity_table(bn, 224).iloc[-1]
    bn_channels = 32 + sum(cin + cout for cin, cout in zip([32, *SPEC_A_OUT[:-1]], SPEC_A_OUT))
    assert t["bn_params"] == 2 * bn_channels
    # one multiply-add per BN output element: stem, after the 3x3 (cin channels)
    # and after the 1x1 convs (cout channels) at the block's output resolution
    madds = 32 * 112 * 112 + sum((cin + cout) * s * s for cin, cout, s in
                                 zip([32, *SPEC_A_OUT[:-1]], SPEC_A_OUT, SPEC_A_SPATIAL_224))
    assert t["bn_madds"] == madds
    assert t["real_params"] + t["binary_params"] == 29_343_592
    assert t["bops"] == spec_bops_a()
    assert t["flops"] == 3 * 32 * 9 * 112 * 112 + 1024 * 1000


@pytest.mark.parametrize("arch", ["reactnet_a", "reactnet_18"])
def test_step1_block_convs_are_flops(arch):
    step2 = total_complexity(create_model(f"{arch}_none", width_mult=0.25), 64)
    step1 = total_complexity(create_model(f"{arch}_none", width_mult=0.25,
                                          binary_weights=False), 64)
    assert step1["bops"] == 0 and step1["binary_params"] == 0
    assert step1["flops"] == step2["flops"] + step2["bops"]
    assert step1["params"] == step2["params"]


def test_reactnet_18_shortcut_conv_sees_real_input_so_counts_as_flops():
    model = create_model("reactnet_18_bf", width_mult=0.25, num_classes=10, stem="cifar")
    rows = {c.name: c for c in layer_costs(model, 32)}
    shortcut = rows["blocks.4.shortcut.1"]
    assert shortcut.binary_params == 16 * 32 and shortcut.bops == 0
    assert shortcut.flops == 16 * 32 * 16 * 16
    assert rows["blocks.4.conv"].bops == 16 * 32 * 9 * 16 * 16


def test_toy_binary_conv_counts():
    toy = nn.Sequential(RSign(4), BinaryConv2d(4, 8, 3, stride=2, padding=1))
    rows = {c.name: c for c in layer_costs(toy, (4, 10, 10))}
    assert rows["1"].bops == 4 * 8 * 9 * 5 * 5 and rows["1"].flops == 0
    assert rows["1"].binary_params == 4 * 8 * 9 and rows["0.shift"].real_params == 4
    # the same binary conv on a real-valued input is not a BOP
    real_in = nn.Sequential(BinaryConv2d(4, 8, 3, padding=1))
    rows = {c.name: c for c in layer_costs(real_in, (4, 10, 10))}
    assert rows["0"].bops == 0 and rows["0"].flops == 4 * 8 * 9 * 10 * 10


def test_per_layer_table_sums_to_block_table_and_model_is_left_untouched():
    model = create_model("reactnet_18_bn", width_mult=0.25, num_classes=10, stem="cifar")
    model.train()
    by_block = complexity_table(model, 32)
    by_layer = complexity_table(model, (32, 32), by="layer")
    assert by_layer.iloc[-1][list(COST_COLUMNS)].tolist() == \
        by_block.iloc[-1][list(COST_COLUMNS)].tolist()
    assert "blocks.4.shortcut.2" in set(by_layer["name"])
    assert model.training
    assert all(not m._forward_hooks for m in model.modules())
    assert complexity_table(model, (3, 32, 32)).equals(by_block)


def test_print_summary(capsys):
    model = create_model("reactnet_a_none", width_mult=0.25, num_classes=10)
    df = print_summary(model, 32)
    out = capsys.readouterr().out
    assert "total" in out and "BOPs" in out and "OPs" in out
    assert len(df) == 1 + len(model.blocks) + 1 + 1


def test_bad_input_size():
    model = create_model("reactnet_a_none", width_mult=0.25, num_classes=10)
    with pytest.raises(ValueError, match="input_size"):
        complexity_table(model, (1, 3, 32, 32))
    with pytest.raises(ValueError, match="block, layer"):
        complexity_table(model, 32, by="stage")
