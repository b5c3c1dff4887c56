"""Known answers of bnn_helpers.diagnostics: channel statistics, flips, AGC share, StatsRecorder."""
import math
import numpy as np

import pandas as pd
import pytest
import torch
import torch.nn as nn
from timm.utils.agc import adaptive_clip_grad

from bnn_helpers import create_model
from bnn_helpers import diagnostics as D
from bnn_helpers.layers import BinaryConv2d, BinaryScaledStdConv2d, RSign


class ToyBlock(nn.Module):
    def __init__(self, channels, fail=False):
        super().__init__()
        self.act = RSign(channels)
        self.norm = nn.Identity()
        self.fail = fail

    def forward(self, x):
        if self.fail:
            raise RuntimeError("boom")
        return x + self.norm(self.act(x))


class ToyNet(nn.Module):
    """stem / blocks / head, like the package's models."""

    def __init__(self, stem, channels=3, fail=False):
        super().__init__()
        self.stem = stem
        self.blocks = nn.ModuleList([ToyBlock(channels), ToyBlock(channels, fail)])
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 4))

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class ToyBinaryBlock(nn.Module):
    def __init__(self, channels, conv):
        super().__init__()
        self.act = RSign(channels)
        self.conv = conv(channels, channels, 3, padding=1)
        self.norm = nn.Identity()

    def forward(self, x):
        return x + self.norm(self.conv(self.act(x)))


class ToyBinaryNet(ToyNet):
    """A small binary network (for the training callback): two binary blocks."""

    def __init__(self, conv, channels=8):
        super().__init__(nn.Conv2d(3, channels, 3, padding=1), channels)
        self.blocks = nn.ModuleList([ToyBinaryBlock(channels, conv) for _ in range(2)])
        self.head[-1] = nn.Linear(channels, 10)


def all_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def small(name, binary_weights=True):
    torch.manual_seed(0)
    return create_model(name, binary_weights=binary_weights, width_mult=0.25, num_classes=10)


def test_after_batchnorm_in_train_mode_mean_is_zero_and_variance_one():
    torch.manual_seed(0)
    model = ToyNet(nn.BatchNorm2d(3)).train()
    x = torch.randn(6, 3, 8, 8) * 5 + 3
    table = D.signal_propagation(model, x)
    stem = table.set_index("name").loc["stem"]
    assert stem.avg_sq_mean == pytest.approx(0, abs=1e-10)
    assert stem.avg_var == pytest.approx(1, abs=1e-4)
    assert list(table["name"]) == ["stem", "block1", "block2", "head"]
    assert "sign_balance1" in table and "branch_var" in table


def test_constant_input_gives_squared_value_and_zero_variance():
    model = ToyNet(nn.Identity()).eval()
    table = D.signal_propagation(model, torch.full((4, 3, 5, 5), -1.5)).set_index("name")
    assert table.loc["stem", "avg_sq_mean"] == pytest.approx(2.25)
    assert table.loc["stem", "avg_var"] == 0
    # sign(-1.5) = -1: no +1 at all; the branch is the constant -1.
    assert table.loc["block1", "sign_balance1"] == 0
    assert table.loc["block1", "avg_sq_mean"] == pytest.approx(2.5 ** 2)
    assert table.loc["block1", "branch_var"] == 0
    assert table.loc["head", "avg_var"] == pytest.approx(0, abs=1e-12)
    assert D.logit_variance(model, torch.full((4, 3, 5, 5), -1.5)) == pytest.approx(0, abs=1e-12)


def test_sign_balance_of_symmetric_input_is_one_half():
    torch.manual_seed(0)
    table = D.signal_propagation(ToyNet(nn.Identity()), torch.randn(8, 3, 16, 16))
    assert table.loc[1, "sign_balance1"] == pytest.approx(0.5, abs=0.03)


