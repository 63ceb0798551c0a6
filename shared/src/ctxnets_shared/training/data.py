"""Training data without downloads or torchvision: scikit-learn's bundled digits and an ImageFolder reader.

* :class:`DigitsDataset`: the 1,797 8x8 greyscale handwritten digits that ship inside scikit-learn
  (``sklearn.datasets.load_digits``, no network), upsampled to the requested size and repeated to the
  requested channel count, with a fixed, seed-independent train/val split.
* :class:`ImageFolderDataset`: ``root/<class>/<image>`` read with PIL; ``root/train`` and ``root/val``
  are used when present, otherwise a fixed split of ``root``.
* :class:`AugmentedDataset`: applies a :mod:`~ctxnets_shared.training.transforms` pipeline whose random
  draws are seeded by (seed, epoch, index), so augmentation does not depend on worker count or on
  resuming.

Base datasets return ``(image, label)`` with ``image`` a float (C, H, W) tensor in [0, 1].
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from ctxnets_shared.training.transforms import Transform, build_transform

__all__ = [
    "IMAGE_EXTENSIONS",
    "AugmentedDataset",
    "DataError",
    "DataSplits",
    "DigitsDataset",
    "ImageFolderDataset",
    "build_datasets",
    "make_loader",
    "sample_generator",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")
_SPLIT_SEED = 0  # the train/val split never moves with the training seed
Sample = tuple[torch.Tensor, int]


class DataError(ValueError):
    """A user-facing data problem (missing or empty folder, unreadable image); the message is one line."""


class DigitsDataset(Dataset[Sample]):
    """scikit-learn's bundled handwritten digits (10 classes), upsampled to ``img_size``.

    Args:
        split: "train" (80%), "val" (20%) or "all"; the split is stratified per class and fixed.
        img_size: output side; bilinear upsampling of the 8x8 originals.
        in_chans: channels of the output (the grey image repeated).
        val_fraction: share of every class held out for "val".

    Items are ``(image (in_chans, img_size, img_size) in [0, 1], label in 0..9)``.
    """

    classes: tuple[str, ...] = tuple(str(d) for d in range(10))

    def __init__(
        self, split: str = "train", img_size: int = 32, in_chans: int = 3, val_fraction: float = 0.2
    ):
        if split not in ("train", "val", "all"):
            raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
        if img_size < 1 or in_chans < 1:
            raise ValueError(f"img_size and in_chans must be positive, got {img_size}, {in_chans}")
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        try:
            from sklearn.datasets import load_digits
        except ImportError as e:  # the train extra is not installed
            raise DataError(
                "the embedded digits need scikit-learn: pip install 'ctxnets-shared[train]'"
            ) from e
        digits = load_digits()
        images = torch.from_numpy(digits.images.astype(np.float32) / 16.0)  # (N, 8, 8), values 0..16
        labels = torch.from_numpy(digits.target.astype(np.int64))
        idx = self._split_indices(labels.numpy(), split, val_fraction)
        self.images = images[idx]
        self.targets = labels[idx].tolist()
        self.img_size, self.in_chans = img_size, in_chans

    @staticmethod
    def _split_indices(labels: np.ndarray, split: str, val_fraction: float) -> np.ndarray:
        if split == "all":
            return np.arange(len(labels))
        rng = np.random.default_rng(_SPLIT_SEED)
        chosen = []
        for c in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == c))
            n_val = round(len(members) * val_fraction)
            chosen.append(members[:n_val] if split == "val" else members[n_val:])
        return np.sort(np.concatenate(chosen))

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> Sample:
        img = self.images[index][None, None]  # (1, 1, 8, 8)
        if self.img_size != img.shape[-1]:
            img = F.interpolate(
                img, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False
            )
        return img[0].expand(self.in_chans, -1, -1).clone(), self.targets[index]


def _walk_images(folder: Path, seen_dirs: set[str]) -> list[Path]:
    """Image files under ``folder`` in sorted order, following symlinks; a folder reached twice by its
    real path (a symlink loop, or two links to one folder) is a DataError."""
    real = os.path.realpath(folder)
    if real in seen_dirs:
        raise DataError(
            f"{folder} leads back to {real}, a folder already read (a symlink loop or a second link to it): "
            f"each image must appear once"
        )
    seen_dirs.add(real)
    found: list[Path] = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            found += _walk_images(entry, seen_dirs)
        elif entry.name.lower().endswith(IMAGE_EXTENSIONS) and entry.is_file():
            found.append(entry)
    return found


def _list_images(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    samples: list[tuple[Path, int]] = []
    first: dict[str, tuple[Path, int]] = {}  # real path -> where it was first seen
    seen_dirs = {os.path.realpath(root)}
    empty = []
    for label, name in enumerate(classes):
        files = _walk_images(root / name, seen_dirs)
        if not files:
            empty.append(name)
        for f in files:
            real = os.path.realpath(f)
            if real in first:
                other, other_label = first[real]
                if other_label != label:
                    raise DataError(
                        f"{f} and {other} are the same image under two classes ({classes[other_label]}, "
                        f"{name})"
                    )
                continue  # a second link to one image of this class: counted once
            first[real] = (f, label)
            samples.append((f, label))
    if empty and samples:
        exts = ", ".join(IMAGE_EXTENSIONS)
        raise DataError(f"no images found in class folder {root / empty[0]} (expected {exts} files)")
    return classes, samples


class ImageFolderDataset(Dataset[Sample]):
    """Images in ``root/<class>/**/<file>``, class indices in sorted folder-name order; read with PIL.

    Args:
        root: the folder.
        in_chans: 1 (greyscale) or 3 (RGB).
        samples: (path, label) pairs to use instead of listing ``root`` (for splits).
        classes: class names, required with ``samples``.

    Symlinks are followed but every image counts once by its real path: a symlink loop, or one image
    under two classes, is an error, as is a class folder without images.

    Raises:
        DataError: ``root`` is missing, is not a folder, holds no images in class subfolders, has an
            empty class folder, a symlink loop, or an image under two classes.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        in_chans: int = 3,
        *,
        samples: Sequence[tuple[Path, int]] | None = None,
        classes: Sequence[str] | None = None,
    ) -> None:
        if in_chans not in (1, 3):
            raise ValueError(
                f"an ImageFolder gives 1 (greyscale) or 3 (RGB) channels, got in_chans={in_chans}"
            )
        self.root = Path(root)
        if samples is None:
            classes, listed = self.scan(self.root)
            samples = listed
        if classes is None:
            raise ValueError("pass classes together with samples")
        self.classes = tuple(classes)
        self.samples = list(samples)
        self.targets = [label for _, label in self.samples]
        self.in_chans = in_chans

    @staticmethod
    def scan(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
        """Class names and (path, label) pairs under ``root``; DataError if there are none."""
        if not root.exists():
            raise DataError(f"data folder not found: {root}")
        if not root.is_dir():
            raise DataError(f"data path is not a folder: {root}")
        classes, samples = _list_images(root)
        if not samples:
            exts = ", ".join(IMAGE_EXTENSIONS)
            raise DataError(f"no images found in {root}: expected {root}/<class>/<image> files ({exts})")
        return classes, samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        from PIL import Image, UnidentifiedImageError

        path, label = self.samples[index]
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("L" if self.in_chans == 1 else "RGB"), dtype=np.uint8)
        except (OSError, UnidentifiedImageError) as e:
            raise DataError(f"cannot read image {path}: {e}") from e
        img = torch.from_numpy(arr.copy()).float().div_(255.0)
        img = img[None] if img.dim() == 2 else img.permute(2, 0, 1)
        return img.contiguous(), label


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator seeded from (seed, epoch, index) alone, independent of any global RNG."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed((int(state[0]) << 31) ^ int(state[1]))


