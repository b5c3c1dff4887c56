"""Notebook launcher: exact torchrun / srun commands, validation before start, a real run."""
import pytest

from bnn_helpers.config import TrainError, load_config, parse_cli_overrides
from bnn_helpers.launch import launch


def test_dry_run_builds_torchrun_commands():
    cmd = launch("configs/imagenet/reactnet_a_bf.yaml", {"data_dir": "/data/imagenet", "amp": "bf16"},
                 nproc=8, dry_run=True)
    assert cmd.startswith("torchrun --nproc_per_node=8 --standalone -m bnn_helpers.train")
    assert cmd.endswith("--config configs/imagenet/reactnet_a_bf.yaml --data-dir /data/imagenet --amp bf16")
    multi = launch("configs/imagenet/reactnet_a_bf.yaml", {"data_dir": "/d"}, nproc=8, nnodes=4,
                   rdzv_endpoint="node0:29500", dry_run=True)
    assert "--nnodes=4" in multi and "--rdzv_endpoint=node0:29500" in multi
    slurm = launch("configs/imagenet/reactnet_a_bf.yaml", {"data_dir": "/d"}, nproc=8, nnodes=4,
                   dry_run=True, slurm=True)
    assert slurm.startswith("srun --nodes=4 --ntasks-per-node=1 --gpus-per-node=8 bash -c ")
    assert "$SLURM_JOB_ID" in slurm and "--nproc_per_node=8" in slurm


def test_bad_config_fails_before_starting():
    with pytest.raises(TrainError, match="unknown config key"):
        launch("configs/digits/reactnet_a_bf.yaml", {"epoch": 3}, dry_run=True)
    with pytest.raises(TrainError, match="multi-node"):
        launch("configs/digits/reactnet_a_bf.yaml", nnodes=2, dry_run=True)


def test_all_shipped_configs_resolve():
    from pathlib import Path

    for path in sorted(p for p in Path("configs").rglob("*.yaml") if "sweeps" not in p.parts):
        cfg = load_config(path, {"data_dir": "/d"} if "imagenet" in str(path) else None)
        assert cfg["epochs"] > 0, path
    published = load_config("configs/imagenet/reactnet_a_none.yaml")
    assert (published["lr"], published["batch_size"], published["epochs"]) == (5e-4, 256, 256)
    assert published["teacher"] == "dm_nfnet_f0" and published["agc_clip_factor"] == 0.02
    assert parse_cli_overrides(["--track-stats", "--lr=1e-3"]) == {"track_stats": "true", "lr": "1e-3"}


def test_launch_runs_torchrun_and_returns_the_run_dir(tmp_path, capfd):
    run_dir = launch("configs/digits/reactnet_a_bf.yaml",
                     {"output_dir": str(tmp_path), "epochs": 1, "step": 1, "max_train_batches": 1,
                      "batch_size": 16, "lr_schedule": "linear", "progress": "log", "threads": 1,
                      "track_stats": True, "stats_every": 1})
    assert run_dir == tmp_path / "digits_reactnet_a_bf"
    assert (run_dir / "step1" / "best.pth").is_file()
    header = (run_dir / "stats.csv").read_text().splitlines()[0].split(",")
    assert {"step", "epoch", "iteration", "flip_ratio", "agc_clip_share"} <= set(header)
    assert "[step 1] epoch 1/1" in capfd.readouterr().out


def test_sbatch_script_wraps_the_srun_line_with_the_resume_signal():
    from bnn_helpers.launch import sbatch_script

    script = sbatch_script("srun --nodes=2 bash -c 'torchrun ...'", nodes=2, gpus_per_node=4, hours=12)
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash" and lines[-1] == "srun --nodes=2 bash -c 'torchrun ...'"
    assert "#SBATCH --nodes=2" in lines and "#SBATCH --gpus-per-node=4" in lines
    assert any(l.startswith("#SBATCH --time=12:00:00") for l in lines)
    assert any(l.startswith("#SBATCH --signal=TERM@300") for l in lines)    # the engine saves last.pth on SIGTERM
    with pytest.raises(ValueError, match="nodes"):
        sbatch_script("srun", nodes=0)


def test_gpu_commands_builds_every_launch_line_from_the_repo_root(tmp_path, monkeypatch):
    from bnn_helpers.launch import gpu_commands

    from pathlib import Path

    monkeypatch.chdir(tmp_path)   # the config path is resolved against root, not the cwd
    commands = gpu_commands("configs/imagenet/reactnet_a_bf.yaml", {"data_dir": "/d", "amp": "bf16"},
                            root=Path(__file__).resolve().parents[1])
    one, eight, multi, slurm, resume = commands.values()
    assert list(commands)[1:3] == ["8 GPUs, one machine", "4 machines x 8 GPUs (run on every machine)"]
    assert "--nproc_per_node=1 --standalone" in one and "--nproc_per_node=8 --standalone" in eight
    assert "--nnodes=4" in multi and "--rdzv_endpoint=node0:29500" in multi
    assert slurm.startswith("srun --nodes=4") and "--resume" not in slurm
    assert resume.startswith("srun --nodes=4") and resume.endswith("--resume true'")
    assert all("--config configs/imagenet/reactnet_a_bf.yaml --data-dir /d --amp bf16" in c for c in commands.values())
