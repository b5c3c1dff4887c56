"""Start the training engine from a notebook: as a torchrun subprocess, or in-process.

``launch(config, overrides, nproc, nnodes)`` builds the exact ``torchrun``
command, runs it while streaming its output into the notebook, and returns the
run directory. ``dry_run=True`` returns the command instead (``slurm=True``: the
``srun`` line to put in an sbatch script). For small CPU runs, skip the process
start-up and call :func:`bnn_helpers.train.run` (same code path)::

    from bnn_helpers.launch import launch
    print(launch("configs/imagenet/reactnet_a_bf.yaml", {"data_dir": "/data/imagenet"},
                 nproc=8, dry_run=True))
    run_dir = launch("configs/digits/reactnet_a_bf.yaml", {"epochs": 2})

Planning helpers: :func:`gpu_commands` (the commands
for 1 GPU, 8 GPUs, several nodes and SLURM at once), :func:`config_changes` (what a set of overrides changes in a
config, as a table), :func:`gpu_training_estimates` / :func:`format_estimates`
(images/s, time per epoch and loader processes per GPU, estimated from a FLOP
count and an assumed utilisation), :func:`training_flop_per_image` (that FLOP
count), :func:`loader_images_per_second` / :func:`loader_provisioning` (the
data-loading processes and CPUs a GPU needs), :func:`cpu_demo_overrides` (an
ImageNet config shrunk to a CPU run), :func:`sbatch_script`.
"""
from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import sys
import tempfile
from collections import deque
from pathlib import Path

import yaml

from .config import TrainError, load_config, run_dir_of

__all__ = ["launch", "build_command", "gpu_commands", "config_changes", "gpu_training_estimates", "format_estimates",
           "sbatch_script", "cpu_demo_overrides", "training_flop_per_image", "loader_images_per_second",
           "loader_provisioning"]


def _config_file(config) -> str:
    """A path torchrun can pass on: dicts are written to a temporary YAML file."""
    if isinstance(config, dict):
        fd, path = tempfile.mkstemp(prefix="bnn_config_", suffix=".yaml")
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(config, f, sort_keys=False)
        return path
    return str(config)


def _override_args(overrides: dict) -> list[str]:
    args = []
    for key, value in (overrides or {}).items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def build_command(config, overrides: dict | None = None, nproc: int = 1, nnodes: int = 1,
                  rdzv_endpoint: str | None = None, rdzv_id: str = "bnn_helpers",
                  python: str | None = None, slurm: bool = False) -> list[str] | str:
    """The torchrun argument list (``slurm=True``: one srun shell line).

    Without ``python`` the command starts with ``torchrun``, as a user types it on
    their cluster; ``launch`` passes this interpreter so the child uses the same
    environment.
    """
    if nproc < 1 or nnodes < 1:
        raise TrainError(f"nproc and nnodes must be >= 1, got {nproc} and {nnodes}")
    train_args = ["-m", "bnn_helpers.train", "--config", _config_file(config), *_override_args(overrides)]
    if slurm:
        # One srun task per node; each starts torchrun, which spawns nproc workers and
        # meets the others at the first node of the allocation.
        torchrun = (f"torchrun --nnodes=$SLURM_NNODES --nproc_per_node={nproc} "
                    f"--rdzv_id=$SLURM_JOB_ID --rdzv_backend=c10d "
                    f"--rdzv_endpoint=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n1):29500 "
                    + shlex.join(train_args))
        return (f"srun --nodes={nnodes} --ntasks-per-node=1 --gpus-per-node={nproc} "
                f"bash -c {shlex.quote(torchrun)}")
    cmd = [python, "-m", "torch.distributed.run"] if python else ["torchrun"]
    cmd.append(f"--nproc_per_node={nproc}")
    if nnodes == 1 and rdzv_endpoint is None:
        cmd.append("--standalone")
    else:
        if rdzv_endpoint is None:
            raise TrainError("multi-node runs need rdzv_endpoint='host:port' of the first node")
        cmd += [f"--nnodes={nnodes}", f"--rdzv_id={rdzv_id}", "--rdzv_backend=c10d",
                f"--rdzv_endpoint={rdzv_endpoint}"]
    return cmd + train_args


