"""lscape.data: the embedded digits, MNIST and CIFAR-10 readers on files written here (never downloaded),
their errors, and the synthetic sets."""
import numpy as np
import pytest
import torch

from lscape import data

from conftest import write_cifar10, write_idx


def test_digits_is_the_real_set():
    d = data.digits()
    assert d.x_train.shape == (1438, 64) and d.x_test.shape == (359, 64) and d.n_classes == 10
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert 0.0 <= float(d.x_train.min()) and float(d.x_train.max()) == 1.0
    assert torch.bincount(torch.cat([d.y_train, d.y_test])).tolist()[0] == 178  # the set's count of zeros
    again = data.digits()
    assert torch.equal(d.x_train, again.x_train) and not torch.equal(data.digits(seed=1).y_train, d.y_train)
    sklearn = pytest.importorskip("sklearn.datasets", reason="the independent copy to compare with")
    ref = sklearn.load_digits()
    both = np.sort(np.concatenate([d.x_train.numpy(), d.x_test.numpy()]) * 16, axis=0)
    assert np.array_equal(both, np.sort(ref.data.astype(np.float32), axis=0))


def test_mnist_reads_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    xtr, xte = rng.integers(0, 256, (5, 28, 28)), rng.integers(0, 256, (3, 28, 28))
    ytr, yte = rng.integers(0, 10, 5), rng.integers(0, 10, 3)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", xtr, gz=True)
    write_idx(tmp_path / "train-labels-idx1-ubyte", ytr)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", xte)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", yte, gz=True)
    d = data.load("mnist", tmp_path)
    assert d.x_train.shape == (5, 784) and torch.allclose(d.x_train[1], torch.tensor(xtr[1].ravel() / 255.0).float())
    assert d.y_test.tolist() == yte.tolist()
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte.*get it from"):
        data.mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x09abc")  # says 9, holds 3
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte is damaged"):
        data.mnist(tmp_path)


def test_cifar10_reads_python_batches(tmp_path):
    folder = write_cifar10(tmp_path, per_batch=4, seed=1)
    d = data.cifar10(tmp_path)
    assert d.x_train.shape == (20, 3072) and d.x_test.shape == (4, 3072) and float(d.x_train.max()) <= 1.0
    good = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="data_batch_3 is damaged"):
        data.cifar10(tmp_path)
    (folder / "data_batch_3").write_bytes(good)
    (folder / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match="test_batch.*cifar-10-python"):
        data.cifar10(folder)


def test_synthetic_sets_and_bad_arguments(tmp_path):
    m = data.two_moons(100, noise=0.0)
    x = torch.cat([m.x_train, m.x_test])
    y = torch.cat([m.y_train, m.y_test])
    upper = x[y == 0]
    assert torch.allclose(upper.double().norm(dim=1), torch.ones(50, dtype=torch.float64), atol=1e-6)
    xo = data.xor()
    assert (xo.y_train == (xo.x_train[:, 0] != xo.x_train[:, 1]).long()).all()
    with pytest.raises(ValueError, match="name: got 'imagenet'"):
        data.load("imagenet")
    with pytest.raises(ValueError, match="data_dir: got None"):
        data.load("mnist")
    with pytest.raises(FileNotFoundError, match="data_dir: .* is not a folder"):
        data.mnist(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="test_fraction"):
        data.digits(test_fraction=1.0)
