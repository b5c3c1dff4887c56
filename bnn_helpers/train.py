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

import contextlib
import csv
import math
import os
import random
import re
import shutil
import signal
import sys
import time
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import yaml

from .agc import parameters_except_classifier
from .checkpoints import (atomic_save, build_model, find_checkpoint, load_trained, model_from_checkpoint,
                          read_checkpoint, rng_state, set_rng_state, write_atomically, write_error)
from .config import (TrainError, describe_keys, load_config, parse_cli_overrides,
                     run_dir_of, steps_of)
from .data import build_datasets, make_loader
from .losses import Objective
from .teacher import load_teacher
from .training_step import autocast, make_optimizer, topk_hits, training_step

__all__ = ["run", "run_or_load", "finished_run", "main", "build_model", "steps_of", "load_trained",
           "model_from_checkpoint", "read_checkpoint", "SUMMARY_COLUMNS", "RESUME_ADJUSTABLE",
           "TrainError", "Trainer"]

SUMMARY_COLUMNS = ["epoch", "step", "lr", "train_loss", "train_top1", "train_top5", "val_loss",
                   "val_top1", "val_top5", "images_per_s", "agc_clip_share", "elapsed_s"]
#: resume_changes.csv: one row per setting a resume changed (see RESUME_ADJUSTABLE)
RESUME_CHANGE_COLUMNS = ["step", "epoch", "batch", "key", "before", "after"]

#: settings that change how a run is driven, logged or named, not what it computes
_DRIVING_KEYS = ("resume", "overwrite", "resume_from", "progress", "log_every", "threads", "run_dir",
                 "output_dir", "name")
#: the settings ``--resume`` may change: applied from the resumed position on and recorded
RESUME_ADJUSTABLE = ("epochs", "lr")
#: settings free on resume: where and how the run executes, not what the checkpoint means
_RESUME_FREE = _DRIVING_KEYS + (
    "step", "device", "workers", "pin_memory", "data_dir", "download", "compile", "channels_last",
    "deterministic", "eval_batch_size", "tensorboard", "track_stats", "stats_every",
    "step1_checkpoint", "teacher_checkpoint")


# --------------------------------------------------------------------------- process setup
def _slurm_to_torch_env() -> None:
    """Fill RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* from SLURM when srun started one task per GPU."""
    env = os.environ
    if "RANK" in env or int(env.get("SLURM_NTASKS", "1")) <= 1 or "SLURM_PROCID" not in env:
        return
    env["RANK"], env["WORLD_SIZE"] = env["SLURM_PROCID"], env["SLURM_NTASKS"]
    env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    if "MASTER_ADDR" not in env:
        nodes = env.get("SLURM_STEP_NODELIST", env.get("SLURM_NODELIST", "localhost"))
        m = re.match(r"([^,\[]+)(?:\[(\d+))?", nodes)  # "gpu[03-06,09]" -> "gpu03"
        env["MASTER_ADDR"] = m.group(1) + (m.group(2) or "")
    env.setdefault("MASTER_PORT", str(29500 + int(env.get("SLURM_JOB_ID", "0")) % 1000))


def setup_distributed(device_kind: str) -> tuple[int, int, int, bool]:
    """(rank, world_size, local_rank, created) from torchrun/SLURM variables."""
    _slurm_to_torch_env()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and not dist.is_initialized():
        if device_kind == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
        return rank, world, local, True
    return rank, world, local, False


