"""lscape.intrinsic_dimension: Li et al.'s exact toy oracle, the search, every bad argument named before any
training, the study file (resume, another study refused, SIGKILL mid-run), and Ray equal to local."""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import lscape
import numpy as np
import pytest
import torch
from lscape import intrinsic
from lscape._atomicfiles import load_npz
from lscape._runlock import RunLocked, StaleLockWarning, hold_file
from torch import nn
from torch.nn import functional as F

# ---- Li et al. (2018) §2's toy: theta in R^1000 whose loss is zero exactly on a 990-dimensional plane -----
GROUPS, PER_GROUP = 10, 100


class GroupSums(nn.Module):
    """theta (1000,); its output is the 10 sums of consecutive groups of 100 entries, for every input row."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.theta = nn.Parameter(torch.randn(GROUPS * PER_GROUP, generator=g, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.theta.view(GROUPS, PER_GROUP).sum(1).expand(x.shape[0], GROUPS)


def squared_misses(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (out - y).square().sum(1).mean()


def groups_hit(out: torch.Tensor, y: torch.Tensor) -> float:
    """The fraction of the 10 group sums on their targets (to 1e-6): 1 exactly on the 990-dim plane."""
    return float(((out - y).abs() < 1e-6).double().mean())


def lbfgs(params):
    # a quadratic: L-BFGS with line search solves it to rounding in one step of a few dozen iterations
    return torch.optim.LBFGS(params, lr=1, max_iter=300, tolerance_grad=1e-15, tolerance_change=1e-30,
                             history_size=50, line_search_fn="strong_wolfe")


def toy_data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + seed)
    return torch.zeros(1, 1, dtype=torch.float64), 10 * torch.randn(1, GROUPS, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_li_et_al_toy_has_intrinsic_dimension_exactly_10(seed, one_torch_thread):
    """Every seed's P: d = 9 leaves every group off its target, d >= 10 puts all 10 on it; the search
    (geometric sweep, then bisection to a bracket 1 apart) lands on 10 too."""
    data = toy_data(seed)
    kw = dict(optimizer=lbfgs, metric=groups_hit, threshold=1.0, batch_size=1, seeds=[seed])
    res = lscape.intrinsic_dimension(GroupSums(seed), squared_misses, data, dims=[5, 8, 9, 10, 11, 15, 40], **kw)
    assert res.baseline == 1.0  # measured: the full space (D = 1000) hits every target
    np.testing.assert_array_equal(res.scores[:, 0], [0, 0, 0, 1, 1, 1, 1])
    assert res.d_int == 10 and res.d_int_interpolated == 10.0 and res.per_seed.tolist() == [10.0]
    found = lscape.intrinsic_dimension(GroupSums(seed), squared_misses, data, search_start=3, search_atol=1,
                                       search_rtol=0.0, baseline=1.0, **kw)
    assert found.d_int == 10 and found.order.tolist() == [3, 6, 12, 9, 10]
    assert found.runs == 5 and "5 training runs" in found.summary()


def test_tiny_products_run_on_one_thread(monkeypatch):
    """A study of a small model makes thousands of tiny P products (the toy: D = 1,000, d <= 40), where an
    OpenMP team costs more than the work: those run on one thread, larger ones on all of them."""
    from lscape.ops import projection as ops

    threads = []
    real = ops.call
    monkeypatch.setattr(ops, "call", lambda k, fn, *a: (threads.append(k.tail) if "matvec" in fn else None)
                        or real(k, fn, *a))
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    lscape.SparseSignProjection(1000, 10, seed=0).matvec(torch.ones(10))
    lscape.SparseSignProjection(200_000, 500, seed=0).matvec(torch.ones(500))
    assert threads == [1, 2]


def test_the_default_search_sweeps_geometrically_then_bisects_to_5_percent_or_10(monkeypatch):
    """A step at d = 733 (runs faked: the score is 1 from d = 733 on): sweep 10, 20, ..., 640, 1280, then
    bisection until the bracket is within max(10, 5% of its upper end)."""
    D = 5000
    monkeypatch.setattr(intrinsic, "_train", lambda d, seed, sh: {
        "score": float(d is None or d >= 733), "loss": 0.0, "train_loss": 0.0, "history": np.full(1, np.nan),
        "storage": "full" if d is None else "indices"})
    model = nn.Linear(D - 1, 1)  # D parameters
    res = lscape.intrinsic_dimension(model, F.mse_loss, (torch.zeros(2, D - 1), torch.zeros(2, 1)), metric=groups_hit)
    # (720, 760) is 40 apart, more than 5% of 760 = 38: one more bisection
    assert res.order.tolist() == [10, 20, 40, 80, 160, 320, 640, 1280, 960, 800, 720, 760, 740]
    lo, hi = 720, res.d_int
    assert hi == 740 and hi - lo <= max(10, 0.05 * hi) and res.runs == 14  # 13 d values + the baseline
    assert res.d_int_interpolated == pytest.approx(720 + 20 * 0.9)  # the line through (720, 0) and (740, 1)


# ---- a small real model, for the file, the executors and the argument checks -----------------------------
def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


def digits(n_train: int = 256, n_test: int = 128):
    d = lscape.data.digits()
    return (d.x_train[:n_train], d.y_train[:n_train]), (d.x_test[:n_test], d.y_test[:n_test])


def small_study(file=None, **kw) -> lscape.IntrinsicDimension:
    train, test = digits()
    args = dict(test_data=test, dims=[4, 16, 64], seeds=2, epochs=2, batch_size=32, lr=3e-2, file=file)
    return lscape.intrinsic_dimension(mlp, F.cross_entropy, train, **{**args, **kw})


def assert_same(a: lscape.IntrinsicDimension, b: lscape.IntrinsicDimension) -> None:
    for k in ("dims", "scores", "losses", "train_losses", "baseline_scores", "seeds"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=k)
    assert a.baseline == b.baseline and a.d_int == b.d_int


def test_result_fields_save_load_and_the_file_resumes_without_retraining(tmp_path, one_torch_thread):
    f = tmp_path / "study.npz"
    seen = []
    res = small_study(f, on_run=lambda d, s, r: seen.append((d, s)))
    assert sorted(seen) == [(d, s) for d in (0, 4, 16, 64) for s in (0, 1)] and res.runs == 8
    assert res.scores.shape == res.losses.shape == (3, 2) and res.D == 64 * 16 + 16 + 16 * 10 + 10
    assert res.baseline == pytest.approx(res.baseline_scores.mean()) and res.baseline_scores.shape == (2,)
    assert res.baseline > 0.5 and np.all(np.isfinite(res.losses))  # the full space learns the digits
    path = tmp_path / "saved.npz"
    res.save(path)
    for back in (lscape.IntrinsicDimension.load(path), lscape.IntrinsicDimension.load(f)):
        assert_same(res, back)
        assert back.info == res.info and back.order.tolist() == [4, 16, 64]
    # the study file's run table names each run's projection storage as built ("auto" resolved)
    table = np.load(f)
    assert table["run_storage"].tolist() == ["full" if d == 0 else "indices" for d in table["run_d"].tolist()]
    assert res.info["storage"] == "auto" and res.info["storage_chosen"] == {"4": "indices", "16": "indices",
                                                                            "64": "indices"}
    again = small_study(f, on_run=lambda d, s, r: pytest.fail("a finished run was trained again"))
    assert_same(res, again)
    assert again.info == res.info
    # a file written before run_storage was kept resumes too, its storages the ones that code chose
    old = tmp_path / "old.npz"
    np.savez(old, **{k: table[k] for k in table.files if k != "run_storage"})
    assert small_study(old, on_run=lambda d, s, r: pytest.fail("retrained")).info == res.info
    more = small_study(f, dims=[4, 16, 32, 64], on_run=lambda d, s, r: seen.append((d, s)))
    assert seen[8:] == [(32, 0), (32, 1)]  # only the new d is trained
    np.testing.assert_array_equal(more.scores[[0, 1, 3]], res.scores)
    with pytest.raises(ValueError, match=r"file: .* holds another study \(it differs in epochs\)"):
        small_study(f, epochs=3)
    np.savez(tmp_path / "foreign.npz", a=1)
    with pytest.raises(ValueError, match="holds no finished intrinsic-dimension study"):
        lscape.IntrinsicDimension.load(tmp_path / "foreign.npz")


def test_a_shuffling_dataloader_study_resumes_and_is_reproducible(tmp_path, one_torch_thread):
    """A DataLoader with shuffle=True: its order comes from torch's generator, seeded per (seed, epoch), so
    the same study gives the same numbers and its file is recognised as the same study."""
    (X, Y), test = digits()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, Y), batch_size=32, shuffle=True)
    args = dict(test_data=test, dims=[8], seeds=1, epochs=1, lr=3e-2, baseline=1.0)
    a = lscape.intrinsic_dimension(mlp, F.cross_entropy, loader, file=tmp_path / "dl.npz", **args)
    torch.manual_seed(123)  # the caller's generator state does not matter
    b = lscape.intrinsic_dimension(mlp, F.cross_entropy, loader, **args)
    assert_same(a, b)
    c = lscape.intrinsic_dimension(mlp, F.cross_entropy, loader, file=tmp_path / "dl.npz", **args,
                                   on_run=lambda *r: pytest.fail("a finished run was trained again"))
    assert_same(a, c)


def test_bad_arguments_are_named_before_any_training(tmp_path, monkeypatch):
    monkeypatch.setattr(intrinsic, "_train", lambda *a: pytest.fail("trained before the arguments were checked"))
    train, test = digits(32, 16)
    D = 64 * 16 + 16 + 16 * 10 + 10

    def call(model=mlp, data=train, **kw):
        return lscape.intrinsic_dimension(model, F.cross_entropy, data, **{"test_data": test, **kw})

    cases = [
        (dict(dims=[0, 5]), ValueError, r"dims: got 0 in \[0, 5\], expected positive integers at most D = "),
        (dict(dims=[2.5]), ValueError, r"dims: got 2.5"),
        (dict(dims=[D + 1]), ValueError, rf"dims: got {D + 1} .*at most D = {D}"),
        (dict(dims=[]), ValueError, r"dims: got an empty list"),
        (dict(dims="10"), TypeError, r"dims: got str '10', expected a list of positive integers or None"),
        (dict(threshold=0.0), ValueError, r"threshold: got 0.0, expected a number in \(0.0, 1.0\]"),
        (dict(threshold=1.5), ValueError, r"threshold: got 1.5, expected a number in \(0.0, 1.0\]"),
        (dict(metric="f1"), ValueError, r"metric: got 'f1', expected one of 'acc'"),
        (dict(optimizer="lion"), ValueError, r"optimizer: got 'lion', expected one of 'adam', 'sgd'"),
        (dict(model=42), TypeError, r"model: got int 42, expected an nn.Module or a zero-argument callable"),
        (dict(model=lambda: "net"), TypeError, r"model: got a callable returning str 'net', expected one "
                                               r"returning a torch.nn.Module"),
        (dict(model=lambda size: mlp()), TypeError, r"model: got function .*calling it failed"),
        (dict(data=[]), ValueError, r"data: yielded no batch"),
        (dict(data=(train[0][:0], train[1][:0])), ValueError, r"data: batch 0 has 0 inputs"),
        (dict(test_data=[]), ValueError, r"test_data: yielded no batch"),
        (dict(seeds=0), ValueError, r"seeds: got 0, expected an integer in \[1, inf\]"),
        (dict(baseline="paper"), ValueError, r"baseline: got 'paper', expected 'measured' or a positive number"),
        (dict(kind="sphere"), ValueError, r"kind: got 'sphere', expected one of 'hyperplane', 'hypersphere'"),
        (dict(storage="dense"), ValueError, r"storage: got 'dense', expected one of 'auto', 'indices', 'implicit'"),
        (dict(epochs=0), ValueError, r"epochs: got 0"),
        (dict(file=str(tmp_path / "x.h5")), ValueError, r"file: got .*x.h5', expected a path ending in .npz"),
        (dict(executor="dask"), ValueError, r"executor: got 'dask'"),
    ]
    for kw, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            call(**kw)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match=r"file: .*garbage.npz' is not a readable .npz file"):
        call(dims=[4], file=garbage)
    lscape.surface(mlp(), F.cross_entropy, train, directions="filter", grid=3, file=str(tmp_path / "surf.npz"))
    with pytest.raises(ValueError, match=r"file: .*surf.npz' holds another study \(it differs in"):
        call(dims=[4], file=tmp_path / "surf.npz")


def test_storage_auto_stores_p_while_it_fits_and_goes_implicit_above(monkeypatch, one_torch_thread):
    """No run builds a dense D x d matrix; above the memory budget P is regenerated (implicit), with
    the same matrix, so the study's numbers agree to float32 rounding; from FASTFOOD_MIN_D on, P is a
    FastfoodProjection."""
    assert intrinsic._storage("auto", 10**6, 1000) == "indices"
    assert intrinsic._storage("auto", 199_210, 2000) == "indices"  # the paper-scale sweeps keep the sparse P
    assert intrinsic._storage("auto", 10**10, 4000) == "implicit" and intrinsic._storage("indices", 10**10, 4000) \
        == "indices"
    assert intrinsic._storage("auto", 10**6, 3_999) == "indices" and intrinsic._storage("auto", 10**6, 4_000) \
        == "fastfood"  # 4 sqrt(D) = 4,000
    assert intrinsic._storage("auto", 199_210, 2_499) == "indices" and intrinsic._storage("auto", 199_210, 2_500) \
        == "fastfood"  # the floor (4 sqrt(D) = 1,785)
    assert intrinsic._storage("auto", 10**10, 10**6) == "fastfood"
    monkeypatch.setattr(lscape.SparseSignProjection, "to_dense", lambda *a, **k: pytest.fail("dense P built"))
    made = []
    real = intrinsic.Subspace

    def spy(*a, **k):
        made.append(k["storage"])
        return real(*a, **k)

    monkeypatch.setattr(intrinsic, "Subspace", spy)
    stored = small_study(dims=[16], seeds=1, baseline=1.0)
    monkeypatch.setattr(intrinsic, "STORED_P_BYTES", 0)
    implicit = small_study(dims=[16], seeds=1, baseline=1.0)
    monkeypatch.setattr(intrinsic, "FASTFOOD_MIN_D", 16)
    monkeypatch.setattr(intrinsic, "FASTFOOD_NNZ_PER_ROW", 0.0)
    fastfood = small_study(dims=[16], seeds=1, baseline=1.0)
    assert made == ["indices", "implicit", "fastfood"]
    # each result names what "auto" resolved to (not "auto"), from the P its runs were built with
    assert [r.info["storage_chosen"] for r in (stored, implicit, fastfood)] == [{"16": m} for m in made]
    np.testing.assert_allclose(implicit.losses, stored.losses, rtol=1e-3)
    # another matrix of the same kind: trained to a comparable loss, not the same one
    assert np.all(np.isfinite(fastfood.losses)) and not np.array_equal(fastfood.losses, stored.losses)
    assert abs(float(fastfood.losses[0, 0]) - float(stored.losses[0, 0])) < 0.5 * float(stored.losses[0, 0])


def test_history_scores_every_epoch(one_torch_thread):
    res = small_study(dims=[16], seeds=1, epochs=3, baseline=1.0, history=True)
    assert res.history.shape == (1, 1, 3) and np.all(np.isfinite(res.history))
    assert res.history[0, 0, -1] == res.scores[0, 0]  # the last epoch's entry is the score itself
    assert np.all(np.isnan(small_study(dims=[16], seeds=1, epochs=2, baseline=1.0).history))


def test_a_hypersphere_study_holds_its_radius(monkeypatch, one_torch_thread):
    """kind="hypersphere": the SphereConstraint's hooks see each step's gradient (computed before step()),
    and every run ends on |r| = |theta0|."""
    radii = []
    real = intrinsic._score

    def spy(model, sh):
        r = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        radii.append(float(r.norm()))
        return real(model, sh)

    monkeypatch.setattr(intrinsic, "_score", spy)
    res = small_study(dims=[16, 64], seeds=1, kind="hypersphere")
    assert res.scores.shape == (2, 1) and np.all(np.isfinite(res.losses))
    theta0 = intrinsic._fresh_model(mlp, 0)
    want = float(torch.cat([p.detach().reshape(-1) for p in theta0.parameters()]).norm())
    assert radii[1:] == pytest.approx([want, want], rel=1e-4)  # radii[0]: the full-space baseline


# ---- resumable after SIGKILL, and Ray equal to local --------------------------------------------------------
def _killed_study(path: str, threads: int) -> None:
    """The study a subprocess runs (and the test kills): slowed after each saved run so the kill lands
    between runs as well as inside them; the sleep does not touch the numbers."""
    torch.set_num_threads(threads)
    small_study(path, on_run=lambda d, s, r: time.sleep(0.3))


def test_a_study_killed_mid_run_resumes_to_the_same_result(tmp_path, one_torch_thread):
    f = tmp_path / "killed.npz"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.Popen([sys.executable, __file__, str(f), "1"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    done_before = 0
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
        try:  # the file is replaced atomically, but a read may race the rename
            done_before = len(load_npz(f)["run_d"]) if f.exists() else 0
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            continue
        if done_before >= 3:
            break
    assert proc.poll() is None, f"the study ended before it was killed: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    kept = load_npz(f)
    kept_runs = set(zip(kept["run_d"].tolist(), kept["run_seed"].tolist(), strict=True))
    assert 3 <= len(kept_runs) < 8 and "result" not in str(kept["meta"])
    retrained = []
    with pytest.warns(StaleLockWarning, match="killed.npz"):  # the killed study's lock is taken over
        resumed = small_study(f, on_run=lambda d, s, r: retrained.append((d, s)))
    assert not kept_runs & set(retrained) and len(kept_runs) + len(retrained) == 8
    assert_same(resumed, small_study())  # equal to an uninterrupted study, bit for bit


def test_a_study_file_held_by_a_live_run_is_refused(tmp_path):
    f = tmp_path / "held.npz"
    with hold_file(f, "file"), pytest.MonkeyPatch.context() as mp:
        import lscape._runlock as runlock

        mp.setattr(runlock, "_HELD", {})  # as if another live process held it (this pid is alive)
        with pytest.raises(RunLocked, match=r"file .*held\.npz"):
            small_study(f)
    assert not f.exists()


def test_a_study_on_ray_equals_local(ray_executor, tmp_path):
    """Each (d, seed) run is a Ray task: the same numbers bit for bit, and the same file."""
    local = small_study(dims=[8], seeds=2, epochs=1)
    on_ray = small_study(tmp_path / "ray.npz", dims=[8], seeds=2, epochs=1, executor=ray_executor)
    assert_same(local, on_ray)
    assert_same(local, lscape.IntrinsicDimension.load(tmp_path / "ray.npz"))
    # a Fastfood P too: its draws and its kernels' results do not depend on the process or its threads
    local = small_study(dims=[8], seeds=1, epochs=1, storage="fastfood")
    assert_same(local, small_study(dims=[8], seeds=1, epochs=1, storage="fastfood", executor=ray_executor))


def test_plot_marks_baseline_threshold_and_d_int():
    pytest.importorskip("matplotlib", reason="lscape.plot draws with matplotlib (pip install '.[plot]')")
    from lscape import plot

    res = lscape.IntrinsicDimension(
        dims=np.array([10, 100, 1000]), scores=np.array([[0.2, 0.3], [0.7, 0.8], [0.95, 0.97]]),
        losses=np.zeros((3, 2)), train_losses=np.zeros((3, 2)), history=np.full((3, 2, 1), np.nan), baseline=1.0,
        baseline_scores=np.array([]), threshold=0.9, D=5000, seeds=np.array([0, 1]), runs=6,
        order=np.array([10, 100, 1000]))
    assert res.d_int == 1000 and res.d_int_interpolated == pytest.approx(100 + 0.15 / 0.21 * 900)
    assert res.per_seed == pytest.approx([100 + 0.2 / 0.25 * 900, 100 + 0.1 / 0.17 * 900])
    ax = plot.intrinsic_dimension(res).axes[0]
    assert ax.get_xscale() == "log"
    assert {round(line.get_ydata()[0], 6) for line in ax.lines if len(set(line.get_ydata())) == 1} >= {1.0, 0.9}
    assert any(line.get_xdata()[0] == 1000 for line in ax.lines)
    with pytest.raises(TypeError, match="result: got dict, expected an lscape.IntrinsicDimension"):
        plot.intrinsic_dimension({})
    assert math.isnan(lscape.IntrinsicDimension(**{**res.__dict__, "scores": res.scores * 0}).d_int_interpolated)


if __name__ == "__main__":  # the subprocess of test_a_study_killed_mid_run_resumes_to_the_same_result
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    _killed_study(sys.argv[1], int(sys.argv[2]))
