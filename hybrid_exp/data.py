"""Datasets as device-resident uint8 tensors, augmented a whole batch at a time.

A dataset is one reader (the official files to uint8 arrays, md5-checked, downloaded
atomically) and one YAML file in conf/data/ (its classes, normalisation, padding and flip):
CIFAR-10, CIFAR-100, SVHN, and any image folder. It is read once, cached as one uint8 array
beside the data (keyed on the files it was built from), and moved to the training device whole.
Batches are drawn by index; random crop (zero padding) and horizontal flip run on the device;
there are no DataLoader workers and no per-image Python work in the training loop.
"""
import hashlib
import logging
import math
import os
import pickle
import shutil
import tarfile
import tempfile
import zipfile
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from hybrid_exp.seeding import derive_seed

log = logging.getLogger(__name__)

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE = "cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
BATCHES_DIR = "cifar-10-batches-py"
BATCH_MD5 = {  # the official archive's members
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck")  # official label order
MEAN = (0.4914, 0.4822, 0.4465)  # per-channel statistics of the official training images
STD = (0.2470, 0.2435, 0.2616)
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_ARCHIVE = "cifar-100-python.tar.gz"
CIFAR100_ARCHIVE_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
CIFAR100_DIR = "cifar-100-python"
CIFAR100_MD5 = {"train": "16019d7e3df5f24257cddd939b257f8d", "test": "f0ef6b0ae62326f3e7ffdfab6717acfc"}
SVHN_URL = "http://ufldl.stanford.edu/housenumbers/{}_32x32.mat"
SVHN_MD5 = {"train": "e26dedcc434d2e4c54c9b2d4a06d8373", "test": "eb5a983be6a315427106f1b164d9cef3",
            "extra": "a93ce644f1a588dc4d68dda5feec44a7"}
FORMATS = ("auto", "pickle", "image_folder")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
LAYOUTS = (f"the official python batches in <root>/{BATCHES_DIR}/ (data_batch_1..5, test_batch), "
           "or an image folder <root>/train/<class>/*.png|jpg and <root>/test/<class>/*.png|jpg")

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # x_train, y_train, x_test, y_test


class DataError(RuntimeError):
    """Missing, corrupt or ill-shaped data; the message says how to fix it."""


# ---------------------------------------------------------------------------- reading


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_md5(path: Path, expected: str, fix: str) -> None:
    actual = md5sum(path)
    if actual != expected:
        raise DataError(f"{path} fails its md5 check (expected {expected}, got {actual}): "
                        f"the file is corrupt or incomplete; {fix}")


def read_pickle(folder: Path, md5: dict[str, str] = BATCH_MD5) -> Arrays:
    """The official python batches: each a pickled dict with b'data' (N, 3072) and b'labels'."""

    def read(name: str) -> tuple[np.ndarray, np.ndarray]:
        path = folder / name
        if not path.is_file():
            raise DataError(f"{path} is missing: expected {LAYOUTS}")
        verify_md5(path, md5[name], "delete it (and the archive) and download CIFAR-10 again")
        with open(path, "rb") as f:  # safe to unpickle: the md5 matched the official file
            batch = pickle.load(f, encoding="bytes")
        x = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return np.ascontiguousarray(x), np.asarray(batch[b"labels"], dtype=np.int64)

    train = [read(f"data_batch_{i}") for i in range(1, 6)]
    x_test, y_test = read("test_batch")
    return (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]),
            x_test, y_test)


def read_image_folder(folder: Path) -> Arrays:
    """``train/<class>/*`` and ``test/<class>/*``; classes sort into the official label order."""
    return (*read_class_folders(folder / "train"), *read_class_folders(folder / "test"))