def test_sign_window_counts_thresholded_inputs_inside_the_unit_interval():
    # ToyNet's RSign sees the input itself (threshold 0): |N(0, 1)| < 1 for 68.3 % of values,
    # and scaling the input by 10 leaves only |x| < 0.1 inside, 8.0 %
    torch.manual_seed(0)
    x = torch.randn(8, 3, 16, 16)
    inside = D.signal_propagation(ToyNet(nn.Identity()), x).loc[1, "sign_window1"]
    assert inside == pytest.approx(float((x.abs() < 1).float().mean()), abs=1e-6)
    assert inside == pytest.approx(0.683, abs=0.02)
    scaled = D.signal_propagation(ToyNet(nn.Identity()), 10 * x).loc[1, "sign_window1"]
    assert scaled == pytest.approx(0.080, abs=0.02)


def test_hooks_are_removed_also_after_an_exception():
    model = ToyNet(nn.Identity(), fail=True)
    with pytest.raises(RuntimeError, match="boom"):
        D.signal_propagation(model, torch.randn(2, 3, 4, 4))
    assert all_hooks(model) == 0


def test_reactnet_a_bn_table_keeps_mode_and_running_stats():
    model = small("reactnet_a_bn").train()
    running = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    x = torch.randn(4, 3, 32, 32)
    table = D.signal_propagation(model, x)
    assert model.training and all_hooks(model) == 0
    for key, value in model.state_dict().items():
        if key in running:
            assert torch.equal(value, running[key]), key
    assert len(table) == 1 + len(model.blocks) + 1
    # BN on the branches: variance var/(var+eps) of the conv output, i.e. close to 1
    # from the second block on (block 1's binary conv output is ~1e-4, eps 1e-5).
    # The last block (1x1 at 32x32 input) may see only +1 signs: a constant branch, 0.
    middle = table.iloc[2:len(model.blocks) - 1]
    # (A branch after mostly-+1 signs varies little, so eps lowers a few values.)
    for column in ("branch_var", "branch_var2"):
        assert middle[column].le(1.0001).all() and middle[column].median() > 0.95
    assert table.loc[0, "avg_var"] == pytest.approx(1, abs=1e-3)
    model.eval()
    D.signal_propagation(model, x)
    assert not model.training
    with pytest.raises(ValueError, match="expects images"):
        D.signal_propagation(model, torch.randn(2, 1, 32, 32))
    assert all_hooks(model) == 0


def test_reactnet_18_has_one_branch_and_one_sign_per_block():
    torch.manual_seed(0)
    model = create_model("reactnet_18_bf", width_mult=0.25, num_classes=10, stem="cifar")
    table = D.signal_propagation(model, torch.randn(4, 3, 16, 16))
    assert table["branch_var"].iloc[1:-1].notna().all()
    assert table["branch_var2"].isna().all()
    assert [c for c in table if c.startswith("sign_balance")] == ["sign_balance1"]


def test_signal_propagation_rejects_models_without_stem_blocks_head():
    with pytest.raises(TypeError, match="stem"):
        D.signal_propagation(nn.Linear(2, 2), torch.randn(2, 2))


def test_flip_ratio_zero_for_identical_and_one_for_negated():
    for name in ("reactnet_a_bf", "reactnet_a_bn"):
        model = small(name)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        negated = {k: -v for k, v in before.items()}
        assert D.flip_ratio(before, before, model=model) == 0
        assert D.flip_ratio(before, negated, model=model) == 1


def test_flip_ratio_counts_single_flips_and_takes_names():
    model = small("reactnet_a_bn")
    layers = D.sign_layers(model)
    name = next(iter(layers))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    after = {k: v.clone() for k, v in before.items()}
    after[name].view(-1)[:3] *= -1
    total = sum(m.weight.numel() for m in layers.values())
    assert D.flip_ratio(before, after, model=model) == pytest.approx(3 / total)
    per_layer = D.flip_ratio_per_layer(before, after, names=[name])
    assert per_layer.loc[0, "flips"] == 3
    with pytest.raises(ValueError, match="model="):
        D.flip_ratio(before, after)


def test_standardized_sign_is_relative_to_the_channel_mean():
    w = torch.tensor([[1.0, 2.0, 3.0, 10.0]]).view(1, 4, 1, 1)
    assert D.binary_sign(w, standardized=True).flatten().tolist() == [-1, -1, -1, 1]
    assert D.binary_sign(w, standardized=False).flatten().tolist() == [1, 1, 1, 1]


