"""Training engine: the BNN-BN two-step recipe (step 1 binary activations, step 2
binary weights too, initialised from step 1's best weights), from a CPU demo on
bundled digits to ImageNet on many GPUs.

CPU (bundled data, seconds per epoch)::

    python -m bnn_helpers.train --config configs/digits/reactnet_a_bf.yaml
    python -m bnn_helpers.train --config configs/digits/reactnet_a_bf.yaml --step 2 --epochs 3

One GPU (fp32, the published recipe)::

    python -m bnn_helpers.train --config configs/imagenet/reactnet_a_bf.yaml \\
        --data-dir /data/imagenet --device cuda --workers 10

Eight GPUs on one machine (``batch_size`` is global: 256 = 8 x 32)::

    torchrun --standalone --nproc_per_node=8 -m bnn_helpers.train \\
        --config configs/imagenet/reactnet_a_bf.yaml --data-dir /data/imagenet

Faster, but not the published recipe: append ``--amp bf16 --channels-last true``
(bf16 autocast rounds the real-valued convolutions, residual sums and logits to
8 mantissa bits; signs near a threshold can flip, so accuracies may differ).

Several machines (run on every node; same rendezvous endpoint)::

    torchrun --nnodes=4 --nproc_per_node=8 --rdzv_id=bnnbn --rdzv_backend=c10d \\
        --rdzv_endpoint=$MASTER_HOST:29500 -m bnn_helpers.train \\
        --config configs/imagenet/reactnet_a_bf.yaml --data-dir /data/imagenet

Under SLURM either wrap that torchrun in ``srun`` (see
``bnn_helpers.launch.launch(..., dry_run=True, slurm=True)``) or start one
task per GPU with ``srun``: RANK/WORLD_SIZE/LOCAL_RANK are then read from
SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID. ``--resume`` continues a run exactly (mid-epoch with
``workers: 0``; with loader workers the sample order is the same but the random
augmentation of the rest of that epoch differs, since each worker draws its own
stream);
SIGTERM/SIGINT save ``last.pth`` and exit. In Python (same code path)::

    from bnn_helpers.train import run
    run_dir = run("configs/digits/reactnet_a_bf.yaml", epochs=2)

Run directory: ``config.yaml``, ``summary.csv`` (one row per epoch),
``stats.csv`` (``--track-stats``), ``step1/{last,best}.pth``,
``step2/{last,best}.pth``, ``resume_changes.csv`` (settings a resume changed).

Nothing is lost when a run goes wrong: a checkpoint is written only with finite
weights and validation loss (a diverged run stops and names the last good one);
``--resume`` checks the checkpoint against the settings before anything in the run
directory changes, and may change only ``epochs`` and ``lr`` (applied from the
resumed position, recorded in ``resume_changes.csv``); a failed write (disk full)
removes its temporary file and keeps the previous checkpoint; a damaged
``last.pth`` is reported as corrupt and ``--resume --resume-from best`` continues
from ``best.pth``, keeping the damaged file as ``last.pth.old``.
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path
from typing import NamedTuple

import torch
import torch.distributed as dist

# build_model, load_trained, model_from_checkpoint, read_checkpoint, steps_of: re-exported for
# the notebooks, which import them from here.
from .checkpoints import build_model, load_trained, model_from_checkpoint, read_checkpoint
from .config import DivergedError, TrainError, describe_keys, load_config, parse_cli_overrides, run_dir_of, steps_of
from .engine import Interrupted, Trainer
from .preflight import RESUME_ADJUSTABLE
from .run_dir import DRIVING_KEYS, SUMMARY_COLUMNS, finished_run, plain
from .runtime import determinism, reuse_freed_memory, stop_on_signals

__all__ = ["run", "run_or_load", "finished_run", "main", "build_model", "steps_of", "load_trained",
           "model_from_checkpoint", "read_checkpoint", "SUMMARY_COLUMNS", "RESUME_ADJUSTABLE",
           "TrainError", "DivergedError", "Trainer", "run_with_outcome", "RunOutcome",
           "TrainingOutcome", "settings_name", "run_or_load_outcome", "stop_and_resume"]


class RunOutcome(NamedTuple):
    """What a run leaves its caller: where it wrote, whether a signal stopped it, and
    whether this process is the one that reports (rank 0)."""
    run_dir: Path
    interrupted: int | None
    is_main: bool


def run_with_outcome(config=None, overrides=None, *, on_batch_end=None, **kwargs) -> RunOutcome:
    """Train as the CLI does (see :func:`run`); returns a :class:`RunOutcome`."""
    if isinstance(overrides, (list, tuple)):
        overrides = parse_cli_overrides(list(overrides))
    cfg = load_config(config, {**(overrides or {}), **kwargs})
    threads_before = torch.get_num_threads()
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    try:
        trainer = Trainer(cfg, on_batch_end=on_batch_end)
    except BaseException:
        torch.set_num_threads(threads_before)
        raise
    try:
        with determinism(cfg), stop_on_signals(trainer.request_stop):
            trainer.fit()
    except Interrupted as stop:
        trainer._log(f"interrupted by signal {stop.signum}: saved {trainer.run_dir}/step*/last.pth; "
                     "continue with --resume")
        trainer.interrupted = stop.signum
    finally:
        torch.set_num_threads(threads_before)  # a notebook kernel keeps its own setting
        if trainer.created_group and dist.is_initialized():
            dist.destroy_process_group()
    return RunOutcome(trainer.run_dir, trainer.interrupted, trainer.is_main)


def run(config=None, overrides=None, *, on_batch_end=None, **kwargs) -> Path:
    """Train as the CLI does; returns the run directory.

    ``config``: a YAML path or a dict; ``overrides``: a dict or CLI-style list;
    keyword arguments are further overrides (``run(cfg, epochs=2, step="2")``).
    ``on_batch_end(trainer, step, epoch, batch)`` is called after every batch.
    An interrupted run (SIGTERM/SIGINT) saves ``last.pth`` and returns.
    """
    return run_with_outcome(config, overrides, on_batch_end=on_batch_end, **kwargs).run_dir


def stop_and_resume(config, overrides: dict, names=("resume_straight", "resume_demo"),
                    stop_after_epoch: int = 1, stop_at_batch: int | None = None):
    """The resume check: the same run once in one go, and once stopped and resumed.

    Trains ``config`` with ``overrides`` (one training step, ``step`` given)
    into run ``names[0]`` without interruption; then into ``names[1]``, stopped
    after epoch ``stop_after_epoch`` (with ``stop_at_batch``: after that batch,
    counted from 1, inside epoch ``stop_after_epoch``) through ``trainer.request_stop()`` (what
    SIGTERM triggers: finish the batch, save ``last.pth``, return), and resumed
    from that checkpoint with ``resume=True``. Returns ``(straight_dir,
    resumed_dir, stopped_at)``, ``stopped_at`` the epoch of the checkpoint the
    stop left (finished epochs: 0 for a stop inside epoch 1). Compare the two
    runs' ``last.pth`` to check the resume.
    """
    def stop(trainer, step, epoch, batch):
        last = trainer.train_loader.sampler.num_batches() if stop_at_batch is None else stop_at_batch
        if epoch == stop_after_epoch and batch == last:
            trainer.request_stop()

    straight = run(config, dict(overrides, name=names[0]))
    resumed = run(config, dict(overrides, name=names[1]), on_batch_end=stop)
    stopped_at = read_checkpoint(resumed / f"step{overrides.get('step', '1')}" / "last.pth")["epoch"]
    run(config, dict(overrides, name=names[1], overwrite=False, resume=True))
    return straight, resumed, stopped_at


def run_or_load(config=None, overrides=None, **kwargs) -> Path:
    """:func:`run`, unless its run directory already holds the finished run: train once, reuse after.

    How the notebooks cache their training: the same call a second time returns
    the run directory at once. A run there with other settings, or an unfinished
    one, is replaced (``overwrite``), so give each setting its own ``name``/``run_dir``.
    """
    if isinstance(overrides, (list, tuple)):
        overrides = parse_cli_overrides(list(overrides))
    merged = {**(overrides or {}), **kwargs}
    cfg = load_config(config, merged)
    run_dir = run_dir_of(cfg)
    if finished_run(run_dir, cfg):
        return run_dir
    return run(config, {**merged, "overwrite": True, "resume": False})


class TrainingOutcome(NamedTuple):
    """How a cached training run ended (:func:`run_or_load_outcome`)."""
    run_dir: Path
    diverged: bool
    message: str        # "finished", or where it diverged: "loss became non-finite in step 1, epoch 1, batch 15"


def settings_name(cfg: dict, prefix: str = "run") -> str:
    """``<prefix>_<10 hex digits>``: a run name that changes with every setting that changes the result.

    The digits hash the resolved config ``cfg`` without the settings that only
    drive, log or name a run (:data:`bnn_helpers.run_dir.DRIVING_KEYS`: progress,
    threads, name, ...), so equal settings give equal names.
    """
    computing = {k: v for k, v in plain(cfg).items() if k not in DRIVING_KEYS}
    digest = hashlib.sha1(json.dumps(computing, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{prefix}_{digest}"


def run_or_load_outcome(config=None, overrides=None, *, prefix: str = "run", **kwargs) -> TrainingOutcome:
    """:func:`run_or_load` under a name of its settings, with divergence as an outcome instead of an error.

    Without ``name`` or ``run_dir`` among the overrides the run is named by
    :func:`settings_name` (``runs/<prefix>_<digest>``), so every setting gets its
    own cached run and a second call with the same settings loads it. A run
    whose loss or weights become non-finite (the engine's
    :class:`~bnn_helpers.config.DivergedError`) returns ``diverged=True`` and
    the engine's message up to its first ``;``; it is not cached, so a second
    call trains it again (it stops as early). Any other error is raised, and a
    run stopped by a signal (SIGINT: a kernel interrupt) raises ``KeyboardInterrupt``.
    """
    if isinstance(overrides, (list, tuple)):
        overrides = parse_cli_overrides(list(overrides))
    merged = {**(overrides or {}), **kwargs}
    if not merged.get("name") and not merged.get("run_dir"):
        merged["name"] = settings_name(load_config(config, merged), prefix)
    cfg = load_config(config, merged)
    try:
        run_dir = run_or_load(config, merged)
    except DivergedError as err:
        return TrainingOutcome(run_dir_of(cfg), True, str(err).split(";")[0])
    if not finished_run(run_dir, cfg):   # a signal (a kernel interrupt) stopped it
        raise KeyboardInterrupt(f"training was interrupted; {run_dir} holds its last checkpoint, and the "
                                "next call with the same settings starts it again")
    return TrainingOutcome(run_dir, False, "finished")


def _one_line(exc: BaseException) -> str:
    """The message of a TrainError, also when a DataLoader worker wrapped it in a traceback."""
    text = str(exc)
    found = re.findall(r"TrainError: (.+)", text)
    return found[-1] if found else text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        print("Options (config keys; YAML values are overridden by --key value):")
        print("  --config PATH           YAML recipe, e.g. configs/digits/reactnet_a_bf.yaml")
        print(describe_keys())
        return 0
    config = None
    rest = []
    i = 0
    while i < len(argv):
        if argv[i] == "--config" and i + 1 < len(argv):
            config, i = argv[i + 1], i + 2
        elif argv[i].startswith("--config="):
            config, i = argv[i].split("=", 1)[1], i + 1
        else:
            rest.append(argv[i])
            i += 1
    reuse_freed_memory()  # a training process: keep freed tensor memory for the next step
    try:
        outcome = run_with_outcome(config, rest)
    except TrainError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr, flush=True)
        return 2
    except OSError as exc:  # the machine, not the code: full or read-only disk, missing folder
        where = f" {exc.filename}" if exc.filename else ""
        print(f"error: cannot access{where}: {exc.strerror or exc}; fix that and rerun (add --resume "
              "to continue a run that saved checkpoints)", file=sys.stderr, flush=True)
        return 2
    if outcome.is_main:
        print(f"run directory: {outcome.run_dir}", flush=True)
    return 128 + outcome.interrupted if outcome.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
