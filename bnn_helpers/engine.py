"""The training engine: :class:`Trainer` runs the steps of one config — data, teacher,
checks before anything is written, then per step the model, the epoch loop
(:func:`~bnn_helpers.training_step.training_step` per batch), validation, the summary
row and the checkpoints. Entry points (CLI, :func:`~bnn_helpers.train.run`) are in
:mod:`bnn_helpers.train`.
"""
from __future__ import annotations

import math
import shutil
import signal
import time
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

from .agc import parameters_except_classifier
from .checkpoints import (atomic_save, build_model, load_model_state, read_checkpoint, rng_state,
                          write_atomically)
from .config import DivergedError, TrainError, run_dir_of, steps_of
from .data import build_datasets, make_loader
from .losses import Objective
from .preflight import checkpoint_path, preflight, started_steps
from .progress import Progress
from .run_dir import (SUMMARY_COLUMNS, append_rows, plain, remove_if_only_config, remove_stale_temporaries,
                      summary_key, take_back, trim_rows, write_config)
from .runtime import resolve_device, seed_everything, setup_distributed
from .sign_stats import StatsRecorder
from .teacher import load_teacher
from .metrics import topk_hits
from .training_step import autocast, make_optimizer, make_scheduler, training_step

__all__ = ["Trainer", "Interrupted"]


class Interrupted(Exception):
    """A signal stopped the run after saving ``last.pth``."""

    def __init__(self, signum):
        self.signum = signum


@dataclass
class _StepRun:
    """One training step in progress: its network, optimizer and position."""
    step: int
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    #: what a checkpoint saves of the position: epochs done, batches done in the next one,
    #: best validation top-1, seconds so far, running sums of a part-done epoch
    state: dict = field(default_factory=lambda: {"epoch": 0, "batch": 0, "best_top1": -1.0,
                                                 "elapsed": 0.0, "partial": None})
    best_state: dict | None = None   # the best epoch's weights (CPU), for the next step
    train_model: nn.Module | None = None   # model, or its DDP / compiled wrapper
    agc_params: list | None = None
    recorder: StatsRecorder | None = None   # with --track-stats
    tensorboard: object = None       # SummaryWriter with --tensorboard
    progress: Progress | None = None

    def close(self):
        for part in (self.progress, self.recorder, self.tensorboard):
            if part is not None:
                part.close()