def test_weight_sign_balance_at_initialisation():
    # Latent weights start uniform in [0, 0.001): all +1 without standardization,
    # about half +1 after subtracting the channel mean.
    assert (D.weight_sign_balance(small("reactnet_a_bn"))["positive_share"] == 1).all()
    bf = D.weight_sign_balance(small("reactnet_a_bf"))
    assert bf["positive_share"].between(0.3, 0.7).all()


def test_sign_layers_step1_are_the_block_convs():
    model = small("reactnet_a_bf", binary_weights=False)
    layers = D.sign_layers(model)
    assert layers and all(n.startswith("blocks.") for n in layers)
    n_convs = sum(1 + len(b.conv1x1) for b in model.blocks)
    assert len(layers) == n_convs
    values = D.latent_weight_values(model)
    assert set(values) == set(layers)
    assert len(D.latent_weight_values(model, "conv")) == n_convs + 1  # + stem


def test_agc_clipped_share_known_answer_and_agrees_with_timm():
    layer = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))
    layer.weight.grad = torch.tensor([[0.5, 0, 0], [0.001, 0, 0]])  # row 0 clipped at 0.02
    assert D.agc_clipped_share(layer, clip_factor=0.02, exclude=()) == 0.5

    model = small("reactnet_a_bf")
    model(torch.randn(4, 3, 32, 32)).logsumexp(1).sum().backward()
    share = D.agc_clipped_share(model, 0.02, 1e-3)
    assert 0 <= share <= 1 and all(p.grad is not None for p in model.parameters())
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    params = [p for n, p in model.named_parameters() if not n.startswith("head.fc")]
    adaptive_clip_grad(params, 0.02, 1e-3)
    changed = total = 0
    for n, p in model.named_parameters():
        if n.startswith("head.fc"):
            assert torch.equal(p.grad, grads[n])
            continue
        diff = (p.grad - grads[n]).abs()
        rows = diff.flatten(1).amax(1) if p.dim() > 1 else diff.max().view(1)
        changed += int((rows > 0).sum())
        total += rows.numel()
    # Units whose gradient timm changed are exactly the clipped ones (a clipped
    # unit at exactly the threshold would not change; vanishingly unlikely).
    assert share == pytest.approx(changed / total)


def test_gradient_norms_table():
    layer = nn.Linear(2, 1)
    layer.weight.grad = torch.tensor([[3.0, 4.0]])
    table = D.gradient_norms(layer)
    assert list(table["name"]) == ["weight"]
    assert table.loc[0, "grad_norm"] == pytest.approx(5.0)


def _train(model, recorder, steps, lr):
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    snapshots = []
    for it in range(steps):
        x = torch.randn(4, 3, 8, 8, generator=gen)
        y = torch.randint(0, 10, (4,), generator=gen)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        recorder.before_optimizer_step(model, 2, 0, it)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        optimizer.step()
        snapshots.append((before, {k: v.clone() for k, v in model.state_dict().items()}))
        recorder.after_optimizer_step(model, 2, 0, it, agc_clip_share=0.25)
    recorder.close()
    return snapshots


def test_stats_recorder_writes_rows_every_n_steps(tmp_path):
    torch.manual_seed(0)
    model = ToyBinaryNet(BinaryScaledStdConv2d).train()
    snapshots = _train(model, D.StatsRecorder(tmp_path, every=2), steps=5, lr=1e-2)
    stats = pd.read_csv(tmp_path / "stats.csv")
    assert list(stats.columns) == D.STATS_COLUMNS
    assert stats["optimizer_step"].tolist() == [2, 4]
    assert stats["iteration"].tolist() == [1, 3]
    assert (stats["agc_clip_share"] == 0.25).all()
    for _, row in stats.iterrows():
        before, after = snapshots[int(row.iteration)]
        assert row.flip_ratio == pytest.approx(D.flip_ratio(before, after, model=model))
        assert 0 < row.act_sign_balance < 1
    assert stats["flip_ratio"].between(0, 1).all()
    assert all_hooks(model) == 0


