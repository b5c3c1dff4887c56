"""Checks before a run touches its run directory: may it start there, is the checkpoint a
``--resume`` continues from intact and trained with these settings, does step 2 have step
1's weights, and does the network take these images at this batch size. Reads only; the
:class:`ResumePlan` it returns does the resumed run's bookkeeping when it writes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from .checkpoints import build_model, find_checkpoint, load_model_state, read_checkpoint, set_rng_state
from .config import TrainError
from .run_dir import DRIVING_KEYS, append_rows, plain, summary_key, trim_rows, write_config

__all__ = ["RESUME_ADJUSTABLE", "RESUME_FREE", "ResumePlan", "preflight", "plan_resume", "fallback_hint",
           "step1_weights", "check_input_fits", "check_classes", "started_steps", "checkpoint_path"]

#: the settings ``--resume`` may change: applied from the resumed position on and recorded
RESUME_ADJUSTABLE = ("epochs", "lr")
#: settings free on resume: where and how the run executes, not what the checkpoint means
RESUME_FREE = DRIVING_KEYS + (
    "step", "device", "workers", "pin_memory", "data_dir", "download", "compile", "channels_last",
    "deterministic", "eval_batch_size", "tensorboard", "track_stats", "stats_every",
    "step1_checkpoint", "teacher_checkpoint")


@dataclass
class ResumePlan:
    """The checkpoint ``--resume`` continues from, checked, and what the resumed run owes
    its run directory: rows and ``last.pth`` it replaces go before its first write,
    ``config.yaml`` and ``resume_changes.csv`` follow its first checkpoint."""
    step: int
    path: Path
    ckpt: dict | None
    epoch: int
    changes: dict                        # key -> (before, after), settings the resume changes
    start: tuple | None = None           # (step, epoch, batch) where the changes take effect
    _done: set = field(default_factory=set)

    def restore(self, run, lr: float, model_name: str) -> dict:
        """Load the checkpoint into a step's model, optimizer, scheduler, scaler, position and
        RNGs (a new ``lr`` from the resumed position on); returns the checkpoint."""
        ckpt, self.ckpt = self.ckpt, None  # the step holds what it needs; free the copy
        load_model_state(run.model, ckpt["model"], str(self.path), model_name)
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.scheduler.load_state_dict(ckpt["scheduler"])
        if run.scaler is not None and ckpt.get("scaler"):
            run.scaler.load_state_dict(ckpt["scaler"])
        if self.changes:  # lr and epochs as now requested, from the resumed position on
            run.scheduler.base_lrs = [lr] * len(run.optimizer.param_groups)
            for group, factor in zip(run.optimizer.param_groups, run.scheduler.lr_lambdas):
                group["initial_lr"] = lr
                group["lr"] = lr * factor(run.scheduler.last_epoch)
        run.state.update(epoch=ckpt["epoch"], batch=ckpt["batch_in_epoch"], best_top1=ckpt["best_top1"],
                         elapsed=ckpt["elapsed_s"], partial=ckpt.get("partial"))
        self.start = (self.step, run.state["epoch"], run.state["batch"])
        set_rng_state(ckpt["rng"])
        return ckpt

    def before_first_write(self, run_dir: Path, advice: str, log) -> None:
        """Drop the summary rows the resumed run replaces; keep a replaced last.pth as last.pth.old."""
        if "before" in self._done:
            return
        self._done.add("before")
        step, epoch = self.step, self.epoch
        trim_rows(run_dir / "summary.csv", lambda r: summary_key(r) <= (step, epoch), advice)
        last = checkpoint_path(run_dir, step, "last")
        if self.path != last and last.exists():  # resumed from best.pth: keep, not lose, last.pth
            kept = last.with_name("last.pth.old")
            for n in range(1, 1000):
                if not kept.exists():
                    break
                kept = last.with_name(f"last.pth.old{n}")
            os.replace(last, kept)
            log(f"[step {step}] {last} replaced by the run resumed from {self.path}; kept as {kept}")

    def after_first_save(self, run_dir: Path, cfg: dict, advice: str) -> None:
        """config.yaml and resume_changes.csv now describe what the checkpoints hold."""
        if "after" in self._done:
            return
        self._done.add("after")
        write_config(run_dir, cfg, advice)
        if self.changes:
            at_step, at_epoch, at_batch = self.start
            rows = [{"step": at_step, "epoch": at_epoch, "batch": at_batch, "key": key,
                     "before": before, "after": after}
                    for key, (before, after) in self.changes.items()]
            append_rows(run_dir / "resume_changes.csv", rows, advice)


def checkpoint_path(run_dir: Path, step: int, which: str) -> Path:
    """``run_dir/step{step}/{which}.pth`` (which: last or best)."""
    return run_dir / f"step{step}" / f"{which}.pth"


def started_steps(run_dir: Path, steps: list[int]) -> list[int]:
    """Steps of a run that already hold a checkpoint (last or best)."""
    return [s for s in steps
            if checkpoint_path(run_dir, s, "last").exists() or checkpoint_path(run_dir, s, "best").exists()]


def check_classes(ckpt: dict, path: Path, num_classes: int):
    """A checkpoint continues or starts a run only on data with its class count."""
    if ckpt.get("num_classes") != num_classes:
        raise TrainError(f"checkpoint {path} has {ckpt.get('num_classes')} classes but the "
                         f"dataset has {num_classes}; use a checkpoint of this dataset")


def preflight(cfg: dict, run_dir: Path, steps: list[int], world: int, num_classes: int):
    """Every check that needs no training, before the run directory is touched: the run
    may start here, a resumed checkpoint is intact and fits the settings, step 2 has
    step 1's weights, and the network takes these images at this batch size.

    Returns ``(resume plan or None, (state_dict, where) of step 1's weights or None)``.
    """
    started = started_steps(run_dir, steps)
    if started and not cfg["resume"] and not cfg["overwrite"]:
        raise TrainError(f"{run_dir} already holds step {started[0]} checkpoints; pass "
                         "--resume to continue, --overwrite to start again, or another --name")
    plan = plan_resume(cfg, run_dir, steps, num_classes) if cfg["resume"] else None
    weights = None
    if steps == [2] and not (plan is not None and plan.step == 2):
        weights = step1_weights(cfg, run_dir, num_classes)
    check_input_fits(cfg, steps[0], world, num_classes)
    return plan, weights

def step1_weights(cfg: dict, run_dir: Path, num_classes: int) -> tuple[dict, str]:
    """(state_dict, where) of the step-1 network a separate step-2 run starts from."""
    wanted = Path(cfg["step1_checkpoint"] or run_dir / "step1" / "best.pth")
    if not (wanted.is_file() or (wanted / "step1" / "best.pth").is_file()):
        raise TrainError(f"step 2 needs step 1's weights: {wanted} not found; run step 1 "
                         "first or pass --step1-checkpoint PATH")
    source = find_checkpoint(wanted, prefer=("step1",))
    ckpt = read_checkpoint(source)
    check_classes(ckpt, source, num_classes)
    return ckpt["model"], str(source)

def check_input_fits(cfg: dict, first_step: int, world: int, num_classes: int):
    """The network takes the data's image size, and BatchNorm never sees a single value."""
    from .models import BinaryNet  # lazily: the registry imports timm's model zoo

    if cfg["model"].startswith("timm:"):
        return  # arbitrary timm networks: their own errors at the first batch
    folder = cfg["dataset"] in ("imagenet", "folder")
    size = cfg["image_size"] if folder else 32
    what = f"--image-size {size}" if folder else f"{cfg['dataset']} images ({size} px)"
    local_batch = cfg["batch_size"] // world
    with torch.device("meta"):  # shapes only: no memory, no weights initialised
        model = build_model(cfg, binary_weights=(first_step == 2), num_classes=num_classes)
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
            f"per process gives each a single value to normalise; use --batch-size {2 * world} "
            f"or more (batch_size is global, over {world} process(es)), or larger images")

