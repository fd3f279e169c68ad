"""Readers, checksums, the cache and the on-device augmentation."""
import hashlib
import pickle

import numpy as np
import pytest
import torch

from hybrid_exp import data, dataset_files
from hybrid_exp.batches import Batches, crop_flip
from hybrid_exp.data import CIFAR10
from hybrid_exp.dataset_files import load_cifar10
from hybrid_exp.errors import DataError
from tests.helpers import write_image_folder


def write_official_batches(folder, n_per_batch=20, seed=0):
    """Small batches in the official format; returns (md5 table, images, labels)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    md5, images, labels = {}, {}, {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, (n_per_batch, 3, 32, 32), dtype=np.uint8)  # channel-major rows
        y = rng.integers(0, 10, n_per_batch).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": y,
                         b"data": x.reshape(n_per_batch, 3072), b"filenames": []}, f, protocol=2)
        md5[name] = hashlib.md5((folder / name).read_bytes()).hexdigest()
        images[name], labels[name] = x.transpose(0, 2, 3, 1), y
    return md5, images, labels


def test_pickle_reader_reads_the_official_format(tmp_path):
    md5, images, labels = write_official_batches(tmp_path / "cifar-10-batches-py")
    x_train, y_train, x_test, y_test = dataset_files.read_pickle(tmp_path / "cifar-10-batches-py", md5)
    assert x_train.shape == (100, 32, 32, 3) and x_train.dtype == np.uint8
    np.testing.assert_array_equal(x_train[20:40], images["data_batch_2"])  # HWC, in order
    np.testing.assert_array_equal(y_train[:20], labels["data_batch_1"])
    np.testing.assert_array_equal(x_test, images["test_batch"])
    np.testing.assert_array_equal(y_test, labels["test_batch"])


def test_corrupt_batch_fails_its_checksum_naming_the_file(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    md5, _, _ = write_official_batches(folder)
    blob = bytearray((folder / "data_batch_3").read_bytes())
    blob[-10] ^= 0xFF
    (folder / "data_batch_3").write_bytes(bytes(blob))
    with pytest.raises(DataError, match=r"data_batch_3 fails its md5 check"):
        dataset_files.read_pickle(folder, md5)


def test_official_batches_checksums_are_enforced(tmp_path):
    """Without a matching md5 table, files that are not the official ones are refused."""
    write_official_batches(tmp_path / "cifar-10-batches-py")
    with pytest.raises(DataError, match="data_batch_1 fails its md5 check"):
        load_cifar10(tmp_path, "pickle")
    assert not list(tmp_path.rglob("*.npz")), "no cache may be written from rejected data"


def test_corrupt_archive_fails_its_checksum_and_extracts_nothing(tmp_path):
    (tmp_path / dataset_files.ARCHIVE).write_bytes(b"not the CIFAR-10 archive")
    with pytest.raises(DataError, match=rf"{dataset_files.ARCHIVE} fails its md5 check.*delete"):
        load_cifar10(tmp_path, "auto", download_missing=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [dataset_files.ARCHIVE]


def test_missing_dataset_says_where_files_go(tmp_path):
    with pytest.raises(DataError) as info:
        load_cifar10(tmp_path / "empty", "auto", download_missing=False)
    message = str(info.value)
    assert str(tmp_path / "empty") in message
    assert "cifar-10-batches-py" in message and "train/<class>" in message
    assert "data.download=true" in message


def test_failed_download_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(dataset_files, "URL", "http://127.0.0.1:9/cifar-10-python.tar.gz")  # nothing there
    with pytest.raises(DataError, match=r"could not download CIFAR-10 .* by hand"):
        load_cifar10(tmp_path, "auto", download_missing=True)
    assert not any(tmp_path.iterdir()), "no partial download may remain"


def test_unknown_format_lists_the_valid_ones(tmp_path):
    with pytest.raises(DataError, match="choose one of auto, pickle, image_folder"):
        load_cifar10(tmp_path, "hdf5")


def test_image_folder_with_wrong_classes_names_them(tmp_path):
    for split in ("train", "test"):
        (tmp_path / split / "cats").mkdir(parents=True)
    with pytest.raises(DataError, match="one folder per class.*no class: cats"):
        load_cifar10(tmp_path, "image_folder")


def test_real_cifar10_is_complete_and_cached(cifar10_root):
    x_train, y_train, x_test, y_test = load_cifar10(cifar10_root)
    assert x_train.shape == (50000, 32, 32, 3) and x_test.shape == (10000, 32, 32, 3)
    assert np.bincount(y_train).tolist() == [5000] * 10
    assert np.bincount(y_test).tolist() == [1000] * 10
    mean = x_train.reshape(-1, 3).mean(0) / 255
    np.testing.assert_allclose(mean, data.MEAN, atol=0.002)  # real images, official order
    assert (cifar10_root / "cifar10-image_folder-uint8.npz").is_file()


def test_cache_is_written_once_and_an_unreadable_one_is_rebuilt(tmp_path, monkeypatch):
    md5, images, _ = write_official_batches(tmp_path / "cifar-10-batches-py")
    for name, digest in md5.items():  # accept the small files as if official
        monkeypatch.setitem(dataset_files.BATCH_MD5, name, digest)
    cache = tmp_path / "cifar-10-batches-py" / "cifar10-pickle-uint8.npz"
    np.testing.assert_array_equal(load_cifar10(tmp_path)[2], images["test_batch"])
    assert cache.is_file()
    monkeypatch.setattr(dataset_files, "read_pickle", None)  # a second load must come from the cache
    np.testing.assert_array_equal(load_cifar10(tmp_path)[2], images["test_batch"])
    monkeypatch.undo()
    for name, digest in md5.items():
        monkeypatch.setitem(dataset_files.BATCH_MD5, name, digest)
    cache.write_bytes(b"truncated")
    np.testing.assert_array_equal(load_cifar10(tmp_path)[2], images["test_batch"])
    with np.load(cache) as z:  # rebuilt whole, no temporary file left behind
        np.testing.assert_array_equal(z["x_test"], images["test_batch"])
    assert sorted(p.name for p in cache.parent.iterdir() if not p.name.startswith("data_batch")) \
        == ["cifar10-pickle-uint8.npz", "test_batch"]


# ---------------------------------------------------------------------------- augmentation


def test_crop_without_offset_or_flip_is_the_identity_shifted_by_padding():
    x = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8)
    centre = torch.full((3, 2), 4)
    no_flip = torch.zeros(3, dtype=torch.bool)
    assert torch.equal(crop_flip(x, centre, no_flip), x)
    assert torch.equal(crop_flip(x, centre, ~no_flip), x.flip(2))  # flips really flip (width)


def test_crops_stay_within_the_padding():
    x = torch.full((2, 32, 32, 3), 7, dtype=torch.uint8)
    corner = torch.tensor([[0, 0], [8, 8]])  # the most extreme offsets
    out = crop_flip(x, corner, torch.zeros(2, dtype=torch.bool))
    assert out.shape == (2, 32, 32, 3)
    assert (out[0, :4] == 0).all() and (out[0, :, :4] == 0).all() and (out[0, 4:, 4:] == 7).all()
    assert (out[1, -4:] == 0).all() and (out[1, :-4, :-4] == 7).all()


def test_augmentation_is_deterministic_per_seed_and_epoch():
    images = torch.randint(0, 256, (50, 32, 32, 3), dtype=torch.uint8)
    labels = torch.arange(50)
    rows = torch.arange(50)[None]  # one member, every image
    epoch = lambda seed, start: [b for b in Batches(images, labels, rows, 16, [seed], start)]
    first, again, other, next_epoch = epoch(0, 0), epoch(0, 0), epoch(1, 0), epoch(0, 1)
    assert len(first) == 3 and first[0][0].shape == (16, 3, 32, 32)  # partial batch dropped
    assert first[0][1].shape == (16, 1)  # labels (B, members)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert not torch.equal(first[0][1], other[0][1])
    assert not torch.equal(first[0][1], next_epoch[0][1])


def test_evaluation_batches_cover_every_image_in_order():
    images = torch.randint(0, 256, (50, 32, 32, 3), dtype=torch.uint8)
    batches = list(Batches(images, torch.arange(50), torch.arange(50)[None], 16))
    assert torch.equal(torch.cat([y[:, 0] for _, y in batches]), torch.arange(50))
    x = batches[0][0]
    assert x.is_contiguous(memory_format=torch.channels_last)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (data.MEAN, data.STD))
    torch.testing.assert_close(x, (images[:16].permute(0, 3, 1, 2).float() / 255 - mean) / std)


# ---------------------------------------------------------------------------- splits


def test_splits_are_disjoint_balanced_and_paired_by_seed(cifar10_root):
    module = lambda *seeds: CIFAR10(str(cifar10_root), val_size=1000, eval_size=600,
                                    train_subset=2000, seeds=seeds)
    a, b, c, array = module(0), module(0), module(1), module(0, 1)
    for m in (a, b, c, array):
        m.setup()
    split = lambda m, name, member=0: m.splits[name][2][member]  # that member's image indices
    labels = a.splits["train"][1]
    assert len(split(a, "train")) == 2000 and torch.bincount(labels[split(a, "train")]).tolist() == [200] * 10
    assert len(split(a, "val")) == 1000 and len(split(a, "test")) == 600
    assert torch.equal(split(a, "train"), split(b, "train"))  # same seed, same data
    assert not torch.equal(split(a, "train"), split(c, "train"))  # seed draws the split
    assert torch.equal(split(a, "test"), split(c, "test"))  # eval subset: same for all
    assert not set(split(a, "train").tolist()) & set(split(a, "val").tolist())
    for name in ("train", "val", "test"):  # an array's member m has exactly seed m's splits
        assert torch.equal(split(array, name, 0), split(a, name))
        assert torch.equal(split(array, name, 1), split(c, name))


@pytest.mark.parametrize("kwargs, message", [
    ({"val_size": 60000}, "data.val_size must be in 0..49999"),
    ({"train_subset": 5}, "data.train_subset must be in 10.."),
    ({"eval_size": 20000}, "data.eval_size must be in 1..10000"),
])
def test_impossible_sizes_name_the_key(cifar10_root, kwargs, message):
    with pytest.raises(DataError, match=message):
        CIFAR10(str(cifar10_root), **kwargs).setup()


@pytest.mark.parametrize("damage", ["truncate", "flip a byte"])
def test_a_damaged_cache_is_rebuilt(tmp_path, monkeypatch, damage):
    """A cache cut short by a full disk, or with a bad CRC, is rebuilt, not fatal on every run."""
    md5, images, _ = write_official_batches(tmp_path / "cifar-10-batches-py")
    for name, digest in md5.items():
        monkeypatch.setitem(dataset_files.BATCH_MD5, name, digest)
    load_cifar10(tmp_path)
    cache = tmp_path / "cifar-10-batches-py" / "cifar10-pickle-uint8.npz"
    blob = bytearray(cache.read_bytes())
    if damage == "truncate":
        blob = blob[:len(blob) * 2 // 3]
    else:
        blob[len(blob) // 2] ^= 0xFF  # inside x_train's pixels: the zip's CRC-32 no longer matches
    cache.write_bytes(bytes(blob))
    np.testing.assert_array_equal(load_cifar10(tmp_path)[0][-20:], images["data_batch_5"])
    with np.load(cache) as z:
        np.testing.assert_array_equal(z["x_train"][-20:], images["data_batch_5"])


def test_a_changed_image_folder_is_read_again_not_served_from_its_cache(tmp_path):
    from PIL import Image

    write_image_folder(tmp_path, dataset_files.CLASSES, (2, 2))
    first = load_cifar10(tmp_path, "image_folder")[0]
    assert (tmp_path / "cifar10-image_folder-uint8.npz").is_file()
    image = tmp_path / "train/cat/0.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)  # new pixels, same name
    changed = load_cifar10(tmp_path, "image_folder")[0]
    assert not np.array_equal(first, changed) and changed[6].max() == 0  # cat 0 is image 6
    image.write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"train/cat/0.png is not a readable image"):
        load_cifar10(tmp_path, "image_folder")
    image.unlink()
    for f in (tmp_path / "test/dog").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"test/dog holds no image \(.*\): every class needs its images"):
        load_cifar10(tmp_path, "image_folder")  # not 9 classes under the same config
    (tmp_path / "test/dog").rmdir()
    with pytest.raises(DataError, match=r"test lacks the class folder\(s\) dog"):
        load_cifar10(tmp_path, "image_folder")


def test_a_wrong_format_says_what_was_found(tmp_path):
    write_image_folder(tmp_path, dataset_files.CLASSES, (1, 1))
    with pytest.raises(DataError, match=rf"data.format=pickle, but {tmp_path} holds CIFAR-10 as "
                       r"image_folder: set data.format=image_folder \(or auto\)"):
        load_cifar10(tmp_path, "pickle", download_missing=True)