def read_class_folders(folder: Path, classes: tuple[str, ...] | None = CLASSES,
                       size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """``<class>/*`` images of one split: (N, size, size, 3) uint8 and their labels, the index of
    their folder in ``classes`` (CIFAR-10's by default; None: the folder names found, sorted)."""
    from PIL import Image

    def decode(path: Path) -> np.ndarray:
        try:
            with Image.open(path) as im:
                image = np.asarray(im.convert("RGB"))
        except OSError as e:
            raise DataError(f"{path} is not a readable image ({e}); replace or delete it") from e
        if image.shape != (size, size, 3):
            raise DataError(f"{path} is {image.shape[1]}x{image.shape[0]}, not {size}x{size}: "
                            f"every image must be {size}x{size} RGB (data.image_size)")
        return image

    found = tuple(sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else [])
    if classes is None:
        if not found:
            raise DataError(f"{folder} holds no class folders: expected {folder}/<class>/*.png|jpg")
        classes = found
    if found != tuple(classes):
        missing = [c for c in classes if c not in found]
        extra = [c for c in found if c not in classes]
        raise DataError(f"{folder} must hold one folder per class: " + "; ".join(
            ([f"{folder.name} lacks the class folder(s) {', '.join(missing)}"] if missing else []) +
            ([f"it has folder(s) that are no class: {', '.join(extra)}"] if extra else [])))
    files = [(p, label) for label, name in enumerate(classes)
             for p in sorted((folder / name).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    with ThreadPoolExecutor(os.cpu_count()) as pool:  # PIL decodes outside the GIL
        images = list(pool.map(decode, (p for p, _ in files), chunksize=256))
    return np.stack(images), np.array([label for _, label in files], dtype=np.int64)


def locate(root: Path, fmt: str) -> tuple[str, Path] | None:
    """The (format, folder) of the dataset under ``root``, or None if absent."""
    found = {"pickle": [root / BATCHES_DIR, root], "image_folder": [root, root / "cifar10-jpeg"]}
    for candidate_fmt, folders in found.items():
        if fmt not in ("auto", candidate_fmt):
            continue
        for folder in folders:
            marker = folder / ("data_batch_1" if candidate_fmt == "pickle" else "train")
            if marker.exists():
                return candidate_fmt, folder
    return None


def fetch(url: str, path: Path, md5: str, name: str, layouts: str) -> None:
    """``url`` saved as ``path`` (whole or not at all) unless it is there; md5-checked."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        log.info("downloading %s from %s to %s", name, url, path)
        partial = path.with_name(path.name + ".part")
        try:
            urllib.request.urlretrieve(url, partial)
        except OSError as e:
            partial.unlink(missing_ok=True)
            raise DataError(f"could not download {name} from {url} ({e}); put {path.name} in "
                            f"{path.parent} by hand, or set data.root to a folder holding {layouts}") from e
        partial.replace(path)
    verify_md5(path, md5, f"delete {path} and download it again")


def extract(archive: Path, member: str) -> None:
    """The folder ``member`` of a tar archive, extracted beside it whole or not at all."""
    with tempfile.TemporaryDirectory(dir=archive.parent) as tmp:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        shutil.rmtree(archive.parent / member, ignore_errors=True)
        os.replace(Path(tmp) / member, archive.parent / member)


def download(root: Path) -> None:
    """Fetch the official CIFAR-10 archive into ``root`` (md5-checked) and extract its batches."""
    fetch(URL, root / ARCHIVE, ARCHIVE_MD5, "CIFAR-10", LAYOUTS)
    extract(root / ARCHIVE, BATCHES_DIR)


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise DataError(f"unknown data.format '{fmt}'; choose one of {', '.join(FORMATS)}")


def load_cifar10(root: str | Path, fmt: str = "auto", download_missing: bool = False) -> Arrays:
    """All 60k images as uint8 (N, 32, 32, 3) plus int64 labels, via a cache beside the data."""
    check_format(fmt)
    root = Path(root).expanduser().resolve()
    found = locate(root, fmt)
    if found is None and fmt != "auto" and (other := locate(root, "auto")):
        raise DataError(f"data.format={fmt}, but {other[1]} holds CIFAR-10 as {other[0]}: set "
                        f"data.format={other[0]} (or auto)")
    if found is None and download_missing and fmt != "image_folder":
        download(root)
        found = locate(root, "pickle")
    if found is None:
        hint = "" if download_missing else ", or set data.download=true to fetch the official archive"
        raise DataError(f"no CIFAR-10 found under {root}: expected {LAYOUTS}{hint}")
    fmt, folder = found
    names = list(BATCH_MD5) if fmt == "pickle" else folder_files(folder)
    read = (lambda: read_pickle(folder)) if fmt == "pickle" else (lambda: read_image_folder(folder))
    return split_arrays(cached(folder / f"cifar10-{fmt}-uint8.npz", folder, names,
                               lambda: dict(zip(SPLIT_ARRAYS, read())), f"CIFAR-10 ({fmt})"))


SPLIT_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def split_arrays(arrays: dict[str, np.ndarray]) -> Arrays:
    return tuple(arrays[k] for k in SPLIT_ARRAYS)


def folder_files(folder: Path) -> list[str]:
    """The files of an image folder's two splits, relative to it."""
    return [os.path.relpath(os.path.join(parent, name), folder)
            for split in ("train", "test") for parent, _, files in os.walk(folder / split)
            for name in files]


def cached(cache: Path, folder: Path, names: list[str], read: Callable[[], dict[str, np.ndarray]],
           what: str) -> dict[str, np.ndarray]:
    """``read()`` (named arrays), through a cache file that holds them with the manifest of the
    files ``names`` (relative to ``folder``) it was built from: used only while those are
    unchanged, rebuilt when unreadable (cut short, a bad CRC)."""
    source = manifest(folder, names)
    if cache.exists():
        try:
            with np.load(cache, allow_pickle=False) as z:
                if str(z["source"]) == source:
                    return {k: z[k] for k in z.files if k != "source"}
            log.info("the files under %s changed since %s was built; reading them again", folder, cache.name)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            log.warning("ignoring unreadable cache %s (%s); rebuilding it", cache, e)
    log.info("decoding %s from %s", what, folder)
    arrays = read()
    save_atomically(cache, arrays, source)
    return arrays


def manifest(folder: Path, names: list[str]) -> str:
    """A digest of the files a cache is built from (names, sizes, modification times)."""
    digest = hashlib.sha256()
    for name in sorted(names):
        try:
            info = os.stat(folder / name)
            digest.update(f"{name}:{info.st_size}:{info.st_mtime_ns}\n".encode())
        except FileNotFoundError:
            digest.update(f"{name}:missing\n".encode())
    return digest.hexdigest()


def save_atomically(cache: Path, arrays: dict[str, np.ndarray], source: str) -> None:
    """Write the cache whole or not at all, with the manifest of its source; a read-only data
    folder just goes uncached."""
    partial = cache.with_name(f".{cache.name}.{os.getpid()}.part")
    try:
        with open(partial, "wb") as f:
            np.savez(f, source=np.array(source), **arrays)
        os.replace(partial, cache)
    except OSError as e:
        partial.unlink(missing_ok=True)
        log.warning("could not write the cache %s (%s); the next run decodes again", cache, e)


def read_cifar100(folder: Path, labels: str) -> dict[str, np.ndarray]:
    """The official python files ``train`` and ``test``: pickled dicts with b'data' (N, 3072)
    and b'fine_labels' / b'coarse_labels'."""
    arrays = {}
    for split in ("train", "test"):
        path = folder / split
        verify_md5(path, CIFAR100_MD5[split], "delete it (and the archive) and download CIFAR-100 again")
        with open(path, "rb") as f:  # safe to unpickle: the md5 matched the official file
            batch = pickle.load(f, encoding="bytes")
        x = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        arrays[f"x_{split}"] = np.ascontiguousarray(x)
        arrays[f"y_{split}"] = np.asarray(batch[f"{labels}_labels".encode()], dtype=np.int64)
    return arrays


def read_svhn(path: Path, md5: str) -> tuple[np.ndarray, np.ndarray]:
    """An official SVHN .mat file: X (32, 32, 3, N) uint8, y (N, 1) with 10 for the digit 0."""
    from scipy.io import loadmat

    verify_md5(path, md5, f"delete {path} and download it again")
    mat = loadmat(path)
    x = np.ascontiguousarray(mat["X"].transpose(3, 0, 1, 2), dtype=np.uint8)
    return x, mat["y"].ravel().astype(np.int64) % 10


def channel_statistics(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 (N, H, W, C) images, in [0, 1], in chunks (no float copy)."""
    total, squares, count = 0.0, 0.0, 0
    for chunk in np.array_split(images, max(1, len(images) // 4096)):
        pixels = chunk.reshape(-1, chunk.shape[-1]).astype(np.float64) / 255
        total, squares, count = total + pixels.sum(0), squares + (pixels ** 2).sum(0), count + len(pixels)
    mean = total / count
    return tuple(mean.tolist()), tuple(np.sqrt(squares / count - mean ** 2).tolist())


# ---------------------------------------------------------------------------- batches


def crop_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, pad: int = 4):
    """Random crop after zero padding, and horizontal flip, for a whole batch in one gather.

    x (B, H, W, C) uint8; offsets (B, 2) in [0, 2*pad] (row, column); flips (B,) bool.
    """
    B, H, W, _ = x.shape
    x = F.pad(x, (0, 0, pad, pad, pad, pad))  # (B, H+2p, W+2p, C)
    rows = offsets[:, :1] + torch.arange(H, device=x.device)  # (B, H)
    cols = torch.arange(W, device=x.device).expand(B, W)
    cols = torch.where(flips[:, None], W - 1 - cols, cols) + offsets[:, 1:]  # (B, W)
    batch = torch.arange(B, device=x.device)[:, None, None]
    return x[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)


class Batches:
    """Minibatches of device-resident images, by index, for the M members of a fused seed array
    (M = 1 for one run); an iterable for Lightning. Yields x (B, M*C, H, W) float, channels_last
    in memory, member m's images in channel block m, and labels y (B, M).

    ``indices`` (M, N): member m's images, as positions in ``images``. With ``augment_seeds`` (one
    per member) it is the training stream: member m's epoch e draws its order, crops and flips
    from ``derive_seed(augment_seeds[m], "augment", e)`` on the CPU (the same stream on any device,
    fused or not) and moves them to the device once; partial last batches are dropped. ``epoch``:
    the first epoch, counted up by each pass, or a function that tells the epoch as a pass
    starts (Lightning's current epoch: right also after a resume, which creates the loader first).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor,
                 batch_size: int, augment_seeds: list[int] | None = None,
                 epoch: int | Callable[[], int] = 0, mean=MEAN, std=STD, pad: int = 4,
                 flip: bool = True):
        self.images, self.labels, self.indices = images, labels, indices  # (N_all, H, W, C), (M, N)
        self.batch_size, self.augment_seeds, self.epoch = batch_size, augment_seeds, epoch
        self.pad, self.flip = pad, flip  # the dataset's: its config's pad and flip
        members = len(indices)
        shape = (1, members * len(mean), 1, 1)
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=images.device).repeat(members).view(shape)
        self.std = torch.as_tensor(std, dtype=torch.float32, device=images.device).repeat(members).view(shape)

    def __len__(self) -> int:
        n = self.indices.shape[1]
        return n // self.batch_size if self.augment_seeds is not None else math.ceil(n / self.batch_size)

    def __iter__(self):
        (M, n), device = self.indices.shape, self.images.device
        train = self.augment_seeds is not None
        if train:
            epoch = self.epoch() if callable(self.epoch) else self.epoch
            draws = [self.draw(seed, epoch, n, self.pad, self.flip) for seed in self.augment_seeds]
            order, offsets, flips = (torch.stack(d).to(device) for d in zip(*draws))  # (M, n, ...)
            if not callable(self.epoch):
                self.epoch += 1
        else:
            order = torch.arange(n, device=device).expand(M, n)
        members = torch.arange(M, device=device)[:, None]
        for i in range(len(self)):
            position = order[:, i * self.batch_size:(i + 1) * self.batch_size]  # (M, B)
            idx = self.indices[members, position]  # (M, B) rows of images
            x = self.images[idx]  # (M, B, H, W, C) uint8
            if train:
                x = crop_flip(x.flatten(0, 1), offsets[members, position].flatten(0, 1),
                              flips[members, position].flatten(0, 1), self.pad).view(x.shape)
            B, H, W = x.shape[1:4]
            yield self.normalize(x.permute(1, 2, 3, 0, 4).reshape(B, H, W, -1)), self.labels[idx].T

    @staticmethod
    def draw(seed: int, epoch: int, n: int, pad: int = 4, flip: bool = True
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One member's epoch: (order (n,), crop offsets (n, 2), flips (n,)), on the CPU. The
        flips are drawn also without flipping: the stream's other draws stay the same."""
        g = torch.Generator().manual_seed(derive_seed(seed, "augment", epoch))
        order = torch.randperm(n, generator=g)
        offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=g)
        return order, offsets, torch.randint(0, 2, (n,), generator=g).bool() & flip

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, M*C) uint8 -> (B, M*C, H, W) float, channels_last in memory."""
        return (x.permute(0, 3, 1, 2).float() / 255 - self.mean) / self.std


# ---------------------------------------------------------------------------- data modules


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

    def load(self) -> Arrays:
        raise NotImplementedError

    def data_fingerprint(self) -> str:
        """The digest of the decoded dataset (every image and label of both splits): the pixels
        a run sees. One config on the official files and on a JPEG copy of them is two
        experiments; the run's ``data_fingerprint`` tag keeps them apart."""
        digest = hashlib.blake2b(digest_size=8)
        for array in self.load():
            digest.update(f"{array.dtype}{array.shape}".encode())
            digest.update(np.ascontiguousarray(array).data)
        return digest.hexdigest()

    @classmethod
    def sizes(cls, **data_config) -> tuple[int, int, int] | None:
        """(training images, test images, classes) that ``data_config`` will read, if known
        before reading (the config checks use it); None: known only once read."""
        return None

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        x_train, y_train, x_test, y_test = self.load()
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
        return np.sort(train), np.sort(val)

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

    def test_dataloader(self) -> list[Batches]:
        """The evaluation subset (the paper's metric), then the whole test set."""
        return [self.batches("test"), self.batches("test_full")]

    def test_indices(self) -> tuple[np.ndarray, np.ndarray]:
        """(positions in the official test set, labels) of the evaluation subset's images."""
        images, labels, (indices, *_) = self.splits["test"]
        return indices.cpu().numpy(), labels[indices].cpu().numpy()


class CIFAR10(ResidentData):
    """CIFAR-10 from ``root``: official python batches or an image folder (``format``)."""

    def __init__(self, root: str = "data/cifar10", format: str = "auto", download: bool = True,
                 **split_args):
        super().__init__(**split_args)
        check_format(format)  # fail when the config is read, before any run starts
        self.root, self.format, self.download = root, format, download

    def load(self) -> Arrays:
        return load_cifar10(self.root, self.format, self.download)

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

    def load(self) -> Arrays:
        root = Path(self.root).expanduser().resolve()
        folder = next((f for f in (root / CIFAR100_DIR, root) if (f / "train").is_file()), None)
        if folder is None and self.download:
            fetch(CIFAR100_URL, root / CIFAR100_ARCHIVE, CIFAR100_ARCHIVE_MD5, "CIFAR-100",
                  f"{CIFAR100_DIR}/ or {CIFAR100_ARCHIVE}")
            extract(root / CIFAR100_ARCHIVE, CIFAR100_DIR)
            folder = root / CIFAR100_DIR
        if folder is None:
            raise DataError(f"no CIFAR-100 found under {root}: expected {root / CIFAR100_DIR}/ (train, "
                            f"test) or {CIFAR100_ARCHIVE}, or set data.download=true to fetch it")
        return split_arrays(cached(folder / f"cifar100-{self.labels}-uint8.npz", folder, list(CIFAR100_MD5),
                                   lambda: read_cifar100(folder, self.labels), "CIFAR-100"))

    @classmethod
    def sizes(cls, labels: str = "fine", **data_config) -> tuple[int, int, int]:
        return 50000, 10000, 100 if labels == "fine" else 20


class SVHN(ResidentData):
    """SVHN's cropped digits from ``root``: the official ``train_32x32.mat`` and
    ``test_32x32.mat`` (and ``extra_32x32.mat`` added to training with ``extra``), downloaded
    if allowed; label 10 is the digit 0."""

    SIZES = {"train": 73257, "test": 26032, "extra": 531131}

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
            fetch(SVHN_URL.format(split), path, SVHN_MD5[split], "SVHN", path.name)

        def read() -> dict[str, np.ndarray]:
            parts = {split: read_svhn(path, SVHN_MD5[split]) for split, path in files.items()}
            train = [parts["train"], *([parts["extra"]] if self.extra else [])]
            return {"x_train": np.concatenate([x for x, _ in train]), "y_train": np.concatenate([y for _, y in train]),
                    "x_test": parts["test"][0], "y_test": parts["test"][1]}

        name = "svhn-extra" if self.extra else "svhn"
        return split_arrays(cached(root / f"{name}-uint8.npz", root, [p.name for p in files.values()], read, "SVHN"))

    @classmethod
    def sizes(cls, extra: bool = False, **data_config) -> tuple[int, int, int]:
        return cls.SIZES["train"] + extra * cls.SIZES["extra"], cls.SIZES["test"], 10


class ImageFolder(ResidentData):
    """Any dataset laid out as ``root/train/<class>/*`` and ``root/test/<class>/*`` (png, jpg):
    classes are the training split's folder names, sorted; every image ``image_size`` square.
    With ``mean``/``std`` null they are computed from the training images, cached with them."""

    def __init__(self, root: str, image_size: int = 32, **split_args):
        super().__init__(**split_args)
        self.root, self.image_size, self.classes = root, image_size, None

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

        arrays = cached(root / f"image_folder-{self.image_size}-uint8.npz", root, folder_files(root), read,
                        "the image folder")
        self.classes = [str(c) for c in arrays["classes"]]
        self.mean = self.mean or tuple(arrays["mean"].tolist())
        self.std = self.std or tuple(arrays["std"].tolist())
        return split_arrays(arrays)


class Synthetic(ResidentData):
    """Random CIFAR-shaped images with balanced random labels: plumbing tests only."""

    def load(self) -> Arrays:
        rng = np.random.default_rng(0)
        n_train = 2 * (self.train_subset or 25000) + self.val_size  # any subset balances
        images = lambda n: rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        labels = lambda n: rng.permutation(np.arange(n) % self.num_classes)
        return images(n_train), labels(n_train), images(self.eval_size), labels(self.eval_size)


# ---------------------------------------------------------------------------- the conventional pipeline
# What training scripts usually do, for comparisons (python -m hybrid_exp.bench, data=cifar10_conventional).


class AugmentedImages(Dataset):
    """Per-image CPU augmentation, as torchvision's transforms do it: (3, 32, 32) float."""

    def __init__(self, images, labels, pad: int = 4):
        self.images, self.labels, self.pad = images, labels, pad  # (N, H, W, C) uint8 arrays
        self.mean = torch.tensor(MEAN).view(3, 1, 1)
        self.std = torch.tensor(STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        image = torch.from_numpy(self.images[i]).permute(2, 0, 1)  # (C, H, W) uint8
        _, h, w = image.shape
        top, left = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()  # torch RNG: seeded per worker
        image = F.pad(image, (self.pad,) * 4)[:, top:top + h, left:left + w]
        if torch.rand(()) < 0.5:
            image = image.flip(2)
        return (image.float() / 255 - self.mean) / self.std, int(self.labels[i])


def conventional_loader(images, labels, batch_size: int, workers: int, pin: bool,
                        seed: int = 0) -> DataLoader:
    return DataLoader(AugmentedImages(images, labels), batch_size=batch_size, shuffle=True,
                      drop_last=True, num_workers=workers, pin_memory=pin,
                      persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed))


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
