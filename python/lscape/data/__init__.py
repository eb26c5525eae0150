"""Datasets: the embedded default (handwritten digits), standard files read from a local folder (MNIST,
CIFAR-10), and small synthetic sets for tests and toy problems.  Nothing is ever downloaded.

    d = lscape.data.digits()                  # 8x8 digits, embedded: x (N, 64) float32 in [0, 1]
    d = lscape.data.mnist("~/data")           # train-images-idx3-ubyte[.gz] etc. in that folder
    d = lscape.data.cifar10("~/data")         # cifar-10-batches-py/ (the "python version")
    d = lscape.data.load("digits" | "mnist" | "cifar10", data_dir=None)

Every loader returns a `Split` (x_train, y_train, x_test, y_test): x float32 (N, features) scaled to
[0, 1], y int64 class labels.
"""
from __future__ import annotations

import gzip
import math
import os
import pickle
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

__all__ = ["Split", "cifar10", "digits", "load", "mnist", "two_moons", "xor"]

_HERE = Path(__file__).resolve().parent
MNIST_URL = "http://yann.lecun.com/exdb/mnist/ (or any mirror of the four IDX files)"
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (unpack it into the folder)"


class Split(NamedTuple):
    """x_train (N, F) float32, y_train (N,) int64, x_test (M, F) float32, y_test (M,) int64."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def n_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max())) + 1


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int) -> Split:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction: got {test_fraction!r}, expected a number in (0, 1)")
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    te, tr = order[:n_test], order[n_test:]
    t = lambda a, dt: torch.from_numpy(np.ascontiguousarray(a)).to(dt)  # noqa: E731
    return Split(t(x[tr], torch.float32), t(y[tr], torch.int64), t(x[te], torch.float32), t(y[te], torch.int64))


def digits(*, test_fraction: float = 0.2, seed: int = 0) -> Split:
    """The 1,797 8x8 handwritten digits embedded in lscape (UCI optdigits as scikit-learn bundles it;
    see data/README.md), pixels / 16, split at random (seeded) into train and test."""
    raw = np.loadtxt(gzip.open(_HERE / "digits.csv.gz", "rt"), delimiter=",", dtype=np.float64)
    return _split(raw[:, :-1] / 16.0, raw[:, -1].astype(np.int64), test_fraction, seed)


def _data_dir(data_dir, what: str) -> Path:
    if data_dir is None:
        raise ValueError(f"data_dir: got None, expected the folder holding the {what} files")
    p = Path(os.path.expanduser(str(data_dir)))
    if not p.is_dir():
        raise FileNotFoundError(f"data_dir: {p} is not a folder (expected the folder holding the {what} files)")
    return p


def _find(folder: Path, names: tuple[str, ...], what: str, url: str) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{what}: none of {', '.join(names)} in {folder}; get it from {url}")


def _read_idx(path: Path, what: str, url: str) -> np.ndarray:
    """An IDX file (MNIST's format: magic 0x0000 | type 0x08 | ndim, big-endian int32 sizes, uint8 data)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) != 4 or head[:2] != b"\x00\x00" or head[2] != 0x08:
                raise ValueError("not an unsigned-byte IDX file")
            shape = tuple(int.from_bytes(f.read(4), "big") for _ in range(head[3]))
            data = np.frombuffer(f.read(), dtype=np.uint8)
        if data.size != math.prod(shape):
            raise ValueError(f"holds {data.size} bytes of data, its header says {math.prod(shape)}")
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"{what}: {path} is damaged ({exc}); get a fresh copy from {url}") from None
    return data.reshape(shape)


