"""Datasets and loaders for the training engine.

``build_datasets(cfg) -> (train, val, num_classes)`` for

* ``imagenet`` / ``folder``: ImageFolder ``data_dir/train`` and ``data_dir/val``;
  training augmentation is what produced the published numbers:
  RandomResizedCrop(size, scale (0.08, 1)) and horizontal flip; evaluation
  resize (256 for 224) and centre crop. PCA lighting noise is opt-in
  (``lighting_std``, default 0): the published code adds it to uint8 images
  and truncates back to uint8, which only lowers a channel by 1/255 about half
  the time, so its runs were effectively trained without lighting.
* ``cifar10`` / ``cifar100``: torchvision, random crop 32 pad 4 + flip, each
  normalised with its own training set's channel statistics.
* ``digits``: scikit-learn's bundled 8x8 digits (real data, offline), upsampled
  to 32x32 with 3 channels, a fixed seeded 1437/360 split, kept in memory.
* ``photos``: 21 classes of 32x32 patches of the photos scikit-image and
  scikit-learn ship (:mod:`bnn_helpers.photos`), 6300/1260, kept in memory.

``write_image_folder`` writes a small ImageNet-layout folder of real JPEGs (the
handwritten digits in white ink over crops of the sample photos), so the
``folder`` / ``imagenet`` path can run offline; ``pipeline_images_per_second``
times one data-loading worker on such a folder.

``make_loader`` shards every global batch over the processes so that N
processes with batch B/N see exactly the samples one process sees with batch B.
Data order depends only on (seed, epoch), which makes resuming mid-epoch exact
for in-memory data and ``workers: 0``; with loader workers, augmentation after a
mid-epoch resume differs (batches land on other workers), the order does not.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import DataLoader, Dataset, Sampler

from .config import TrainError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR100_MEAN",
           "CIFAR100_STD", "IMAGENET_PCA_EIGVAL", "IMAGENET_PCA_EIGVEC",
           "Lighting", "InMemoryDataset", "load_digits_tensors", "build_datasets",
           "ShardedBatchSampler", "EpochLoader", "make_loader", "write_image_folder",
           "pipeline_images_per_second"]

IMAGENET_MEAN, IMAGENET_STD = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD  # timm's constants
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
# Principal components of ImageNet RGB pixels (in [0, 1]); AlexNet / fb.resnet.torch.
IMAGENET_PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009),
                       (-0.5808, -0.0045, -0.8140),
                       (-0.5836, -0.6948, 0.4203))
DIGITS_SPLIT_SEED = 0  # fixed: the split never depends on the training seed
DIGITS_VAL_SIZE = 360


class Lighting:
    """PCA lighting noise on a (3, H, W) tensor in [0, 1]: ``x + V (a * eigval)``, ``a ~ N(0, std)``.

    This is real lighting (AlexNet's), a deviation from the published runs,
    whose lighting was truncated away on uint8 images; enable it with
    ``lighting_std`` > 0.
    """

    def __init__(self, std: float = 0.1, eigval=IMAGENET_PCA_EIGVAL, eigvec=IMAGENET_PCA_EIGVEC):
        self.std = std
        self.eigval = torch.tensor(eigval)
        self.eigvec = torch.tensor(eigvec)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if self.std == 0:
            return img
        alpha = torch.randn(3) * self.std
        rgb = self.eigvec @ (alpha * self.eigval)
        return img + rgb.view(3, 1, 1)

    def __repr__(self):
        return f"Lighting(std={self.std})"


class InMemoryDataset(Dataset):
    """Images and labels as two tensors; the engine batches them without a DataLoader."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes):
        self.images, self.labels, self.classes = images, labels, list(classes)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


def load_digits_tensors(size: int = 32):
    """scikit-learn digits as (N, 3, size, size) float tensors, split 1437/360 with a fixed seed.

    Pixels (0..16) are scaled to [0, 1], upsampled bilinearly, and standardized
    with the training split's mean and std.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    images = images.expand(-1, 3, -1, -1).contiguous()
    labels = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(DIGITS_SPLIT_SEED))
    val_idx, train_idx = order[:DIGITS_VAL_SIZE], order[DIGITS_VAL_SIZE:]
    mean, std = images[train_idx].mean(), images[train_idx].std()
    images = (images - mean) / std
    return (images[train_idx], labels[train_idx]), (images[val_idx], labels[val_idx])


def write_image_folder(root, train_per_class: int, val_per_class: int, size=40, classes: int = 10,
                       seed: int = 0) -> Path:
    """Write an ImageNet-layout folder of real JPEGs and return ``root``.

    ``root/train/digit_<k>/*.jpg`` and ``root/val/digit_<k>/*.jpg`` for
    ``k < classes`` (at most 10): each image is one of scikit-learn's handwritten
    digits, upsampled and drawn in white ink over a darkened random crop of
    scikit-learn's two sample photos, so the label is learnable and the files
    decode like photographs. ``size``: an int (square) or ``(width, height)``;
    small images are cut from a 128-pixel crop and resized, large ones (e.g.
    ImageNet-like 500x375) are cut from the photo at full resolution. No digit is
    in both splits. Deterministic for a given ``seed``.
    """
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits, load_sample_images

    width, height = (size, size) if isinstance(size, int) else size
    if not 1 <= classes <= 10:
        raise ValueError(f"classes must be 1..10 (one per digit), got {classes}")
    digits, photos = load_digits(), load_sample_images().images
    # Crop at least 128 pixels on the short side, so a small image shows a scene, not one texture.
    zoom = max(1.0, 128 / min(width, height))
    crop_w, crop_h = round(width * zoom), round(height * zoom)
    if crop_h > min(p.shape[0] for p in photos) or crop_w > min(p.shape[1] for p in photos):
        raise ValueError(f"size {width}x{height} does not fit in the sample photos (640x427)")
    root = Path(root)
    rng = np.random.default_rng(seed)
    for label in range(classes):
        chosen = rng.permutation(np.flatnonzero(digits.target == label))
        for split, picks in (("train", chosen[:train_per_class]),
                             ("val", chosen[train_per_class:train_per_class + val_per_class])):
            folder = root / split / f"digit_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in picks:
                photo = photos[rng.integers(len(photos))]
                top, left = rng.integers(photo.shape[0] - crop_h), rng.integers(photo.shape[1] - crop_w)
                # Darkened background, so the white digit stays readable on bright photos.
                background = Image.fromarray(photo[top:top + crop_h, left:left + crop_w] // 2)
                background = background.resize((width, height))
                ink = Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8))
                ink = ink.resize((width, height), Image.BILINEAR)
                Image.composite(Image.new("RGB", (width, height), "white"), background, ink).save(
                    folder / f"{i:04d}.jpg", quality=90)
    return root


def pipeline_images_per_second(dataset, images: int = 48, threads: int = 1) -> float:
    """Images per second one data-loading worker gets out of ``dataset`` (decode + transforms).

    Reads ``images`` items in order (cycling if the dataset is smaller) after one
    warm-up item, with torch limited to ``threads`` threads, as in a DataLoader
    worker process (PyTorch gives each worker one thread). The caller's thread
    count is restored.
    """
    import time

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        dataset[0]  # warm-up: first file open, lazy imports
        start = time.perf_counter()
        for i in range(images):
            dataset[i % len(dataset)]
        return images / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)


def _load_rgb(path: str):
    """ImageFolder loader that names the file it cannot read."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")
    except Exception as exc:  # PIL raises several types for broken files
        raise TrainError(f"cannot read image {path} ({type(exc).__name__}); "
                         "delete or replace the file and rerun") from None


def _image_folder(root: Path, transform):
    from torchvision.datasets import ImageFolder

    if not root.is_dir():
        raise TrainError(f"folder {root} not found; the data directory must hold train/ and "
                         "val/, each with one sub-folder of images per class")
    try:
        return ImageFolder(str(root), transform=transform, loader=_load_rgb)
    except (FileNotFoundError, RuntimeError) as exc:
        raise TrainError(f"{root} has no class sub-folders with images ({str(exc).splitlines()[0]}); "
                         "expected <root>/<class>/<image>.jpg") from None


def _class_difference(train_classes, val_classes) -> str:
    """Which class folders only one split has (ImageFolder sorts them, so the sets differ)."""
    def listed(names):
        return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")

    only_train = sorted(set(train_classes) - set(val_classes))
    only_val = sorted(set(val_classes) - set(train_classes))
    parts = ([f"only in train/: {listed(only_train)}"] if only_train else []) + \
            ([f"only in val/: {listed(only_val)}"] if only_val else [])
    return "; ".join(parts) + "; add or rename folders so both splits list the same classes"


def _folder_datasets(cfg):
    from torchvision import transforms as T

    root = Path(cfg["data_dir"])
    if not root.is_dir():
        raise TrainError(f"data directory {root} not found; pass --data-dir pointing at a folder "
                         "holding train/ and val/")
    if not any(root.iterdir()):
        raise TrainError(f"data directory {root} is empty; it must hold train/ and val/")
    size = cfg["image_size"]
    resize = cfg["val_resize"] or int(round(size / 0.875))
    normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    if cfg["augment"]:
        train_tf = T.Compose([T.RandomResizedCrop(size, scale=(cfg["crop_scale_min"], 1.0)),
                              T.ToTensor(), Lighting(cfg["lighting_std"]),
                              T.RandomHorizontalFlip(), normalize])
    else:
        train_tf = T.Compose([T.Resize(resize), T.CenterCrop(size), T.ToTensor(), normalize])
    val_tf = T.Compose([T.Resize(resize), T.CenterCrop(size), T.ToTensor(), normalize])
    train = _image_folder(root / "train", train_tf)
    val = _image_folder(root / "val", val_tf)
    if train.classes != val.classes:
        raise TrainError(f"{root / 'train'} and {root / 'val'} must hold the same class folders: "
                         f"{_class_difference(train.classes, val.classes)}")
    return train, val, len(train.classes)


def _cifar_datasets(cfg):
    from torchvision import datasets
    from torchvision import transforms as T

    if cfg["dataset"] == "cifar10":
        cls, normalize = datasets.CIFAR10, T.Normalize(CIFAR10_MEAN, CIFAR10_STD)
    else:
        cls, normalize = datasets.CIFAR100, T.Normalize(CIFAR100_MEAN, CIFAR100_STD)
    root = cfg["data_dir"] or "data"
    train_tf = (T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), normalize])
                if cfg["augment"] else T.Compose([T.ToTensor(), normalize]))
    val_tf = T.Compose([T.ToTensor(), normalize])

    def make(train, tf):
        try:
            return cls(root, train=train, transform=tf, download=False)
        except RuntimeError:
            if not cfg["download"]:
                raise TrainError(f"{cfg['dataset']} not found under {root}; pass --download true "
                                 "or place the extracted archive there") from None
        try:
            return cls(root, train=train, transform=tf, download=True)
        except Exception as exc:
            raise TrainError(f"cannot download {cfg['dataset']} to {root} ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}); offline? copy the "
                             "extracted archive into that folder and rerun") from None

    train, val = make(True, train_tf), make(False, val_tf)
    return train, val, len(train.classes)


def build_datasets(cfg):
    """``(train_dataset, val_dataset, num_classes)`` for ``cfg['dataset']``."""
    name = cfg["dataset"]
    if name == "digits":
        (xt, yt), (xv, yv) = load_digits_tensors(32)
        classes = [str(i) for i in range(10)]
        return InMemoryDataset(xt, yt, classes), InMemoryDataset(xv, yv, classes), 10
    if name == "photos":
        from .photos import PHOTO_CLASSES, load_photo_patches

        (xt, yt), (xv, yv) = load_photo_patches(32)
        n = len(PHOTO_CLASSES)
        return InMemoryDataset(xt, yt, PHOTO_CLASSES), InMemoryDataset(xv, yv, PHOTO_CLASSES), n
    if name in ("cifar10", "cifar100"):
        return _cifar_datasets(cfg)
    if name in ("imagenet", "folder"):
        return _folder_datasets(cfg)
    raise TrainError(f"unknown dataset {name!r}; valid: imagenet, cifar10, cifar100, digits, photos, "
                     "folder")


class ShardedBatchSampler(Sampler):
    """Yields this process's share of every global batch.

    The order is a permutation seeded by ``(seed, epoch)``; global batch ``b``
    is ``order[b*B:(b+1)*B]`` and process ``r`` of ``W`` gets its ``r``-th slice
    of ``B/W`` (training, incomplete last batch dropped) or every ``W``-th
    element (evaluation, every sample exactly once over all processes).
    ``start_batch`` skips batches already consumed before an interruption.
    """

    def __init__(self, num_samples: int, global_batch: int, rank: int = 0, world: int = 1,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = True):
        if drop_last and global_batch % world:
            raise TrainError(f"batch_size {global_batch} is not divisible by the {world} "
                             "processes; choose a multiple")
        self.n, self.batch, self.rank, self.world = num_samples, global_batch, rank, world
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.epoch, self.start_batch, self.limit = 0, 0, None

    def set_epoch(self, epoch: int, start_batch: int = 0):
        self.epoch, self.start_batch = epoch, start_batch

    def num_batches(self) -> int:
        full = self.n // self.batch if self.drop_last else math.ceil(self.n / self.batch)
        return min(full, self.limit) if self.limit else full

    def __len__(self):
        return max(0, self.num_batches() - self.start_batch)

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        local = self.batch // self.world
        for b in range(self.start_batch, self.num_batches()):
            chunk = order[b * self.batch:(b + 1) * self.batch]
            if self.drop_last:
                yield chunk[self.rank * local:(self.rank + 1) * local]
            else:
                yield chunk[self.rank::self.world]


class EpochLoader:
    """Iterates one epoch of (images, labels); call ``set_epoch`` first."""

    def __init__(self, dataset, sampler: ShardedBatchSampler, workers: int, pin_memory: bool):
        self.dataset, self.sampler = dataset, sampler
        self.in_memory = isinstance(dataset, InMemoryDataset)
        self.workers, self.pin_memory = workers, pin_memory

    def set_epoch(self, epoch: int, start_batch: int = 0):
        self.sampler.set_epoch(epoch, start_batch)

    def __len__(self):
        return len(self.sampler)

    def __iter__(self):
        if self.in_memory:  # indexing two tensors beats collating 64 samples one by one
            for idx in self.sampler:
                if idx:
                    idx = torch.tensor(idx)
                    yield self.dataset.images[idx], self.dataset.labels[idx]
            return
        # Worker seeds come from this generator, so augmentation is a function
        # of (seed, epoch) and does not depend on the main process's RNG.
        g = torch.Generator().manual_seed(self.sampler.seed * 7919 + self.sampler.epoch)
        loader = DataLoader(self.dataset, batch_sampler=self.sampler, num_workers=self.workers,
                            pin_memory=self.pin_memory, generator=g,
                            prefetch_factor=4 if self.workers else None)
        yield from loader


def make_loader(dataset, cfg, train: bool, rank: int = 0, world: int = 1,
                pin_memory: bool = False) -> EpochLoader:
    """Loader over this process's shard; ``batch_size`` in the config is global."""
    batch = cfg["batch_size"] if train else (cfg["eval_batch_size"] or cfg["batch_size"])
    sampler = ShardedBatchSampler(len(dataset), batch, rank, world, shuffle=train,
                                  seed=cfg["seed"], drop_last=train)
    if train:
        sampler.limit = cfg["max_train_batches"]
        if sampler.num_batches() == 0:
            raise TrainError(f"the training set has {len(dataset)} images, fewer than one batch "
                             f"of {batch}; lower --batch-size")
    return EpochLoader(dataset, sampler, cfg["workers"], pin_memory)
