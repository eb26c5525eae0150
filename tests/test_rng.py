"""The counter-based generator: its numpy mirror against independent facts."""
import numpy as np
from lscape.reference import rng


def test_mix64_is_splitmix64():
    # SplitMix64 seeded with 0 yields 0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4 first (Vigna's reference).
    state = np.array([1, 2], dtype=np.uint64) * rng.GOLDEN64
    assert [int(v) for v in rng.mix64(state)] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4]


def test_mix32_is_a_bijection_on_a_sample():
    x = np.arange(1 << 20, dtype=np.uint32) * np.uint32(2654435761)
    assert np.unique(rng.mix32(x)).size == x.size


def test_draws_are_uniform_bits():
    h = rng.draw32(rng.stream_key(7, np.arange(64, dtype=np.uint64))[:, None],
                   np.arange(4096, dtype=np.uint32)[None, :]).ravel()
    n = h.size
    # every bit is set half the time, within 5 sigma
    bits = ((h[:, None] >> np.arange(32, dtype=np.uint32)) & 1).mean(axis=0)
    assert np.all(np.abs(bits - 0.5) < 5 * 0.5 / np.sqrt(n))
    # the top byte is uniform (chi-square, 255 dof: mean 255, sd 22.6)
    counts = np.bincount(h >> np.uint32(24), minlength=256)
    chi2 = ((counts - n / 256) ** 2 / (n / 256)).sum()
    assert chi2 < 255 + 6 * 22.6


def test_streams_differ_by_seed_and_stream():
    a = rng.draw32(rng.stream_key(0, np.array([1], dtype=np.uint64)), np.arange(100, dtype=np.uint32))
    b = rng.draw32(rng.stream_key(1, np.array([1], dtype=np.uint64)), np.arange(100, dtype=np.uint32))
    c = rng.draw32(rng.stream_key(0, np.array([2], dtype=np.uint64)), np.arange(100, dtype=np.uint32))
    assert (a != b).mean() > 0.99 and (a != c).mean() > 0.99


def test_uniform24_range():
    h = np.array([0, 0xFFFFFF, 0xFF000000, 0x12345678], dtype=np.uint32)
    u = rng.uniform24(h)
    assert u.dtype == np.float32
    assert u[0] == np.float32(2**-24) and u[1] == 1.0 and u[2] == np.float32(2**-24)
    assert u[3] == np.float32((0x345678 + 1) / 2**24)


def test_log2_approx_against_numpy_on_every_uniform():
    u = (np.arange(1, 2**24 + 1, dtype=np.int64).astype(np.float32) * np.float32(2**-24))
    err = np.abs(rng.log2_approx(u).astype(np.float64) - np.log2(u.astype(np.float64)))
    assert err.max() < 1e-6
    assert rng.log2_approx(np.array([1.0], dtype=np.float32))[0] == 0.0


def test_geometric_gaps_have_the_geometric_law():
    # gap = floor(log2 u / log2(1 - p)) is Geometric(p) on {0, 1, ...}: P(gap >= k) = (1 - p)^k.
    p = 0.05
    cinv = np.float32(np.log(2) / np.log1p(-p))
    h = rng.draw32(rng.stream_key(3, np.array([0], dtype=np.uint64)), np.arange(400_000, dtype=np.uint32))
    gaps = np.floor(rng.log2_approx(rng.uniform24(h)) * cinv).astype(np.int64)
    n = gaps.size
    for k in (1, 5, 20, 60):
        expect = (1 - p) ** k
        assert abs((gaps >= k).mean() - expect) < 5 * np.sqrt(expect * (1 - expect) / n)
    assert abs(gaps.mean() - (1 - p) / p) < 5 * np.sqrt((1 - p) / p**2 / n)
