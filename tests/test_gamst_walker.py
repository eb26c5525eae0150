"""The Gamst-Walker reproduction at smoke scale: end to end, interrupted + resumed, and its statistics."""
import json
import math

import numpy as np
import pytest
from conftest import assert_run_outputs
from lscape.experiments import common
from lscape.experiments import gamst_walker as gw
from lscape.experiments.stats import logistic_fit, lowess

pytest.importorskip("matplotlib", reason="the experiment draws its figures with matplotlib (pip install '.[plot]')")

# The cheapest configuration that still runs every stage (Hessians are the slow part)
FAST = {"hessian_models": 1, "basin_trials": 8}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gw_smoke")
    summary = gw.run("smoke", out, progress=False, **FAST)
    return out, summary


def test_smoke_runs_end_to_end_and_writes_everything(smoke_run):
    out, summary = smoke_run
    assert_run_outputs(out, summary)
    assert len(summary["figures"]) == 8 and all(n.endswith(".png") for n in summary["figures"])
    assert {"fig4_neb.png", "fig_distances.png"} <= set(summary["figures"])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["scale"] == "smoke" and cfg["hessian_models"] == 1 and cfg["sgd_lr"] == gw.SCALES["smoke"].sgd_lr
    assert json.loads((out / "summary.json").read_text())["sgd"]["models"] == 16
    with np.load(out / "results.npz") as r:
        M, D = 16, 136
        for opt in gw.OPTIMIZERS:
            assert r[f"{opt}_loss"].shape == (M,) and r[f"{opt}_desym"].shape == (M, D)
            assert r[f"{opt}_history"].shape == (M, 300 // 50)
            assert r[f"{opt}_mean"].shape == r[f"{opt}_std"].shape == r["grid_x"].shape == (201,)
            assert r[f"{opt}_hess_eigvals"].shape == (1, D) and r[f"{opt}_hess_counts"].sum() == D
            assert r[f"basin_{opt}_loss"].shape == (8,)
        assert r["basin_noise_norm"].min() >= 0 and r["basin_noise_norm"].max() <= 2.0 + 1e-6
        assert r["wf_hess_counts"][0] == 0  # W_f is a minimum: no negative curvature
        # NEB paths: from W_f (energy ~0) to the chosen minima, whose losses are their training losses
        B, n = r["neb_energies"].shape
        assert 1 <= B <= 4 and n == 8 and r["neb_angles"].shape == (B, n - 2)
        assert np.all(r["neb_energies"][:, 0] < 1e-10) and np.all(np.diff(r["neb_arc"], axis=1) >= 0)
        for b, (src, i) in enumerate(zip(r["neb_source"], r["neb_index"], strict=False)):
            opt = gw.OPTIMIZERS[src]
            assert not r[f"{opt}_constant"][i] and not r[f"{opt}_at_global_min"][i]
            assert math.isclose(r["neb_distance"][b], r[f"{opt}_wf_distance"][i], rel_tol=1e-5)
        assert r["neb_highlight_outputs"].shape == (n, 201)
    assert summary["neb"]["paths"] == B and summary["neb"]["steps"] <= 40
    # the global-min threshold and the SGD stability limit are reported
    assert math.isclose(summary["global_min_threshold"], 1e-4 * summary["var_y"])
    assert summary["wf"]["loss_float32_data"] < 1e-14
    assert gw.SCALES["default"].sgd_lr < summary["wf"]["sgd_lr_stability_limit"]


def _chunk_files(out):
    return sorted(f.stem for f in (out / "checkpoints").glob("*.npz"))


def test_interrupted_run_resumes_to_the_same_results(smoke_run, tmp_path):
    """Smoke has 9 chunks: 2 + 2 ensemble shards, 1 + 1 basin shards, 1 Hessian block, 2 NEB shards.  Each
    interruption leaves exactly the finished chunks on disk; each resume computes only the missing ones."""
    ref_out, _ = smoke_run
    out = tmp_path / "run"
    with pytest.raises(common.RunInterrupted, match=r"stopped after 1 chunk\(s\)"):
        gw.run("smoke", out, progress=False, figures=False, stop_after_chunks=1, **FAST)
    assert _chunk_files(out) == ["main_sgd_0"] and not (out / "results.npz").exists()
    with pytest.raises(common.RunInterrupted, match=r"stopped after 5 chunk\(s\)"):
        gw.run("smoke", out, resume=True, progress=False, figures=False, stop_after_chunks=5, **FAST)
    assert _chunk_files(out) == ["basin_adadelta_0", "basin_sgd_0", "main_adadelta_0", "main_adadelta_1",
                                 "main_sgd_0", "main_sgd_1"]
    stamps = {f: (out / "checkpoints" / f"{f}.npz").stat().st_mtime_ns for f in _chunk_files(out)}
    with pytest.raises(common.RunInterrupted, match=r"stopped after 2 chunk\(s\)"):
        gw.run("smoke", out, resume=True, progress=False, figures=False, stop_after_chunks=2, **FAST)
    assert set(_chunk_files(out)) == set(stamps) | {"hessians_0", "neb_0"}
    assert all((out / "checkpoints" / f"{f}.npz").stat().st_mtime_ns == t for f, t in stamps.items())
    gw.run("smoke", out, resume=True, progress=False, figures=False, **FAST)
    assert "neb_1" in _chunk_files(out)
    with np.load(ref_out / "results.npz") as a, np.load(out / "results.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_run_dir_guards(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(common.RunInterrupted, match=r"stopped after 1 chunk\(s\)"):
        gw.run("smoke", out, progress=False, figures=False, stop_after_chunks=1, **FAST)
    with pytest.raises(FileExistsError, match="--resume"):
        gw.run("smoke", out, progress=False, figures=False, **FAST)
    with pytest.raises(ValueError, match="steps"):
        gw.run("smoke", out, resume=True, progress=False, figures=False, **dict(FAST, steps=600))
    with pytest.raises(ValueError, match="scale"):
        gw.config("huge")


def test_atomic_savez_round_trip_and_no_temp_left(tmp_path):
    p = tmp_path / "a.npz"
    common.atomic_savez(p, {"x": np.arange(3), "s": "sgd"})
    common.atomic_savez(p, {"x": np.arange(4)})
    assert common.load_npz(p)["x"].tolist() == [0, 1, 2, 3]
    assert [f.name for f in tmp_path.iterdir()] == ["a.npz"]
    assert common.load_npz(tmp_path / "missing.npz") is None


def test_cli_reproduce(tmp_path, monkeypatch, capsys):
    from lscape import cli

    calls = {}
    monkeypatch.setattr(gw, "run", lambda **kw: calls.update(kw) or {"figures": []})
    assert cli.main(["reproduce", "gamst-walker", "--scale", "smoke", "--out", str(tmp_path), "--resume"]) == 0
    assert calls["scale"] == "smoke" and calls["resume"] is True and str(calls["out"]) == str(tmp_path)
    with pytest.raises(SystemExit, match="2"):  # argparse: an unknown experiment is a usage error
        cli.main(["reproduce", "nope", "--out", str(tmp_path)])
    assert "invalid choice: 'nope'" in capsys.readouterr().err


# ---- statistics helpers -----------------------------------------------------------------------------------
def test_lowess_reproduces_a_line_exactly():
    x = np.random.default_rng(0).uniform(0, 2, 200)
    xs, fit = lowess(x, 3 * x - 1, frac=0.3)
    assert np.all(np.diff(xs) >= 0)
    np.testing.assert_allclose(fit, 3 * xs - 1, atol=1e-10)


def test_lowess_matches_a_hand_computed_local_fit():
    # no robustness passes: at each x0 a weighted least-squares line through the k nearest points,
    # weights tricube(d / d_k); checked against np.polyfit with sqrt weights
    rng = np.random.default_rng(1)
    x = np.sort(rng.uniform(0, 1, 30))
    y = np.sin(6 * x) + 0.1 * rng.standard_normal(30)
    frac = 0.4
    k = math.ceil(frac * 30)
    xs, fit = lowess(x, y, frac=frac, iterations=0)
    for i in (0, 7, 15, 29):
        d = np.abs(x - x[i])
        h = np.sort(d)[k - 1]
        w = np.clip(1 - (d / h) ** 3, 0, None) ** 3
        coef = np.polyfit(x, y, 1, w=np.sqrt(w))
        assert fit[i] == pytest.approx(np.polyval(coef, x[i]), abs=1e-10)


def test_lowess_robustness_ignores_an_outlier():
    x = np.linspace(0, 1, 50)
    y = 2 * x + 0.01 * np.random.default_rng(3).standard_normal(50)
    y[25] = 100.0
    _, fit = lowess(x, y, frac=0.5, iterations=3)
    np.testing.assert_allclose(fit, 2 * x, atol=0.02)
    _, fit0 = lowess(x, y, frac=0.5, iterations=0)
    assert abs(fit0[25] - 2 * x[25]) > 1.0  # without robustness it is dragged up


def test_lowess_evaluates_elsewhere_and_checks_inputs():
    x = np.linspace(0, 1, 40)
    xe, fe = lowess(x, x ** 2, frac=1.0, xeval=[0.5, 0.25])
    assert xe.tolist() == [0.25, 0.5] and np.all(np.abs(fe - xe ** 2) < 0.05)
    with pytest.raises(ValueError, match="frac"):
        lowess(x, x, frac=0.0)
    with pytest.raises(ValueError, match="x, y"):
        lowess(x, x[:-1])


def test_logistic_fit_grouped_data_closed_form():
    # two groups: the MLE reproduces the group proportions, so intercept = logit(p0), slope = logit(p1) - logit(p0)
    x = np.r_[np.zeros(10), np.ones(20)]
    y = np.r_[np.ones(7), np.zeros(3), np.ones(4), np.zeros(16)]
    f = logistic_fit(x, y)
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    assert f.converged and not f.separated
    assert f.intercept == pytest.approx(logit(0.7), abs=1e-9)
    assert f.slope == pytest.approx(logit(0.2) - logit(0.7), abs=1e-9)
    np.testing.assert_allclose(f.predict([0.0, 1.0]), [0.7, 0.2], atol=1e-9)
    assert f.x50 == pytest.approx(-f.intercept / f.slope)


def test_logistic_fit_recovers_known_coefficients():
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 2, 40_000)
    y = (rng.uniform(size=x.size) < 1 / (1 + np.exp(-(3 - 4 * x)))).astype(float)
    f = logistic_fit(x, y)
    assert f.intercept == pytest.approx(3, abs=0.1) and f.slope == pytest.approx(-4, abs=0.1)


def test_logistic_fit_degenerate_cases():
    x = np.linspace(0, 2, 20)
    none = logistic_fit(x, np.zeros(20))
    assert none.intercept == -math.inf and none.slope == 0 and none.separated
    assert np.all(none.predict(x) == 0)
    assert np.all(logistic_fit(x, np.ones(20)).predict(x) == 1)
    step = logistic_fit(x, (x < 0.7).astype(float))  # complete separation: a steep step near 0.7
    assert step.separated and step.slope < -10
    assert np.all(np.round(step.predict(x)) == (x < 0.7))
    ridge = logistic_fit(x, (x < 0.7).astype(float), l2=1e-6)
    assert ridge.converged and 0.6 < ridge.x50 < 0.8
    with pytest.raises(ValueError, match="y"):
        logistic_fit(x, np.full(20, 0.5))


def test_basin_radius_reads_the_first_rise():
    arc = np.array([[0.0, 1, 2, 3, 4], [0.0, 1, 2, 3, 4], [0.0, 1, 2, 3, 4]])
    E = np.array([[0.0, 0.2, 1.0, 3.0, 0.8], [0.0, 0.0, 0.0, 0.0, 0.0], [1.0, 1.3, 2.0, 1.2, 1.8]])
    r = gw.basin_radius(arc, E, 0.5)
    # 0.4 is reached a quarter of the way from image 1 (0.2) to image 2 (1.0); the barrier beyond is ignored
    assert math.isclose(r[0], 1.25) and math.isnan(r[1]) and math.isclose(r[2], 1.0 + 0.1 / 0.7)


def test_neb_ends_take_half_from_each_optimizer_and_top_up():
    cfg = gw.config("smoke", neb_paths=6)
    res = {}
    for opt, bad in (("sgd", [0, 2]), ("adadelta", list(range(8)))):
        d = np.zeros((10, 3), np.float32)
        res[f"{opt}_diverged"] = np.zeros(10, bool)
        res[f"{opt}_constant"] = np.isin(np.arange(10), bad)
        res[f"{opt}_at_global_min"] = np.zeros(10, bool)
        res[f"{opt}_desym"] = d
    src, idx = gw.neb_ends(cfg, res)
    assert src.tolist() == [0, 0, 0, 0, 1, 1] and idx.tolist() == [1, 3, 4, 5, 8, 9]


def test_config_checks_the_wf_construction():
    assert gw.config("default").wf_construction == "v2"
    assert gw.config("smoke", wf_construction="v1").wf_construction == "v1"
    with pytest.raises(ValueError, match="wf_construction"):
        gw.config("smoke", wf_construction="v3")
    assert gw.config("smoke", neb_restarts=()).neb_restarts == ()
    for bad in (((0.2,),), ((0.2, 0.0),), ((-0.1, 0.1),)):
        with pytest.raises(ValueError, match="neb_restarts"):
            gw.config("smoke", neb_restarts=bad)


def test_the_run_uses_the_configured_wf(tmp_path):
    """wf_construction="v1" runs on the first W_f (old runs stay reproducible), the default on v2."""
    import torch
    from lscape import tinymlp as tm

    cfg = dict(FAST, models_per_optimizer=2, shard_models=2, steps=50, basin_trials=2, basin_steps=50,
               neb_paths=1, neb_steps=2, neb_shard=1)
    for construction in tm.WF_CONSTRUCTIONS:
        out = tmp_path / construction
        summary = gw.run("smoke", out, progress=False, figures=False, wf_construction=construction, **cfg)
        spec, wf = tm.wf_network(construction)
        with np.load(out / "results.npz") as r:
            np.testing.assert_array_equal(r["wf_params"], wf.numpy())
            np.testing.assert_array_equal(r["wf_desym"], tm.desymmetrize(spec, wf).numpy())
        assert summary["wf_construction"] == construction
        assert math.isclose(summary["wf"]["desym_norm"], float(tm.desymmetrize(spec, wf).norm()))
        assert json.loads((out / "config.json").read_text())["wf_construction"] == construction
    assert not torch.equal(tm.wf_network("v1")[1], tm.wf_network("v2")[1])


def test_polyline_subdivides_each_segment():
    import torch

    images = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [1.0, 2.0]]], dtype=torch.float64)
    line = gw.polyline(images, 4)
    assert line.shape == (1, 9, 2)
    np.testing.assert_allclose(line[0, :5, 0], [0.0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(line[0, 4:, 1], [0.0, 0.5, 1.0, 1.5, 2.0])
    assert torch.equal(line[:, ::4], images)


def test_smoke_summary_reports_the_neb_fidelity_numbers(smoke_run):
    """The keys issue 18 reads: basin radius (from the images and along the polyline), distances, the
    converged fraction and fmax quantiles, the restarts, the construction."""
    out, summary = smoke_run
    neb = summary["neb"]
    for key in ("basin_radius_quantiles_10_50_90", "distance_wf_to_minima_quantiles_10_50_90", "converged",
                "converged_fraction", "fmax_quantiles_10_50_90", "basin_radius_polyline_quantiles_10_50_90",
                "polyline_max_over_images_max_quantiles_10_50_90", "converged_first_relaxation", "restarted"):
        assert key in neb, key
    assert neb["converged"] == round(neb["converged_fraction"] * neb["paths"])
    assert neb["converged_first_relaxation"] <= neb["converged"]
    assert neb["steps"] <= gw.SCALES["smoke"].neb_steps
    smoke = gw.SCALES["smoke"]
    assert neb["steps_with_restarts_max"] <= smoke.neb_steps + len(smoke.neb_restarts) * smoke.neb_restart_steps
    for opt in gw.OPTIMIZERS:
        assert "noise_norm_at_p50" in summary[f"basin_{opt}"] and "fraction_at_global_min" in summary[opt]
    assert summary["wf_construction"] == "v2"
    with np.load(out / "results.npz") as r:
        assert r["neb_basin_radius_polyline"].shape == r["neb_basin_radius"].shape


def test_large_scale_is_a_tenth_of_the_paper_and_other_experiments_refuse_it():
    large, paper = gw.config("large"), gw.config("paper")
    assert 2 * large.models_per_optimizer * 10 == 2 * paper.models_per_optimizer
    assert large.steps == paper.steps == 50_000
    assert large.models_per_optimizer % large.shard_models == 0
    from lscape.experiments import bosman
    with pytest.raises(ValueError, match="scale: got 'large'"):
        bosman.config("large")