def test_stats_recorder_appends_and_zero_lr_flips_nothing(tmp_path):
    model = ToyBinaryNet(BinaryConv2d).train()
    _train(model, D.StatsRecorder(tmp_path, every=1), steps=2, lr=0.0)
    _train(model, D.StatsRecorder(tmp_path, every=1), steps=1, lr=0.0)
    stats = pd.read_csv(tmp_path / "stats.csv")
    assert len(stats) == 3 and (stats["flip_ratio"] == 0).all()
    assert (stats["weight_sign_balance"] == 1).all()
    # every=1: the first row's forward ran before the hooks existed.
    assert math.isnan(stats.loc[0, "act_sign_balance"]) and stats.loc[1, "act_sign_balance"] > 0


def test_stats_recorder_only_rank_zero_writes(tmp_path, monkeypatch):
    from bnn_helpers import sign_stats

    monkeypatch.setattr(sign_stats, "_is_rank_zero", lambda: False)
    model = ToyBinaryNet(BinaryConv2d)
    _train(model, D.StatsRecorder(tmp_path, every=1), steps=2, lr=1e-3)
    assert not (tmp_path / "stats.csv").exists()
    with pytest.raises(ValueError, match="every"):
        D.StatsRecorder(tmp_path, every=0)


def test_wrapped_models_are_unwrapped():
    model = ToyBinaryNet(BinaryConv2d)
    wrapped = nn.DataParallel(model)
    assert list(D.sign_layers(wrapped)) == list(D.sign_layers(model)) == [
        "blocks.0.conv.weight", "blocks.1.conv.weight"]
    assert len(D.signal_propagation(wrapped, torch.randn(2, 3, 4, 4))) == 4


class _Fixed(nn.Module):
    """Predicts class 0 for inputs whose first feature is positive, else class 1."""

    def forward(self, x):
        return torch.stack([x[:, 0], -x[:, 0]], dim=1)


def test_top1_accuracy_known_answer_across_batch_sizes():
    x = torch.tensor([[1.0], [2.0], [-1.0], [-3.0], [4.0]])
    y = torch.tensor([0, 1, 1, 0, 0])          # right: 0, 2, 4 -> 3 of 5
    for batch_size in (1, 2, 5, 64):
        assert D.top1_accuracy(_Fixed(), x, y, batch_size=batch_size) == pytest.approx(60.0)


def test_top1_accuracy_train_mode_uses_batch_statistics_and_restores_the_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)).eval()
    model[1].running_mean.fill_(5.0)            # running stats far from the data's
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    buffers = [b.clone() for b in model.buffers()]
    with torch.no_grad():
        eval_pred = model(x).argmax(1)
        train_pred = torch.cat([model.train()(x[i:i + 8]) for i in range(0, 32, 8)]).argmax(1)
    model.eval()
    for b, saved in zip(model.buffers(), buffers):
        b.copy_(saved)
    assert not torch.equal(eval_pred, train_pred)  # otherwise the test shows nothing
    assert D.top1_accuracy(model, x, y) == pytest.approx(100 * float((eval_pred == y).float().mean()))
    assert D.top1_accuracy(model, x, y, batch_size=8, train_mode=True) == pytest.approx(
        100 * float((train_pred == y).float().mean()))
    assert not model.training and not any(m.training for m in model.modules())
    assert all(torch.equal(b, saved) for b, saved in zip(model.buffers(), buffers))


def test_top1_accuracy_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="as many labels"):
        D.top1_accuracy(_Fixed(), torch.zeros(3, 1), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="batch_size"):
        D.top1_accuracy(_Fixed(), torch.zeros(3, 1), torch.zeros(3, dtype=torch.long), batch_size=0)


def test_compare_predictions_leaves_out_only_samples_rounding_can_decide():
    from bnn_helpers.diagnostics import compare_predictions, top2_margin

    reference = torch.tensor([[1.0, 0.9999, 0.0],    # margin 1e-4: undecided at bound 1e-4
                              [2.0, 0.0, 1.0],        # margin 1: decided
                              [0.0, 1.0, 0.5]])       # margin 0.5: decided
    assert torch.allclose(top2_margin(reference), torch.tensor([1e-4, 1.0, 0.5]), atol=1e-7)
    flipped_tie = reference + torch.tensor([[0.0, 2e-4, 0.0], [0, 0, 0], [0, 0, 0]])
    check = compare_predictions(reference, flipped_tie, 1e-4, labels=torch.tensor([0, 0, 1]))
    assert (check["undecided"], check["compared"], check["disagree"]) == (1, 2, 0)
    assert check["accuracy_tolerance"] == pytest.approx(100 / 3)
    assert check["top-1 reference %"] == pytest.approx(100.0)
    assert check["top-1 other %"] == pytest.approx(200 / 3)
    # a decided sample whose prediction changes is a real disagreement
    wrong = reference.clone()
    wrong[1] = torch.tensor([0.0, 3.0, 1.0])
    assert compare_predictions(reference, wrong, 1e-4)["disagree"] == 1
    with pytest.raises(ValueError, match="shapes differ"):
        compare_predictions(reference, reference[:2], 1e-4)
    with pytest.raises(ValueError, match="rounding_bound"):
        compare_predictions(reference, reference, -1.0)