def resolve_device(cfg: dict) -> str:
    if cfg["device"] == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda but no CUDA GPU is visible; use --device cpu")
    if cfg["device"] == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg["device"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _summary_key(row: dict) -> tuple[int, int] | None:
    """(step, epoch) of a summary.csv row; None for a torn row."""
    try:
        return int(row["step"]), int(row["epoch"])
    except (KeyError, TypeError, ValueError):
        return None


def _plain(value):
    """Config values as YAML/pickle-safe builtins."""
    return yaml.safe_load(yaml.safe_dump(value))


# --------------------------------------------------------------------------- progress
class _Progress:
    """tqdm in a terminal or notebook, plain periodic lines otherwise, nothing off rank 0."""

    def __init__(self, mode: str, enabled: bool, log_every: int):
        if mode == "auto":
            interactive = sys.stderr.isatty() or _in_notebook()
            mode = "tqdm" if interactive else "log"
        self.mode = mode if enabled else "none"
        self.log_every, self.bar = log_every, None

    def start(self, total: int, desc: str):
        if self.mode == "tqdm":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
        self.desc, self.total = desc, total

    def update(self, i: int, loss: float | None):
        if self.mode == "tqdm":
            self.bar.update(1)
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        elif self.mode == "log" and loss is not None:
            print(f"{self.desc} batch {i + 1}/{self.total} loss {loss:.4f}", flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def line(self, text: str):
        if self.mode != "none":
            print(text, flush=True)


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython

        return get_ipython() is not None and "IPKernelApp" in get_ipython().config
    except Exception:
        return False


class _Interrupted(Exception):
    def __init__(self, signum):
        self.signum = signum


# --------------------------------------------------------------------------- engine
class Trainer:
    """One run: data, teacher, and the steps of the config. Use :func:`run`."""

    def __init__(self, cfg: dict, on_batch_end=None):
        self.cfg = cfg
        self.device_kind = resolve_device(cfg)
        if cfg["amp"] == "fp16" and self.device_kind != "cuda":
            raise TrainError("--amp fp16 needs a CUDA GPU; use --amp bf16 or none on CPU")
        self.rank, self.world, local, self.created_group = setup_distributed(self.device_kind)
        self.device = torch.device(f"cuda:{local}" if self.device_kind == "cuda" else "cpu")
        self.is_main = self.rank == 0
        self.run_dir = run_dir_of(cfg)
        self.on_batch_end = on_batch_end
        self.stop_signal = None
        self.stop_agreed = 0
        self.interrupted = None
        self.steps = steps_of(cfg)
        self.resume_plan = None      # what --resume continues from, read before the run dir is touched
        self.last_good = {}          # step -> (checkpoint path, epoch, batch) known to be finite
        self.created_run_dir = False
        self.step1_weights = None    # (state_dict, where) for a step-2-only run
        # Checking the loss (and, with several processes, agreeing on a stop) syncs with the
        # device: on accelerators only every log_every batches, so the GPU queue never drains.
        self.check_every = 1 if self.device_kind == "cpu" else cfg["log_every"]

    # ---------------------------------------------------------------- helpers
    def _ckpt(self, step: int, which: str) -> Path:
        return self.run_dir / f"step{step}" / f"{which}.pth"

    def _barrier(self):
        if self.world > 1:
            dist.barrier()

    def _all_reduce(self, values: list[float], op=None) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world > 1:
            dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
        return t.tolist()

    def request_stop(self, signum: int = signal.SIGTERM):
        """Finish the current batch, save ``last.pth`` and stop (what SIGTERM/SIGINT do)."""
        self.stop_signal = signum

    def _to_device(self, x, y):
        x = x.to(self.device, non_blocking=True)
        if self.cfg["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)

    # ---------------------------------------------------------------- preparation
    def _started_steps(self) -> list[int]:
        """Steps of this run that already hold a checkpoint (last or best)."""
        return [s for s in self.steps
                if self._ckpt(s, "last").exists() or self._ckpt(s, "best").exists()]

    def _next_move(self) -> str:
        """How to go on after a failure: resume when this run holds checkpoints, else rerun."""
        if self._started_steps():
            return "continue with --resume; the earlier checkpoints are intact"
        return "rerun"

    def preflight(self):
        """Every check that needs no training, before the run directory is touched: the run
        may start here, a resumed checkpoint is intact and fits the settings, step 2 has
        step 1's weights, and the network takes these images at this batch size."""
        cfg = self.cfg
        started = self._started_steps()
        if started and not cfg["resume"] and not cfg["overwrite"]:
            raise TrainError(f"{self.run_dir} already holds step {started[0]} checkpoints; pass "
                             "--resume to continue, --overwrite to start again, or another --name")
        if cfg["resume"]:
            self._plan_resume()
        resumes_step2 = self.resume_plan is not None and self.resume_plan["step"] == 2
        if self.steps == [2] and not resumes_step2:
            self.step1_weights = self._step1_weights()
        self._check_input_fits()

    def _step1_weights(self) -> tuple[dict, str]:
        """(state_dict, where) of the step-1 network a separate step-2 run starts from."""
        cfg = self.cfg
        wanted = Path(cfg["step1_checkpoint"] or self.run_dir / "step1" / "best.pth")
        if not (wanted.is_file() or (wanted / "step1" / "best.pth").is_file()):
            raise TrainError(f"step 2 needs step 1's weights: {wanted} not found; run step 1 "
                             "first or pass --step1-checkpoint PATH")
        source = find_checkpoint(wanted, prefer=("step1",))
        ckpt = read_checkpoint(source)
        self._check_classes(ckpt, source)
        return ckpt["model"], str(source)

    def _check_input_fits(self):
        """The network takes the data's image size, and BatchNorm never sees a single value."""
        from .models import BinaryNet  # lazily: the registry imports timm's model zoo

        cfg = self.cfg
        if cfg["model"].startswith("timm:"):
            return  # arbitrary timm networks: their own errors at the first batch
        folder = cfg["dataset"] in ("imagenet", "folder")
        size = cfg["image_size"] if folder else 32
        what = f"--image-size {size}" if folder else f"{cfg['dataset']} images ({size} px)"
        local_batch = cfg["batch_size"] // self.world
        with torch.device("meta"):  # shapes only: no memory, no weights initialised
            model = build_model(cfg, binary_weights=(self.steps[0] == 2), num_classes=self.num_classes)
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        if isinstance(model, BinaryNet):
            try:
                model.check_input_size(size)
            except ValueError as exc:
                raise TrainError(f"{what} does not fit {cfg['model']}: {exc}") from None
            single_value = min(model.feature_map_sizes(size)) == 1 and local_batch == 1
        else:  # float_cnn: a shape-only forward on the meta device
            try:
                model.train()(torch.empty(min(local_batch, 2), 3, size, size, device="meta"))
                single_value = False
            except ValueError as exc:
                single_value = "more than 1 value per channel" in str(exc)
                if not single_value:
                    raise
            except RuntimeError as exc:
                raise TrainError(f"{what} does not fit {cfg['model']} "
                                 f"({str(exc).splitlines()[0]}); use larger images") from None
        if has_bn and single_value:
            raise TrainError(
                f"{cfg['model']} has BatchNorm layers that see a 1x1 map at {size} px, so a batch of 1 "
                f"per process gives each a single value to normalise; use --batch-size {2 * self.world} "
                f"or more (batch_size is global, over {self.world} process(es)), or larger images")

    def _plan_resume(self):
        """Read and check the checkpoint ``--resume`` continues from; writes nothing.

        The checkpoint of the latest started step is loaded (earlier steps are finished),
        must be intact, of this dataset, and trained with the requested settings up to
        :data:`RESUME_ADJUSTABLE` and the run-only settings.
        """
        cfg = self.cfg
        started = self._started_steps()
        if not started:
            raise TrainError(f"--resume: no step{self.steps[0]}/last.pth under {self.run_dir}; "
                             "run without --resume to start")
        step, which = started[-1], cfg["resume_from"]
        path = self._ckpt(step, which)
        try:
            if not path.exists():
                raise TrainError(f"--resume: {path} does not exist")
            ckpt = read_checkpoint(path)
        except TrainError as exc:
            raise TrainError(f"{exc}; {self._fallback_hint(step, which)}") from None
        self._check_classes(ckpt, path)
        saved, current = ckpt["config"], _plain(self.cfg)
        changed = [k for k in current
                   if k in saved and k not in _RESUME_FREE and saved[k] != current[k]]
        refused = [k for k in changed if k not in RESUME_ADJUSTABLE]
        if refused:
            was = ", ".join(f"{k} {saved[k]!r}" for k in refused[:3])
            now = ", ".join(f"{k} {current[k]!r}" for k in refused[:3])
            raise TrainError(f"--resume: {path} was trained with {was}, not {now}; a resume may change "
                             f"only {' and '.join(RESUME_ADJUSTABLE)}: drop the other changes, or start "
                             "afresh with --overwrite or another --name")
        if cfg["epochs"] < ckpt["epoch"] or (cfg["epochs"] == ckpt["epoch"] and ckpt["batch_in_epoch"]):
            raise TrainError(f"--resume: {path} is already past epoch {cfg['epochs']} of step {step}; "
                             f"--epochs must be at least {ckpt['epoch'] + 1}")
        self.resume_plan = {"step": step, "path": path, "ckpt": ckpt, "epoch": ckpt["epoch"],
                            "changes": {k: (saved[k], current[k]) for k in changed}}

    def _fallback_hint(self, step: int, which: str) -> str:
        """The next-best intact checkpoint of a step, as the option that resumes from it."""
        other = "best" if which == "last" else "last"
        path = self._ckpt(step, other)
        try:
            ckpt = read_checkpoint(path) if path.exists() else None
        except TrainError:
            ckpt = None
        if ckpt is None:
            return (f"no intact step{step} checkpoint remains; start step {step} again with "
                    "--overwrite (or another --name)")
        kept = "; nothing is deleted (the damaged last.pth is kept as last.pth.old)" if other == "best" else ""
        return (f"continue from the intact {path} (epoch {ckpt['epoch']}) with --resume --resume-from "
                f"{other}{kept}")

    def prepare_run_dir(self):
        """Create or update the run directory (after :meth:`preflight` found nothing wrong).

        A resume changes nothing here: the summary rows it replaces go with its first
        write, config.yaml and resume_changes.csv follow its first checkpoint, so a resume
        that fails early or finds the run finished leaves the run directory as it was.
        """
        cfg = self.cfg
        if self.is_main:
            self.created_run_dir = not self.run_dir.exists()
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._remove_stale_temporaries()
            if not cfg["resume"]:
                if cfg["overwrite"]:
                    for s in self.steps:
                        shutil.rmtree(self.run_dir / f"step{s}", ignore_errors=True)
                    if self.steps[0] == 1:
                        (self.run_dir / "stats.csv").unlink(missing_ok=True)
                # Rows of these steps without checkpoints are left by a failed run: drop them.
                self._trim_summary(keep=lambda row: _summary_key(row)[0] not in self.steps)
                steps = {str(s) for s in self.steps}
                self._trim_csv(self.run_dir / "resume_changes.csv", RESUME_CHANGE_COLUMNS,
                               lambda row: row.get("step") not in steps)
                self._write_config()
        self._barrier()

    def _write_config(self):
        saved = {k: v for k, v in self.cfg.items() if k not in ("resume", "overwrite", "resume_from")}
        text = yaml.safe_dump(_plain(saved), sort_keys=False)
        write_atomically(self.run_dir / "config.yaml", lambda tmp: tmp.write_text(text),
                          advice=f"free space and {self._next_move()}")

    def _before_resumed_writes(self):
        """Main process, before the resumed run writes its first row or checkpoint: drop the rows
        it replaces and keep a replaced last.pth as last.pth.old. Once per run."""
        plan = self.resume_plan
        if plan is None or plan.get("prepared") or not self.is_main:
            return
        plan["prepared"] = True
        step, epoch = plan["step"], plan["epoch"]
        self._trim_summary(lambda r: _summary_key(r)[0] < step
                           or (_summary_key(r)[0] == step and _summary_key(r)[1] <= epoch))
        last = self._ckpt(step, "last")
        if plan["path"] != last and last.exists():  # resumed from best.pth: keep, not lose, last.pth
            kept = last.with_name("last.pth.old")
            for n in range(1, 1000):
                if not kept.exists():
                    break
                kept = last.with_name(f"last.pth.old{n}")
            os.replace(last, kept)
            self._log(f"[step {step}] {last} replaced by the run resumed from {plan['path']}; kept as {kept}")

    def _after_first_resumed_save(self):
        """Main process, once the resumed run saved a checkpoint: config.yaml and
        resume_changes.csv now describe what the checkpoints hold. Once per run."""
        plan = self.resume_plan
        if plan is None or plan.get("recorded") or not self.is_main:
            return
        plan["recorded"] = True
        self._write_config()
        if plan["changes"]:
            at_step, at_epoch, at_batch = plan["start"]
            rows = [{"step": at_step, "epoch": at_epoch, "batch": at_batch, "key": key,
                     "before": before, "after": after}
                    for key, (before, after) in plan["changes"].items()]
            path = self.run_dir / "resume_changes.csv"
            size = path.stat().st_size if path.exists() else 0
            try:
                with open(path, "a", newline="") as f:
                    writer = csv.DictWriter(f, fieldnames=RESUME_CHANGE_COLUMNS)
                    if size == 0:
                        writer.writeheader()
                    writer.writerows(rows)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.truncate(path, size)
                raise write_error(path, exc, 0, f"free space and {self._next_move()}") from None

    def _remove_stale_temporaries(self):
        """Temporary files of saves that a killed process (SIGKILL, power loss) left behind."""
        for tmp in [*self.run_dir.glob(".*.tmp*"), *self.run_dir.glob("step*/.*.tmp*")]:
            pid = tmp.name.rsplit(".tmp", 1)[-1]
            if not (pid.isdigit() and (int(pid) == os.getpid() or _process_alive(int(pid)))):
                tmp.unlink(missing_ok=True)

    def _remove_if_only_config(self):
        """A run that failed before saving anything leaves no run directory behind."""
        files = [f for f in self.run_dir.rglob("*") if not f.is_dir()]
        if self.created_run_dir and [f.name for f in files] == ["config.yaml"]:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def _trim_csv(self, path: Path, columns, keep):
        if not path.exists():
            return
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if keep(r)]

        def write(tmp):
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=columns)
                writer.writeheader()
                writer.writerows(rows)

        write_atomically(path, write, advice=f"free space and {self._next_move()}")

    def _trim_summary(self, keep):
        self._trim_csv(self.run_dir / "summary.csv", SUMMARY_COLUMNS,
                       lambda row: _summary_key(row) is not None and keep(row))

    def _take_back_rows(self, size: int):
        """Cut summary.csv back to ``size`` bytes (removed when that leaves it empty)."""
        path = self.run_dir / "summary.csv"
        with contextlib.suppress(OSError):
            if size:
                os.truncate(path, size)  # needs no free space, unlike a rewrite
            else:
                path.unlink()

    def _append_summary(self, row: dict) -> int:
        """Append one epoch's row; returns the file's previous size (to take the row back)."""
        path = self.run_dir / "summary.csv"
        size = path.stat().st_size if path.exists() else 0
        try:
            with open(path, "a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS)
                if size == 0:
                    writer.writeheader()
                writer.writerow(row)
        except OSError as exc:
            self._take_back_rows(size)  # no torn row
            raise write_error(path, exc, 0, f"free space and {self._next_move()}") from None
        return size

    def prepare_data(self):
        train, val, self.num_classes = build_datasets(self.cfg)
        pin = self.cfg["pin_memory"] and self.device_kind == "cuda"
        self.train_loader = make_loader(train, self.cfg, True, self.rank, self.world, pin)
        self.val_loader = make_loader(val, self.cfg, False, self.rank, self.world, pin)
        self.teacher = None
        if self.cfg["loss"] == "kd":
            teacher = load_teacher(self.cfg, self.num_classes).to(self.device)
            if self.cfg["channels_last"]:
                teacher = teacher.to(memory_format=torch.channels_last)
            self.teacher = teacher
        self.objective = Objective(self.cfg["loss"], self.cfg["label_smoothing"])

    def _optimizer(self, model: nn.Module, step: int):
        cfg = self.cfg
        opt = make_optimizer(model, cfg["optimizer"], cfg["lr"], cfg[f"weight_decay_step{step}"],
                             cfg["momentum"])
        epochs = cfg["epochs"]
        if cfg["lr_schedule"] == "published" and epochs == 1:
            warnings.warn("lr_schedule 'published' with epochs=1 trains at lr 0 (the rate is "
                          "lowered before each epoch); use --lr-schedule linear for short runs",
                          stacklevel=2)
        factor = {"published": lambda e: 1.0 - e / epochs,       # stepped before epoch e = 1..E
                  "linear": lambda e: 1.0 - (e - 1) / epochs,    # e = 1..E -> 1 .. 1/E
                  "constant": lambda e: 1.0}[cfg["lr_schedule"]]
        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: max(factor(e), 0.0))
        return opt, scheduler

    def _load_model_state(self, model: nn.Module, state: dict, source: str):
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise TrainError(f"{source} does not fit model {self.cfg['model']!r}: "
                             f"{str(exc).splitlines()[0]}; check --model/--width-mult") from None

    def _check_classes(self, ckpt: dict, path: Path):
        if ckpt.get("num_classes") != self.num_classes:
            raise TrainError(f"checkpoint {path} has {ckpt.get('num_classes')} classes but the "
                             f"dataset has {self.num_classes}; use a checkpoint of this dataset")

    # ---------------------------------------------------------------- one step
    def fit_step(self, step: int, init_state: dict | None) -> dict | None:
        """Train one step; returns the best model state (CPU) for the next step."""
        cfg = self.cfg
        seed_everything(cfg["seed"] + self.rank)
        model = build_model(cfg, binary_weights=(step == 2), num_classes=self.num_classes)
        model.to(self.device)
        if cfg["channels_last"]:
            model = model.to(memory_format=torch.channels_last)
        optimizer, scheduler = self._optimizer(model, step)
        scaler = torch.amp.GradScaler("cuda") if cfg["amp"] == "fp16" else None
        state = {"epoch": 0, "batch": 0, "best_top1": -1.0, "elapsed": 0.0, "partial": None}
        best_state = None

        plan = self.resume_plan
        if plan is not None and step < plan["step"]:
            return None  # finished before the resumed step began; that step needs no weights from it
        if plan is not None and step == plan["step"]:
            ckpt, source = plan["ckpt"], plan["path"]
            plan["ckpt"] = None  # the step holds what it needs; free the copy
            self._load_model_state(model, ckpt["model"], str(source))
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            if scaler is not None and ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            if plan["changes"]:  # lr and epochs as now requested, from the resumed position on
                scheduler.base_lrs = [cfg["lr"]] * len(optimizer.param_groups)
                for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas):
                    group["initial_lr"] = cfg["lr"]
                    group["lr"] = cfg["lr"] * factor(scheduler.last_epoch)
            state.update(epoch=ckpt["epoch"], batch=ckpt["batch_in_epoch"], best_top1=ckpt["best_top1"],
                         elapsed=ckpt["elapsed_s"], partial=ckpt.get("partial"))
            self.last_good[step] = (source, state["epoch"], state["batch"])
            plan["start"] = (step, state["epoch"], state["batch"])
            set_rng_state(ckpt["rng"])
            if state["epoch"] >= cfg["epochs"] and not state["batch"]:
                best = self._ckpt(step, "best")
                if source != self._ckpt(step, "last") and self.is_main:
                    # best.pth is the final epoch: it stands in for a missing or damaged last.pth
                    self._before_resumed_writes()
                    write_atomically(self._ckpt(step, "last"), lambda tmp: shutil.copyfile(source, tmp),
                                      source.stat().st_size, f"free space and {self._next_move()}")
                    self._after_first_resumed_save()
                return read_checkpoint(best)["model"] if best.exists() else ckpt["model"]
            changes = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in plan["changes"].items())
            self._log(f"[step {step}] resuming from {source} (epoch {state['epoch']}"
                      + (f", batch {state['batch']}" if state["batch"] else "")
                      + (f"; {changes}, recorded in resume_changes.csv)" if changes else ")"))
        elif step == 2:
            if plan is not None:
                plan.setdefault("start", (step, 0, 0))  # resumed run: its changes start here
            if init_state is None:
                init_state, where = self.step1_weights
            else:
                where = "step 1's best weights"
            self._load_model_state(model, init_state, where)
            self._log(f"[step 2] initialised from {where}")

        self.current_model = model
        train_model = model
        if self.world > 1:
            train_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device_kind == "cuda" else None)
        if cfg["compile"]:
            train_model = torch.compile(train_model)

        recorder = None
        if cfg["track_stats"] and self.is_main:
            from .diagnostics import StatsRecorder  # lazily: diagnostics pulls in pandas

            recorder = StatsRecorder(self.run_dir, every=cfg["stats_every"])
        tb = self._tensorboard()
        agc_params = parameters_except_classifier(model) if cfg["agc"] else None
        progress = _Progress(cfg["progress"], self.is_main, cfg["log_every"])
        try:
            while state["epoch"] < cfg["epochs"]:
                epoch = state["epoch"] + 1  # 1-based, as in summary.csv
                if not state["batch"]:
                    with warnings.catch_warnings():  # stepping before optimizer.step() is the recipe
                        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                        scheduler.step()  # published: the epoch's lr is set before it runs
                lr = optimizer.param_groups[0]["lr"]
                train = self._train_epoch(step, epoch, model, train_model, optimizer, scaler,
                                          agc_params, recorder, progress, state, scheduler)
                val = self.evaluate(model)
                if not self._weights_finite(model) or not math.isfinite(val["loss"]):
                    what = (f"weights became non-finite (validation loss {val['loss']:.4g})"
                            if not self._weights_finite(model) else f"validation loss is {val['loss']}")
                    raise TrainError(self._divergence_message(step, epoch, None, what))
                state["elapsed"] += train["time"] + val["time"]
                row = {"epoch": epoch, "step": step, "lr": lr, "train_loss": train["loss"],
                       "train_top1": train["top1"], "train_top5": train["top5"],
                       "val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"],
                       "images_per_s": train["images"] / max(train["time"], 1e-9),
                       "agc_clip_share": train["clip"], "elapsed_s": state["elapsed"]}
                is_best = val["top1"] > state["best_top1"]
                if is_best:
                    state["best_top1"] = val["top1"]
                    best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                state.update(epoch=epoch, batch=0, partial=None)
                if self.is_main:
                    self._before_resumed_writes()
                    summary_size = self._append_summary(row)
                    try:
                        self._save(step, model, optimizer, scheduler, scaler, state, is_best)
                    except BaseException:  # no row for an epoch without its checkpoint
                        if self.last_good.get(step, (None, None, None))[1:] != (epoch, 0):
                            self._take_back_rows(summary_size)
                        raise
                    if tb is not None:
                        for key in SUMMARY_COLUMNS[2:]:
                            tb.add_scalar(f"step{step}/{key}", row[key], epoch)
                self._log(f"[step {step}] epoch {epoch}/{cfg['epochs']} lr {lr:.3g} "
                          f"train loss {row['train_loss']:.4f} top1 {row['train_top1']:.2f} | "
                          f"val loss {row['val_loss']:.4f} top1 {row['val_top1']:.2f} "
                          f"top5 {row['val_top5']:.2f} | {row['images_per_s']:.0f} img/s")
                self._barrier()
                if self.stop_agreed:  # the signal came in the epoch's last batch: saved above
                    raise _Interrupted(self.stop_agreed)
        finally:
            progress.close()
            if recorder is not None:
                recorder.close()
            if tb is not None:
                tb.close()
        if best_state is None:  # resumed after the best epoch: read it back
            best_state = read_checkpoint(self._ckpt(step, "best"))["model"]
        return best_state

    def _train_epoch(self, step, epoch, model, train_model, optimizer, scaler, agc_params, recorder,
                     progress, state, scheduler) -> dict:
        cfg = self.cfg
        loader = self.train_loader
        start = state["batch"]
        loader.set_epoch(epoch, start)
        batches = loader.sampler.num_batches()
        # Running sums: loss*n, top-1 hits, top-5 hits, images, clip-share sum, clipped batches, seconds.
        sums = list(state["partial"]) if state["partial"] else [0.0] * 7
        device_sums = torch.zeros(6, dtype=torch.float64, device=self.device)
        postfix_every = 10 if progress.mode == "tqdm" else cfg["log_every"]
        train_model.train()
        progress.start(batches, f"step {step} epoch {epoch}")
        if start and progress.bar is not None:
            progress.bar.update(start)
        t0 = time.perf_counter()
        for i, (x, y) in enumerate(loader, start=start):
            x, y = self._to_device(x, y)
            iteration = (epoch - 1) * batches + i + 1
            before_update = (None if recorder is None else
                             partial(recorder.before_optimizer_step, model, step, epoch, iteration))
            loss, logits, clip_share = training_step(
                train_model, x, y, self.objective, optimizer, teacher=self.teacher, amp=cfg["amp"],
                scaler=scaler, agc_params=agc_params, agc_clip_factor=cfg["agc_clip_factor"],
                agc_eps=cfg["agc_eps"], before_update=before_update)
            if recorder is not None:
                # The tensor, not a float: the recorder reads it only on recorded
                # iterations, so other steps keep no host-device sync.
                recorder.after_optimizer_step(model, step, epoch, iteration, clip_share)
            with torch.no_grad():
                hit1, hit5 = topk_hits(logits, y, 5)
                device_sums[0] += loss.detach().double() * y.numel()
                device_sums[1] += hit1
                device_sums[2] += hit5
                device_sums[3] += y.numel()
                if clip_share is not None:
                    device_sums[4] += clip_share.to(self.device, torch.float64)
                    device_sums[5] += 1
            done = i + 1
            progress.update(i, loss.detach().item() if done % postfix_every == 0 else None)
            if self.on_batch_end is not None:
                self.on_batch_end(self, step, epoch, done)
            flags = [float(self.stop_signal or 0), 0.0]
            if done % self.check_every == 0 or done == batches:
                flags[1] = 0.0 if math.isfinite(float(device_sums[0])) else 1.0
                if self.world > 1:  # every process must agree to stop at the same batch
                    flags = self._all_reduce(flags, dist.ReduceOp.MAX)
            elif self.world > 1:
                flags[0] = 0.0  # a signal waits for the next agreed batch (no per-batch sync)
            if flags[1]:
                raise TrainError(self._divergence_message(step, epoch, done, "loss became non-finite"))
            if flags[0]:
                self.stop_agreed = int(flags[0])
                if done < batches:  # mid-epoch: save the position; the epoch end saves itself
                    sums = self._merge(sums, device_sums, time.perf_counter() - t0)
                    state.update(batch=done, partial=sums)
                    if self.is_main:
                        self._save(step, model, optimizer, scheduler, scaler, state, False)
                    raise _Interrupted(self.stop_agreed)
        progress.close()
        sums = self._merge(sums, device_sums, time.perf_counter() - t0)
        loss_sum, hit1, hit5, images, clip_sum, clip_n, seconds = sums
        return {"loss": loss_sum / images, "top1": 100 * hit1 / images, "top5": 100 * hit5 / images,
                "images": images, "clip": clip_sum / clip_n if clip_n else math.nan, "time": seconds}

    def _merge(self, sums, device_sums, seconds):
        """Carried totals plus this segment's sums over all processes."""
        reduced = self._all_reduce(device_sums.tolist())
        return [sums[j] + reduced[j] for j in range(6)] + [sums[6] + seconds]

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict:
        """Validation loss (cross-entropy with the labels), top-1 and top-5 in percent."""
        model.eval()
        self.val_loader.set_epoch(0)
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)
        t0 = time.perf_counter()
        for x, y in self.val_loader:
            x, y = self._to_device(x, y)
            with autocast(self.device_kind, self.cfg["amp"]):
                logits = model(x)
            loss = nn.functional.cross_entropy(logits.float(), y, reduction="sum")
            hit1, hit5 = topk_hits(logits, y, 5)
            sums += torch.stack([loss.double(), hit1.double(), hit5.double(),
                                 torch.tensor(y.numel(), dtype=torch.float64, device=self.device)])
        loss_sum, hit1, hit5, n = self._all_reduce(sums.tolist())
        return {"loss": loss_sum / n, "top1": 100 * hit1 / n, "top5": 100 * hit5 / n,
                "time": time.perf_counter() - t0}

    def _weights_finite(self, model: nn.Module) -> bool:
        floats = [t for t in model.state_dict().values() if t.is_floating_point()]
        return bool(torch.stack([torch.isfinite(t).all() for t in floats]).all())  # one device sync

    def _divergence_message(self, step: int, epoch: int, batch: int | None, what: str) -> str:
        """One line: what diverged where, the last checkpoint known finite, how to go on."""
        good = self.last_good.get(step)
        if good is not None:
            path, good_epoch, good_batch = good
            where = f"{path} (epoch {good_epoch}" + (f", batch {good_batch})" if good_batch else ")")
        else:
            where = f"none of step {step} yet"
        started = bool(self._started_steps())
        hint = "continue with --resume and a lower --lr" if started else "rerun with a lower --lr"
        if not self.cfg["agc"]:
            hint += ", or start again with --agc true" + (" --overwrite" if started else "")
        at = f"step {step}, epoch {epoch}" + (f", batch {batch}" if batch else " (its end)")
        return f"{what} in {at}; stopped, nothing of it saved. Last good checkpoint: {where}; {hint}"

    def _save(self, step, model, optimizer, scheduler, scaler, state, is_best):
        if not self._weights_finite(model):  # never let a diverged state replace a good checkpoint
            epoch = state["epoch"] + (1 if state["batch"] else 0)
            raise TrainError(self._divergence_message(step, epoch, state["batch"] or None,
                                                      "weights became non-finite"))
        self._before_resumed_writes()
        ckpt = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "epoch": state["epoch"], "batch_in_epoch": state["batch"],
                "partial": state["partial"], "best_top1": state["best_top1"],
                "elapsed_s": state["elapsed"], "rng": rng_state(), "step": step,
                "num_classes": self.num_classes, "config": _plain(self.cfg)}
        folder = self.run_dir / f"step{step}"
        folder.mkdir(parents=True, exist_ok=True)
        advice = f"free space (or fix {folder}) and {self._next_move()}"
        atomic_save(ckpt, folder / "last.pth", advice)
        self.last_good[step] = (folder / "last.pth", state["epoch"], state["batch"])
        self._after_first_resumed_save()
        if is_best:
            atomic_save(ckpt, folder / "best.pth", advice)

    def _tensorboard(self):
        if not (self.cfg["tensorboard"] and self.is_main):
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self._log("tensorboard is not installed; continuing without it (pip install tensorboard)")
            return None
        return SummaryWriter(str(self.run_dir / "tensorboard"))

    def _log(self, text: str):
        if self.is_main and self.cfg["progress"] != "none":
            print(text, flush=True)

    # ---------------------------------------------------------------- all steps
    def fit(self):
        self.prepare_data()
        self.preflight()
        self.prepare_run_dir()
        try:
            best = None
            for step in self.steps:
                best = self.fit_step(step, best)
        except BaseException:
            if self.is_main:
                self._remove_if_only_config()
            raise
        return self.run_dir


