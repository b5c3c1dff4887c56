"""The one training step: what it computes, the optimizer groups, the lr schedule, top-k counts."""
import pytest
import torch
import torch.nn.functional as F
from timm.utils import adaptive_clip_grad

from bnn_helpers import create_model
from bnn_helpers.agc import parameters_except_classifier
from bnn_helpers.losses import Objective
from bnn_helpers.metrics import topk_hits
from bnn_helpers.training_step import (make_optimizer, make_scheduler, training_step,
                                       training_throughput)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 10, (4,), generator=g)


def _model(seed=0):
    torch.manual_seed(seed)
    return create_model("reactnet_a_bf", binary_weights=True, num_classes=10, width_mult=0.25)


def test_step_equals_the_written_out_recipe(batch, single_thread):
    x, y = batch
    ours, theirs = _model(), _model()
    opt_ours = make_optimizer(ours, "adam", lr=1e-3, weight_decay=1e-5)
    opt_theirs = make_optimizer(theirs, "adam", lr=1e-3, weight_decay=1e-5)
    out = training_step(ours, x, y, Objective("ce"), opt_ours,
                        agc_params=parameters_except_classifier(ours))
    loss = F.cross_entropy(theirs(x), y)
    opt_theirs.zero_grad()
    loss.backward()
    adaptive_clip_grad(parameters_except_classifier(theirs), clip_factor=0.02, eps=1e-3)
    opt_theirs.step()
    assert float(out.loss.detach()) == pytest.approx(float(loss.detach()))
    assert out.logits.shape == (4, 10) and 0.0 <= float(out.clip_share) <= 1.0
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(a, b)


def test_teacher_runs_without_gradients_and_hook_sees_the_gradients(batch, single_thread):
    x, y = batch
    student, teacher = _model(0), _model(1).eval()
    seen = []
    out = training_step(student, x, y, Objective("kd"), make_optimizer(student), teacher=teacher,
                        before_update=lambda: seen.append(student.head.fc.weight.grad is not None))
    assert seen == [True] and out.clip_share is None
    assert all(p.grad is None for p in teacher.parameters())


def test_optimizer_decays_exactly_the_4d_parameters():
    model = _model()
    optimizer = make_optimizer(model, "sgd", lr=0.1, weight_decay=1e-4, momentum=0.5)
    rest, decay = optimizer.param_groups
    assert rest["weight_decay"] == 0.0 and decay["weight_decay"] == 1e-4 and decay["momentum"] == 0.5
    assert all(p.ndim == 4 for p in decay["params"]) and all(p.ndim != 4 for p in rest["params"])
    assert len(rest["params"]) + len(decay["params"]) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer(model, "lamb")


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")  # the recipe's order
@pytest.mark.parametrize("schedule, lrs", [
    ("published", [0.75, 0.5, 0.25, 0.0]),   # stepped before each epoch
    ("linear", [1.0, 0.75, 0.5, 0.25]),
    ("constant", [1.0, 1.0, 1.0, 1.0]),
])
def test_schedules(schedule, lrs):
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = make_scheduler(optimizer, schedule, epochs=4)
    seen = []
    for _ in range(4):
        scheduler.step()
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
    assert seen == pytest.approx(lrs)


def test_topk_hits():
    logits = torch.tensor([[0.9, 0.1, 0.0], [0.1, 0.2, 0.7], [0.5, 0.4, 0.1]])
    hit1, hit2 = topk_hits(logits, torch.tensor([0, 1, 1]), k=2)
    assert (int(hit1), int(hit2)) == (1, 3)
    assert [int(h) for h in topk_hits(logits, torch.tensor([0, 1, 1]), k=5)] == [1, 3]  # k > classes


def test_top1_is_argmax_everywhere_even_on_exact_ties():
    # topk may order tied classes either way; argmax takes the first. Engine logs and the
    # notebooks' evaluations count top-1 the same way.
    from bnn_helpers.diagnostics import top1_accuracy

    logits = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0], [3.0, 0.0, 0.0]])
    y = torch.tensor([0, 1, 0])
    hit1, _ = topk_hits(logits, y, k=2)
    assert int(hit1) == 3
    assert top1_accuracy(torch.nn.Identity(), logits, y) == pytest.approx(100.0)


def test_training_throughput_times_the_recipe_step(single_thread):
    student, teacher = _model(0), _model(1).eval()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    rate = training_throughput(student, batch=4, image_size=32, teacher=teacher, steps=2, warmup=1)
    assert rate > 0
    # 3 steps of Adam changed the student, not the teacher
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())
    assert training_throughput(_model(2), batch=2, image_size=32, loss="ce", steps=1, warmup=0) > 0
    with pytest.raises(ValueError, match="teacher"):
        training_throughput(_model(0), batch=2, image_size=32, loss="kd")
