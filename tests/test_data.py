"""Datasets, the sharded batch sampler, PCA lighting."""
import pytest
import torch

from bnn_helpers.config import TrainError, load_config
from bnn_helpers.data import (IMAGENET_PCA_EIGVAL, IMAGENET_PCA_EIGVEC, Lighting,
                              ShardedBatchSampler, build_datasets, load_digits_tensors)


def test_digits_split_is_fixed_real_and_32px():
    (xt, yt), (xv, yv) = load_digits_tensors()
    assert xt.shape == (1437, 3, 32, 32) and xv.shape == (360, 3, 32, 32)
    assert set(yt.tolist()) == set(range(10))
    (xt2, _), _ = load_digits_tensors()
    assert torch.equal(xt, xt2)
    assert abs(float(xt.mean())) < 1e-4 and abs(float(xt.std()) - 1) < 1e-3


@pytest.mark.parametrize("world", [2, 4])
def test_shards_cover_the_single_process_batches(world):
    single = list(ShardedBatchSampler(100, 16, shuffle=True, seed=3))
    shards = [list(ShardedBatchSampler(100, 16, r, world, shuffle=True, seed=3)) for r in range(world)]
    assert len(single) == 6 and all(len(s) == 6 for s in shards)
    for b, batch in enumerate(single):
        assert sorted(i for s in shards for i in s[b]) == sorted(batch)
    val = [list(ShardedBatchSampler(10, 4, r, world, shuffle=False, drop_last=False)) for r in range(world)]
    assert sorted(i for v in val for batch in v for i in batch) == list(range(10))


def test_sampler_order_depends_on_epoch_and_skips_consumed_batches():
    s = ShardedBatchSampler(50, 10, seed=0)
    s.set_epoch(1)
    e1 = list(s)
    s.set_epoch(2)
    assert list(s) != e1
    s.set_epoch(1, start_batch=2)
    assert list(s) == e1[2:] and len(s) == 3
    with pytest.raises(TrainError, match="divisible"):
        ShardedBatchSampler(50, 10, 0, 3)


def test_lighting_adds_an_eigenvector_combination():
    torch.manual_seed(0)
    img = torch.rand(3, 4, 4)
    out = Lighting(0.1)(img)
    shift = (out - img)[:, 0, 0]
    assert torch.allclose(out - img, shift.view(3, 1, 1).expand_as(img), atol=1e-6)
    coeffs = torch.linalg.solve(torch.tensor(IMAGENET_PCA_EIGVEC), shift) / torch.tensor(IMAGENET_PCA_EIGVAL)
    assert coeffs.abs().max() < 1.0  # alpha ~ N(0, 0.1)
    assert torch.equal(Lighting(0.0)(img), img)


def test_cifar_offline_error_is_one_clear_line(tmp_path):
    cfg = load_config(None, {"dataset": "cifar10", "data_dir": str(tmp_path), "download": False})
    with pytest.raises(TrainError, match="not found under"):
        build_datasets(cfg)


def test_write_image_folder_is_an_imagenet_layout_of_real_jpegs(tmp_path):
    from PIL import Image

    from bnn_helpers.data import pipeline_images_per_second, write_image_folder

    root = write_image_folder(tmp_path / "demo", train_per_class=3, val_per_class=2, size=40, classes=4)
    assert root == tmp_path / "demo"
    for split, n in (("train", 3), ("val", 2)):
        folders = sorted(p.name for p in (root / split).iterdir())
        assert folders == [f"digit_{k}" for k in range(4)]
        assert all(len(list((root / split / f).glob("*.jpg"))) == n for f in folders)
    # no digit image is in both splits
    names = {split: {p.name for p in (root / split).rglob("*.jpg")} for split in ("train", "val")}
    assert not names["train"] & names["val"]
    image = Image.open(next((root / "train" / "digit_0").glob("*.jpg")))
    assert image.format == "JPEG" and image.size == (40, 40) and image.mode == "RGB"
    # the same seed writes the same bytes
    again = write_image_folder(tmp_path / "again", 3, 2, size=40, classes=4)
    first = sorted((root / "val").rglob("*.jpg"))
    assert [p.read_bytes() for p in first] == [(again / p.relative_to(root)).read_bytes() for p in first]
    big = write_image_folder(tmp_path / "big", 1, 1, size=(500, 375), classes=1)
    assert Image.open(next((big / "train" / "digit_0").glob("*.jpg"))).size == (500, 375)
    with pytest.raises(ValueError, match="does not fit"):
        write_image_folder(tmp_path / "huge", 1, 1, size=(700, 500), classes=1)

    cfg = load_config(None, {"dataset": "folder", "data_dir": str(root), "image_size": 32, "val_resize": 36})
    train, val, classes = build_datasets(cfg)
    assert classes == 4 and len(train) == 12 and len(val) == 8
    threads = torch.get_num_threads()
    assert pipeline_images_per_second(train, images=4) > 0
    assert torch.get_num_threads() == threads   # restored