@contextlib.contextmanager
def _signals_save(trainer: Trainer):
    """SIGTERM/SIGINT ask the trainer to stop after the current batch (main thread only)."""
    previous = {}
    handler = lambda signum, frame: trainer.request_stop(signum)  # noqa: E731
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: leave the defaults
            pass
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def _determinism(cfg: dict):
    previous = torch.are_deterministic_algorithms_enabled()
    bench = torch.backends.cudnn.benchmark
    if cfg["deterministic"]:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = not cfg["deterministic"]
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
        torch.backends.cudnn.benchmark = bench


def run(config=None, overrides=None, *, on_batch_end=None, **kwargs) -> Path:
    """Train as the CLI does; returns the run directory.

    ``config``: a YAML path or a dict; ``overrides``: a dict or CLI-style list;
    keyword arguments are further overrides (``run(cfg, epochs=2, step="2")``).
    ``on_batch_end(trainer, step, epoch, batch)`` is called after every batch.
    An interrupted run (SIGTERM/SIGINT) saves ``last.pth`` and returns.
    """
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
        with _determinism(cfg), _signals_save(trainer):
            trainer.fit()
    except _Interrupted as stop:
        trainer._log(f"interrupted by signal {stop.signum}: saved {trainer.run_dir}/step*/last.pth; "
                     "continue with --resume")
        trainer.interrupted = stop.signum
    finally:
        torch.set_num_threads(threads_before)  # a notebook kernel keeps its own setting
        if trainer.created_group and dist.is_initialized():
            dist.destroy_process_group()
    run.last_trainer = trainer
    return trainer.run_dir