def launch(config, overrides: dict | None = None, nproc: int = 1, nnodes: int = 1,
           dry_run: bool = False, slurm: bool = False, rdzv_endpoint: str | None = None,
           env: dict | None = None) -> Path | str:
    """Run the engine under torchrun, streaming its output; return the run directory.

    ``dry_run=True`` returns the shell command instead of running it (with
    ``slurm=True`` the srun line for an sbatch script). Bad configs fail here,
    before any process starts.
    """
    cfg = load_config(config, overrides)  # validate now: one clear error, no subprocess
    cmd = build_command(config, overrides, nproc, nnodes, rdzv_endpoint, slurm=slurm,
                        python=None if dry_run else sys.executable)
    if dry_run:
        return cmd if isinstance(cmd, str) else shlex.join(cmd)
    if slurm:
        raise TrainError("slurm=True only builds the command: use dry_run=True and put it in sbatch")
    child_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    # torchrun sets 1 thread per process and prints a banner about it when this is unset;
    # saying it here keeps the output clean and shares the cores among the processes.
    child_env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // (nproc * nnodes or 1))))
    tail = deque(maxlen=20)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=child_env, bufsize=1) as proc:
        try:
            for line in proc.stdout:
                print(line, end="", flush=True)
                tail.append(line.rstrip())
        except KeyboardInterrupt:  # the notebook's stop button: let the engine save and exit
            proc.terminate()
            proc.wait()
            raise
    if proc.returncode != 0:
        errors = [line for line in tail if line.startswith("error:")]
        raise TrainError(errors[-1][len("error: "):] if errors else
                         f"training exited with status {proc.returncode}; see the output above")
    return run_dir_of(cfg)


@contextlib.contextmanager
def _working_directory(path):
    """Run the block in ``path``, then go back (``contextlib.chdir`` needs Python 3.11)."""
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def gpu_commands(config: str, overrides: dict | None = None, gpus_per_node: int = 8, nodes: int = 4,
                 rdzv_endpoint: str = "node0:29500", root: str | Path | None = None) -> dict[str, str]:
    """The launch commands for one GPU, one machine, several machines and SLURM, as text.

    ``config`` is a path relative to ``root`` (default: the repository root
    found from the current folder), the folder the commands are run from; each command is ``launch(config,
    overrides, ..., dry_run=True)``, so the config is validated first. Keys, in
    order: ``"one GPU"``, ``"{gpus_per_node} GPUs, one machine"``, ``"{nodes}
    machines x {gpus_per_node} GPUs (run on every machine)"``, ``"SLURM, {nodes}
    nodes x {gpus_per_node} GPUs (inside an sbatch script)"`` and ``"SLURM,
    continuing (--resume true)"``: the srun line of every later submission.
    """
    from .paths import repo_root

    def command(extra=None, **kwargs):
        return launch(config, {**(overrides or {}), **(extra or {})}, dry_run=True, **kwargs)

    g, n = gpus_per_node, nodes
    with _working_directory(root if root is not None else repo_root()):
        return {"one GPU": command(nproc=1),
                f"{g} GPUs, one machine": command(nproc=g),
                f"{n} machines x {g} GPUs (run on every machine)": command(nproc=g, nnodes=n,
                                                                           rdzv_endpoint=rdzv_endpoint),
                f"SLURM, {n} nodes x {g} GPUs (inside an sbatch script)": command(nproc=g, nnodes=n, slurm=True),
                "SLURM, continuing (--resume true)": command({"resume": True}, nproc=g, nnodes=n, slurm=True)}


def config_changes(cfg: dict, overrides: dict, before: str = "ImageNet run",
                   after: str = "CPU demo"):
    """The settings ``overrides`` changes in ``cfg``, side by side: a ``pandas.DataFrame``.

    One row per key of ``overrides`` that ``cfg`` knows (in the order of
    ``overrides``), columns ``before`` (the value in ``cfg``) and ``after``.
    Paths among the new values (keys ending in ``_dir`` or ``_checkpoint``) are
    shown through :func:`bnn_helpers.paths.display_path`, so a printed table
    carries no machine's absolute path.
    """
    import pandas as pd

    from .paths import display_path

    def shown(key, value):
        is_path = key.endswith(("_dir", "_checkpoint")) and isinstance(value, (str, os.PathLike))
        return display_path(value) if is_path else value

    keys = [k for k in overrides if k in cfg]
    return pd.DataFrame({before: [cfg[k] for k in keys], after: [shown(k, overrides[k]) for k in keys]},
                        index=pd.Index(keys, name="setting"))