class AugmentedDataset(Dataset[Sample]):
    """``base[i]`` passed through ``transform`` with a generator seeded by (seed, epoch, i).

    Call :meth:`set_epoch` at the start of every epoch (as with a DistributedSampler) so each epoch gets
    fresh augmentation; the same (seed, epoch, i) always gives the same augmented sample.
    """

    def __init__(
        self, base: Dataset[Sample], transform: Transform | Callable[..., torch.Tensor], seed: int = 0
    ):
        self.base, self.transform, self.seed, self.epoch = base, transform, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Sample:
        img, label = self.base[index]
        return self.transform(img, sample_generator(self.seed, self.epoch, index)), label


@dataclass
class DataSplits:
    """Train and validation datasets (augmented) with their class names."""

    train: AugmentedDataset
    val: AugmentedDataset
    classes: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _folder_splits(
    root: Path, in_chans: int, val_fraction: float
) -> tuple[Dataset[Sample], Dataset[Sample], tuple[str, ...]]:
    if (root / "train").is_dir() and (root / "val").is_dir():
        train = ImageFolderDataset(root / "train", in_chans)
        val = ImageFolderDataset(root / "val", in_chans)
        if val.classes != train.classes:
            raise DataError(f"{root}/train and {root}/val hold different class folders")
        val_files = {os.path.realpath(p): p for p, _ in val.samples}
        for p, _ in train.samples:
            if os.path.realpath(p) in val_files:
                raise DataError(
                    f"{p} (train) is the same file as {val_files[os.path.realpath(p)]} (val): a validation "
                    f"image must not be trained on"
                )
        return train, val, train.classes
    classes, samples = ImageFolderDataset.scan(root)
    order = np.random.default_rng(_SPLIT_SEED).permutation(len(samples))
    n_val = min(len(samples) - 1, round(len(samples) * val_fraction))
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    train = ImageFolderDataset(root, in_chans, samples=[samples[i] for i in train_idx], classes=classes)
    val = ImageFolderDataset(root, in_chans, samples=[samples[i] for i in val_idx], classes=classes)
    return train, val, tuple(classes)


