"""Training configuration: defaults, YAML loading, command-line overrides, validation.

A config is a flat dict (keys below). ``load_config(path, overrides)`` reads a
YAML file, applies overrides (``{"lr": 1e-3}`` or ``["--lr", "1e-3"]``), coerces
types, and rejects unknown keys and impossible values with :class:`TrainError`.
This module does not import torch, so the notebook launcher stays cheap.
"""
from __future__ import annotations

import difflib
import math
import os
import pickle
import re
import zipfile
from pathlib import Path

import yaml

__all__ = ["TrainError", "DivergedError", "CorruptCheckpointError", "RefusedCheckpointError", "DEFAULTS",
           "load_config", "resolve_config", "parse_cli_overrides", "run_dir_of", "describe_keys",
           "checkpoint_load_error", "checkpoint_damage", "is_float_model", "steps_of", "PUBLISHED_RECIPE", "recipe_rows", "differing_keys"]


class TrainError(Exception):
    """Bad input to the engine; ``main()`` prints ``error: <message>`` and exits 2."""


class DivergedError(TrainError):
    """The loss or the weights became non-finite: the engine stopped the run, nothing of it saved.

    A result, not a mistake in the input: the message names where it happened
    ("loss became non-finite in step 1, epoch 1, batch 15; stopped, ...")."""


class CorruptCheckpointError(TrainError):
    """A checkpoint file that is truncated or damaged (its bytes, not its contents, are wrong)."""


class RefusedCheckpointError(TrainError, pickle.UnpicklingError):
    """A checkpoint that ``torch.load(weights_only=True)`` refuses: it holds more than tensors and
    plain containers. Also an ``UnpicklingError``, the type torch raises for it."""


def checkpoint_damage(path: str | os.PathLike) -> str | None:
    """Why a zip-format checkpoint is damaged (truncated, or a member failing its CRC), else None.

    ``torch.load`` does not check CRCs, so a flipped byte in the tensor data loads silently.
    Files of the legacy (non-zip) format are not checked.
    """
    try:
        with open(path, "rb") as f:
            is_zip = f.read(4) == b"PK\x03\x04"
        if not is_zip:
            return None
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError):
        return "incomplete zip archive"
    return f"member {bad} fails its CRC check" if bad else None


