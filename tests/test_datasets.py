"""Datasets as parameters: CIFAR-100 and SVHN from files in their official formats (written
here: nothing can be downloaded on these machines), any image folder (the shared CIFAR-10
JPEGs), each with its classes, normalisation and augmentation taken from its config."""
import hashlib
import io
import pickle
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from hybrid_exp import data, dataset_files
from hybrid_exp.batches import Batches
from hybrid_exp.checks import check_config
from hybrid_exp.errors import ConfigError, DataError
from hybrid_exp.schema import config_hash


def write_cifar100_archive(root, n_train=300, n_test=100, seed=0):
    """cifar-100-python.tar.gz as the official one is laid out (train, test, meta pickles with
    fine and coarse labels), small; returns (archive md5, member md5s, fine, coarse train labels)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    members, labels = {}, {}
    for name, n in (("train", n_train), ("test", n_test)):
        fine = np.arange(n) % 100
        rng.shuffle(fine)
        coarse = fine // 5
        blob = pickle.dumps({b"filenames": [], b"batch_label": name.encode(),
                             b"fine_labels": fine.tolist(), b"coarse_labels": coarse.tolist(),
                             b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}, protocol=2)
        members[name], labels[name] = blob, (fine, coarse)
    members["meta"] = pickle.dumps({b"fine_label_names": [f"c{i}".encode() for i in range(100)],
                                    b"coarse_label_names": [f"s{i}".encode() for i in range(20)]})
    archive = root / dataset_files.CIFAR100_ARCHIVE
    with tarfile.open(archive, "w:gz") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(f"{dataset_files.CIFAR100_DIR}/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    md5 = {name: hashlib.md5(blob).hexdigest() for name, blob in members.items() if name != "meta"}
    return hashlib.md5(archive.read_bytes()).hexdigest(), md5, labels


@pytest.fixture
def cifar100_root(tmp_path, monkeypatch):
    archive_md5, md5, labels = write_cifar100_archive(tmp_path / "cifar100")
    monkeypatch.setattr(dataset_files, "CIFAR100_ARCHIVE_MD5", archive_md5)  # accept the small files as official
    monkeypatch.setattr(dataset_files, "CIFAR100_MD5", md5)
    return tmp_path / "cifar100", labels


def test_cifar100_extracts_its_archive_and_reads_fine_or_coarse_labels(make_cfg, cifar100_root):
    root, labels = cifar100_root
    fine = instantiate(make_cfg("data=cifar100", f"data.root={root}").data, seeds=[0])
    x_train, y_train, x_test, y_test = fine.load()
    assert x_train.shape == (300, 32, 32, 3) and x_test.shape == (100, 32, 32, 3)
    np.testing.assert_array_equal(y_train, labels["train"][0])
    assert (root / dataset_files.CIFAR100_DIR / "train").is_file()  # extracted beside the archive
    coarse_cfg = make_cfg("data=cifar100", f"data.root={root}", "data.labels=coarse", "data.num_classes=20")
    check_config(coarse_cfg)
    assert coarse_cfg.model.num_classes == 20  # the model follows the data
    np.testing.assert_array_equal(instantiate(coarse_cfg.data, seeds=[0]).load()[1], labels["train"][1])
    with pytest.raises(ConfigError, match=r"data.num_classes=100, but CIFAR100 with these "
                       r"settings has 20 classes: set data.num_classes=20"):
        check_config(make_cfg("data=cifar100", "data.labels=coarse"))


def test_cifar100_refuses_a_corrupt_archive_in_one_sentence(tmp_path):
    root = tmp_path / "cifar100"
    write_cifar100_archive(root)  # its md5 is not the official one
    with pytest.raises(DataError, match=rf"{dataset_files.CIFAR100_ARCHIVE} fails its md5 check.*delete"):
        data.CIFAR100(str(root)).load()
    assert not (root / dataset_files.CIFAR100_DIR).exists()  # nothing half-extracted


def test_a_missing_dataset_without_download_names_what_to_put_where(tmp_path):
    with pytest.raises(DataError, match=r"no CIFAR-100 found under .*cifar-100-python.*data.download=true"):
        data.CIFAR100(str(tmp_path), download=False).load()
    with pytest.raises(DataError, match=r"no SVHN found under .*train_32x32.mat.*data.download=true"):
        data.SVHN(str(tmp_path), download=False).load()


def write_svhn(root, n_train=40, n_test=20, seed=0):
    """train_32x32.mat and test_32x32.mat as the official files are (MATLAB, X (32, 32, 3, N),
    y (N, 1) with 10 for the digit 0); returns their md5s and the train digits."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    md5, digits = {}, None
    for split, n in (("train", n_train), ("test", n_test)):
        y = np.arange(n) % 10
        savemat(root / f"{split}_32x32.mat", {"X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8),
                                              "y": np.where(y == 0, 10, y)[:, None].astype(np.uint8)})
        md5[split] = hashlib.md5((root / f"{split}_32x32.mat").read_bytes()).hexdigest()
        digits = y if split == "train" else digits
    return md5, digits


