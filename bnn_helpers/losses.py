"""Training objectives and the distillation teacher.

* ``kd``: the distribution loss of ReActNet / BNN-BN — cross-entropy between the
  teacher's softmax and the student's log-softmax; labels are not used. Written
  as timm's ``SoftTargetCrossEntropy`` applied to ``softmax(teacher_logits)``.
* ``ce``: ``nn.CrossEntropyLoss`` with optional label smoothing.

Teachers: ``timm.create_model(name, pretrained=True)``, ``torchvision:<name>``
with its default weights, or ``teacher_checkpoint`` (a ``.pth`` file or a run
directory of this engine — e.g. the real-valued ``float_cnn`` the CPU tutorial
trains on digits). :class:`SmallTeacherCNN` is that small real-valued teacher.
"""
from __future__ import annotations

import socket
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy

from .config import TrainError

__all__ = ["SmallTeacherCNN", "Objective", "load_teacher", "num_classes_of",
           "find_checkpoint"]


class SmallTeacherCNN(nn.Module):
    """A small real-valued CNN (VGG-like, BN + ReLU) for 32x32 inputs: the CPU tutorial's teacher.

    Three stages of two 3x3 convs (``32, 64, 128`` channels times ``width_mult``),
    max-pool between stages, global average pool, linear classifier.
    """

    def __init__(self, num_classes: int = 10, width_mult: float = 1.0, in_chans: int = 3):
        super().__init__()
        widths = [max(8, int(round(c * width_mult))) for c in (32, 64, 128)]
        layers, cin = [], in_chans
        for i, w in enumerate(widths):
            if i:
                layers.append(nn.MaxPool2d(2))
            for _ in range(2):
                layers += [nn.Conv2d(cin, w, 3, padding=1, bias=False), nn.BatchNorm2d(w),
                           nn.ReLU(inplace=True)]
                cin = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        self.num_classes, self.width_mult = num_classes, width_mult

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))

    def get_classifier(self) -> nn.Linear:
        return self.fc


class Objective(nn.Module):
    """``loss(student_logits, labels, teacher_logits=None)`` for ``kd`` or ``ce``."""

    def __init__(self, kind: str = "ce", label_smoothing: float = 0.0):
        super().__init__()
        if kind not in ("kd", "ce"):
            raise TrainError(f"unknown loss {kind!r}; valid: kd, ce")
        self.kind = kind
        self.soft_ce = SoftTargetCrossEntropy()
        self.ce = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def forward(self, student_logits, labels, teacher_logits=None):
        if self.kind == "kd":
            target = F.softmax(teacher_logits.float(), dim=-1)
            return self.soft_ce(student_logits.float(), target)
        return self.ce(student_logits.float(), labels)


def num_classes_of(model: nn.Module) -> int | None:
    """Output classes of a classifier: ``num_classes`` attribute, else the last Linear's outputs."""
    n = getattr(model, "num_classes", None)
    if isinstance(n, int):
        return n
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


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


def _torch_load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TrainError(f"cannot load {path} with weights_only=True ({type(exc).__name__}); "
                         "save it as a plain state_dict") from None


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


def load_teacher(cfg: dict, num_classes: int) -> nn.Module:
    """The frozen, eval-mode teacher for ``cfg`` on CPU; its class count must match the data's."""
    if cfg["teacher_checkpoint"]:
        path = find_checkpoint(cfg["teacher_checkpoint"])
        ckpt = _torch_load(path)
        if isinstance(ckpt, dict) and "model" in ckpt and "config" in ckpt:
            from .train import model_from_checkpoint  # engine checkpoint: its own architecture

            ckpt_classes = ckpt.get("num_classes")
            if ckpt_classes != num_classes:
                raise TrainError(f"teacher checkpoint {path} has {ckpt_classes} classes but the "
                                 f"dataset has {num_classes}; use a teacher trained on this dataset")
            teacher = model_from_checkpoint(ckpt)
        else:
            state = ckpt.get("state_dict", ckpt.get("model", ckpt)) if isinstance(ckpt, dict) else ckpt
            state = {k.removeprefix("module."): v for k, v in state.items()}
            name = cfg["teacher"]
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
                teacher.load_state_dict(state)
            except RuntimeError as exc:
                raise TrainError(f"teacher checkpoint {path} does not fit {cfg['teacher']!r} with "
                                 f"{num_classes} classes: {str(exc).splitlines()[0]}") from None
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
