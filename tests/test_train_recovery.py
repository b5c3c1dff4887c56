"""Nothing lost when training goes wrong (issue #20): divergence, resumes with other settings,
write errors (disk full), corrupt checkpoints. Every case: one `error:` line, exit 2, and the
checkpoints, summary rows and config.yaml of the good epochs stay as they were."""
import csv
import errno
import hashlib
import math
import os
import shutil
import subprocess

import pytest
import torch

from bnn_helpers.config import TrainError, load_config
from bnn_helpers.train import finished_run, main, read_checkpoint, run, run_or_load, stop_and_resume

torch.set_num_threads(1)


@pytest.fixture
def quick(tiny_run):
    """The smallest engine runs: the tiny real-valued CNN on bundled digits, 2 batches an
    epoch, validation in one batch."""
    return dict(tiny_run, model="float_cnn", dataset="digits", step="1", max_train_batches=2,
                eval_batch_size=360)


def quick_cli(run_dir, *args):
    flags = ["--run-dir", str(run_dir), "--progress", "none", "--device", "cpu", "--workers", "0",
             "--threads", "1", "--model", "float_cnn", "--dataset", "digits", "--step", "1",
             "--batch-size", "16", "--max-train-batches", "2", "--eval-batch-size", "360",
             "--width-mult", "0.25", "--lr-schedule", "linear"]
    return main(flags + [str(a) for a in args])


def one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def fingerprint(run_dir):
    """Every file under run_dir with the hash of its bytes."""
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


def summary_keys(run_dir):
    with open(run_dir / "summary.csv", newline="") as f:
        return [(int(r["step"]), int(r["epoch"])) for r in csv.DictReader(f)]


def assert_finite_checkpoint(path, epoch):
    ckpt = read_checkpoint(path)
    assert ckpt["epoch"] == epoch
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def no_temporaries(run_dir):
    return not [p for p in run_dir.rglob("*") if ".tmp" in p.name]


@pytest.fixture
def finished(tmp_path, quick):
    """A finished 1-epoch run (quick settings, lr 5e-4)."""
    run_dir = tmp_path / "done"
    run(None, **dict(quick, epochs=1, run_dir=str(run_dir)))
    return run_dir


# --------------------------------------------------------------------------- divergence
def test_weights_diverged_in_the_epochs_last_update_replace_nothing(tmp_path, quick):
    """The last batch's loss is finite (computed before the update), the weights are not:
    validation must catch it before last.pth and best.pth are written."""
    def poison_last_update(trainer, step, epoch, batch):
        if epoch == 2 and batch == trainer.train_loader.sampler.num_batches():
            with torch.no_grad():
                trainer.current_model.get_classifier().weight.fill_(float("nan"))

    run_dir = tmp_path / "nan_end"
    with pytest.raises(TrainError) as info:
        run(None, on_batch_end=poison_last_update, **dict(quick, epochs=3, run_dir=str(run_dir)))
    message = str(info.value)
    assert "weights became non-finite" in message and "epoch 2 (its end)" in message
    assert f"Last good checkpoint: {run_dir / 'step1' / 'last.pth'} (epoch 1)" in message
    assert_finite_checkpoint(run_dir / "step1" / "last.pth", 1)
    assert_finite_checkpoint(run_dir / "step1" / "best.pth", 1)
    assert summary_keys(run_dir) == [(1, 1)]


@pytest.mark.parametrize("agc", [True, False])
def test_divergence_before_any_checkpoint_leaves_no_run_dir(tmp_path, agc, quick):
    def poison(trainer, step, epoch, batch):
        if (epoch, batch) == (1, 1):
            with torch.no_grad():
                trainer.current_model.get_classifier().weight.fill_(float("inf"))

    run_dir = tmp_path / "nan_first"
    with pytest.raises(TrainError) as info:
        run(None, on_batch_end=poison, **dict(quick, epochs=1, agc=agc, run_dir=str(run_dir)))
    message = str(info.value)
    assert "loss became non-finite in step 1, epoch 1, batch 2" in message
    assert "Last good checkpoint: none of step 1 yet; rerun with a lower --lr" in message
    assert ("--agc true" in message) != agc  # never "enable --agc" when it is on
    assert not run_dir.exists()  # not a directory holding only config.yaml


def test_huge_lr_is_stopped_with_one_line_and_nothing_saved(tmp_path, capsys):
    run_dir = tmp_path / "huge_lr"
    assert quick_cli(run_dir, "--model", "reactnet_a_bf", "--lr", "1e30", "--epochs", "2",
                     "--max-train-batches", "1") == 2
    line = one_error_line(capsys)
    assert "Last good checkpoint: none of step 1 yet" in line
    assert not run_dir.exists()