def test_svhn_reads_the_official_mat_files_with_0_for_label_10(make_cfg, tmp_path, monkeypatch):
    md5, digits = write_svhn(tmp_path)
    monkeypatch.setattr(dataset_files, "SVHN_MD5", {**dataset_files.SVHN_MD5, **md5})
    svhn = instantiate(make_cfg("data=svhn", f"data.root={tmp_path}").data, seeds=[0])
    x_train, y_train, x_test, y_test = svhn.load()
    assert x_train.shape == (40, 32, 32, 3) and x_test.shape == (20, 32, 32, 3)
    np.testing.assert_array_equal(y_train, digits)
    assert set(y_test.tolist()) == set(range(10))
    assert svhn.flip is False  # digits are not mirror-symmetric
    (tmp_path / "test_32x32.mat").write_bytes(b"damaged")
    with pytest.raises(DataError, match="test_32x32.mat fails its md5 check"):
        svhn.load()


def test_no_flip_means_no_flip_and_the_pad_is_the_configs():
    images = torch.arange(16 * 8 * 8 * 3, dtype=torch.int64).remainder(251).to(torch.uint8).view(16, 8, 8, 3)
    labels, rows = torch.arange(16), torch.arange(16)[None]
    plain = torch.tensor([0.5] * 3), torch.tensor([0.25] * 3)
    batches = Batches(images, labels, rows, 16, augment_seeds=[1], mean=plain[0], std=plain[1],
                      pad=0, flip=False)
    (x, y), = list(batches)
    expected = (images[y[:, 0]].permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(x, expected)  # pad 0, no flip: the images themselves, reordered
    order, offsets, flips = Batches.draw(1, 0, 16, pad=2, flip=False)
    assert offsets.max() <= 4 and not flips.any()


@pytest.mark.slow  # decodes the 60k JPEGs once more, into the image folder's own cache
def test_any_image_folder_is_a_dataset_with_its_classes_and_statistics(make_cfg, cifar10_root):
    cfg = make_cfg("data=image_folder", f"data.root={cifar10_root}", "data.num_classes=10")
    folder = instantiate(cfg.data, seeds=[0])
    x_train, y_train, x_test, y_test = folder.load()
    assert x_train.shape == (50000, 32, 32, 3) and x_test.shape == (10000, 32, 32, 3)
    assert folder.classes == data.CLASSES  # the folder names, sorted
    np.testing.assert_allclose(folder.mean, data.MEAN, atol=0.002)  # computed once, cached
    np.testing.assert_allclose(folder.std, data.STD, atol=0.002)
    wrong = instantiate(make_cfg("data=image_folder", f"data.root={cifar10_root}",
                                 "data.num_classes=12").data, seeds=[0])
    with pytest.raises(DataError, match=r"data.num_classes=12, but .*train has 10 class folders"):
        wrong.load()


def test_a_warm_start_reads_no_image_and_hashes_none_until_one_image_changes(make_cfg, tmp_path, monkeypatch):
    """A small image folder as PNGs: the first start decodes it and keeps its fingerprint in the
    cache; the next reads no image file and hashes nothing (both patched to raise); a changed
    image, whatever its size, is decoded again and changes the fingerprint."""
    from PIL import Image


    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 6)):
        for i in range(n):
            folder = tmp_path / "images" / split / ("cat", "dog")[i % 2]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    cfg = make_cfg("data=image_folder", f"data.root={tmp_path / 'images'}", "data.val_size=2",
                   "data.batch_size=4", "data.eval_size=4")
    start = lambda: instantiate(cfg.data, seeds=[0])
    cold = start().data_fingerprint()
    assert cold == dataset_files.fingerprint(start().load())  # the digest of the decoded pixels

    def never(*args, **kwargs):
        raise AssertionError("a warm start read an image or hashed the dataset")

    with monkeypatch.context() as patched:
        patched.setattr(dataset_files, "fingerprint", never)
        patched.setattr(dataset_files, "read_class_folders", never)
        patched.setattr(data, "fingerprint", never)
        warm = start()
        assert warm.data_fingerprint() == cold
        warm.check_splits(), warm.setup()  # one read of the cache serves the whole start
    changed = tmp_path / "images/test/cat/0.png"
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(changed)
    assert start().data_fingerprint() != cold


