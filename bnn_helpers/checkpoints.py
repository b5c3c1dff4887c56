"""Model building and checkpoint I/O: the networks a config names, engine checkpoints
read and written, and the RNG state they carry.

* :func:`build_model` — the network a config names, for one training step;
* :func:`find_checkpoint`, :func:`read_checkpoint`, :func:`load_weights_only` — reading
  (always ``torch.load(weights_only=True)``, with a CRC check of the zip members);
* :func:`model_from_checkpoint`, :func:`load_trained` — a trained network back, on the CPU;
* :func:`atomic_save`, :func:`write_atomically` — writing without ever leaving a torn file;
* :func:`rng_state`, :func:`set_rng_state` — RNG states as tensors and lists, so that a
  weights-only load reads them back.
"""
from __future__ import annotations

import contextlib
import errno
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from .config import CorruptCheckpointError, TrainError, checkpoint_damage, checkpoint_load_error

__all__ = ["build_model", "initial_model", "initial_conv_weights", "model_from_checkpoint", "load_trained", "find_checkpoint", "read_checkpoint",
           "load_weights_only", "load_model_state", "strip_data_parallel_prefix", "atomic_save",
           "write_atomically", "write_error", "rng_state", "set_rng_state"]


# --------------------------------------------------------------------------- building
def build_model(cfg: dict, binary_weights: bool, num_classes: int) -> nn.Module:
    """The student (or teacher) network a config names, for one training step."""
    import timm  # the registry below registers our models with timm on import

    from .models import create_model, float_cnn, list_models

    name = cfg["model"]
    if name == "float_cnn":
        return float_cnn(num_classes=num_classes, width_mult=cfg["width_mult"])
    if name.startswith("timm:"):
        if not timm.is_model(name[5:]):
            raise TrainError(f"unknown timm model {name[5:]!r}")
        return timm.create_model(name[5:], pretrained=False, num_classes=num_classes)
    if name not in list_models():
        raise TrainError(f"unknown model {name!r}; valid: {', '.join(list_models())}, float_cnn, "
                         "timm:<name>")
    kwargs = dict(binary_weights=binary_weights, num_classes=num_classes, alpha=cfg["alpha"],
                  beta_schedule=cfg["beta_schedule"], width_mult=cfg["width_mult"],
                  estimator=cfg["estimator"])
    if name.startswith("reactnet_18"):
        small = cfg["dataset"] in ("cifar10", "cifar100", "digits", "photos")
        kwargs["stem"] = cfg["stem"] or ("cifar" if small else "imagenet")
    return create_model(name, **kwargs)


def initial_model(run_dir: str | os.PathLike, seed: int, num_classes: int, step: int = 1) -> nn.Module:
    """A run's step-``step`` network as it was at initialisation: built from the run's
    ``config.yaml`` right after ``torch.manual_seed(seed)``, as the engine seeds and then builds."""
    import yaml

    cfg = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
    torch.manual_seed(seed)
    return build_model(cfg, binary_weights=step == 2, num_classes=num_classes)


def initial_conv_weights(run_dir: str | os.PathLike, seed: int, num_classes: int,
                         step: int = 1) -> list[torch.Tensor]:
    """The convolution weights (every 4-D tensor of the state dict) of :func:`initial_model`.
    Two runs whose lists are equal tensor by tensor started training from the same convolutions."""
    net = initial_model(run_dir, seed, num_classes, step)
    return [w for w in net.state_dict().values() if w.dim() == 4]


# --------------------------------------------------------------------------- reading
def find_checkpoint(path: str | Path, prefer=("step2", "step1"), which: str = "best") -> Path:
    """A checkpoint file from a file path or an engine run directory (step2 before step1)."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        for step in prefer:
            candidate = path / step / f"{which}.pth"
            if candidate.is_file():
                return candidate
        raise TrainError(f"run directory {path} holds no {'/'.join(prefer)}/{which}.pth; "
                         "train it first or pass the checkpoint file")
    raise TrainError(f"checkpoint {path} not found; pass an existing .pth file or run directory")


def load_weights_only(path: str | Path):
    """``torch.load(path, weights_only=True)`` on the CPU, refusing damaged files.

    One-line :class:`TrainError` otherwise: a truncated or damaged file (also one whose
    bytes fail the zip CRC, which ``torch.load`` alone would load) is a
    :class:`~bnn_helpers.config.CorruptCheckpointError`; a file refused for holding
    more than tensors names the blocked global.
    """
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise checkpoint_load_error(path, exc) from None
    damage = checkpoint_damage(path)
    if damage:
        raise CorruptCheckpointError(f"{path} is corrupt (truncated or damaged: {damage})")
    return loaded


def read_checkpoint(path: str | Path) -> dict:
    """An engine checkpoint (model, config, class count, ...), see :func:`load_weights_only`."""
    ckpt = load_weights_only(path)
    if not (isinstance(ckpt, dict) and {"model", "config", "num_classes"} <= ckpt.keys()):
        raise TrainError(f"{path} is not a checkpoint of the bnn_helpers engine; load a plain "
                         "state_dict with create_model(...).load_state_dict(...) instead")
    return ckpt


def is_engine_checkpoint(ckpt) -> bool:
    """Whether a loaded object is an engine checkpoint (rather than a plain state_dict)."""
    return isinstance(ckpt, dict) and {"model", "config"} <= ckpt.keys()


def strip_data_parallel_prefix(state: dict) -> dict:
    """A copy of a state_dict without the ``module.`` prefix DataParallel/DDP add."""
    state = dict(state)
    consume_prefix_in_state_dict_if_present(state, "module.")
    return state


def load_model_state(model: nn.Module, state: dict, source: str, model_name: str) -> None:
    """``model.load_state_dict(state)``, or one line naming ``source`` when it does not fit."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise TrainError(f"{source} does not fit model {model_name!r}: "
                         f"{str(exc).splitlines()[0]}; check --model/--width-mult") from None