# --------------------------------------------------------------------------- resume settings
def test_resume_with_another_setting_is_refused_before_the_run_dir_changes(finished, capsys, quick):
    before = fingerprint(finished)
    cfg = load_config(None, dict(quick, epochs=1, run_dir=str(finished)))
    assert quick_cli(finished, "--epochs", "1", "--resume", "--width-mult", "0.5") == 2
    line = one_error_line(capsys)
    assert "width_mult 0.25, not width_mult 0.5" in line and "only epochs and lr" in line
    assert quick_cli(finished, "--epochs", "1", "--resume", "--optimizer", "sgd") == 2
    assert "optimizer 'adam', not optimizer 'sgd'" in one_error_line(capsys)
    assert fingerprint(finished) == before
    # The notebooks' cache still sees the finished run: reused, not retrained.
    assert finished_run(finished, cfg)
    assert run_or_load(None, **dict(quick, epochs=1, run_dir=str(finished))) == finished
    assert fingerprint(finished) == before
    # A resume of the finished run with the same settings (a run-only one changed) writes nothing.
    assert quick_cli(finished, "--epochs", "1", "--resume", "--log-every", "7") == 0
    assert fingerprint(finished) == before


def test_resume_applies_and_records_a_new_lr_and_more_epochs(finished, quick):
    run(None, **dict(quick, epochs=2, lr=2e-3, resume=True, run_dir=str(finished)))
    with open(finished / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["step"], r["epoch"]) for r in rows] == [("1", "1"), ("1", "2")]
    assert float(rows[0]["lr"]) == pytest.approx(5e-4)
    # linear schedule over the new 2 epochs: epoch 2 runs at lr * (1 - 1/2)
    assert float(rows[1]["lr"]) == pytest.approx(2e-3 * 0.5)
    with open(finished / "resume_changes.csv", newline="") as f:
        changes = {r["key"]: (r["step"], r["epoch"], r["before"], r["after"]) for r in csv.DictReader(f)}
    assert changes == {"epochs": ("1", "1", "1", "2"), "lr": ("1", "1", "0.0005", "0.002")}
    last = read_checkpoint(finished / "step1" / "last.pth")
    assert last["config"]["lr"] == 2e-3 and last["epoch"] == 2
    # Not the run a fresh config with these settings would give: the cache must retrain it.
    assert not finished_run(finished, load_config(None, dict(quick, epochs=2, lr=2e-3,
                                                             run_dir=str(finished))))


def test_a_resume_that_fails_leaves_config_and_record_untouched(finished, quick):
    before = fingerprint(finished)

    def poison(trainer, step, epoch, batch):
        with torch.no_grad():
            trainer.current_model.get_classifier().weight.fill_(float("nan"))

    with pytest.raises(TrainError, match=r"last\.pth \(epoch 1\); continue with --resume"):
        run(None, on_batch_end=poison, **dict(quick, epochs=2, lr=1e-2, resume=True,
                                              run_dir=str(finished)))
    assert fingerprint(finished) == before  # config.yaml still says lr 5e-4, epochs 1
    assert not (finished / "resume_changes.csv").exists()


def test_shortening_a_resumed_run_is_refused(tmp_path, capsys, quick):
    run_dir = tmp_path / "two"
    run(None, **dict(quick, epochs=2, run_dir=str(run_dir)))
    assert quick_cli(run_dir, "--resume", "--epochs", "1") == 2
    assert "--epochs must be at least 3" in one_error_line(capsys)


# --------------------------------------------------------------------------- write errors
def _fail_epoch2_saves(monkeypatch, how):
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("epoch") == 2:
            f.write(b"x" * 4096)  # a part of it reached the disk
            if how == "oserror":  # torch.save to a file object: the OSError is in the chain
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    if how == "runtime":  # torch.save to a path says only "unexpected pos": the free space tells
        usage = shutil.disk_usage("/")
        monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=1024))


