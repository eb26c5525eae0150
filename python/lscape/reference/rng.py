"""numpy mirror of csrc/include/lscape/rng.h, bit for bit.

Integers are numpy uint32/uint64 arrays (whose arithmetic wraps like C's unsigned types); floats are
float32 arrays combined one IEEE-rounded operation at a time, in the order the C++ header uses.
"""
from __future__ import annotations

import numpy as np

GOLDEN64 = np.uint64(0x9E3779B97F4A7C15)
GOLDEN32 = np.uint32(0x9E3779B9)
_U32 = np.uint64(0xFFFFFFFF)


def mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on a uint64 array."""
    z = np.asarray(z, dtype=np.uint64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def mix32(x: np.ndarray) -> np.ndarray:
    """lowbias32 on a uint32 array."""
    x = np.asarray(x, dtype=np.uint32)
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x21F0AAAD)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x735A2D97)
    return x ^ (x >> np.uint32(15))


def stream_key(seed: int, stream: np.ndarray) -> np.ndarray:
    """Key (uint64) of each stream under `seed`."""
    with np.errstate(over="ignore"):
        s = mix64(np.array([seed], dtype=np.uint64) + GOLDEN64)
    return mix64(s ^ mix64(stream))


def draw32(key: np.ndarray, counter: np.ndarray) -> np.ndarray:
    """32 random bits: draw `counter` (uint32) of the stream with `key` (uint64), broadcasting."""
    key = np.asarray(key, dtype=np.uint64)
    lo = (key & _U32).astype(np.uint32)
    hi = (key >> np.uint64(32)).astype(np.uint32)
    return mix32(mix32(lo + np.asarray(counter, dtype=np.uint32) * GOLDEN32) ^ hi)


def uniform24(h: np.ndarray) -> np.ndarray:
    """float32 uniform in [2^-24, 1] from the low 24 bits."""
    m = ((h & np.uint32(0xFFFFFF)) + np.uint32(1)).astype(np.int32).astype(np.float32)
    return m * np.float32(5.9604644775390625e-08)


_F = np.float32
_C9, _C7, _C5, _C3, _C1 = (_F(0.32059889797532520), _F(0.41219858311113240), _F(0.57707801635558530),
                           _F(0.96179669392597560), _F(2.88539008177792680))


def log2_approx(u: np.ndarray) -> np.ndarray:
    """log2 of positive normal float32 values, rounded exactly as the C++ log2_approx."""
    u = np.asarray(u, dtype=np.float32)
    bits = u.view(np.uint32)
    e = (bits >> np.uint32(23)).astype(np.int32) - np.int32(127)
    m = ((bits & np.uint32(0x007FFFFF)) | np.uint32(0x3F800000)).view(np.float32)
    big = m > _F(1.41421353816986083984375)
    m = np.where(big, m * _F(0.5), m)
    e = e + big.astype(np.int32)
    s = (m - _F(1.0)) / (m + _F(1.0))
    z = s * s
    p = _C9
    p = _C7 + z * p
    p = _C5 + z * p
    p = _C3 + z * p
    p = _C1 + z * p
    return e.astype(np.float32) + s * p


def uniform53(key: np.ndarray, counter: np.ndarray) -> np.ndarray:
    """float64 uniform in (0, 1) from draws 2*counter and 2*counter+1 of the stream (53 random bits)."""
    c = np.asarray(counter, dtype=np.uint32) * np.uint32(2)
    hi = draw32(key, c).astype(np.uint64) >> np.uint64(6)  # 26 bits
    lo = draw32(key, c + np.uint32(1)).astype(np.uint64) >> np.uint64(5)  # 27 bits
    return ((hi << np.uint64(27)) + lo).astype(np.float64) * 2.0**-53 + 2.0**-54


def normal(key: np.ndarray, n: int) -> np.ndarray:
    """n standard normals (float64) from each stream: key (...,) -> (..., n).  Box-Muller on uniform53
    pairs; deterministic everywhere up to the last bits of log/cos, which a float32 cast hides."""
    key = np.asarray(key, dtype=np.uint64)[..., None]
    i = np.arange((n + 1) // 2, dtype=np.uint32)
    u1 = uniform53(key, np.uint32(2) * i)
    u2 = uniform53(key, np.uint32(2) * i + np.uint32(1))
    r = np.sqrt(-2.0 * np.log(u1))
    z = np.stack([r * np.cos(2.0 * np.pi * u2), r * np.sin(2.0 * np.pi * u2)], axis=-1)
    return z.reshape(*z.shape[:-2], -1)[..., :n]
