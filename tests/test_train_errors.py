"""Every bad input gives one `error: ...` line, exit status 2, and loses nothing."""
import pytest
import torch

from bnn_helpers.config import TrainError
from bnn_helpers.train import main, run

torch.set_num_threads(1)


def cli(tmp_path, *args):
    base = ["--output-dir", str(tmp_path / "runs"), "--progress", "none", "--device", "cpu",
            "--workers", "0", "--width-mult", "0.25", "--threads", "1"]
    return main(base + list(args))


def one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("args, expected", [
    (["--dataset", "folder", "--data-dir", "/nonexistent/data"], "not found"),
    (["--model", "reactnet_z"], "unknown model"),
    (["--dataset", "mnist"], "unknown dataset"),
    (["--loss", "mse"], "unknown loss"),
    (["--step", "3"], "unknown step"),
    (["--epochs", "0"], "epochs must be > 0"),
    (["--lr", "-1e-3"], "lr must be > 0"),
    (["--batch-size", "-4"], "batch_size must be > 0"),
    (["--learning-rate", "1e-3"], "unknown config key"),
    (["--device", "cuda"], "no CUDA GPU"),
    (["--config", "/nonexistent.yaml"], "not found"),
])
def test_bad_arguments(tmp_path, capsys, args, expected):
    if args[:2] == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert cli(tmp_path, *args) == 2
    assert expected in one_error_line(capsys)


def test_empty_and_misshaped_data_dirs(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli(tmp_path, "--dataset", "folder", "--data-dir", str(empty)) == 2
    assert "is empty" in one_error_line(capsys)
    flat = tmp_path / "flat" / "train"
    flat.mkdir(parents=True)
    (flat / "a.png").write_bytes(b"")
    assert cli(tmp_path, "--dataset", "folder", "--data-dir", str(flat.parent)) == 2
    assert "class sub-folders" in one_error_line(capsys)


def test_unreadable_image_is_named(tmp_path, capsys, make_image_folder):
    data = make_image_folder(tmp_path / "data", bad="broken.jpg")
    assert cli(tmp_path, "--dataset", "folder", "--data-dir", str(data), "--image-size", "32",
               "--batch-size", "8", "--epochs", "1", "--augment", "false") == 2
    assert "broken.jpg" in one_error_line(capsys)


def test_step2_without_step1_and_class_mismatch(tmp_path, capsys, tiny_run, make_image_folder):
    assert cli(tmp_path, "--step", "2", "--name", "lonely") == 2
    assert "step 2 needs step 1" in one_error_line(capsys)
    digits = run(None, **dict(tiny_run, dataset="digits", step="1", epochs=1, max_train_batches=1,
                              output_dir=str(tmp_path / "runs"), name="digits10"))
    data = make_image_folder(tmp_path / "data")
    assert cli(tmp_path, "--dataset", "folder", "--data-dir", str(data), "--image-size", "32",
               "--step", "2", "--step1-checkpoint", str(digits), "--batch-size", "8") == 2
    assert "10 classes but the dataset has 3" in one_error_line(capsys)


def test_teacher_unavailable_offline(tmp_path, capsys):
    assert cli(tmp_path, "--loss", "kd", "--teacher", "resnet18", "--epochs", "1") == 2
    line = one_error_line(capsys)
    assert "resnet18" in line and ("unavailable" in line or "predicts" in line)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, tiny_run):
    def poison(trainer, step, epoch, batch):
        if epoch == 2 and batch == 1:
            model = trainer.current_model
            with torch.no_grad():
                model.get_classifier().weight.fill_(float("nan"))

    cfg = dict(tiny_run, dataset="digits", step="1", epochs=3, output_dir=str(tmp_path), name="nan")
    with pytest.raises(TrainError, match="non-finite"):
        run(None, on_batch_end=poison, **cfg)
    ckpt = torch.load(tmp_path / "nan" / "step1" / "last.pth", weights_only=True)
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_existing_run_is_not_overwritten(tmp_path, capsys):
    cfg = ["--dataset", "digits", "--step", "1", "--epochs", "1", "--max-train-batches", "1",
           "--batch-size", "16", "--name", "keep"]
    assert cli(tmp_path, *cfg) == 0
    capsys.readouterr()
    assert cli(tmp_path, *cfg) == 2
    assert "--resume" in one_error_line(capsys)


def test_config_file_of_random_bytes(tmp_path, capsys):
    path = tmp_path / "random.yaml"
    path.write_bytes(bytes(range(128, 256)) * 8)  # no valid UTF-8 start byte
    assert cli(tmp_path, "--config", str(path)) == 2
    assert f"config file '{path}' is not UTF-8 text" in one_error_line(capsys)


@pytest.mark.parametrize("size, expected", [
    (16, "blocks[11] gets a 1x1 map, too small to stride; its smallest input is 31 px, "
         "the nearest size that fits is 31"),
    (225, "gets an odd 113x113 map, which its conv and pooling shortcut halve differently "
          "(56 vs 57); its smallest input is 31 px, the nearest sizes that fit are 224 and 255"),
])
def test_image_size_is_checked_before_the_run_dir_is_made(tmp_path, capsys, size, expected,
                                                          make_image_folder):
    data = make_image_folder(tmp_path / "data")
    assert cli(tmp_path, "--dataset", "folder", "--data-dir", str(data), "--image-size", str(size),
               "--augment", "false", "--batch-size", "8") == 2
    line = one_error_line(capsys)
    assert f"--image-size {size} does not fit reactnet_a_bf: " in line and expected in line
    assert not (tmp_path / "runs").exists()


def test_batchnorm_with_one_image_per_process(tmp_path, capsys):
    assert cli(tmp_path, "--model", "reactnet_a_bn", "--batch-size", "1", "--epochs", "1") == 2
    line = one_error_line(capsys)
    assert "reactnet_a_bn has BatchNorm layers that see a 1x1 map at 32 px" in line
    assert "use --batch-size 2 or more" in line
    assert not (tmp_path / "runs").exists()


def test_class_folder_mismatch_names_the_folders(tmp_path, capsys, make_image_folder):
    data = make_image_folder(tmp_path / "data")
    (data / "val" / "class2").rename(data / "val" / "class9")
    assert cli(tmp_path, "--dataset", "folder", "--data-dir", str(data), "--image-size", "32",
               "--batch-size", "8") == 2
    line = one_error_line(capsys)
    assert f"{data / 'train'} and {data / 'val'} must hold the same class folders" in line
    assert "only in train/: class2; only in val/: class9" in line


def test_load_published_checkpoint_errors_are_the_packages(tmp_path):
    import numpy as np

    from bnn_helpers.config import CorruptCheckpointError, RefusedCheckpointError
    from bnn_helpers.convert import load_published_checkpoint, to_published_state_dict
    from bnn_helpers.models import create_model

    model = create_model("reactnet_a_bf", num_classes=10, width_mult=0.25)
    torch.save({"state_dict": to_published_state_dict(model), "acc": np.zeros(2)}, tmp_path / "np.pth")
    with pytest.raises(RefusedCheckpointError, match=r"holds numpy\.(_)?core\.multiarray\._reconstruct,"):
        load_published_checkpoint(model, tmp_path / "np.pth")
    torch.save({"state_dict": to_published_state_dict(model)}, tmp_path / "good.pth")
    data = (tmp_path / "good.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 3])
    with pytest.raises(CorruptCheckpointError, match=r"cut\.pth is corrupt \(truncated or damaged"):
        load_published_checkpoint(model, tmp_path / "cut.pth")
    assert issubclass(RefusedCheckpointError, TrainError) and issubclass(CorruptCheckpointError, TrainError)
