"""The CPU's SELL-C-sigma layout of the stored projection (csrc/include/lscape/projection.h): the same
matrix as the segment layout it is made from, laid out as the reference lays it out, and its products
against the torch reference.  tests/test_every_isa.py runs this file again under every ISA build."""
import lscape
import numpy as np
import pytest
import torch
from conftest import require
from lscape import SparseSignProjection
from lscape.ops import projection as ops
from lscape.reference import projection as ref

C, SIGMA = ref.SELL_C, ref.SELL_SIGMA

# (D, d, density): D < C, D = C, D not a multiple of C, D across several sigma windows, d = 1, a dense
# matrix, sparse ones (many empty rows and columns), the 16-bit limit d = 32767 and the 32-bit d = 32768.
SHAPES = [
    (1, 1, None), (5, 1, 1.0), (5, 3, 0.5), (16, 16, 1.0), (17, 4, 0.3), (31, 2, None), (1000, 999, None),
    (4099, 17, None), (5000, 1, None), (3 * SIGMA + 5, 40, 0.01), (20_000, 300, 1e-4), (100_003, 9, 1e-4),
    (33_000, 32_767, 1e-4), (33_000, 32_768, 1e-4),
]
IDS = [f"D{D}-d{d}" for D, d, _ in SHAPES]


@pytest.fixture(autouse=True)
def cpu_kernels():
    require("cpu")
    with lscape.use_backend("cpu"):
        yield


def segments(P):
    """The segment layout of P (what the CPU layout is made from; what a CUDA device holds)."""
    return ref.storage(P.spec)


def dense_of(D, d, rows, cols, neg):
    A = np.zeros((D, d), dtype=np.int8)
    A[np.asarray(rows), np.asarray(cols)] = np.where(np.asarray(neg), -1, 1)
    return A


@pytest.mark.parametrize("D,d,density", SHAPES, ids=IDS)
def test_sell_holds_the_matrix_of_the_segments(D, d, density):
    P = SparseSignProjection(D, d, seed=7, density=density)
    b = P._buffers
    assert set(b) == {"col_counts", "perm", "slice_ptr", "cols"}
    # bit for bit the reference's re-lay of the reference's segments
    seg_start, chunk_ptr, indices = segments(P)
    want = ref.sell_layout(P.spec, seg_start, chunk_ptr, indices)
    for key, a in want.items():
        assert np.array_equal(b[key].numpy(), a), key
    # and the same nonzeros, with the same signs, as the segments hold
    srows, scols, sneg = ref.decode(*(torch.from_numpy(a) for a in (seg_start, chunk_ptr, indices)))
    rows, cols, neg = ops.decode(P.spec, b)
    assert rows.numel() == srows.numel() == P.nnz
    if D * d <= 2**24:
        assert np.array_equal(dense_of(D, d, rows, cols, neg), dense_of(D, d, srows, scols, sneg))
    else:  # compare the sorted (row, col, sign) triples
        key = (rows * d + cols) * 2 + neg.long()
        skey = (srows * d + scols) * 2 + sneg.long()
        assert torch.equal(torch.sort(key).values, torch.sort(skey).values)
    # the public conversions agree with the implicit storage (which regenerates from the seed)
    Pi = SparseSignProjection(D, d, seed=7, density=density, storage="implicit")
    assert (P.to_scipy() != Pi.to_scipy()).nnz == 0
    if D * d <= 10**6:
        assert torch.equal(P.to_dense(), Pi.to_dense())