def plan_resume(cfg: dict, run_dir: Path, steps: list[int], num_classes: int) -> ResumePlan:
    """Read and check the checkpoint ``--resume`` continues from; writes nothing.

    The checkpoint of the latest started step is loaded (earlier steps are finished),
    must be intact, of this dataset, and trained with the requested settings up to
    :data:`RESUME_ADJUSTABLE` and the run-only settings.
    """
    started = started_steps(run_dir, steps)
    if not started:
        raise TrainError(f"--resume: no step{steps[0]}/last.pth under {run_dir}; "
                         "run without --resume to start")
    step, which = started[-1], cfg["resume_from"]
    path = checkpoint_path(run_dir, step, which)
    try:
        if not path.exists():
            raise TrainError(f"--resume: {path} does not exist")
        ckpt = read_checkpoint(path)
    except TrainError as exc:
        raise TrainError(f"{exc}; {fallback_hint(run_dir, step, which)}") from None
    check_classes(ckpt, path, num_classes)
    saved, current = ckpt["config"], plain(cfg)
    changed = [k for k in current
               if k in saved and k not in RESUME_FREE and saved[k] != current[k]]
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
    return ResumePlan(step, path, ckpt, ckpt["epoch"], {k: (saved[k], current[k]) for k in changed})

def fallback_hint(run_dir: Path, step: int, which: str) -> str:
    """The next-best intact checkpoint of a step, as the option that resumes from it."""
    other = "best" if which == "last" else "last"
    path = checkpoint_path(run_dir, step, other)
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
