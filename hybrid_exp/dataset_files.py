"""Dataset files: the official files and image folders to uint8 arrays, md5-checked, downloaded
atomically, cached as one array beside the data (keyed on the files it was built from)."""
import hashlib
import logging
import os
import pickle
import tarfile
import tempfile
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

from hybrid_exp.errors import DataError

log = logging.getLogger("hybrid_exp.data")  # one logger for the data, wherever it is read

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
# The label names, in label order (the official meta file's: alphabetical).
CIFAR100_CLASSES = {"fine": tuple("""
    apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus
    butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch
    crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo
    keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain
    mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain
    plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk
    skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone
    television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm
""".split()), "coarse": tuple("""
    aquatic_mammals fish flowers food_containers fruit_and_vegetables household_electrical_devices
    household_furniture insects large_carnivores large_man-made_outdoor_things
    large_natural_outdoor_scenes large_omnivores_and_herbivores medium_mammals
    non-insect_invertebrates people reptiles small_mammals trees vehicles_1 vehicles_2
""".split())}
SVHN_URL = "http://ufldl.stanford.edu/housenumbers/{}_32x32.mat"
SVHN_MD5 = {"train": "e26dedcc434d2e4c54c9b2d4a06d8373", "test": "eb5a983be6a315427106f1b164d9cef3",
            "extra": "a93ce644f1a588dc4d68dda5feec44a7"}
FORMATS = ("auto", "pickle", "image_folder")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
LAYOUTS = (f"the official python batches in <root>/{BATCHES_DIR}/ (data_batch_1..5, test_batch), "
           "or an image folder <root>/train/<class>/*.png|jpg and <root>/test/<class>/*.png|jpg")

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # x_train, y_train, x_test, y_test


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
    empty = [name for label, name in enumerate(classes) if not any(l == label for _, l in files)]
    if empty:  # else it trains or tests on the other classes, under the same config
        raise DataError(f"{folder}/{empty[0]} holds no image ({', '.join(sorted(IMAGE_SUFFIXES))}): every "
                        f"class needs its images in both splits; restore them")
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
        handle, partial = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
        os.fchmod(handle, 0o644)  # readable by all, as a download is (mkstemp's is private)
        os.close(handle)  # created here, so the unlink below deletes only what this call made
        partial = Path(partial)
        try:
            urllib.request.urlretrieve(url, partial)
        except OSError as e:
            partial.unlink(missing_ok=True)
            raise DataError(f"could not download {name} from {url} ({e}); put {path.name} in "
                            f"{path.parent} by hand, or set data.root to a folder holding {layouts}") from e
        partial.replace(path)
    verify_md5(path, md5, f"delete {path} and download it again")


def extract(archive: Path, member: str) -> None:
    """The folder ``member`` of a tar archive, extracted beside it whole or not at all; a folder
    of that name that is not empty is someone's: refused, never replaced."""
    target = archive.parent / member
    if target.is_symlink() or target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise DataError(f"{target} is in the way of the extracted dataset, but does not hold it: "
                        f"move it away (nothing in it was changed), or set data.root to another folder")
    with tempfile.TemporaryDirectory(dir=archive.parent) as tmp:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")  # no path outside tmp, no links out, no devices
        if target.exists():
            target.rmdir()  # empty: nothing is lost
        os.replace(Path(tmp) / member, target)


def download(root: Path) -> None:
    """Fetch the official CIFAR-10 archive into ``root`` (md5-checked) and extract its batches."""
    fetch(URL, root / ARCHIVE, ARCHIVE_MD5, "CIFAR-10", LAYOUTS)
    extract(root / ARCHIVE, BATCHES_DIR)


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise DataError(f"unknown data.format '{fmt}'; choose one of {', '.join(FORMATS)}")


def load_cifar10(root: str | Path, fmt: str = "auto", download_missing: bool = False) -> Arrays:
    """All 60k images as uint8 (N, 32, 32, 3) plus int64 labels, via a cache beside the data."""
    return split_arrays(cifar10_arrays(root, fmt, download_missing))


def cifar10_arrays(root: str | Path, fmt: str = "auto", download_missing: bool = False) -> dict[str, np.ndarray]:
    """``load_cifar10``'s arrays by name, with their fingerprint (``cached``)."""
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
    return cached(folder / f"cifar10-{fmt}-uint8.npz", folder, names,
                  lambda: dict(zip(SPLIT_ARRAYS, read())), f"CIFAR-10 ({fmt})")


SPLIT_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def split_arrays(arrays: dict[str, np.ndarray]) -> Arrays:
    return tuple(arrays[k] for k in SPLIT_ARRAYS)


def fingerprint(arrays: Arrays) -> str:
    """The digest of a decoded dataset (every image and label of both splits, with their
    dtypes and shapes): the pixels a run sees."""
    digest = hashlib.blake2b(digest_size=8)
    for array in arrays:
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def folder_files(folder: Path) -> list[str]:
    """The files of an image folder's two splits, relative to it."""
    return [os.path.relpath(os.path.join(parent, name), folder)
            for split in ("train", "test") for parent, _, files in os.walk(folder / split)
            for name in files]


def cached(cache: Path, folder: Path, names: list[str], read: Callable[[], dict[str, np.ndarray]],
           what: str) -> dict[str, np.ndarray]:
    """``read()`` (named arrays, ``SPLIT_ARRAYS`` among them) and their ``fingerprint``,
    through a cache file that holds both with the manifest of the files ``names`` (relative to
    ``folder``) it was built from: used only while every one of those is unchanged (each file's
    size and modification time, so no file is read and no image hashed), rebuilt when
    unreadable (cut short, a bad CRC); a cache from before fingerprints were kept gains one."""
    source = manifest(folder, names)
    if cache.exists():
        try:
            with np.load(cache, allow_pickle=False) as z:
                if str(z["source"]) == source:
                    arrays = {k: z[k] for k in z.files if k != "source"}
                    if "fingerprint" not in arrays:
                        arrays["fingerprint"] = np.array(fingerprint(split_arrays(arrays)))
                        save_atomically(cache, arrays, source)
                    return arrays
            log.info("the files under %s changed since %s was built; reading them again", folder, cache.name)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            log.warning("ignoring unreadable cache %s (%s); rebuilding it", cache, e)
    log.info("decoding %s from %s", what, folder)
    arrays = read()
    arrays["fingerprint"] = np.array(fingerprint(split_arrays(arrays)))
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
    try:
        handle, partial = tempfile.mkstemp(prefix=f".{cache.name}.", suffix=".part", dir=cache.parent)
    except OSError as e:
        log.warning("could not write the cache %s (%s); the next run decodes again", cache, e)
        return
    partial = Path(partial)  # created here: the unlink below deletes only what this call made
    try:
        os.fchmod(handle, 0o644)  # shared like the data beside it (mkstemp's is private)
        with os.fdopen(handle, "wb") as f:
            np.savez(f, source=np.array(source), **arrays)
        os.replace(partial, cache)
    except OSError as e:
        partial.unlink(missing_ok=True)
        log.warning("could not write the cache %s (%s); the next run decodes again", cache, e)


def read_cifar100(folder: Path, labels: str, md5: dict[str, str]) -> dict[str, np.ndarray]:
    """The official python files ``train`` and ``test``: pickled dicts with b'data' (N, 3072)
    and b'fine_labels' / b'coarse_labels', checked against ``md5``."""
    arrays = {}
    for split in ("train", "test"):
        path = folder / split
        verify_md5(path, md5[split], "delete it (and the archive) and download CIFAR-100 again")
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