def test_unitwise_ratios_known_answer_and_kinds():
    layer = nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]]))   # row norms 5 and 0
        layer.bias.zero_()
    layer.weight.grad = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2e-3, 0.0]])
    layer.bias.grad = torch.tensor([3e-3, 4e-3])
    table = D.unitwise_ratios(layer, eps=1e-3)
    assert list(table["ratio"]) == pytest.approx([0.2, 2.0, 5.0])        # 1/5; 2e-3/eps; 5e-3/eps
    assert list(table["kind"]) == ["other weights"] * 2 + ["biases and shifts"]

    model = small("reactnet_a_bf", binary_weights=False)
    model(torch.randn(4, 3, 32, 32)).logsumexp(1).sum().backward()
    table = D.unitwise_ratios(model)
    counts = table["kind"].value_counts()
    assert set(counts.index) == {"classifier", "stem", "block conv weights", "WS gains", "biases and shifts",
                                 "PReLU slopes"}
    assert counts["classifier"] == 10 + 1                                  # 10 weight rows + the bias
    assert counts["WS gains"] == counts["block conv weights"]              # one gain per output channel
    # AGC clips exactly the units above lambda (the classifier aside): the same share as agc_clipped_share.
    rest = table[table["kind"] != "classifier"]
    assert float((rest["ratio"] > 0.02).mean()) == pytest.approx(D.agc_clipped_share(model, 0.02, 1e-3))


def test_ste_window_shares_known_answer_and_hooks_removed():
    model = ToyNet(nn.Identity(), channels=2)
    x = torch.tensor([0.5, -0.5, 2.0, -3.0]).view(1, 1, 2, 2).repeat(1, 2, 1, 1)
    with D.ste_window_shares(model) as shares:
        model.blocks[0].act(x)
    assert shares == [0.5]                                  # |0.5|, |-0.5| inside; 2 and -3 outside
    with torch.no_grad():
        model.blocks[0].act.shift.bias.fill_(-1.0)          # the window is on x + b
    with D.ste_window_shares(model, half_width=1.0) as shares:
        model.blocks[0].act(x)
    assert shares == [0.25]                                 # x + b = -0.5 (inside), -1.5, 1.0, -4
    assert all_hooks(model) == 0
    failing = ToyNet(nn.Identity(), fail=True)
    with pytest.raises(RuntimeError, match="boom"):
        with D.ste_window_shares(failing) as shares:
            failing(torch.randn(1, 3, 4, 4))
    assert len(shares) == 1 and all_hooks(failing) == 0     # block 1's RSign ran, block 2 raised


def test_batch_coupling_is_zero_without_batch_statistics_and_large_with_them():
    torch.manual_seed(0)
    x = torch.randn(17, 3, 32, 32)
    bn = create_model("reactnet_a_bn", width_mult=0.25, num_classes=10, binary_weights=False)
    bf = create_model("reactnet_a_bf", width_mult=0.25, num_classes=10, binary_weights=False)
    running = {k: v.clone() for k, v in bn.state_dict().items() if "running" in k}
    assert D.batch_coupling(bn.train(), x[:1], x[1:9], x[9:]) > 0.01
    assert all(torch.equal(bn.state_dict()[k], v) for k, v in running.items())  # ran on a copy
    assert D.batch_coupling(bn.eval(), x[:1], x[1:9], x[9:]) < 1e-5
    for companions_b in (x[9:], None):  # other companions, or alone
        assert D.batch_coupling(bf.train(), x[:1], x[1:9], companions_b) < 1e-5


