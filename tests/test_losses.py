"""Training objectives: kd (teacher distribution) and ce (labels, optional smoothing)."""
import pytest
import torch
import torch.nn.functional as F

from bnn_helpers.config import TrainError
from bnn_helpers.losses import Objective


def test_kd_is_cross_entropy_with_the_teachers_softmax():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    expected = -(F.softmax(teacher, -1) * F.log_softmax(student, -1)).sum(-1).mean()
    assert Objective("kd")(student, None, teacher) == pytest.approx(float(expected), rel=1e-6)


def test_kd_of_the_teacher_itself_is_its_entropy_and_the_minimum():
    teacher = torch.tensor([[2.0, 0.0, -1.0]])
    p = F.softmax(teacher, -1)
    entropy = float(-(p * p.log()).sum())
    kd = Objective("kd")
    assert kd(teacher, None, teacher) == pytest.approx(entropy, rel=1e-6)
    assert kd(teacher + torch.tensor([[0.0, 1.0, 0.0]]), None, teacher) > kd(teacher, None, teacher)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_ce_with_label_smoothing(smoothing):
    g = torch.Generator().manual_seed(1)
    logits, labels = torch.randn(6, 4, generator=g), torch.randint(0, 4, (6,), generator=g)
    expected = F.cross_entropy(logits, labels, label_smoothing=smoothing)
    assert Objective("ce", smoothing)(logits, labels) == pytest.approx(float(expected), rel=1e-6)


def test_low_precision_logits_are_scored_in_float32():
    logits, labels = torch.randn(4, 3).bfloat16(), torch.tensor([0, 1, 2, 0])
    assert Objective("ce")(logits, labels).dtype == torch.float32


def test_unknown_loss_is_a_train_error():
    with pytest.raises(TrainError, match="unknown loss 'mse'"):
        Objective("mse")