def checkpoint_load_error(path, exc: BaseException) -> TrainError:
    """The one-line error for a failed ``torch.load(path, weights_only=True)``.

    A refused pickle (:class:`RefusedCheckpointError`) names the global it holds; anything else
    that stops the load is a truncated or damaged file (:class:`CorruptCheckpointError`).
    """
    if isinstance(exc, OSError):
        return TrainError(f"cannot read checkpoint {path}: {exc.strerror or exc}")
    text = str(exc)
    blocked = re.findall(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if blocked:
        return RefusedCheckpointError(
            f"{path} was refused by weights-only loading: it holds {blocked[0]}, not only tensors and "
            "plain containers; re-save it as a state_dict of tensors, or, if you trust the file, allow "
            f"the type with torch.serialization.add_safe_globals([{blocked[0]}])")
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        why = "empty file"
    else:
        why = checkpoint_damage(path) or (text.strip().splitlines() or [type(exc).__name__])[0]
        if "Unsupported operand" in text or "invalid load key" in text:
            why = "not a PyTorch checkpoint"  # what random bytes look like to the unpickler
    return CorruptCheckpointError(f"{path} is corrupt (truncated or damaged: {why[:160]})")


# key -> (default, type, help). Type None means "any YAML value".
_SPEC: dict[str, tuple] = {
    # run
    "name": ("run", str, "run name; the run directory is output_dir/name"),
    "output_dir": (None, str, "parent folder of run directories (default: bnn_helpers.paths.runs_dir())"),
    "run_dir": (None, str, "explicit run directory (overrides output_dir/name)"),
    "overwrite": (False, bool, "start afresh even if run_dir already holds checkpoints"),
    "resume": (False, bool, "continue from run_dir/step*/last.pth; only epochs and lr may change "
                            "(recorded in resume_changes.csv)"),
    "resume_from": ("last", str, "checkpoint --resume continues from: last, or best (e.g. when "
                                 "last.pth is corrupt; the old last.pth is kept as last.pth.old)"),
    "step": ("both", str, "'both' (step 1 then step 2), '1' or '2'"),
    "step1_checkpoint": (None, str, "step-1 checkpoint (file or run dir) to start step 2 from"),
    "seed": (0, int, "seed of weights, data order and augmentation"),
    "deterministic": (True, bool, "deterministic algorithms (exact on CPU)"),
    "device": ("auto", str, "auto, cpu or cuda"),
    "threads": (None, int, "CPU threads for torch (default: torch's choice); 1 on a busy machine"),
    # model
    "model": ("reactnet_a_bf", str, "bnn_helpers model name, 'float_cnn', or 'timm:<name>'"),
    "width_mult": (1.0, float, "channel width multiplier"),
    "alpha": (0.2, float, "residual branch scale (bf only)"),
    "beta_schedule": ("published", str, "published or nf"),
    "estimator": ("approx", str, "sign backward: approx, ste or identity"),
    "stem": (None, str, "reactnet_18 stem: imagenet or cifar"),
    # data
    "dataset": ("digits", str, "imagenet, cifar10, cifar100, digits, photos or folder"),
    "data_dir": (None, str, "dataset root (ImageFolder root holds train/ and val/)"),
    "download": (True, bool, "download torchvision datasets when missing"),
    "image_size": (224, int, "training crop size (imagenet/folder)"),
    "val_resize": (None, int, "validation resize before the centre crop (default size/0.875)"),
    "crop_scale_min": (0.08, float, "RandomResizedCrop minimum area"),
    "lighting_std": (0.0, float, "PCA lighting noise std on [0,1] images; 0 = off, as the "
                     "published runs effectively were; 0.1 = AlexNet's lighting (a deviation)"),
    "augment": (True, bool, "training augmentation on/off"),
    "batch_size": (256, int, "GLOBAL training batch size (split over processes)"),
    "eval_batch_size": (None, int, "global validation batch size (default batch_size)"),
    "workers": (8, int, "data-loading worker processes per training process"),
    "pin_memory": (True, bool, "pinned host memory for GPU copies"),
    "max_train_batches": (None, int, "stop each epoch after this many batches (quick runs)"),
    # optimisation
    "epochs": (256, int, "epochs per step"),
    "lr": (5e-4, float, "initial learning rate"),
    "lr_schedule": ("published", str, "published (lr*(1-e/E) stepped before epoch e=1..E), "
                                      "linear (e=0..E-1) or constant"),
    "optimizer": ("adam", str, "adam or sgd"),
    "momentum": (0.9, float, "SGD momentum"),
    "weight_decay_step1": (1e-5, float, "weight decay on 4-D parameters in step 1"),
    "weight_decay_step2": (0.0, float, "weight decay on 4-D parameters in step 2"),
    "agc": (True, bool, "adaptive gradient clipping (all but the classifier)"),
    "agc_clip_factor": (0.02, float, "AGC clip factor lambda"),
    "agc_eps": (1e-3, float, "AGC epsilon"),
    "amp": ("none", str, "none, bf16 or fp16 (fp16 on CUDA only)"),
    "channels_last": (False, bool, "channels_last memory format"),
    "compile": (False, bool, "torch.compile the student"),
    # objective
    "loss": ("ce", str, "kd (teacher distribution) or ce"),
    "label_smoothing": (0.0, float, "label smoothing of the ce loss"),
    "teacher": ("dm_nfnet_f0", str, "timm name or 'torchvision:<name>' (pretrained)"),
    "teacher_checkpoint": (None, str, "teacher weights: a .pth file or an engine run directory"),
    # logging
    "track_stats": (False, bool, "record diagnostics to stats.csv"),
    "stats_every": (10, int, "record stats every N iterations"),
    "tensorboard": (False, bool, "write TensorBoard events (if installed)"),
    "progress": ("auto", str, "auto, tqdm, log or none"),
    "log_every": (50, int, "batches between plain log lines"),
}

DEFAULTS = {k: v[0] for k, v in _SPEC.items()}
_CHOICES = {
    "step": ("both", "1", "2"), "device": ("auto", "cpu", "cuda"), "resume_from": ("last", "best"),
    "beta_schedule": ("published", "nf"), "estimator": ("approx", "ste", "identity"),
    "dataset": ("imagenet", "cifar10", "cifar100", "digits", "photos", "folder"),
    "lr_schedule": ("published", "linear", "constant"), "optimizer": ("adam", "sgd"),
    "amp": ("none", "bf16", "fp16"), "loss": ("kd", "ce"),
    "progress": ("auto", "tqdm", "log", "none"), "stem": (None, "imagenet", "cifar"),
}
_POSITIVE = ("threads", "epochs", "lr", "batch_size", "eval_batch_size", "width_mult", "image_size",
             "val_resize", "log_every", "stats_every", "max_train_batches", "agc_clip_factor")
_NON_NEGATIVE = ("workers", "weight_decay_step1", "weight_decay_step2", "label_smoothing",
                 "lighting_std", "momentum", "agc_eps", "alpha")


def describe_keys() -> str:
    """One line per key: name, default, meaning (for ``--help``)."""
    return "\n".join(f"  --{k.replace('_', '-'):<22} {str(d):<14} {h}" for k, (d, _, h) in _SPEC.items())


def _unknown_key(key: str) -> TrainError:
    close = difflib.get_close_matches(key, list(_SPEC), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return TrainError(f"unknown config key {key!r}{hint}; see `python -m bnn_helpers.train --help`")


def _coerce(key: str, value):
    kind = _SPEC[key][1]
    if value is None or kind is None:
        return value
    if isinstance(value, str) and kind is not str:
        parsed = yaml.safe_load(value) if value.strip() else None
        value = parsed
        if value is None:
            return None
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                return value.lower() in ("true", "yes", "1")
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)  # also "5e-4", which YAML 1.1 reads as a string
        return str(value)
    except (TypeError, ValueError):
        raise TrainError(f"config key {key!r} expects {kind.__name__}, got {value!r}") from None


def parse_cli_overrides(argv: list[str]) -> dict:
    """``["--lr", "1e-3", "--track-stats", "--agc=false"]`` -> ``{"lr": "1e-3", ...}`` (strings)."""
    out, i = {}, 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--") or token == "--":
            raise TrainError(f"unexpected argument {token!r}; options look like --key value")
        body = token[2:]
        if "=" in body:
            key, value = body.split("=", 1)
            i += 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            key, value = body, argv[i + 1]
            i += 2
        else:  # a bare flag means true
            key, value = body, "true"
            i += 1
        key = key.replace("-", "_")
        if key not in _SPEC:
            raise _unknown_key(key)
        out[key] = value
    return out


def resolve_config(base: dict | None = None, overrides: dict | None = None) -> dict:
    """Defaults <- base <- overrides, coerced and validated. Returns a new plain dict."""
    cfg = dict(DEFAULTS)
    for source in (base or {}), (overrides or {}):
        for key, value in source.items():
            key = key.replace("-", "_")
            if key not in _SPEC:
                raise _unknown_key(key)
            cfg[key] = _coerce(key, value)
    cfg["step"] = str(cfg["step"])
    for key, choices in _CHOICES.items():
        if cfg[key] not in choices:
            valid = ", ".join(str(c) for c in choices if c is not None)
            raise TrainError(f"unknown {key} {cfg[key]!r}; valid: {valid}")
    for key in _POSITIVE:
        v = cfg[key]
        if v is not None and not (v > 0 and math.isfinite(v)):
            raise TrainError(f"{key} must be > 0, got {v!r}")
    for key in _NON_NEGATIVE:
        if cfg[key] < 0 or not math.isfinite(cfg[key]):
            raise TrainError(f"{key} must be >= 0, got {cfg[key]!r}")
    if cfg["dataset"] in ("imagenet", "folder") and not cfg["data_dir"]:
        raise TrainError(f"dataset {cfg['dataset']!r} needs --data-dir (a folder holding train/ and val/)")
    return cfg


def load_config(config: str | os.PathLike | dict | None = None, overrides=None) -> dict:
    """Read a YAML file (or take a dict), apply overrides (dict or CLI list), validate."""
    if isinstance(overrides, (list, tuple)):
        overrides = parse_cli_overrides(list(overrides))
    if config is None:
        base = {}
    elif isinstance(config, dict):
        base = config
    else:
        path = Path(config)
        if not path.is_file():
            raise TrainError(f"config file {str(path)!r} not found; pass e.g. --config configs/digits/reactnet_a_bf.yaml")
        try:
            base = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as exc:
            raise TrainError(f"config file {str(path)!r} is not UTF-8 text (byte {exc.object[exc.start]:#04x} "
                             f"at offset {exc.start}); pass a YAML recipe such as "
                             "configs/digits/reactnet_a_bf.yaml") from None
        except yaml.YAMLError as exc:
            raise TrainError(f"config file {str(path)!r} is not valid YAML: {exc}".splitlines()[0]) from None
        except OSError as exc:
            raise TrainError(f"cannot read config file {str(path)!r}: {exc.strerror}") from None
        if not isinstance(base, dict):
            raise TrainError(f"config file {str(path)!r} must hold a mapping of key: value")
    return resolve_config(base, overrides)


def is_float_model(cfg: dict) -> bool:
    """Real-valued models (teachers) have a single training step."""
    return cfg["model"] == "float_cnn" or cfg["model"].startswith("timm:")


def steps_of(cfg: dict) -> list[int]:
    """The training steps a config runs: [1, 2], [1] or [2] (real-valued models: [1])."""
    step = cfg["step"]
    if is_float_model(cfg):
        if step == "2":
            raise TrainError(f"{cfg['model']} is real-valued: it has no step 2; use --step 1")
        return [1]
    return [1, 2] if step == "both" else [int(step)]


def run_dir_of(cfg: dict) -> Path:
    """The run directory a resolved config writes to."""
    if cfg["run_dir"]:
        return Path(cfg["run_dir"])
    if cfg["output_dir"]:
        return Path(cfg["output_dir"]) / cfg["name"]
    from .paths import runs_dir  # BNN_RUNS_DIR or <repo>/runs

    return runs_dir() / cfg["name"]


#: The published two-step ImageNet recipe (the paper plus its released code, docs/reference.md §5):
#: (setting, published value, config key, the value the ImageNet config must hold).
PUBLISHED_RECIPE = [
    ("steps", "both (step 1, then step 2 from step 1's best)", "step", "both"),
    ("epochs per step", 256, "epochs", 256),
    ("global batch", 256, "batch_size", 256),
    ("optimizer", "Adam", "optimizer", "adam"),
    ("learning rate", 5e-4, "lr", 5e-4),
    ("lr schedule", "lr·(1 − e/E), before each epoch", "lr_schedule", "published"),
    ("weight decay, step 1 (4-D params)", 1e-5, "weight_decay_step1", 1e-5),
    ("weight decay, step 2", 0.0, "weight_decay_step2", 0.0),
    ("loss", "KD: CE(teacher softmax, student log-softmax)", "loss", "kd"),
    ("teacher", "dm_nfnet_f0 (timm, ImageNet-pretrained)", "teacher", "dm_nfnet_f0"),
    ("AGC clip factor λ (not the classifier)", 0.02, "agc_clip_factor", 0.02),
    ("AGC eps", 1e-3, "agc_eps", 1e-3),
    ("train crop (RandomResizedCrop)", 224, "image_size", 224),
    ("crop scale min", 0.08, "crop_scale_min", 0.08),
    # The published code adds lighting noise to the uint8 image and truncates it back, which
    # removes almost all of it; its numbers were obtained without lighting (reference §5).
    ("PCA lighting std", "0.1 written, ≈ 0 in effect", "lighting_std", 0.0),
    ("eval resize → centre crop 224", 256, "val_resize", 256),
    ("α, residual-branch scale (bf)", 0.2, "alpha", 0.2),
    ("β_l, expected input std per block (bf)", "published schedule", "beta_schedule", "published"),
]


def recipe_rows(cfg: dict) -> list[dict]:
    """:data:`PUBLISHED_RECIPE` beside a resolved config: setting, published, config key/value, matches."""
    return [{"setting": what, "published": value, "config key": key, "config value": cfg.get(key),
             "matches": cfg.get(key) == expected} for what, value, key, expected in PUBLISHED_RECIPE]


def differing_keys(configs: dict) -> list[str]:
    """The keys whose values differ between the resolved configs of ``configs`` (``{label: cfg}``), sorted.

    Values are compared by ``repr``, so ``1`` and ``1.0`` count as different.
    """
    keys = set().union(*(cfg.keys() for cfg in configs.values()))
    return sorted(key for key in keys if len({repr(cfg.get(key)) for cfg in configs.values()}) > 1)