def model_from_checkpoint(ckpt: dict, binary_weights: bool | None = None) -> nn.Module:
    """Rebuild the network an engine checkpoint (a loaded ``.pth`` dict) holds, in eval mode.

    ``binary_weights=None`` builds the network of the checkpoint's own step; ``True``
    with a step-1 checkpoint gives the network step 2 starts from (binary weights
    initialised from step 1's real ones).
    """
    binary = ckpt.get("step") == 2 if binary_weights is None else binary_weights
    model = build_model(ckpt["config"], binary_weights=binary, num_classes=ckpt["num_classes"])
    model.load_state_dict(ckpt["model"])
    return model.eval()


def load_trained(path: str | Path, step: int | None = None, which: str = "best",
                 binary_weights: bool | None = None) -> nn.Module:
    """A network trained by the engine, from a run directory or a ``.pth`` file, on the CPU.

    ``step`` picks the checkpoint of a run directory (default: step 2 if it exists,
    else step 1); ``which`` is ``"best"`` or ``"last"``; ``binary_weights`` as in
    :func:`model_from_checkpoint`. For example, the step-2 network right after
    binarization, before any step-2 training::

        load_trained(run_dir, step=1, binary_weights=True)
    """
    prefer = ("step2", "step1") if step is None else (f"step{int(step)}",)
    return model_from_checkpoint(read_checkpoint(find_checkpoint(path, prefer, which)), binary_weights)


# --------------------------------------------------------------------------- writing
def temporary_of(path: Path) -> Path:
    """The temporary file a save to ``path`` writes first (named by the writing process)."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def _tensor_bytes(obj) -> int:
    """Bytes of the tensors in a nested checkpoint (about its size on disk)."""
    if isinstance(obj, torch.Tensor):
        return obj.nelement() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def write_error(path: Path, exc: BaseException, needed: int, advice: str) -> TrainError:
    """One line naming the path and the cause of a failed write (disk full, read-only, ...)."""
    chain, seen = [], exc
    while seen is not None and len(chain) < 8:  # torch's zip writer wraps the OSError it met
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    os_error = next((e for e in chain if isinstance(e, OSError)), None)
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if os_error is not None:
        cause = os_error.strerror or str(os_error)
    elif free is not None and free < needed:  # torch.save to a path reports only "unexpected pos"
        cause = os.strerror(errno.ENOSPC)
    else:
        cause = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    space = (f" ({needed / 2**20:.1f} MiB to write, {free / 2**20:.1f} MiB free there)"
             if free is not None and needed else "")
    return TrainError(f"cannot write {path}: {cause}{space}; {advice}")


def write_atomically(path: Path, write, needed: int = 0, advice: str = "nothing was replaced") -> None:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it over ``path``.

    A crash never leaves a torn ``path``; on any failure the temporary file is removed
    and ``path`` keeps its previous content; a write error becomes one line.
    """
    tmp = temporary_of(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(exc, (OSError, RuntimeError)):
            raise write_error(path, exc, needed, advice) from None
        raise


def atomic_save(obj, path: Path, advice: str = "nothing was replaced") -> None:
    """torch.save to a temporary file, synced, then renamed over ``path``.

    A crash never leaves a torn file; a failed save (disk full, ...) removes the
    temporary file, keeps the previous ``path`` and raises one-line :class:`TrainError`.
    """
    def write(tmp):
        with open(tmp, "wb") as f:  # a file object: torch then surfaces the OSError (ENOSPC ...)
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename makes it the checkpoint

    write_atomically(path, write, _tensor_bytes(obj), advice)


# --------------------------------------------------------------------------- RNG state
def rng_state() -> dict:
    """RNG states as tensors and lists, so ``torch.load(weights_only=True)`` reads them."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
             "python": [py_state[0], list(py_state[1]), py_state[2]]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["gauss"]))
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