def build_datasets(
    data: str | os.PathLike[str] | None = "digits",
    *,
    img_size: int = 32,
    in_chans: int = 3,
    seed: int = 0,
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
    val_fraction: float = 0.2,
    train_transform: Transform | None = None,
    val_transform: Transform | None = None,
) -> DataSplits:
    """Train/val datasets for ``data``: "digits" (or None) for the embedded digits, else an ImageFolder path.

    Default transforms: digits train with random-resized crops of 50-100% of the area and no flip (a
    mirrored digit is another glyph), evaluate uncropped; folders use :func:`build_transform`'s standard
    pipeline. ``seed`` seeds the augmentation, not the split.

    Raises:
        DataError: a missing or empty folder (one-line message).
    """
    if data is None or str(data) == "digits":
        train_base: Dataset[Sample] = DigitsDataset("train", img_size, in_chans, val_fraction)
        val_base: Dataset[Sample] = DigitsDataset("val", img_size, in_chans, val_fraction)
        classes = DigitsDataset.classes
        default_train = build_transform(img_size, True, mean=mean, std=std, scale=(0.5, 1.0), hflip=0.0)
        default_val = build_transform(img_size, False, mean=mean, std=std, crop_pct=1.0)
    else:
        train_base, val_base, classes = _folder_splits(Path(data), in_chans, val_fraction)
        default_train = build_transform(img_size, True, mean=mean, std=std)
        default_val = build_transform(img_size, False, mean=mean, std=std)
    return DataSplits(
        train=AugmentedDataset(train_base, train_transform or default_train, seed),
        val=AugmentedDataset(val_base, val_transform or default_val, seed),
        classes=tuple(classes),
    )


def _ignore_interrupts(worker_id: int) -> None:
    # Ctrl-C reaches the whole process group: the workers must keep serving batches while the main
    # process finishes its step and saves (ctxnets_shared.training.StopOnSignal)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_loader(
    dataset: Dataset[Any],
    batch_size: int,
    sampler: Sampler[Any] | None = None,
    *,
    num_workers: int = 0,
    drop_last: bool = True,
    pin_memory: bool = False,
) -> DataLoader[Any]:
    """A DataLoader that leaves the global torch RNG alone (needed for exact resume).

    torch's DataLoader draws a worker base seed from the global generator every time an iterator is
    created, i.e. at each epoch start and once more at a resume. That shifts the stream dropout and drop-path
    use, so a resumed run would diverge; a private generator avoids it. Augmentation randomness comes from
    :class:`AugmentedDataset` (seeded per sample), not from the workers.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,  # order comes from the sampler (ResumableDistributedSampler)
        num_workers=num_workers,
        worker_init_fn=_ignore_interrupts if num_workers > 0 else None,
        drop_last=drop_last,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(0),
        persistent_workers=False,
    )