def mnist(data_dir) -> Split:
    """MNIST from the four IDX files (optionally .gz) in data_dir: 60,000 train and 10,000 test images,
    flattened to 784 pixels / 255."""
    d = _data_dir(data_dir, "MNIST")
    arrays = []
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        path = _find(d, (stem, stem + ".gz", stem.replace("-idx", ".idx")), f"MNIST {stem}", MNIST_URL)
        arrays.append(_read_idx(path, f"MNIST {stem}", MNIST_URL))
    xtr, ytr, xte, yte = arrays
    if len(xtr) != len(ytr) or len(xte) != len(yte):
        raise ValueError(f"MNIST in {d}: image and label counts differ; get fresh copies from {MNIST_URL}")
    f = lambda a: a.reshape(len(a), -1).astype(np.float32) / 255.0  # noqa: E731
    t = torch.from_numpy
    return Split(t(f(xtr)), t(ytr.astype(np.int64)), t(f(xte)), t(yte.astype(np.int64)))


def cifar10(data_dir) -> Split:
    """CIFAR-10 from the python batches (data_batch_1..5, test_batch) in data_dir or
    data_dir/cifar-10-batches-py: 50,000 train and 10,000 test images, 3072 values (channel-major) / 255."""
    d = _data_dir(data_dir, "CIFAR-10")
    if (d / "cifar-10-batches-py").is_dir():
        d = d / "cifar-10-batches-py"

    def batch(name: str) -> tuple[np.ndarray, np.ndarray]:
        path = _find(d, (name,), f"CIFAR-10 {name}", CIFAR_URL)
        try:
            with open(path, "rb") as f:
                b = pickle.load(f, encoding="bytes")
            x = np.asarray(b[b"data"], dtype=np.uint8)
            y = np.asarray(b[b"labels"], dtype=np.int64)
            if x.ndim != 2 or x.shape[1] != 3072 or len(x) != len(y):
                raise ValueError(f"data of shape {x.shape} with {len(y)} labels, expected (N, 3072) and N")
        except (OSError, ValueError, KeyError, EOFError, pickle.UnpicklingError) as exc:
            raise ValueError(f"CIFAR-10 {name}: {path} is damaged ({exc}); get a fresh copy from {CIFAR_URL}") from None
        return x, y

    parts = [batch(f"data_batch_{i}") for i in range(1, 6)]
    xte, yte = batch("test_batch")
    xtr = np.concatenate([p[0] for p in parts])
    ytr = np.concatenate([p[1] for p in parts])
    t = torch.from_numpy
    return Split(t(xtr.astype(np.float32) / 255.0), t(ytr), t(xte.astype(np.float32) / 255.0), t(yte))


def load(name: str, data_dir=None) -> Split:
    """A dataset by name: "digits" (embedded), "mnist" or "cifar10" (from data_dir)."""
    if name == "digits":
        return digits()
    if name == "mnist":
        return mnist(data_dir)
    if name == "cifar10":
        return cifar10(data_dir)
    raise ValueError(f"name: got {name!r}, expected one of 'digits', 'mnist', 'cifar10'")


def two_moons(n: int = 200, *, noise: float = 0.1, test_fraction: float = 0.5, seed: int = 0) -> Split:
    """Two interleaving half circles in 2D (scikit-learn's make_moons construction), n points, Gaussian
    noise of sd `noise`; labels 0 and 1."""
    rng = np.random.default_rng(seed)
    a = n // 2
    t0, t1 = np.linspace(0, np.pi, a), np.linspace(0, np.pi, n - a)
    x = np.concatenate([np.stack([np.cos(t0), np.sin(t0)], 1), np.stack([1 - np.cos(t1), 0.5 - np.sin(t1)], 1)])
    x = x + noise * rng.standard_normal(x.shape)
    y = np.concatenate([np.zeros(a, np.int64), np.ones(n - a, np.int64)])
    return _split(x, y, test_fraction, seed + 1)


def xor() -> Split:
    """The four XOR points in {0, 1}^2 with labels x1 XOR x2 (train and test are the same four points)."""
    x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    y = torch.tensor([0, 1, 1, 0])
    return Split(x, y, x.clone(), y.clone())
