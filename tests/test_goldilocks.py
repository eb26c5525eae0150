"""The Goldilocks reproduction at smoke scale: end to end, and an interrupted sweep resumed without
redoing finished cells."""
import numpy as np
import pytest
from conftest import assert_run_outputs, smoke_run_fixture, write_cifar10
from lscape.experiments import common
from lscape.experiments import goldilocks as gl

smoke_run = smoke_run_fixture(gl.run, "gl_smoke")


def test_smoke_writes_everything(smoke_run):
    out, summary = smoke_run
    cfg = gl.SCALES["smoke"]
    assert_run_outputs(out, summary)
    with np.load(out / "results.npz") as r:
        n = cfg.r0_points
        assert r["hyperplane_acc"].shape == r["hypersphere_acc"].shape == (len(cfg.dims), n)
        assert r["full_acc"].shape == (1, n)
        # the grid spans six decades centred on r_X
        assert np.isclose(r["r0"][0] * r["r0"][-1], float(r["r_x"]) ** 2) and np.isclose(r["r0"][-1] / r["r0"][0], 1e6)
        for k in range(n):
            t, rad = r[f"full_t_{k}"], r[f"full_r_{k}"]
            assert t[0] == 0 and np.isclose(rad[0], r["r0"][k], rtol=1e-5)  # the full space starts at |r| = r0
        assert np.all((r["hyperplane_acc"] >= 0) & (r["hyperplane_acc"] <= 1))


def test_smoke_shows_the_goldilocks_effect_in_the_full_space(smoke_run):
    """What the smoke sweep robustly shows (one epoch on the digits, four radii from r_X / 1000 to 1000 r_X):
    training from within 100x of r_X beats both extremes; a start 1000x outside r_X stays at chance and on
    its sphere (the radius barely moves), while a start 1000x inside drifts out to the order of r_X."""
    out, _ = smoke_run
    with np.load(out / "results.npz") as r:
        acc, r_x = r["full_acc"][0], float(r["r_x"])
        assert r["r0"][1] < r_x < r["r0"][2]  # the two middle radii bracket r_X
        assert max(acc[1], acc[2]) > max(acc[0], acc[3]) + 0.05, acc
        assert acc[3] <= 0.15, acc  # ten classes: chance is 0.1
        small, large = r["full_r_0"], r["full_r_3"]
        assert 0.1 * r_x < small[-1] < 10 * r_x and small[-1] > 100 * small[0]
        assert abs(large[-1] / large[0] - 1) < 0.01


def test_hypersphere_cells_stay_on_their_sphere():
    cfg = gl.config("smoke")
    data = gl.datasets.digits()
    row = gl.train_cell(cfg, data, "hypersphere", 10, 3.0, seed=1)
    assert np.allclose(row["r"], 3.0, rtol=1e-5) and len(row["r"]) > 10


def test_interrupted_sweep_resumes_to_the_same_results(smoke_run, tmp_path):
    ref_out, _ = smoke_run
    out = tmp_path / "run"
    with pytest.raises(common.RunInterrupted, match=r"stopped after 5 chunk\(s\)"):
        gl.run("smoke", out, progress=False, figures=False, stop_after_chunks=5)
    done = sorted(p.name for p in (out / "checkpoints").glob("cell_*.npz"))
    assert len(done) == 5
    stamps = {p: (out / "checkpoints" / p).stat().st_mtime_ns for p in done}
    gl.run("smoke", out, resume=True, progress=False, figures=False)
    assert all((out / "checkpoints" / p).stat().st_mtime_ns == s for p, s in stamps.items())  # not redone
    with np.load(ref_out / "results.npz") as a, np.load(out / "results.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_paper_scale_runs_the_paper_network_on_cifar10_files(tmp_path):
    """The paper scale's own path: CIFAR-10 batches from --data-dir, the 3072-200-200-10 network
    (D = 656,810) in a d = 9,000 hyperplane and hypersphere; shrunk to one short epoch per cell."""
    cifar = write_cifar10(tmp_path / "cifar", per_batch=8)
    out = tmp_path / "run"
    summary = gl.run("paper", out, progress=False, data_dir=str(cifar.parent), dims=(9000,), r0_points=2,
                     epochs=1, batch=16, record_every=1)
    assert_run_outputs(out, summary)
    assert summary["dataset"] == "cifar10"
    cfg = gl.config("paper")
    assert sum(p.numel() for p in gl.make_model(cfg, 3072, 10).parameters()) == 656_810
    with np.load(out / "results.npz") as r:
        assert r["hyperplane_acc"].shape == r["hypersphere_acc"].shape == (1, 2)
        assert np.all(np.isfinite(r["hyperplane_acc"])) and np.all(np.isfinite(r["full_fit"]))
        # 40 training images in batches of 16: three steps, recorded at t = 0, 1, 2, 3
        np.testing.assert_array_equal(r["full_t_0"], [0, 1, 2, 3])