@pytest.mark.parametrize("option, overrides", [
    ("cifar10", []), ("cifar10_conventional", []), ("cifar100", []), ("cifar100", ["data.labels=coarse"]),
    ("svhn", []), ("synthetic", []), ("synthetic", ["data.num_classes=3"])])
def test_every_dataset_names_its_classes_in_label_order(make_cfg, option, overrides):
    cfg = make_cfg(f"data={option}", *overrides)
    dataset = instantiate(cfg.data, seeds=[0])
    n_classes = type(dataset).sizes(**{k: v for k, v in cfg.data.items() if k != "_target_"})
    assert len(dataset.classes) == (n_classes[2] if n_classes else cfg.data.num_classes)
    assert len(set(dataset.classes)) == len(dataset.classes)
    assert {"cifar10": "airplane", "cifar100": "apple", "svhn": "0", "synthetic": "0"}[
        option.split("_")[0]] == dataset.classes[0] or overrides == ["data.labels=coarse"]


def test_image_folder_counts_its_classes_from_its_folders_up_front(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match=r"^data.root=/nonexistent holds no class folder in "
                                          r"/nonexistent/train: lay the images out as"):
        check_config(make_cfg("data=image_folder", "data.root=/nonexistent"))
    for name in ("cat", "dog", "emu"):
        (tmp_path / "folder/train" / name).mkdir(parents=True)
    cfg = make_cfg("data=image_folder", f"data.root={tmp_path / 'folder'}")
    assert cfg.data.num_classes == cfg.model.num_classes == 3  # the network's output size too
    given = make_cfg("data=image_folder", f"data.root={tmp_path / 'folder'}", "data.num_classes=3")
    assert config_hash(cfg) == config_hash(given)  # the same run as one that named its classes


@pytest.mark.slow
def test_fig4_grid_trains_on_cifar100(tmp_path):
    """`experiment=fig4 data=cifar100` composes and trains end to end, on a test-made archive
    (marked official for this process: a launcher that runs jobs in-process keeps the mark)."""
    archive_md5, md5, _ = write_cifar100_archive(tmp_path / "cifar100", n_train=400, n_test=200)
    script = (f"import sys; from hybrid_exp import dataset_files; dataset_files.CIFAR100_ARCHIVE_MD5 = {archive_md5!r}; "
              f"dataset_files.CIFAR100_MD5 = {md5!r}; from hybrid_exp.cli import main; main()")
    run = subprocess.run(
        [sys.executable, "-c", script, "experiment=fig4", "data=cifar100", f"data.root={tmp_path / 'cifar100'}",
         "data.val_size=100", "data.eval_size=100", "data.batch_size=50", "trainer.max_epochs=1",
         "optim.warmup_epochs=0", "model.width=16", "model.depth=1", "seed=0", "hydra/launcher=basic",
         "grid.model='separable,hybrid'", f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    from analysis import load_runs
    runs = load_runs("fig4", f"sqlite:///{tmp_path}/mlflow.db")
    assert sorted(runs.setup) == ["hybrid", "separable"] and set(runs.status) == {"FINISHED"}
    assert all(c["data._target_"] == "hybrid_exp.data.CIFAR100" and c["model.num_classes"] == "100"
               for c in runs.config)


def test_one_config_on_other_pixels_is_trained_again_and_tagged_apart(make_cfg, tmp_path):
    """data.root is no part of a config's hash: the data fingerprint tells the pixels apart."""
    from mlflow.tracking import MlflowClient

    from hybrid_exp.train import train
    from tests.helpers import TINY, write_image_folder

    write_image_folder(tmp_path / "first", seed=0)
    write_image_folder(tmp_path / "second", seed=1)
    common = ["data=image_folder", "data.num_classes=2", "data.val_size=8", "data.eval_size=16",
              *TINY, "data.batch_size=8", "trainer.max_epochs=1"]
    first = train(make_cfg(*common, f"data.root={tmp_path / 'first'}"))[0]
    second = train(make_cfg(*common, f"data.root={tmp_path / 'second'}"))[0]
    again = train(make_cfg(*common, f"data.root={tmp_path / 'first'}"))[0]
    assert (first.status, second.status, again.status) == ("finished", "finished", "skipped")
    assert again.run_id == first.run_id and second.run_id != first.run_id
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    tags = [client.get_run(r.run_id).data.tags for r in (first, second)]
    assert tags[0]["config_hash"] == tags[1]["config_hash"]
    assert len({t["data_fingerprint"] for t in tags}) == 2