def test_logits_in_batches_restores_the_model_and_matches_one_batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)).eval()
    x = torch.randn(12, 4)
    buffers = [b.clone() for b in model.buffers()]
    with torch.no_grad():
        whole = model(x)
    assert torch.allclose(D.logits_in_batches(model, x, 5), whole, atol=1e-6)      # eval: batch size is irrelevant
    in_fours = D.logits_in_batches(model, x, 4, train_mode=True)                  # train: each batch's statistics
    with torch.no_grad():
        expected = torch.cat([model.train()(x[i:i + 4]) for i in range(0, 12, 4)])
    model.eval()
    for b, saved in zip(model.buffers(), buffers):
        b.copy_(saved)
    assert torch.allclose(in_fours, expected, atol=1e-6)
    D.logits_in_batches(model, x, 4, train_mode=True)
    assert not model.training and all(torch.equal(b, s) for b, s in zip(model.buffers(), buffers))
    with pytest.raises(ValueError, match="batch_size"):
        D.logits_in_batches(model, x, 0)


def test_signal_at_init_and_trained_reads_a_finished_run(tmp_path, tiny_run):
    from bnn_helpers.train import run_or_load

    run_dir = run_or_load(None, **dict(tiny_run, dataset="digits", model="reactnet_a_bf", step="both", epochs=1,
                                       max_train_batches=1, eval_batch_size=360, run_dir=str(tmp_path / "run")))
    x = torch.randn(8, 3, 32, 32)
    tables = D.signal_at_init_and_trained({"bf": run_dir}, x, num_classes=10)
    assert list(tables) == ["bf · init", "bf · trained"]
    again = D.signal_at_init_and_trained({"bf": run_dir}, x, num_classes=10)
    pd.testing.assert_frame_equal(tables["bf · init"], again["bf · init"])       # seeded initialisation
    assert not tables["bf · init"]["avg_var"].equals(tables["bf · trained"]["avg_var"])


def test_beta_schedule_table_holds_both_schedules_and_the_prediction():
    from bnn_helpers.models.reactnet_a import STRIDES, beta_schedule_a
    table = D.beta_schedule_table(STRIDES, 0.2)
    assert list(table.index) == list(range(1, 14)) and list(table.stride) == list(STRIDES)
    for name in ("published", "nf"):
        betas = beta_schedule_a(STRIDES, 0.2, name)
        assert table[f"beta1 {name}"].tolist() == [b[0] for b in betas]
        assert table[f"beta2 {name}"].tolist() == [b[1] for b in betas]
    assert np.allclose(table[D.PREDICTED_INPUT_VAR], 1 / table["beta1 published"] ** 2)
    assert table.loc[12, D.PREDICTED_INPUT_VAR] == pytest.approx(1.40)


def test_readable_beta_table_names_the_multipliers_and_adds_beta():
    from bnn_helpers.models.reactnet_a import STRIDES
    table = D.beta_schedule_table(STRIDES, 0.2)
    shown = D.readable_beta_table(table)
    assert list(shown.columns) == ["stride", "1/β₁ published", "1/β₁ nf", "1/β₂ published", "1/β₂ nf",
                                   "β₁ published", "β₁² published"]
    assert shown["1/β₂ nf"].tolist() == table["beta2 nf"].tolist()
    assert np.allclose(shown["β₁ published"] * table["beta1 published"], 1.0)
    assert np.allclose(shown["β₁² published"], shown["β₁ published"] ** 2)
    assert (shown["β₁ published"] >= 1).all()


def test_unitwise_summary_counts_units_and_the_share_above_lambda():
    ratios = pd.DataFrame({"kind": ["b", "a", "b", "b"], "ratio": [0.01, 5.0, 0.03, 0.05]})
    table = D.unitwise_summary(ratios, clip_factor=0.02)
    assert list(table.index) == ["b", "a"]                        # order of appearance
    assert table.loc["b"].tolist() == pytest.approx([3, 0.03, 0.05, 100 * 2 / 3])
    assert table.loc["a", "% above lambda"] == 100
    with pytest.raises(ValueError, match="lacks columns"):
        D.unitwise_summary(pd.DataFrame({"ratio": [1.0]}), 0.02)