@pytest.mark.parametrize("how", ["oserror", "runtime"])
def test_disk_full_is_one_line_and_keeps_the_previous_checkpoints(tmp_path, capsys, monkeypatch, how):
    run_dir = tmp_path / "full"
    assert quick_cli(run_dir, "--epochs", "1") == 0
    capsys.readouterr()
    before = fingerprint(run_dir)
    stale = run_dir / "step1" / f".last.pth.tmp{2**22 + 12345}"  # left by a killed process
    stale.write_bytes(b"partial")
    with monkeypatch.context() as patch:
        _fail_epoch2_saves(patch, how)
        assert quick_cli(run_dir, "--epochs", "2", "--resume") == 2
        line = one_error_line(capsys)
    assert f"cannot write {run_dir / 'step1' / 'last.pth'}: No space left on device" in line
    assert "continue with --resume; the earlier checkpoints are intact" in line
    assert no_temporaries(run_dir)  # also the stale one: a full disk stays full otherwise
    assert fingerprint(run_dir) == before
    assert_finite_checkpoint(run_dir / "step1" / "last.pth", 1)
    # Space freed: the resume continues and writes each epoch's row once.
    assert quick_cli(run_dir, "--epochs", "2", "--resume") == 0
    assert summary_keys(run_dir) == [(1, 1), (1, 2)]
    assert_finite_checkpoint(run_dir / "step1" / "last.pth", 2)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 4 MiB tmpfs (root with mount rights only; skipped elsewhere)."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def test_real_disk_full_on_a_tmpfs(small_tmpfs, quick):
    run_dir = small_tmpfs / "run"
    filler = small_tmpfs / "filler"
    ckpt_bytes = []

    def fill_disk(trainer, step, epoch, batch):
        if (epoch, batch) == (2, 1):  # leave less than one checkpoint free
            ckpt_bytes.append((run_dir / "step1" / "last.pth").stat().st_size)
            free = shutil.disk_usage(small_tmpfs).free
            with open(filler, "wb") as f:
                f.write(b"\0" * max(0, free - ckpt_bytes[0] // 2))

    cfg = dict(quick, epochs=2, run_dir=str(run_dir))
    with pytest.raises(TrainError, match="No space left on device") as info:
        run(None, on_batch_end=fill_disk, **cfg)
    assert str(run_dir / "step1" / "last.pth") in str(info.value)
    assert no_temporaries(run_dir)
    assert_finite_checkpoint(run_dir / "step1" / "last.pth", 1)
    assert summary_keys(run_dir) == [(1, 1)]
    filler.unlink()
    run(None, resume=True, **cfg)
    assert summary_keys(run_dir) == [(1, 1), (1, 2)] and no_temporaries(run_dir)


# --------------------------------------------------------------------------- corrupt checkpoints
def test_corrupt_last_is_named_and_best_offered_without_losing_anything(tmp_path, capsys):
    run_dir = tmp_path / "corrupt"
    assert quick_cli(run_dir, "--epochs", "2") == 0
    last = run_dir / "step1" / "last.pth"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])  # truncated, as by a full disk or a killed copy
    best_epoch = read_checkpoint(run_dir / "step1" / "best.pth")["epoch"]
    capsys.readouterr()
    before = fingerprint(run_dir)

    assert quick_cli(run_dir, "--epochs", "3", "--resume") == 2
    line = one_error_line(capsys)
    assert f"{last} is corrupt (truncated or damaged" in line
    assert f"intact {run_dir / 'step1' / 'best.pth'} (epoch {best_epoch}) with --resume --resume-from best" in line
    assert quick_cli(run_dir, "--epochs", "3") == 2  # a fresh start is refused, not duplicated
    assert "already holds step 1 checkpoints" in one_error_line(capsys)
    assert fingerprint(run_dir) == before

    assert quick_cli(run_dir, "--epochs", "3", "--resume", "--resume-from", "best") == 0
    assert (run_dir / "step1" / "last.pth.old").read_bytes() == data[: len(data) // 2]  # kept
    assert summary_keys(run_dir) == [(1, 1), (1, 2), (1, 3)]
    assert_finite_checkpoint(last, 3)


def test_resume_from_best_of_the_final_epoch_restores_last(tmp_path, quick):
    run_dir = tmp_path / "final"
    run(None, **dict(quick, epochs=1, run_dir=str(run_dir)))  # one epoch: best is the final one
    last = run_dir / "step1" / "last.pth"
    last.write_bytes(b"")
    run(None, **dict(quick, epochs=1, run_dir=str(run_dir), resume=True, resume_from="best"))
    assert_finite_checkpoint(last, 1)
    assert (run_dir / "step1" / "last.pth.old").read_bytes() == b""


def test_flipped_byte_is_corrupt_not_silently_loaded(finished):
    path = finished / "step1" / "best.pth"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the tensor data: torch.load alone would load it
    path.write_bytes(bytes(data))
    with pytest.raises(TrainError, match="is corrupt .*fails its CRC check"):
        read_checkpoint(path)



def test_stop_and_resume_ends_with_the_straight_runs_weights(tmp_path, quick):
    straight, resumed, stopped_at = stop_and_resume(None, dict(quick, epochs=2, output_dir=str(tmp_path)))
    a, b = (read_checkpoint(d / "step1" / "last.pth") for d in (straight, resumed))
    assert stopped_at == 1 and a["epoch"] == b["epoch"] == 2 and straight != resumed
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_stop_and_resume_can_stop_inside_an_epoch(tmp_path, quick):
    straight, resumed, stopped_at = stop_and_resume(None, dict(quick, epochs=2, output_dir=str(tmp_path)),
                                                    stop_at_batch=1)
    a, b = (read_checkpoint(d / "step1" / "last.pth") for d in (straight, resumed))
    assert stopped_at == 0 and a["epoch"] == b["epoch"] == 2   # stopped with no epoch finished
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
