"""The real-valued teacher of the CPU tutorial: a small VGG-like CNN (BN + ReLU).

Registered with timm as ``float_cnn`` (the name configs use), outside
:func:`bnn_helpers.models.list_models`, which lists the binary networks only.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.models import register_model

__all__ = ["SmallTeacherCNN", "float_cnn"]


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


@register_model
def float_cnn(pretrained: bool = False, num_classes: int = 10, width_mult: float = 1.0,
              in_chans: int = 3, **kwargs) -> SmallTeacherCNN:
    """timm entry point of :class:`SmallTeacherCNN` (config name ``float_cnn``)."""
    if pretrained:
        raise ValueError("no pretrained weights are hosted for 'float_cnn'; train it with "
                         "bnn_helpers.train.run(None, model='float_cnn', ...)")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)  # timm passes these to every entry point
    if kwargs:
        raise TypeError(f"float_cnn got unexpected arguments {sorted(kwargs)}")
    return SmallTeacherCNN(num_classes, width_mult, in_chans)
