"""Training engine end to end on CPU: both steps, KD, AGC, resume, DDP, run-directory layout."""
import csv
import math
import os
import signal

import pytest
import torch
import torch.multiprocessing as mp

from bnn_helpers.data import load_digits_tensors
from bnn_helpers.diagnostics import compare_predictions
from bnn_helpers.train import SUMMARY_COLUMNS, TrainError, load_trained, run

torch.set_num_threads(1)  # 2 busy cores: more threads only contend

def read_summary(run_dir):
    with open(run_dir / "summary.csv", newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_two_steps_with_kd_teacher_and_agc(tmp_path, tiny_run, make_image_folder):
    data = make_image_folder(tmp_path / "data")
    common = dict(tiny_run, dataset="folder", data_dir=str(data), image_size=32, batch_size=8,
                  output_dir=str(tmp_path / "runs"))
    teacher_dir = run(None, model="float_cnn", name="teacher", epochs=2, agc=False, **common)
    assert (teacher_dir / "step1" / "best.pth").is_file()
    assert not (teacher_dir / "step2").exists()  # a real-valued model has one step

    run_dir = run(None, model="reactnet_a_bf", name="student", epochs=2, loss="kd",
                  teacher_checkpoint=str(teacher_dir), agc=True, **common)
    columns, rows = read_summary(run_dir)
    assert columns == SUMMARY_COLUMNS
    assert [(int(r["step"]), int(r["epoch"])) for r in rows] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    for r in rows:
        assert math.isfinite(float(r["train_loss"])) and 0 <= float(r["val_top1"]) <= 100
        assert 0 <= float(r["agc_clip_share"]) <= 1 and float(r["images_per_s"]) > 0
    for step in (1, 2):
        for which in ("last", "best"):
            ckpt = torch.load(run_dir / f"step{step}" / f"{which}.pth", weights_only=True)
            assert ckpt["step"] == step and ckpt["num_classes"] == 3
            assert ckpt["config"]["loss"] == "kd"
    assert (run_dir / "config.yaml").read_text().count("teacher_checkpoint") == 1
    # Step 2 started from step 1's best weights: its first epoch's lr equals step 1's.
    assert rows[2]["lr"] == rows[0]["lr"]

    # load_trained rebuilds each step's network from the run directory alone.
    from bnn_helpers.layers import is_binary_conv

    step2 = load_trained(run_dir)
    best2 = torch.load(run_dir / "step2" / "best.pth", weights_only=True)["model"]
    assert not step2.training and any(is_binary_conv(m) for m in step2.modules())
    assert all(torch.equal(step2.state_dict()[k], v) for k, v in best2.items())
    step1 = load_trained(run_dir, step=1, which="last")
    assert not any(is_binary_conv(m) for m in step1.modules())
    binarized = load_trained(run_dir, step=1, which="last", binary_weights=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # same latent weights, binary convs: a different function
        assert not torch.allclose(binarized(x), step1(x))
    assert type(load_trained(teacher_dir)).__name__ == "SmallTeacherCNN"
    torch.save({"weight": torch.zeros(1)}, tmp_path / "plain.pth")
    with pytest.raises(TrainError, match="not a checkpoint of the bnn_helpers engine"):
        load_trained(tmp_path / "plain.pth")
    with pytest.raises(TrainError, match="holds no step2/best.pth"):
        load_trained(teacher_dir, step=2)


def test_resume_after_sigterm_matches_uninterrupted(tmp_path, tiny_run):
    cfg = dict(tiny_run, dataset="digits", model="reactnet_a_bf", epochs=1, eval_batch_size=360,
               output_dir=str(tmp_path))
    straight = run(None, name="straight", **cfg)

    def interrupt(trainer, step, epoch, batch):
        if (step, epoch, batch) == (1, 1, 2):
            signal.raise_signal(signal.SIGTERM)  # the engine's handler asks for a clean stop

    stopped = run(None, name="resumed", on_batch_end=interrupt, **cfg)
    ckpt = torch.load(stopped / "step1" / "last.pth", weights_only=True)
    assert (ckpt["epoch"], ckpt["batch_in_epoch"]) == (0, 2)
    assert not (stopped / "step2").exists()
    run(None, name="resumed", resume=True, **cfg)

    a = torch.load(straight / "step2" / "last.pth", weights_only=True)["model"]
    b = torch.load(stopped / "step2" / "last.pth", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    _, rows_a = read_summary(straight)
    _, rows_b = read_summary(stopped)
    assert [r["train_loss"] for r in rows_a] == [r["train_loss"] for r in rows_b]
    assert [r["val_top1"] for r in rows_a] == [r["val_top1"] for r in rows_b]


def _ddp_worker(rank, world, port, cfg):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    run(None, **cfg)


def test_ddp_two_gloo_processes_match_one_process(tmp_path, tiny_run):
    # One SGD update: the first forward sees identical weights in both runs, so only the
    # gradient's summation order differs (16 samples vs 2 x 8 all-reduced), and the weights
    # must agree to rounding. A second update would run a sign network on weights that differ
    # by rounding: one sign flipped near its threshold changes the gradients, and the runs
    # diverge for a reason that has nothing to do with DDP (seen: head weights 5 % apart).
    # SGD: Adam's update is ~lr*sign(g) where g is at rounding-noise level, which would turn
    # the different summation order of 2 processes into lr-sized weight differences.
    cfg = dict(tiny_run, dataset="digits", model="reactnet_a_bf", epochs=1, step="1", batch_size=16,
               max_train_batches=1, optimizer="sgd", lr=0.05, eval_batch_size=360,
               output_dir=str(tmp_path))
    single = run(None, name="single", **cfg)
    port = 29000 + os.getpid() % 1000
    mp.start_processes(_ddp_worker, args=(2, port, dict(cfg, name="ddp")), nprocs=2,
                       start_method="spawn")
    a = torch.load(single / "step1" / "last.pth", weights_only=True)["model"]
    b = torch.load(tmp_path / "ddp" / "step1" / "last.pth", weights_only=True)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    _, rows_a = read_summary(single)
    _, rows_b = read_summary(tmp_path / "ddp")
    assert float(rows_a[0]["train_loss"]) == pytest.approx(float(rows_b[0]["train_loss"]), rel=1e-4)
    # The two runs' val top-1 are not compared: their weights differ by rounding, and a sign
    # network near chance flips predictions on rounding-level differences (8.06 vs 9.17 % on
    # another CPU). What DDP must get right is its sharded evaluation: each run's reported
    # top-1 equals an in-process evaluation of its own weights, except for samples whose top-2
    # margin rounding can decide (batch 360 vs 2 x 180 may change the summation order; 1e-4 of
    # the logit scale is ~1000x float32 rounding).
    _, (x_val, y_val) = load_digits_tensors()
    for run_dir, rows in ((single, rows_a), (tmp_path / "ddp", rows_b)):
        with torch.no_grad():
            logits = load_trained(run_dir, step=1, which="last")(x_val)
        check = compare_predictions(logits, logits, 1e-4 * float(logits.abs().max()), y_val)
        assert float(rows[0]["val_top1"]) == pytest.approx(check["top-1 reference %"],
                                                           abs=check["accuracy_tolerance"] + 1e-9)


def test_run_or_load_trains_once_then_reuses_and_retrains_on_new_settings(tmp_path, tiny_run):
    from bnn_helpers.train import finished_run, run_or_load

    common = dict(tiny_run, dataset="digits", model="reactnet_a_bf", step="both", epochs=1,
                  max_train_batches=1, eval_batch_size=360, run_dir=str(tmp_path / "cached"))
    run_dir = run_or_load(None, **common)
    best = run_dir / "step2" / "best.pth"
    stamp = best.stat().st_mtime_ns
    assert run_or_load(None, **{**common, "progress": "log", "threads": 2}) == run_dir  # driving keys ignored
    assert best.stat().st_mtime_ns == stamp                                   # not retrained
    from bnn_helpers.config import load_config

    assert finished_run(run_dir, load_config(None, common))
    assert not finished_run(run_dir, load_config(None, {**common, "seed": 7}))
    assert not finished_run(run_dir, load_config(None, {**common, "epochs": 2}))
    (run_dir / "step2" / "best.pth").unlink()                                 # unfinished: retrain
    assert not finished_run(run_dir, load_config(None, common))
    run_or_load(None, **common)
    assert best.is_file()
    run_or_load(None, **{**common, "seed": 7})                                # new settings: replaced
    assert finished_run(run_dir, load_config(None, {**common, "seed": 7}))


def _stop_on_rank0_at_batch1(trainer, step, epoch, batch):
    trainer.check_every = 3           # as on GPUs: the processes agree only every 3rd batch
    if trainer.rank == 0 and batch == 1:
        trainer.request_stop()        # only one process gets the signal


def _ddp_stop_worker(rank, world, port, cfg):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    run(None, on_batch_end=_stop_on_rank0_at_batch1, **cfg)


@pytest.mark.timeout(240)
def test_ddp_stop_on_one_process_is_agreed_at_the_next_check(tmp_path, tiny_run):
    # A stop seen by one process must stop all of them at the same batch (else the other
    # process would wait forever in its next all-reduce): the first agreed batch is 3.
    cfg = dict(tiny_run, dataset="digits", model="reactnet_a_bf", epochs=1, step="1", batch_size=16,
               max_train_batches=5, eval_batch_size=360, output_dir=str(tmp_path), name="ddp_stop")
    port = 29000 + (os.getpid() + 500) % 1000
    mp.start_processes(_ddp_stop_worker, args=(2, port, cfg), nprocs=2, start_method="spawn")
    ckpt = torch.load(tmp_path / "ddp_stop" / "step1" / "last.pth", weights_only=True)
    assert (ckpt["epoch"], ckpt["batch_in_epoch"]) == (0, 3)
