"""Model building and checkpoint I/O, and the teacher loaded from a checkpoint."""
import random

import numpy as np
import pytest
import timm
import torch

from bnn_helpers.checkpoints import (atomic_save, build_model, find_checkpoint, load_weights_only,
                                     read_checkpoint, rng_state, set_rng_state,
                                     strip_data_parallel_prefix)
from bnn_helpers.config import CorruptCheckpointError, TrainError, load_config
from bnn_helpers.models import SmallTeacherCNN, list_models
from bnn_helpers.teacher import load_teacher


def test_float_cnn_is_a_registered_timm_model_and_not_a_binary_one():
    model = timm.create_model("float_cnn", num_classes=3, width_mult=0.5)
    assert isinstance(model, SmallTeacherCNN) and model.get_classifier().out_features == 3
    assert "float_cnn" not in list_models()
    assert isinstance(build_model(load_config(None, {"model": "float_cnn"}), False, 3), SmallTeacherCNN)


def test_build_model_names_unknown_models():
    with pytest.raises(TrainError, match="unknown model 'reactnet_z'"):
        build_model(load_config(None, {"model": "reactnet_z"}), False, 10)


def test_atomic_save_round_trip_and_no_temporary_left(tmp_path):
    path = tmp_path / "x.pth"
    atomic_save({"a": torch.arange(3)}, path)
    atomic_save({"a": torch.arange(4)}, path)
    assert torch.equal(load_weights_only(path)["a"], torch.arange(4))
    assert [p.name for p in tmp_path.iterdir()] == ["x.pth"]


def test_damaged_and_foreign_files_are_one_line(tmp_path):
    path = tmp_path / "x.pth"
    atomic_save({"model": {"w": torch.zeros(1000)}}, path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError):
        load_weights_only(path)
    atomic_save({"w": torch.zeros(1)}, path)
    with pytest.raises(TrainError, match="not a checkpoint of the bnn_helpers engine"):
        read_checkpoint(path)


def test_find_checkpoint_prefers_step2_and_names_what_is_missing(tmp_path):
    for step in ("step1", "step2"):
        (tmp_path / step).mkdir()
        atomic_save({}, tmp_path / step / "best.pth")
    assert find_checkpoint(tmp_path) == tmp_path / "step2" / "best.pth"
    assert find_checkpoint(tmp_path, prefer=("step1",)) == tmp_path / "step1" / "best.pth"
    with pytest.raises(TrainError, match="holds no step2/step1/last.pth"):
        find_checkpoint(tmp_path, which="last")
    with pytest.raises(TrainError, match="not found"):
        find_checkpoint(tmp_path / "missing")


def test_rng_state_survives_a_weights_only_round_trip(tmp_path):
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    atomic_save({"rng": rng_state()}, tmp_path / "r.pth")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(load_weights_only(tmp_path / "r.pth")["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]


def test_strip_data_parallel_prefix_copies():
    state = {"module.fc.weight": torch.zeros(1)}
    assert list(strip_data_parallel_prefix(state)) == ["fc.weight"] and list(state) == ["module.fc.weight"]


def test_teacher_from_a_plain_data_parallel_state_dict(tmp_path):
    net = timm.create_model("resnet10t", pretrained=False, num_classes=4)
    atomic_save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}},
                tmp_path / "t.pth")
    cfg = load_config(None, {"teacher": "resnet10t", "teacher_checkpoint": str(tmp_path / "t.pth")})
    teacher = load_teacher(cfg, num_classes=4)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(teacher(x), net.eval()(x))
    with pytest.raises(TrainError, match="does not fit"):
        load_teacher(cfg, num_classes=5)


def test_initial_conv_weights_depend_on_the_seed_not_on_bn(tmp_path):
    import yaml

    from bnn_helpers.checkpoints import initial_conv_weights
    from bnn_helpers.config import load_config

    for mode in ("bn", "none"):
        cfg = load_config({"model": f"reactnet_a_{mode}", "width_mult": 0.25, "dataset": "digits"})
        (tmp_path / mode).mkdir()
        (tmp_path / mode / "config.yaml").write_text(yaml.safe_dump(cfg))
    bn, none = (initial_conv_weights(tmp_path / m, seed=0, num_classes=10) for m in ("bn", "none"))
    assert len(bn) == len(none) > 10 and all(w.dim() == 4 for w in bn)
    assert all(map(torch.equal, bn, none))                      # same seed: the same convolutions
    other = initial_conv_weights(tmp_path / "none", seed=1, num_classes=10)
    assert not torch.equal(bn[0], other[0])