@pytest.mark.parametrize("D,d,density", SHAPES, ids=IDS)
def test_layout_invariants(D, d, density):
    P = SparseSignProjection(D, d, seed=3, density=density)
    perm = P._buffers["perm"].numpy().view(np.uint16).astype(np.int64)
    slice_ptr = P._buffers["slice_ptr"].numpy()
    cols = P._buffers["cols"]
    n_slices = -(-D // C)
    assert perm.shape == (n_slices * C,) and slice_ptr.shape == (n_slices + 1,)
    assert cols.dtype == (torch.int16 if d <= 32767 else torch.int32)
    widths = np.diff(slice_ptr)
    assert slice_ptr[0] == 0 and np.all(widths % C == 0) and slice_ptr[-1] == cols.numel()
    # every row in exactly one slot of its own window, rows sorted by length (longest first)
    slot_rows = (np.arange(D) & ~(SIGMA - 1)) + perm[:D]
    assert np.array_equal(np.sort(slot_rows), np.arange(D))
    assert np.all(slot_rows // SIGMA == np.arange(D) // SIGMA)
    length = np.bincount(ops.decode(P.spec, P._buffers)[0].numpy(), minlength=D)[slot_rows]
    for w0 in range(0, D, SIGMA):
        assert np.all(np.diff(length[w0:w0 + SIGMA]) <= 0)
    # a slice is as wide as its longest row; padding is column d with a + sign
    padded = np.zeros(n_slices * C, dtype=np.int64)
    padded[:D] = length
    assert np.array_equal(widths // C, padded.reshape(n_slices, C).max(axis=1))
    e = cols.numpy().view(np.uint16 if d <= 32767 else np.uint32).astype(np.int64)
    assert np.count_nonzero(e == 2 * d) == cols.numel() - P.nnz
    assert np.all(e >> 1 <= d)


def test_padding_and_bytes_at_the_paper_density():
    # a sigma window of 1024 rows sorted by length: little padding at ~11 nonzeros per row
    P = SparseSignProjection(65_681, 9_000, seed=0, density=1 / 656_810**0.5)
    assert P._buffers["cols"].numel() / P.nnz < 1.03
    assert P.nbytes / P.nnz < 2.5  # 2 per nonzero, 2 per row (perm), 0.5 per row (slice_ptr)


@pytest.mark.parametrize("storage_d", [32_767, 32_768])
def test_narrow_and_wide_entries(storage_d):
    P = SparseSignProjection(40_000, storage_d, seed=1, density=2e-4)
    assert P._buffers["cols"].element_size() == (2 if storage_d <= 32_767 else 4)
    e = P._buffers["cols"].numpy().view(np.uint16 if storage_d <= 32_767 else np.uint32)
    assert int(e.max()) >> 1 == storage_d  # the padding column is representable


def reference_product(P, x, transpose):
    with lscape.use_backend("torch"):
        return P.rmatvec(x) if transpose else P.matvec(x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B", [None, 1, 2, 5, 8, 13, 17])
@pytest.mark.parametrize("D,d,density", SHAPES, ids=IDS)
def test_products_match_the_reference(D, d, density, B, dtype):
    P = SparseSignProjection(D, d, seed=5, density=density)
    gen = torch.Generator().manual_seed(D + 7 * d)
    theta = torch.randn((d,) if B is None else (B, d), generator=gen, dtype=dtype)
    g = torch.randn((D,) if B is None else (B, D), generator=gen, dtype=dtype)
    for x, transpose in ((theta, False), (g, True)):
        got = P.rmatvec(x) if transpose else P.matvec(x)
        want = reference_product(P, x, transpose)
        assert got.shape == want.shape and got.dtype == dtype
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        torch.testing.assert_close(got, want, rtol=tol, atol=tol * max(1.0, float(want.abs().max())))


@pytest.mark.parametrize("B", [None, 3])
@pytest.mark.parametrize("D,d,density", [(4099, 17, None), (3 * SIGMA + 5, 40, 0.01), (50_000, 200, None)])
def test_matvec_sums_rows_in_column_order_like_the_implicit_kernel(D, d, density, B):
    # both sum a row's nonzeros in increasing column order from 0: the results agree bit for bit
    P = SparseSignProjection(D, d, seed=2, density=density)
    Pi = SparseSignProjection(D, d, seed=2, density=density, storage="implicit")
    theta = torch.randn((d,) if B is None else (B, d), generator=torch.Generator().manual_seed(0))
    assert torch.equal(P.matvec(theta), Pi.matvec(theta))


def test_products_do_not_depend_on_the_thread_count(monkeypatch):
    P = SparseSignProjection(200_000, 500, seed=4)
    g = torch.randn(3, 200_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    theta = torch.randn(3, 500, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out = {}
    for n in ("1", "2", "3"):
        monkeypatch.setenv("OMP_NUM_THREADS", n)
        out[n] = (P.matvec(theta), P.rmatvec(g), P.rmatvec(g[0]))
    for n in ("2", "3"):
        assert torch.equal(out[n][0], out["1"][0])  # rows are summed by one thread each
        torch.testing.assert_close(out[n][1], out["1"][1], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out[n][2], out["1"][2], rtol=1e-12, atol=1e-12)


def test_to_cpu_from_another_layout_rebuilds_the_same_matrix():
    # a P holding the segment layout (as on a CUDA device) moved to the CPU is generated there anew
    P = SparseSignProjection(4099, 17, seed=9)
    other = object.__new__(SparseSignProjection)
    other.storage, other.spec, other.device = P.storage, P.spec, torch.device("meta")
    seg_start, chunk_ptr, indices = segments(P)
    other._buffers = {"col_counts": P.col_counts, "seg_start": torch.from_numpy(seg_start),
                      "chunk_ptr": torch.from_numpy(chunk_ptr), "indices": torch.from_numpy(indices)}
    other._scale_cache, other._coo_cache = {}, {}
    moved = other.to("cpu")
    for key, t in P._buffers.items():
        assert torch.equal(moved._buffers[key], t), key


def test_empty_matrix():
    P = SparseSignProjection(37, 3, seed=0, density=5e-324)
    assert P.nnz == 0 and P._buffers["cols"].numel() == 0
    assert torch.equal(P.matvec(torch.ones(2, 3)), torch.zeros(2, 37))
    assert torch.equal(P.rmatvec(torch.ones(37)), torch.zeros(3))


# ---- the column-band copy that one-vector products run on (projection.h) ---------------------------------
# (nb, window) forced on small shapes: one band, more bands than columns, windows smaller than sigma and
# a window holding every row.
BAND_CASES = [(1, 16), (2, 32), (3, 1024), (5, 64), (2, 8192), (4, 65536)]
BAND_SHAPES = [s for s in SHAPES if s[0] * s[1] <= 2 * 10**9]


def with_bands(P, nb, window):
    """P with its band copy built as (nb, window), padding whatever it is."""
    P._bands_cache[:] = [ops.build_bands(P.spec, P._buffers, nb=nb, window=window, max_padding=None)]
    return P._bands_cache[0]


@pytest.mark.parametrize("nb,window", BAND_CASES)
@pytest.mark.parametrize("D,d,density", BAND_SHAPES, ids=[f"D{D}-d{d}" for D, d, _ in BAND_SHAPES])
def test_band_copy_is_the_reference_layout_of_the_same_matrix(D, d, density, nb, window):
    P = SparseSignProjection(D, d, seed=11, density=density)
    bands = with_bands(P, nb, window)
    rows, cols, neg = ops.decode(P.spec, P._buffers)
    want = ref.band_layout(D, d, rows.numpy(), cols.numpy(), neg.numpy(), nb, window)
    for key in ("bperm", "bwidth", "bstart", "bcols"):
        assert np.array_equal(getattr(bands, key).numpy(), want[key]), key
    brows, bcols, bneg = ref.band_decode(D, d, nb, window, bands.bperm, bands.bwidth, bands.bcols)
    key = (rows * d + cols) * 2 + neg.long()
    bkey = (brows * d + bcols) * 2 + bneg.long()
    assert torch.equal(torch.sort(key).values, torch.sort(bkey).values)


@pytest.mark.parametrize("nb,window", [(2, 32), (3, 1024)])
@pytest.mark.parametrize("D,d,density", [(4099, 17, None), (3 * SIGMA + 5, 40, 0.01), (20_000, 300, 1e-4)])
def test_band_copy_invariants(D, d, density, nb, window):
    P = SparseSignProjection(D, d, seed=3, density=density)
    bands = with_bands(P, nb, window)
    bperm = bands.bperm.numpy().view(np.uint16).astype(np.int64)
    n_slices = -(-D // C)
    n_windows = -(-n_slices // (window // C))
    assert bperm.shape == (n_slices * C,) and bands.bwidth.shape == (n_slices * nb,)
    assert bands.bstart.shape == (n_windows * nb + 1,) and int(bands.bstart[-1]) == bands.bcols.numel()
    assert int((bands.bwidth.long() & 0xFFFF).sum()) * C == bands.bcols.numel()
    slot_rows = (np.arange(D) & ~(window - 1)) + bperm[:D]
    assert np.array_equal(np.sort(slot_rows), np.arange(D))  # every row once, in its own window
    assert np.all(slot_rows // window == np.arange(D) // window)
    rows, cols, neg = ops.decode(P.spec, P._buffers)
    cnt = np.zeros((D, nb), dtype=np.int64)
    np.add.at(cnt, (rows.numpy(), ref.band_of(cols.numpy(), nb, d)), 1)
    cnt = cnt[slot_rows]
    for w0 in range(0, D, window):  # sorted by band 0's count, then band 1's, ... (descending)
        c = cnt[w0:w0 + window]
        assert all(tuple(a) >= tuple(b) for a, b in zip(c[:-1], c[1:], strict=True))
    # a block is as wide as its slice's longest row in its band, and holds only that band's columns
    e = bands.bcols.numpy().view(np.uint16 if d <= 32767 else np.uint32).astype(np.int64)
    assert np.count_nonzero(e == 2 * d) == e.size - P.nnz
    brows, _, _ = ref.band_decode(D, d, nb, window, bands.bperm, bands.bwidth, bands.bcols)
    assert brows.numel() == P.nnz
    # each block holds its own band's columns only
    band_of_block = np.empty(n_slices * nb, dtype=np.int64)
    band_of_block[ref._band_blocks(D, nb, window)] = np.arange(nb)[None, :]
    block = np.repeat(np.arange(n_slices * nb), (bands.bwidth.numpy().view(np.uint16).astype(np.int64) * C))
    real = e >> 1 < d
    assert np.array_equal(ref.band_of(e[real] >> 1, nb, d), band_of_block[block[real]])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("nb,window", BAND_CASES)
@pytest.mark.parametrize("D,d,density", BAND_SHAPES, ids=[f"D{D}-d{d}" for D, d, _ in BAND_SHAPES])
def test_band_products_match_the_sell_products(D, d, density, nb, window, dtype):
    # a row's bands come in increasing column order, so its sum is the SELL kernel's, bit for bit
    P = SparseSignProjection(D, d, seed=5, density=density)
    theta = torch.randn(d, generator=torch.Generator().manual_seed(D + d), dtype=dtype)
    P._bands_cache[:] = [None]
    sell = P.matvec(theta)
    bands = with_bands(P, nb, window)
    got = P.matvec(theta)
    assert torch.equal(got, sell)
    want = reference_product(P, theta, False)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * max(1.0, float(want.abs().max())))
    # P^T g of one vector runs on it too: the same sums in another order
    g = torch.randn(D, generator=torch.Generator().manual_seed(1), dtype=dtype)
    got_t = P.rmatvec(g)
    P._bands_cache[:] = [None]
    sell_t = P.rmatvec(g)
    P._bands_cache[:] = [bands]
    for want_t in (sell_t, reference_product(P, g, True)):
        torch.testing.assert_close(got_t, want_t, rtol=tol, atol=tol * max(1.0, float(want_t.abs().max())))
    # and autograd: P(theta)'s forward and its gradient P^T
    t = theta.clone().requires_grad_()
    y = P(t)
    assert torch.equal(y.detach(), sell)
    y.backward(g)
    assert torch.equal(t.grad, got_t)


def test_band_products_do_not_depend_on_the_thread_count(monkeypatch):
    P = SparseSignProjection(200_000, 9_000, seed=4)
    assert P._bands() is not None and P._bands().nb == 2
    theta = torch.randn(9_000, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    g = torch.randn(200_000, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    out = {}
    for n in ("1", "2", "3"):
        monkeypatch.setenv("OMP_NUM_THREADS", n)
        out[n] = (P.matvec(theta), P.rmatvec(g))
    for n in ("2", "3"):
        assert torch.equal(out[n][0], out["1"][0])  # a row is summed by one thread
        torch.testing.assert_close(out[n][1], out["1"][1], rtol=1e-12, atol=1e-12)


def test_band_copy_defaults():
    # at the paper's d = 9,000: two bands, built on the first B = 1 product, a few % padding, counted in nbytes
    P = SparseSignProjection(65_681, 9_000, seed=0, density=1 / 656_810**0.5)
    assert P._bands_cache == []
    P.matvec(torch.randn(3, 9_000))  # B > 1 does not build it
    P.rmatvec(torch.randn(3, 65_681))
    assert P._bands_cache == []
    before = P.nbytes
    P.rmatvec(torch.randn(65_681))  # the first one-vector product does
    bands = P._bands_cache[0]
    assert bands.nb == 2 and bands.window == ops.BAND_WINDOW
    assert bands.bcols.numel() / P.nnz < 1 + ops.BAND_MAX_PADDING
    assert P.nbytes - before == sum(t.numel() * t.element_size() for t in bands.tensors)
    assert P.nbytes / P.nnz < 4.75  # 2 + 2 per nonzero, 2 + 2 per row, 0.5 + 0.25 per row
    # where the signed vector fits one band (d <= BAND_COLS) there is no copy
    Q = SparseSignProjection(20_000, ops.BAND_COLS, seed=0)
    Q.matvec(torch.randn(ops.BAND_COLS))
    assert Q._bands_cache == [None]
    # nor where the bands would pad too much (few nonzeros a row spread over many bands)
    R = SparseSignProjection(40_000, 32_000, seed=0, density=2e-4)
    assert ops.band_count(32_000) == 7
    assert ops.build_bands(R.spec, R._buffers) is None
    assert ops.build_bands(R.spec, R._buffers, max_padding=None) is not None
    # the torch backend never builds one
    with lscape.use_backend("torch"):
        S = SparseSignProjection(65_681, 9_000, seed=0, density=1 / 656_810**0.5)
        S.matvec(torch.randn(9_000))
    assert S._bands_cache == [None] or S._bands_cache == []


def test_band_copy_bad_arguments():
    P = SparseSignProjection(4099, 17, seed=1)
    with pytest.raises(ValueError, match=r"nb: got 0, expected an integer in \[1, 64\]"):
        ops.build_bands(P.spec, P._buffers, nb=0)
    with pytest.raises(ValueError, match="window: got 100, expected a power of two"):
        ops.build_bands(P.spec, P._buffers, nb=2, window=100)
    with pytest.raises(ValueError, match="no SELL layout"):
        ops.build_bands(P.spec, {"col_counts": P.col_counts})
    # the binding refuses them too, before any kernel runs
    from lscape import _C
    n_slices = -(-4099 // C)
    bperm = torch.empty(n_slices * C, dtype=torch.int16)
    widths = torch.empty(n_slices * 2, dtype=torch.int32)
    b = P._buffers
    with pytest.raises(ValueError, match="window must be a power of two"):
        _C.proj_bands_plan(P.spec.as_tuple(), 2, 48, b["perm"].data_ptr(), b["slice_ptr"].data_ptr(),
                           b["cols"].data_ptr(), bperm.data_ptr(), widths.data_ptr(), 1)
