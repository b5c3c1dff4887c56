"""``photos``: a 21-class real-image task built from the photos scikit-image and scikit-learn ship.

Digits (8x8 strokes) is too easy to separate the three normalization modes:
every one of them fits it. This task is harder and natural-image-like while
needing no download: each class is one photo (19 from ``skimage.data``, the two
``sklearn.datasets.load_sample_images``), and a sample is a random square
patch of 24-63 px resized to 32x32. Which photo a patch came from has to be
read off texture, colour and local structure.

Train patches come from the left 80 % of every photo and validation patches
from the right 20 %, so no validation pixel was ever seen in training. The
patches are drawn once with a fixed generator (``PHOTOS_SEED``), independent of
the training seed, then normalised per channel with the training split's
statistics and kept in memory like digits.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .config import TrainError

__all__ = ["PHOTO_CLASSES", "PHOTOS_SEED", "load_photos", "load_photo_patches", "one_per_class", "to_display"]

# skimage.data functions whose files ship inside the scikit-image wheel (no pooch
# download). ``cat`` is left out: it is the same photo as ``chelsea``.
_SKIMAGE = ("astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "colorwheel",
            "grass", "gravel", "hubble_deep_field", "immunohistochemistry", "moon", "page",
            "retina", "rocket", "text", "stereo_motorcycle", "cell")
_SKLEARN = ("china.jpg", "flower.jpg")
PHOTO_CLASSES = _SKIMAGE + tuple(name.split(".")[0] for name in _SKLEARN)
PHOTOS_SEED = 0
TRAIN_FRACTION = 0.8
PATCH_SIDES = (24, 63)  # inclusive range of the square patch's side before resizing


def _as_rgb(image: np.ndarray) -> torch.Tensor:
    """(3, H, W) float in [0, 1] from a grey, RGB or RGBA uint8 array."""
    t = torch.tensor(np.asarray(image), dtype=torch.float32) / 255.0
    if t.dim() == 2:
        t = t.unsqueeze(-1).expand(-1, -1, 3)
    return t[..., :3].permute(2, 0, 1).contiguous()


def load_photos() -> list[torch.Tensor]:
    """The 21 photos, in :data:`PHOTO_CLASSES` order, as (3, H, W) tensors in [0, 1]."""
    try:
        import skimage.data
    except ImportError:
        raise TrainError("the photos dataset needs scikit-image: pip install scikit-image") from None
    from sklearn.datasets import load_sample_images

    photos = []
    for name in _SKIMAGE:
        image = getattr(skimage.data, name)()
        photos.append(_as_rgb(image[0] if isinstance(image, tuple) else image))
    sample = load_sample_images()
    by_name = {path.rsplit("/", 1)[-1]: img for path, img in zip(sample.filenames, sample.images)}
    photos += [_as_rgb(by_name[name]) for name in _SKLEARN]
    return photos


def _patches(photo: torch.Tensor, count: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """``count`` random square patches of ``photo`` (side in PATCH_SIDES), resized to ``size``."""
    _, height, width = photo.shape
    out = torch.empty(count, 3, size, size)
    hi = min(PATCH_SIDES[1], height, width)
    for i in range(count):
        side = int(torch.randint(PATCH_SIDES[0], hi + 1, (), generator=gen))
        top = int(torch.randint(0, height - side + 1, (), generator=gen))
        left = int(torch.randint(0, width - side + 1, (), generator=gen))
        crop = photo[:, top:top + side, left:left + side].unsqueeze(0)
        out[i] = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False,
                               antialias=True)[0]
    return out


def load_photo_patches(size: int = 32, train_per_class: int = 300, val_per_class: int = 60):
    """``((x_train, y_train), (x_val, y_val))``: patches of every photo, split by photo column.

    ``x`` is (N, 3, size, size), normalised per channel with the training
    patches' mean and std; ``y`` is the photo's index in :data:`PHOTO_CLASSES`.
    """
    gen = torch.Generator().manual_seed(PHOTOS_SEED)
    splits = {"train": ([], []), "val": ([], [])}
    for label, photo in enumerate(load_photos()):
        cut = int(photo.shape[-1] * TRAIN_FRACTION)
        for split, region, count in (("train", photo[..., :cut], train_per_class),
                                     ("val", photo[..., cut:], val_per_class)):
            splits[split][0].append(_patches(region, count, size, gen))
            splits[split][1].append(torch.full((count,), label, dtype=torch.long))
    (xt, yt), (xv, yv) = [(torch.cat(x), torch.cat(y)) for x, y in splits.values()]
    mean = xt.mean(dim=(0, 2, 3), keepdim=True)
    std = xt.std(dim=(0, 2, 3), keepdim=True)
    return ((xt - mean) / std, yt), ((xv - mean) / std, yv)


def one_per_class(y: torch.Tensor) -> list[int]:
    """The index of the first sample of every class ``0 ... y.max()``, in class order."""
    return [int((y == c).nonzero()[0]) for c in range(int(y.max()) + 1)]


def to_display(x: torch.Tensor) -> torch.Tensor:
    """Normalised patches (N, 3, H, W) as (N, H, W, 3) RGB in [0, 1] for ``imshow``.

    Each channel is rescaled to the min–max of the whole set ``x``. The photos
    span [0, 1] in every channel and the normalisation is per channel, so on a
    large set (e.g. every validation patch) this undoes it up to the extremes
    the set happens to hold; within one set all patches are rescaled alike.
    """
    low, high = x.amin((0, 2, 3), keepdim=True), x.amax((0, 2, 3), keepdim=True)
    return ((x - low) / (high - low).clamp(min=1e-12)).permute(0, 2, 3, 1)