class Trainer:
    """One run: data, teacher, and the steps of the config. Use :func:`bnn_helpers.train.run`."""

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
        return checkpoint_path(self.run_dir, step, which)

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
        return started_steps(self.run_dir, self.steps)

    def _next_move(self) -> str:
        """How to go on after a failure: resume when this run holds checkpoints, else rerun."""
        if self._started_steps():
            return "continue with --resume; the earlier checkpoints are intact"
        return "rerun"

    def preflight(self):
        """Checks that need no training, before the run directory changes (see :mod:`.preflight`)."""
        self.resume_plan, self.step1_weights = preflight(self.cfg, self.run_dir, self.steps, self.world,
                                                         self.num_classes)

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
            remove_stale_temporaries(self.run_dir)
            if not cfg["resume"]:
                if cfg["overwrite"]:
                    for s in self.steps:
                        shutil.rmtree(self.run_dir / f"step{s}", ignore_errors=True)
                    if self.steps[0] == 1:
                        (self.run_dir / "stats.csv").unlink(missing_ok=True)
                # Rows of these steps without checkpoints are left by a failed run: drop them.
                trim_rows(self.run_dir / "summary.csv",
                          lambda row: summary_key(row)[0] not in self.steps, self._write_advice())
                steps = {str(s) for s in self.steps}
                trim_rows(self.run_dir / "resume_changes.csv", lambda row: row.get("step") not in steps,
                          self._write_advice())
                write_config(self.run_dir, cfg, self._write_advice())
        self._barrier()

    def _write_advice(self) -> str:
        return f"free space and {self._next_move()}"

    def _before_resumed_writes(self):
        """Main process, before the resumed run writes its first row or checkpoint (once)."""
        if self.resume_plan is not None and self.is_main:
            self.resume_plan.before_first_write(self.run_dir, self._write_advice(), self._log)

    def _after_first_resumed_save(self):
        """Main process, once the resumed run saved a checkpoint (once)."""
        if self.resume_plan is not None and self.is_main:
            self.resume_plan.after_first_save(self.run_dir, self.cfg, self._write_advice())

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
        optimizer = make_optimizer(model, cfg["optimizer"], cfg["lr"], cfg[f"weight_decay_step{step}"],
                                   cfg["momentum"])
        return optimizer, make_scheduler(optimizer, cfg["lr_schedule"], cfg["epochs"])

    # ---------------------------------------------------------------- one step
    def fit_step(self, step: int, init_state: dict | None) -> dict | None:
        """Train one step; returns the best model state (CPU) for the next step."""
        plan = self.resume_plan
        if plan is not None and step < plan.step:
            return None  # finished before the resumed step began; that step needs no weights from it
        run = self._build_step(step)
        if plan is not None and step == plan.step:
            finished = self._resume_step(run)
            if finished is not None:
                return finished
        elif step == 2:
            self._init_step2(run, init_state)
        self._attach_step(run)
        try:
            while run.state["epoch"] < self.cfg["epochs"]:
                self._fit_epoch(run)
        finally:
            run.close()
        if run.best_state is None:  # resumed after the best epoch: read it back
            run.best_state = read_checkpoint(self._ckpt(step, "best"))["model"]
        return run.best_state

    def _build_step(self, step: int) -> _StepRun:
        """A fresh network, optimizer, scheduler and (fp16) scaler for ``step``, seeded."""
        cfg = self.cfg
        seed_everything(cfg["seed"] + self.rank)
        model = build_model(cfg, binary_weights=(step == 2), num_classes=self.num_classes)
        model.to(self.device)
        if cfg["channels_last"]:
            model = model.to(memory_format=torch.channels_last)
        optimizer, scheduler = self._optimizer(model, step)
        scaler = torch.amp.GradScaler("cuda") if cfg["amp"] == "fp16" else None
        return _StepRun(step, model, optimizer, scheduler, scaler)

    def _resume_step(self, run: _StepRun) -> dict | None:
        """Continue ``run`` from the checkpoint of the resume plan; the best weights (CPU)
        when that checkpoint already ends the step, else None."""
        cfg, plan, step, state = self.cfg, self.resume_plan, run.step, run.state
        source, ckpt = plan.path, plan.restore(run, cfg["lr"], cfg["model"])
        self.last_good[step] = (source, state["epoch"], state["batch"])
        if state["epoch"] >= cfg["epochs"] and not state["batch"]:
            best = self._ckpt(step, "best")
            if source != self._ckpt(step, "last") and self.is_main:
                # best.pth is the final epoch: it stands in for a missing or damaged last.pth
                self._before_resumed_writes()
                write_atomically(self._ckpt(step, "last"), lambda tmp: shutil.copyfile(source, tmp),
                                 source.stat().st_size, self._write_advice())
                self._after_first_resumed_save()
            return read_checkpoint(best)["model"] if best.exists() else ckpt["model"]
        changes = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in plan.changes.items())
        self._log(f"[step {step}] resuming from {source} (epoch {state['epoch']}"
                  + (f", batch {state['batch']}" if state["batch"] else "")
                  + (f"; {changes}, recorded in resume_changes.csv)" if changes else ")"))
        return None

    def _init_step2(self, run: _StepRun, init_state: dict | None):
        """Step 2 starts from step 1's best weights (of this run, or of --step1-checkpoint)."""
        if self.resume_plan is not None and self.resume_plan.start is None:
            self.resume_plan.start = (2, 0, 0)  # resumed run: its changes start here
        if init_state is None:
            init_state, where = self.step1_weights
        else:
            where = "step 1's best weights"
        load_model_state(run.model, init_state, where, self.cfg["model"])
        self._log(f"[step 2] initialised from {where}")

    def _attach_step(self, run: _StepRun):
        """What trains ``run.model`` (DDP, compile) and what watches it (stats, tensorboard, progress)."""
        cfg = self.cfg
        self.current_model = run.model
        run.train_model = run.model
        if self.world > 1:
            run.train_model = nn.parallel.DistributedDataParallel(
                run.model, device_ids=[self.device.index] if self.device_kind == "cuda" else None)
        if cfg["compile"]:
            run.train_model = torch.compile(run.train_model)
        if cfg["track_stats"] and self.is_main:
            run.recorder = StatsRecorder(self.run_dir, every=cfg["stats_every"])
        run.tensorboard = self._tensorboard()
        run.agc_params = parameters_except_classifier(run.model) if cfg["agc"] else None
        run.progress = Progress(cfg["progress"], self.is_main, cfg["log_every"])

    def _fit_epoch(self, run: _StepRun):
        """Train and validate one epoch (or the rest of a resumed one), then record and save it."""
        cfg, step, state = self.cfg, run.step, run.state
        epoch = state["epoch"] + 1  # 1-based, as in summary.csv
        if not state["batch"]:
            with warnings.catch_warnings():  # stepping before optimizer.step() is the recipe
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                run.scheduler.step()  # published: the epoch's lr is set before it runs
        lr = run.optimizer.param_groups[0]["lr"]
        train = self._train_epoch(run, epoch)
        val = self.evaluate(run.model)
        if not self._weights_finite(run.model) or not math.isfinite(val["loss"]):
            what = (f"weights became non-finite (validation loss {val['loss']:.4g})"
                    if not self._weights_finite(run.model) else f"validation loss is {val['loss']}")
            raise DivergedError(self._divergence_message(step, epoch, None, what))
        state["elapsed"] += train["time"] + val["time"]
        row = {"epoch": epoch, "step": step, "lr": lr, "train_loss": train["loss"],
               "train_top1": train["top1"], "train_top5": train["top5"],
               "val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"],
               "images_per_s": train["images"] / max(train["time"], 1e-9),
               "agc_clip_share": train["clip"], "elapsed_s": state["elapsed"]}
        is_best = val["top1"] > state["best_top1"]
        if is_best:
            state["best_top1"] = val["top1"]
            run.best_state = {k: v.detach().to("cpu", copy=True) for k, v in run.model.state_dict().items()}
        state.update(epoch=epoch, batch=0, partial=None)
        if self.is_main:
            self._record_epoch(run, row, is_best)
        self._log(f"[step {step}] epoch {epoch}/{cfg['epochs']} lr {lr:.3g} "
                  f"train loss {row['train_loss']:.4f} top1 {row['train_top1']:.2f} | "
                  f"val loss {row['val_loss']:.4f} top1 {row['val_top1']:.2f} "
                  f"top5 {row['val_top5']:.2f} | {row['images_per_s']:.0f} img/s")
        self._barrier()
        if self.stop_agreed:  # the signal came in the epoch's last batch: saved above
            raise Interrupted(self.stop_agreed)

    def _record_epoch(self, run: _StepRun, row: dict, is_best: bool):
        """Main process: the epoch's summary row and its checkpoint, both or neither."""
        self._before_resumed_writes()
        summary = self.run_dir / "summary.csv"
        summary_size = append_rows(summary, [row], self._write_advice())
        try:
            self._save(run, is_best)
        except BaseException:  # no row for an epoch without its checkpoint
            if self.last_good.get(run.step, (None, None, None))[1:] != (row["epoch"], 0):
                take_back(summary, summary_size)
            raise
        if run.tensorboard is not None:
            for key in SUMMARY_COLUMNS[2:]:
                run.tensorboard.add_scalar(f"step{run.step}/{key}", row[key], row["epoch"])

    def _train_epoch(self, run: _StepRun, epoch: int) -> dict:
        """The training batches of one epoch, from ``run.state["batch"]`` on; the epoch's means."""
        cfg, step, progress = self.cfg, run.step, run.progress
        loader = self.train_loader
        start = run.state["batch"]
        loader.set_epoch(epoch, start)
        batches = loader.sampler.num_batches()
        # Running sums: loss*n, top-1 hits, top-5 hits, images, clip-share sum, clipped batches, seconds.
        sums = list(run.state["partial"]) if run.state["partial"] else [0.0] * 7
        device_sums = torch.zeros(6, dtype=torch.float64, device=self.device)
        postfix_every = 10 if progress.mode == "tqdm" else cfg["log_every"]
        run.train_model.train()
        progress.start(batches, f"step {step} epoch {epoch}")
        if start and progress.bar is not None:
            progress.bar.update(start)
        t0 = time.perf_counter()
        for i, (x, y) in enumerate(loader, start=start):
            x, y = self._to_device(x, y)
            iteration = (epoch - 1) * batches + i + 1
            recorder = run.recorder
            before_update = (None if recorder is None else
                             partial(recorder.before_optimizer_step, run.model, step, epoch, iteration))
            loss, logits, clip_share = training_step(
                run.train_model, x, y, self.objective, run.optimizer, teacher=self.teacher,
                amp=cfg["amp"], scaler=run.scaler, agc_params=run.agc_params,
                agc_clip_factor=cfg["agc_clip_factor"], agc_eps=cfg["agc_eps"], before_update=before_update)
            if recorder is not None:
                # The tensor, not a float: the recorder reads it only on recorded
                # iterations, so other steps keep no host-device sync.
                recorder.after_optimizer_step(run.model, step, epoch, iteration, clip_share)
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
            if self._stop_agreed(step, epoch, done, batches, device_sums) and done < batches:
                # mid-epoch: save the position; the epoch end saves itself
                sums = self._merge(sums, device_sums, time.perf_counter() - t0)
                run.state.update(batch=done, partial=sums)
                if self.is_main:
                    self._save(run, False)
                raise Interrupted(self.stop_agreed)
        progress.close()
        sums = self._merge(sums, device_sums, time.perf_counter() - t0)
        loss_sum, hit1, hit5, images, clip_sum, clip_n, seconds = sums
        return {"loss": loss_sum / images, "top1": 100 * hit1 / images, "top5": 100 * hit5 / images,
                "images": images, "clip": clip_sum / clip_n if clip_n else math.nan, "time": seconds}

    def _stop_agreed(self, step: int, epoch: int, done: int, batches: int, device_sums) -> bool:
        """After batch ``done``: raise on a non-finite loss; whether all processes agree to
        stop on a signal. Checked every ``check_every`` batches (each check syncs the device)."""
        flags = [float(self.stop_signal or 0), 0.0]
        if done % self.check_every == 0 or done == batches:
            flags[1] = 0.0 if math.isfinite(float(device_sums[0])) else 1.0
            if self.world > 1:  # every process must agree to stop at the same batch
                flags = self._all_reduce(flags, dist.ReduceOp.MAX)
        elif self.world > 1:
            flags[0] = 0.0  # a signal waits for the next agreed batch (no per-batch sync)
        if flags[1]:
            raise DivergedError(self._divergence_message(step, epoch, done, "loss became non-finite"))
        if flags[0]:
            self.stop_agreed = int(flags[0])
        return bool(flags[0])

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

    def _save(self, run: _StepRun, is_best: bool):
        step, model, state = run.step, run.model, run.state
        if not self._weights_finite(model):  # never let a diverged state replace a good checkpoint
            epoch = state["epoch"] + (1 if state["batch"] else 0)
            raise DivergedError(self._divergence_message(step, epoch, state["batch"] or None,
                                                         "weights became non-finite"))
        self._before_resumed_writes()
        ckpt = {"model": model.state_dict(), "optimizer": run.optimizer.state_dict(),
                "scheduler": run.scheduler.state_dict(),
                "scaler": run.scaler.state_dict() if run.scaler is not None else None,
                "epoch": state["epoch"], "batch_in_epoch": state["batch"],
                "partial": state["partial"], "best_top1": state["best_top1"],
                "elapsed_s": state["elapsed"], "rng": rng_state(), "step": step,
                "num_classes": self.num_classes, "config": plain(self.cfg)}
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
                if self.created_run_dir:
                    remove_if_only_config(self.run_dir)
            raise
        return self.run_dir