def finished_run(run_dir: str | Path, cfg: dict) -> bool:
    """Whether ``run_dir`` holds a complete run of the resolved config ``cfg``.

    Complete: the saved ``config.yaml`` equals ``cfg`` up to :data:`_DRIVING_KEYS`,
    ``summary.csv`` has every epoch of every step, the last step has ``best.pth``, and
    no resume changed a setting of these steps (``resume_changes.csv``) on the way.
    """
    run_dir = Path(run_dir)
    try:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        with open(run_dir / "summary.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        changes = []
        if (run_dir / "resume_changes.csv").exists():
            with open(run_dir / "resume_changes.csv", newline="") as f:
                changes = list(csv.DictReader(f))
    except (OSError, yaml.YAMLError):
        return False
    wanted = {k: v for k, v in _plain(cfg).items() if k not in _DRIVING_KEYS}
    same = (isinstance(saved, dict)
            and {k: v for k, v in saved.items() if k not in _DRIVING_KEYS} == wanted)
    steps = steps_of(cfg)
    epochs = {(int(r["step"]), int(r["epoch"])) for r in rows if r.get("step") and r.get("epoch")}
    complete = epochs == {(s, e) for s in steps for e in range(1, cfg["epochs"] + 1)}
    as_configured = not any(row.get("step") in {str(s) for s in steps} for row in changes)
    return same and complete and as_configured and (run_dir / f"step{steps[-1]}" / "best.pth").is_file()


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
    try:
        run_dir = run(config, rest)
    except TrainError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr, flush=True)
        return 2
    except OSError as exc:  # the machine, not the code: full or read-only disk, missing folder
        where = f" {exc.filename}" if exc.filename else ""
        print(f"error: cannot access{where}: {exc.strerror or exc}; fix that and rerun (add --resume "
              "to continue a run that saved checkpoints)", file=sys.stderr, flush=True)
        return 2
    interrupted = getattr(run.last_trainer, "interrupted", None)
    if run.last_trainer.is_main:
        print(f"run directory: {run_dir}", flush=True)
    return 128 + interrupted if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
