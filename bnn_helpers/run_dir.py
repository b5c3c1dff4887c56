"""The run directory of a training run: ``config.yaml``, ``summary.csv`` (one row per
epoch), ``resume_changes.csv``, and the rules that keep them consistent with the
checkpoints (rows appended or taken back whole, rewrites atomic, leftovers of killed
processes removed), plus :func:`finished_run`, which tells a complete run.
"""
from __future__ import annotations

import contextlib
import csv
import os
import shutil
from pathlib import Path

import yaml

from .checkpoints import write_atomically, write_error
from .config import steps_of

__all__ = ["SUMMARY_COLUMNS", "RESUME_CHANGE_COLUMNS", "DRIVING_KEYS", "plain", "summary_key",
           "append_rows", "take_back", "trim_rows", "write_config", "remove_stale_temporaries",
           "remove_if_only_config", "finished_run"]

SUMMARY_COLUMNS = ["epoch", "step", "lr", "train_loss", "train_top1", "train_top5", "val_loss",
                   "val_top1", "val_top5", "images_per_s", "agc_clip_share", "elapsed_s"]
#: resume_changes.csv: one row per setting a resume changed
RESUME_CHANGE_COLUMNS = ["step", "epoch", "batch", "key", "before", "after"]
#: settings that change how a run is driven, logged or named, not what it computes
DRIVING_KEYS = ("resume", "overwrite", "resume_from", "progress", "log_every", "threads", "run_dir",
                "output_dir", "name")
_COLUMNS = {"summary.csv": SUMMARY_COLUMNS, "resume_changes.csv": RESUME_CHANGE_COLUMNS}


def plain(value):
    """Config values as YAML/pickle-safe builtins."""
    return yaml.safe_load(yaml.safe_dump(value))


def summary_key(row: dict) -> tuple[int, int] | None:
    """(step, epoch) of a summary.csv row; None for a torn row."""
    try:
        return int(row["step"]), int(row["epoch"])
    except (KeyError, TypeError, ValueError):
        return None


def take_back(path: Path, size: int) -> None:
    """Cut a CSV back to ``size`` bytes (removed when that leaves it empty)."""
    with contextlib.suppress(OSError):
        if size:
            os.truncate(path, size)  # needs no free space, unlike a rewrite
        else:
            path.unlink()


def append_rows(path: Path, rows: list[dict], advice: str) -> int:
    """Append rows to ``summary.csv`` or ``resume_changes.csv`` (header first in a new file);
    returns the file's previous size, to take the rows back. A failed write leaves no torn row."""
    size = path.stat().st_size if path.exists() else 0
    try:
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=_COLUMNS[path.name])
            if size == 0:
                writer.writeheader()
            writer.writerows(rows)
    except OSError as exc:
        take_back(path, size)
        raise write_error(path, exc, 0, advice) from None
    return size


def trim_rows(path: Path, keep, advice: str) -> None:
    """Rewrite a CSV (atomically) with only the rows ``keep(row)`` accepts; torn summary rows go."""
    if not path.exists():
        return
    whole = (lambda row: summary_key(row) is not None) if path.name == "summary.csv" else (lambda row: True)
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if whole(r) and keep(r)]

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=_COLUMNS[path.name])
            writer.writeheader()
            writer.writerows(rows)

    write_atomically(path, write, advice=advice)


def write_config(run_dir: Path, cfg: dict, advice: str) -> None:
    """``config.yaml``: the resolved config without the settings that only start the run."""
    saved = {k: v for k, v in cfg.items() if k not in ("resume", "overwrite", "resume_from")}
    text = yaml.safe_dump(plain(saved), sort_keys=False)
    write_atomically(run_dir / "config.yaml", lambda tmp: tmp.write_text(text), advice=advice)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(run_dir: Path) -> None:
    """Temporary files of saves that a killed process (SIGKILL, power loss) left behind."""
    for tmp in [*run_dir.glob(".*.tmp*"), *run_dir.glob("step*/.*.tmp*")]:
        pid = tmp.name.rsplit(".tmp", 1)[-1]
        if not (pid.isdigit() and (int(pid) == os.getpid() or _process_alive(int(pid)))):
            tmp.unlink(missing_ok=True)


def remove_if_only_config(run_dir: Path) -> None:
    """A run that failed before saving anything leaves no run directory behind."""
    files = [f for f in run_dir.rglob("*") if not f.is_dir()]
    if [f.name for f in files] == ["config.yaml"]:
        shutil.rmtree(run_dir, ignore_errors=True)


def finished_run(run_dir: str | Path, cfg: dict) -> bool:
    """Whether ``run_dir`` holds a complete run of the resolved config ``cfg``.

    Complete: the saved ``config.yaml`` equals ``cfg`` up to :data:`DRIVING_KEYS`,
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
    wanted = {k: v for k, v in plain(cfg).items() if k not in DRIVING_KEYS}
    same = (isinstance(saved, dict)
            and {k: v for k, v in saved.items() if k not in DRIVING_KEYS} == wanted)
    steps = steps_of(cfg)
    epochs = {(int(r["step"]), int(r["epoch"])) for r in rows if r.get("step") and r.get("epoch")}
    complete = epochs == {(s, e) for s in steps for e in range(1, cfg["epochs"] + 1)}
    as_configured = not any(row.get("step") in {str(s) for s in steps} for row in changes)
    return same and complete and as_configured and (run_dir / f"step{steps[-1]}" / "best.pth").is_file()