def gpu_training_estimates(flop_per_image: float, peak_tflops: dict, utilisation=(0.10, 0.30),
                           train_images: int = 1_281_167, epochs: int = 512, gpus: int = 8,
                           loader_images_per_s: float | None = None):
    """Estimated training speed on GPUs from a FLOP count: *estimates*, not measurements.

    For each GPU of ``peak_tflops`` (``{label: datasheet dense peak in TFLOPS}``)
    and each assumed ``utilisation`` of that peak: images/s per GPU =
    peak × utilisation / ``flop_per_image``; minutes per epoch of
    ``train_images`` on one GPU; days for ``epochs`` epochs on ``gpus`` GPUs
    (ideal scaling); and, with ``loader_images_per_s`` (images/s of one
    data-loading process), the loader processes per GPU that rate needs.
    Returns a ``pandas.DataFrame``: index = GPU label, columns = (quantity,
    utilisation). :func:`format_estimates` prints it as ranges.
    """
    import pandas as pd

    if flop_per_image <= 0 or not peak_tflops or min(utilisation) <= 0:
        raise ValueError("give a positive flop_per_image, at least one GPU and utilisations > 0")
    days = f"days, {epochs} epochs, {gpus} GPUs"
    rows = {}
    for gpu, peak in peak_tflops.items():
        rate = {u: peak * 1e12 * u / flop_per_image for u in utilisation}
        row = {("peak TFLOPS", u): peak for u in utilisation}
        row.update({("images/s per GPU", u): r for u, r in rate.items()})
        row.update({("minutes per epoch, 1 GPU", u): train_images / r / 60 for u, r in rate.items()})
        row.update({(days, u): epochs * train_images / (gpus * r) / 86400 for u, r in rate.items()})
        if loader_images_per_s is not None:
            row.update({("loader processes per GPU", u): r / loader_images_per_s for u, r in rate.items()})
        rows[gpu] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.columns = pd.MultiIndex.from_tuples(table.columns, names=["quantity", "utilisation"])
    return table


def format_estimates(estimates):
    """:func:`gpu_training_estimates` as text: one "low–high" range per quantity and GPU.

    Images/s get thousands separators, days one decimal, the rest whole numbers;
    loader processes are rounded *up* (4.4 needed means 5 to provision). The
    index reads "<GPU>: <peak> TFLOPS".
    """
    import numpy as np
    import pandas as pd

    digits = {"images/s per GPU": ",.0f"}
    text = {}
    for quantity in dict.fromkeys(estimates.columns.get_level_values(0)):
        if quantity == "peak TFLOPS":
            continue
        spec = digits.get(quantity, ".1f" if quantity.startswith("days") else ".0f")
        values = estimates[quantity]
        if quantity == "loader processes per GPU":     # a fraction of a process does not exist: provision whole ones
            values = np.ceil(values).astype(int)
        text[quantity] = [f"{lo:{spec}}–{hi:{spec}}" for lo, hi in zip(values.min(axis=1), values.max(axis=1))]
    peaks = estimates["peak TFLOPS"].iloc[:, 0]
    index = [f"{gpu}: {peak:g} TFLOPS" for gpu, peak in peaks.items()]
    return pd.DataFrame(text, index=pd.Index(index, name="GPU (datasheet dense peak)"))


def cpu_demo_overrides(data_dir, output_dir, **sizes) -> dict:
    """Overrides that run a GPU config (e.g. the ImageNet one) as a small CPU run from a notebook.

    ``data_dir``: the ImageFolder root; ``output_dir``: where the run directories
    go (stored relative to the current folder, so printed paths stay
    machine-independent); ``sizes``: the config keys to shrink (``width_mult``,
    ``image_size``, ``batch_size``, ``epochs``, ...). Added on top: one
    data-loading worker and one thread per process on the CPU, float32
    (``amp: none``, ``channels_last: false``), the ``linear`` learning-rate
    schedule (the ``published`` one runs the last epoch at 0, i.e. half of a
    two-epoch step), overwriting earlier demo runs and one log line per epoch.
    """
    return {"data_dir": str(data_dir), **sizes, "workers": 1, "device": "cpu", "threads": 1,
            "lr_schedule": "linear", "amp": "none", "channels_last": False,
            "output_dir": os.path.relpath(output_dir, Path.cwd()), "overwrite": True, "progress": "log",
            "log_every": 1000}


def training_flop_per_image(student: str = "reactnet_a_bf", teacher: str = "dm_nfnet_f0", count_size: int = 224,
                            size: int = 224) -> dict:
    """FLOP a GPU spends on one training image: the student's forward and backward plus the teacher's forward.

    On a GPU the binary convolutions run as ordinary ones whose inputs and
    weights are ±1, so every multiply-add of the student (BOPs + FLOPs of
    :func:`bnn_helpers.complexity.complexity_table`, with binary weights) counts
    in full, three times (forward, and backward for inputs and for weights); the
    teacher (a timm name, counted without weights) runs forward once; 2 FLOP per
    multiply-add. Counted at ``count_size`` pixels and scaled by the pixel count
    to ``size``. Returns ``{"student_macs", "teacher_macs", "flop_per_image"}``.
    """
    import timm

    from .complexity import complexity_table
    from .models import create_model

    scale = (size / count_size) ** 2
    total = complexity_table(create_model(student, binary_weights=True), count_size).iloc[-1]
    student_macs = float(total.bops + total.flops) * scale
    teacher_macs = float(complexity_table(timm.create_model(teacher, pretrained=False), count_size).iloc[-1].flops)
    teacher_macs *= scale
    return {"student_macs": student_macs, "teacher_macs": teacher_macs,
            "flop_per_image": 2 * (3 * student_macs + teacher_macs)}


