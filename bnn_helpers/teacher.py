"""The distillation teacher: a pretrained timm / torchvision network, or a checkpoint.

``timm.create_model(name, pretrained=True)``, ``torchvision:<name>`` with its
default weights, or ``teacher_checkpoint`` (a ``.pth`` file or a run directory of
the engine, e.g. the real-valued ``float_cnn`` the CPU tutorial trains on digits).
The teacher comes back frozen, in eval mode, on the CPU.
"""
from __future__ import annotations

import socket

import torch.nn as nn

from .checkpoints import (find_checkpoint, is_engine_checkpoint, load_weights_only,
                          model_from_checkpoint, strip_data_parallel_prefix)
from .config import TrainError

__all__ = ["load_teacher", "num_classes_of"]


def num_classes_of(model: nn.Module) -> int | None:
    """Output classes of a classifier: ``num_classes`` attribute, else the last Linear's outputs."""
    n = getattr(model, "num_classes", None)
    if isinstance(n, int):
        return n
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


def _online(host: str = "huggingface.co") -> bool:
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return True
    except OSError:
        return False


def _pretrained_teacher(name: str) -> nn.Module:
    if name.startswith("torchvision:"):
        import torchvision

        arch = name.split(":", 1)[1]
        try:
            return torchvision.models.get_model(arch, weights="DEFAULT")
        except ValueError:
            raise TrainError(f"unknown torchvision teacher {arch!r}") from None
        except Exception as exc:
            raise TrainError(f"teacher weights for {name!r} are unavailable ({type(exc).__name__}); "
                             "offline? cache them once online, or pass --teacher-checkpoint PATH") from None
    import timm

    if not timm.is_model(name):
        raise TrainError(f"unknown teacher {name!r}; use a timm model name, 'torchvision:<name>', "
                         "or --teacher-checkpoint PATH")
    import huggingface_hub.constants as hf_constants

    offline = not _online()
    previous = hf_constants.HF_HUB_OFFLINE
    if offline:  # use the local cache only instead of retrying the network for a minute
        hf_constants.HF_HUB_OFFLINE = True
    try:
        return timm.create_model(name, pretrained=True)
    except Exception as exc:
        why = "no network and not in the local cache" if offline else type(exc).__name__
        raise TrainError(f"teacher weights for {name!r} are unavailable ({why}); download them once "
                         "online (they are cached), or pass --teacher-checkpoint PATH") from None
    finally:
        hf_constants.HF_HUB_OFFLINE = previous


def _teacher_from_state_dict(name: str, state: dict, num_classes: int, path) -> nn.Module:
    """A plain state_dict into the architecture ``--teacher`` names."""
    if name.startswith("torchvision:"):
        import torchvision

        teacher = torchvision.models.get_model(name.split(":", 1)[1], num_classes=num_classes)
    else:
        import timm

        if not timm.is_model(name):
            raise TrainError(f"unknown teacher architecture {name!r} for {path}; "
                             "set --teacher to its timm name")
        teacher = timm.create_model(name, pretrained=False, num_classes=num_classes)
    try:
        teacher.load_state_dict(strip_data_parallel_prefix(state))
    except RuntimeError as exc:
        raise TrainError(f"teacher checkpoint {path} does not fit {name!r} with "
                         f"{num_classes} classes: {str(exc).splitlines()[0]}") from None
    return teacher


def load_teacher(cfg: dict, num_classes: int) -> nn.Module:
    """The frozen, eval-mode teacher for ``cfg`` on CPU; its class count must match the data's."""
    if cfg["teacher_checkpoint"]:
        path = find_checkpoint(cfg["teacher_checkpoint"])
        ckpt = load_weights_only(path)
        if is_engine_checkpoint(ckpt):  # its own architecture
            ckpt_classes = ckpt.get("num_classes")
            if ckpt_classes != num_classes:
                raise TrainError(f"teacher checkpoint {path} has {ckpt_classes} classes but the "
                                 f"dataset has {num_classes}; use a teacher trained on this dataset")
            teacher = model_from_checkpoint(ckpt)
        else:
            state = ckpt.get("state_dict", ckpt.get("model", ckpt)) if isinstance(ckpt, dict) else ckpt
            teacher = _teacher_from_state_dict(cfg["teacher"], state, num_classes, path)
    else:
        teacher = _pretrained_teacher(cfg["teacher"])
        classes = num_classes_of(teacher)
        if classes != num_classes:
            raise TrainError(f"teacher {cfg['teacher']!r} predicts {classes} classes but the dataset "
                             f"has {num_classes}; pass --teacher-checkpoint with a teacher trained on it")
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher
