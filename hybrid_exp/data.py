"""Datasets as device-resident uint8 tensors, augmented a whole batch at a time.

A dataset is one reader (the official files to uint8 arrays, md5-checked, downloaded
atomically) and one YAML file in conf/data/ (its classes, normalisation, padding and flip):
CIFAR-10, CIFAR-100, SVHN, and any image folder. It is read once, cached as one uint8 array
beside the data (keyed on the files it was built from), and moved to the training device whole.
Batches are drawn by index; random crop (zero padding) and horizontal flip run on the device;
there are no DataLoader workers and no per-image Python work in the training loop.
"""
import logging
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from hybrid_exp import dataset_files
from hybrid_exp.batches import Batches
from hybrid_exp.conventional import conventional_loader
from hybrid_exp.dataset_files import (
    CLASSES,
    MEAN,
    STD,
    Arrays,
    cached,
    channel_statistics,
    check_format,
    cifar10_arrays,
    extract,
    fetch,
    fingerprint,
    folder_files,
    read_cifar100,
    read_class_folders,
    read_svhn,
    split_arrays,
)
from hybrid_exp.errors import DataError
from hybrid_exp.seeding import derive_seed

log = logging.getLogger(__name__)


class ResidentData(pl.LightningDataModule):
    """Splits a (train, test) pair of uint8 arrays and serves it from the training device, for
    one trial seed or the seeds of a fused array (``seeds``, one per member).

    A trial seed fixes the validation split, the class-balanced subset, and the order and
    augmentation of every epoch: all variants of one trial see the same data (a paired design),
    fused or not. ``eval_seed`` alone fixes the evaluation subset of the test set: the same for
    every run; testing also covers the whole test set. The images sit on the device once; each
    member's splits are index rows.
    """

    def __init__(self, batch_size: int = 128, val_size: int = 5000, eval_size: int = 6000,
                 eval_seed: int = 0, train_subset: int | None = None, num_classes: int = 10,
                 mean=MEAN, std=STD, pad: int = 4, flip: bool = True, seeds: list[int] = (0,)):
        super().__init__()
        self.num_classes, self.pad, self.flip = num_classes, pad, flip
        self.mean = tuple(mean) if mean is not None else None  # None: computed by load()
        self.std = tuple(std) if std is not None else None
        self.batch_size, self.val_size, self.eval_size = batch_size, val_size, eval_size
        self.eval_seed, self.train_subset, self.seeds = eval_seed, train_subset, list(seeds)
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.loaded: Arrays | None = None  # ``decoded()``
        self.fingerprint: str | None = None  # the cache's, where ``load`` read through one

    classes: tuple[str, ...] | None = None  # label i's name (an image folder's: known once loaded)

    def load(self) -> Arrays:
        """(x_train, y_train, x_test, y_test): a dataset's reader."""
        raise NotImplementedError

    def decoded(self) -> Arrays:
        """``load()``, once per data module: a start checks, fingerprints and sets up one read."""
        if self.loaded is None:
            self.loaded = self.load()
        return self.loaded

    def unpack(self, arrays: dict[str, np.ndarray]) -> Arrays:
        """The four arrays of a ``cached`` read; what the cache keeps beside them (their
        fingerprint; an image folder's classes and channel statistics) kept here."""
        self.fingerprint = str(arrays["fingerprint"])
        if "classes" in arrays:
            self.classes = tuple(str(c) for c in arrays["classes"])
        if "mean" in arrays:
            self.mean = self.mean or tuple(arrays["mean"].tolist())
            self.std = self.std or tuple(arrays["std"].tolist())
        return split_arrays(arrays)

    def split_sizes(self) -> dict[str, int]:
        """The images a run of these settings trains on (per member), validates and is tested on."""
        x_train, _, x_test, _ = self.decoded()
        return {"training": self.train_subset or len(x_train) - self.val_size, "validation": self.val_size,
                "evaluation": self.eval_size, "test": len(x_test)}

    def data_fingerprint(self) -> str:
        """The digest of the decoded dataset (``fingerprint``): the pixels a run sees, kept in
        the dataset's cache (no image hashed again while its files are unchanged). One config on
        the official files and on a JPEG copy of them is two experiments; the run's
        ``data_fingerprint`` tag keeps them apart."""
        arrays = self.decoded()
        return self.fingerprint or fingerprint(arrays)

    @classmethod
    def sizes(cls, **data_config) -> tuple[int, int, int] | None:
        """(training images, test images, classes) that ``data_config`` will read, if known
        before reading (the config checks use it); None: known only once read."""
        return None

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        x_train, y_train, x_test, y_test = self.decoded()
        train, val = zip(*(self.split_indices(y_train, seed) for seed in self.seeds))
        if not 0 < self.eval_size <= len(x_test):
            raise DataError(f"data.eval_size must be in 1..{len(x_test)} (the test set); "
                            f"got {self.eval_size}")
        g = torch.Generator().manual_seed(self.eval_seed)
        test = torch.randperm(len(x_test), generator=g)[:self.eval_size].sort().values
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        rows = lambda indices: torch.from_numpy(np.stack(indices)).to(device)  # (M, N)
        train_images = torch.from_numpy(x_train).to(device), torch.from_numpy(y_train).to(device)
        test_images = torch.from_numpy(x_test).to(device), torch.from_numpy(y_test).to(device)
        every_member = lambda indices: indices.to(device).expand(len(self.seeds), -1)
        self.splits = {"train": (*train_images, rows(train)), "val": (*train_images, rows(val)),
                       "test": (*test_images, every_member(test)),
                       "test_full": (*test_images, every_member(torch.arange(len(x_test))))}

    def split_indices(self, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(train, val) indices of one trial seed: val drawn by the seed, then a class-balanced subset."""
        n = len(labels)
        if not 0 <= self.val_size < n:
            raise DataError(f"data.val_size must be in 0..{n - 1} (the training set has {n} "
                            f"images); got {self.val_size}")
        g = torch.Generator().manual_seed(derive_seed(seed, "split"))
        order = torch.randperm(n, generator=g).numpy()
        val, train = order[:self.val_size], order[self.val_size:]
        if self.train_subset is not None:
            classes = np.unique(labels)
            if not len(classes) <= self.train_subset <= len(train):
                raise DataError(f"data.train_subset must be in {len(classes)}..{len(train)} "
                                f"(or null for all); got {self.train_subset}")
            # class c gets train_subset // classes images (+1 for the first remainder classes)
            quota = {c: self.train_subset // len(classes) + (i < self.train_subset % len(classes))
                     for i, c in enumerate(classes)}
            per_class = {c: train[labels[train] == c] for c in classes}
            short = [f"class {c} has {len(per_class[c])}" for c in classes if len(per_class[c]) < quota[c]]
            if short:
                raise DataError(f"data.train_subset={self.train_subset} cannot be class-balanced "
                                f"({', '.join(short)} training images, below its quota of "
                                f"{self.train_subset // len(classes)}): choose a smaller subset")
            train = np.concatenate([per_class[c][:quota[c]] for c in classes])
        if len(train) < self.batch_size:  # partial batches are dropped: every epoch would train nothing
            raise DataError(f"data.batch_size={self.batch_size} is larger than the {len(train)} "
                            f"training images: choose data.batch_size <= {len(train)}")
        return np.sort(train), np.sort(val)

    def check_splits(self) -> None:
        """Draw every member's splits from the labels, as ``setup`` will: a split that cannot
        be made (a subset too large, no full batch) is one sentence before any run exists."""
        labels = self.decoded()[1]
        for seed in self.seeds:
            self.split_indices(labels, seed)

    def batches(self, split: str, train: bool = False) -> Batches:
        """The minibatches of ``split``, normalised with the dataset's statistics; augmented
        with its padding and flip, epoch by epoch, for training."""
        epoch = (lambda: self.trainer.current_epoch) if self.trainer else 0
        return Batches(*self.splits[split], self.batch_size, augment_seeds=self.seeds if train else None,
                       epoch=epoch, mean=self.mean, std=self.std, pad=self.pad, flip=self.flip)

    def train_dataloader(self) -> Batches:
        return self.batches("train", train=True)

    def val_dataloader(self) -> Batches | list:
        return self.batches("val") if self.val_size else []

    def test_dataloader(self) -> Batches:
        """The whole test set, in order: the test phase scores the evaluation subset (the
        paper's metric) on the same pass (``in_eval_subset``), each image once."""
        return self.batches("test_full")

    def in_eval_subset(self) -> torch.Tensor:
        """(N,) bool over the whole test set, in its order: the evaluation subset's images."""
        labels, (subset, *_) = self.splits["test"][1:]
        mask = torch.zeros(len(labels), dtype=torch.bool, device=labels.device)
        mask[subset] = True
        return mask

    def test_indices(self) -> tuple[np.ndarray, np.ndarray]:
        """(positions in the official test set, labels) of the evaluation subset's images."""
        images, labels, (indices, *_) = self.splits["test"]
        return indices.cpu().numpy(), labels[indices].cpu().numpy()


class CIFAR10(ResidentData):
    """CIFAR-10 from ``root``: official python batches or an image folder (``format``)."""

    classes = CLASSES

    def __init__(self, root: str = "data/cifar10", format: str = "auto", download: bool = True,
                 **split_args):
        super().__init__(**split_args)
        check_format(format)  # fail when the config is read, before any run starts
        self.root, self.format, self.download = root, format, download

    def load(self) -> Arrays:
        return self.unpack(cifar10_arrays(self.root, self.format, self.download))

    @classmethod
    def sizes(cls, **data_config) -> tuple[int, int, int]:
        return 50000, 10000, len(CLASSES)


class CIFAR100(ResidentData):
    """CIFAR-100 from ``root``: the official python files (``cifar-100-python/train, test``),
    extracted from the official archive, downloaded if allowed; fine or coarse ``labels``."""

    def __init__(self, root: str = "data/cifar100", download: bool = True, labels: str = "fine",
                 **split_args):
        super().__init__(**split_args)
        if labels not in ("fine", "coarse"):
            raise DataError(f"data.labels must be fine or coarse; got {labels!r}")
        self.root, self.download, self.labels = root, download, labels
        self.classes = dataset_files.CIFAR100_CLASSES[labels]

    def load(self) -> Arrays:
        files, root = dataset_files, Path(self.root).expanduser().resolve()  # the official files' names
        folder = next((f for f in (root / files.CIFAR100_DIR, root) if (f / "train").is_file()), None)
        if folder is None and self.download:
            fetch(files.CIFAR100_URL, root / files.CIFAR100_ARCHIVE, files.CIFAR100_ARCHIVE_MD5, "CIFAR-100",
                  f"{files.CIFAR100_DIR}/ or {files.CIFAR100_ARCHIVE}")
            extract(root / files.CIFAR100_ARCHIVE, files.CIFAR100_DIR)
            folder = root / files.CIFAR100_DIR
        if folder is None:
            raise DataError(f"no CIFAR-100 found under {root}: expected {root / files.CIFAR100_DIR}/ (train, "
                            f"test) or {files.CIFAR100_ARCHIVE}, or set data.download=true to fetch it")
        return self.unpack(cached(folder / f"cifar100-{self.labels}-uint8.npz", folder, list(files.CIFAR100_MD5),
                                  lambda: read_cifar100(folder, self.labels, files.CIFAR100_MD5), "CIFAR-100"))

    @classmethod
    def sizes(cls, labels: str = "fine", **data_config) -> tuple[int, int, int]:
        return 50000, 10000, 100 if labels == "fine" else 20


class SVHN(ResidentData):
    """SVHN's cropped digits from ``root``: the official ``train_32x32.mat`` and
    ``test_32x32.mat`` (and ``extra_32x32.mat`` added to training with ``extra``), downloaded
    if allowed; label 10 is the digit 0."""

    SIZES = {"train": 73257, "test": 26032, "extra": 531131}
    classes = tuple("0123456789")

    def __init__(self, root: str = "data/svhn", download: bool = True, extra: bool = False, **split_args):
        super().__init__(**split_args)
        self.root, self.download, self.extra = root, download, extra

    def load(self) -> Arrays:
        root = Path(self.root).expanduser().resolve()
        files = {split: root / f"{split}_32x32.mat" for split in ("train", "test", *(["extra"] * self.extra))}
        for split, path in files.items():
            if path.exists():
                continue
            if not self.download:
                raise DataError(f"no SVHN found under {root}: expected train_32x32.mat and "
                                f"test_32x32.mat (extra_32x32.mat with data.extra=true), or set "
                                f"data.download=true to fetch them")
            fetch(dataset_files.SVHN_URL.format(split), path, dataset_files.SVHN_MD5[split], "SVHN", path.name)

        def read() -> dict[str, np.ndarray]:
            parts = {split: read_svhn(path, dataset_files.SVHN_MD5[split]) for split, path in files.items()}
            train = [parts["train"], *([parts["extra"]] if self.extra else [])]
            return {"x_train": np.concatenate([x for x, _ in train]), "y_train": np.concatenate([y for _, y in train]),
                    "x_test": parts["test"][0], "y_test": parts["test"][1]}

        name = "svhn-extra" if self.extra else "svhn"
        return self.unpack(cached(root / f"{name}-uint8.npz", root, [p.name for p in files.values()], read, "SVHN"))

    @classmethod
    def sizes(cls, extra: bool = False, **data_config) -> tuple[int, int, int]:
        return cls.SIZES["train"] + extra * cls.SIZES["extra"], cls.SIZES["test"], 10


class ImageFolder(ResidentData):
    """Any dataset laid out as ``root/train/<class>/*`` and ``root/test/<class>/*`` (png, jpg):
    classes are the training split's folder names, sorted; every image ``image_size`` square.
    With ``mean``/``std`` null they are computed from the training images, cached with them."""

    def __init__(self, root: str, image_size: int = 32, **split_args):
        super().__init__(**split_args)
        self.root, self.image_size = root, image_size

    def load(self) -> Arrays:
        root = Path(self.root).expanduser().resolve()
        train = root / "train"
        classes = tuple(sorted(p.name for p in train.iterdir() if p.is_dir())) if train.is_dir() else ()
        if not classes or not (root / "test").is_dir():
            raise DataError(f"no image folder under {root}: expected {root}/train/<class>/*.png|jpg "
                            f"and {root}/test/<class>/*.png|jpg")
        if len(classes) != self.num_classes:
            raise DataError(f"data.num_classes={self.num_classes}, but {train} has {len(classes)} class "
                            f"folders: set data.num_classes={len(classes)}")

        def read() -> dict[str, np.ndarray]:
            x_train, y_train = read_class_folders(train, classes, self.image_size)
            x_test, y_test = read_class_folders(root / "test", classes, self.image_size)
            mean, std = channel_statistics(x_train)
            return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test,
                    "mean": np.array(mean), "std": np.array(std), "classes": np.array(classes)}

        return self.unpack(cached(root / f"image_folder-{self.image_size}-uint8.npz", root, folder_files(root),
                                  read, "the image folder"))


class Synthetic(ResidentData):
    """Random CIFAR-shaped images with balanced random labels: plumbing tests only."""

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(map(str, range(self.num_classes)))

    def load(self) -> Arrays:
        rng = np.random.default_rng(0)
        n_train = 2 * (self.train_subset or 25000) + self.val_size  # any subset balances
        images = lambda n: rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        labels = lambda n: rng.permutation(np.arange(n) % self.num_classes)
        return images(n_train), labels(n_train), images(self.eval_size), labels(self.eval_size)


class ConventionalCIFAR10(CIFAR10):
    """``data=cifar10`` with the conventional training pipeline instead of the fast one (same
    splits, same evaluation): the reference the fast path's accuracy is tested against."""

    def __init__(self, workers: int = 2, **kwargs):
        super().__init__(**kwargs)
        if len(self.seeds) != 1:
            raise DataError("data=cifar10_conventional trains one seed per process: add "
                            "hydra.launcher.fuse_seeds=false to the grid, or give one seed")
        self.workers = workers

    def train_dataloader(self) -> DataLoader:
        images, labels, (rows,) = self.splits["train"]  # one member
        return conventional_loader(images[rows].cpu().numpy(), labels[rows].cpu().numpy(),
                                   self.batch_size, self.workers, images.is_cuda, seed=self.seeds[0])