def loader_images_per_second(config, folder, images: int = 48, size=(500, 375)) -> float:
    """Images/s one data-loading process gets through ``config``'s training transforms.

    Writes a small ImageFolder of ``size`` JPEGs (ImageNet's typical 500×375,
    :func:`bnn_helpers.data.write_image_folder`) into ``folder``, builds the
    config's training dataset on it (decode, RandomResizedCrop, flip, normalize)
    and times ``images`` items in one single-threaded process, as one loader
    worker runs them (:func:`bnn_helpers.data.pipeline_images_per_second`). The
    rate depends on this CPU and on how busy it is.
    """
    from .data import build_datasets, pipeline_images_per_second, write_image_folder

    jpegs = write_image_folder(folder, train_per_class=2, val_per_class=1, size=size)
    cfg = load_config(config, {"data_dir": str(jpegs)})
    train_set, crop = build_datasets(cfg)[0], cfg["image_size"]
    if tuple(train_set[0][0].shape) != (3, crop, crop):
        raise TrainError(f"the training transforms gave {tuple(train_set[0][0].shape)}, expected (3, {crop}, {crop})")
    return pipeline_images_per_second(train_set, images=images, threads=1)


def loader_provisioning(estimates, workers: int, cpus_per_node: int, gpus_per_node: int = 8):
    """Which GPUs the config's ``workers`` loader processes keep up with, and the CPUs a node needs.

    ``estimates``: :func:`gpu_training_estimates` called with
    ``loader_images_per_s``. Per GPU: the loader processes needed at the lowest
    and highest assumed utilisation (rounded up), whether ``workers`` covers the
    highest, and the CPUs an ``gpus_per_node``-GPU node needs at the highest
    (one trainer plus its loaders per GPU) against ``cpus_per_node``.
    Returns a ``pandas.DataFrame`` indexed like :func:`format_estimates`.
    """
    import numpy as np
    import pandas as pd

    need = np.ceil(estimates["loader processes per GPU"]).astype(int)
    low, high = need.min(axis=1), need.max(axis=1)
    table = pd.DataFrame({"loaders per GPU": [f"{lo}–{hi}" for lo, hi in zip(low, high)],
                          f"workers={workers} enough": (high <= workers).tolist(),
                          f"CPUs per {gpus_per_node}-GPU node (max)": (gpus_per_node * (high + 1)).tolist()})
    table[f"within {cpus_per_node} CPUs"] = table[f"CPUs per {gpus_per_node}-GPU node (max)"] <= cpus_per_node
    table.index = format_estimates(estimates).index
    return table


def sbatch_script(srun_line: str, nodes: int = 4, gpus_per_node: int = 8, cpus_per_task: int = 96,
                  hours: int = 48, job_name: str = "bnn-bn-free-reactnet-a") -> str:
    """A complete sbatch script around ``srun_line`` (from ``launch(..., slurm=True, dry_run=True)``).

    One task per node (torchrun starts the per-GPU processes), ``cpus_per_task``
    for the data-loading workers of all GPUs plus the trainers, and SIGTERM
    five minutes before the time limit, so the engine saves ``last.pth`` and a
    later submission of the ``--resume true`` line continues. Adapt the
    partition, time and paths to your cluster.
    """
    if nodes < 1 or gpus_per_node < 1 or hours < 1:
        raise ValueError(f"nodes, gpus_per_node and hours must be >= 1, got {nodes}, {gpus_per_node}, {hours}")
    return "\n".join([
        "#!/bin/bash",
        f"#SBATCH --job-name={job_name}",
        f"#SBATCH --nodes={nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={gpus_per_node}",
        f"#SBATCH --cpus-per-task={cpus_per_task}          # data-loading workers of every GPU plus the trainers",
        f"#SBATCH --time={hours}:00:00",
        "#SBATCH --signal=TERM@300           # SIGTERM 5 min before the limit: the engine saves last.pth",
        'cd "$SLURM_SUBMIT_DIR"              # the repository root',
        srun_line, ""])
