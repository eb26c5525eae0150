"""The Bosman et al. (2019) reproduction at smoke scale: end to end (clouds, curvature fractions, walk
accuracies), interrupted + resumed, and a bad scale."""
import json

import numpy as np
import pytest
from conftest import assert_run_outputs, smoke_run_fixture, write_mnist
from lscape.experiments import bosman, common

smoke_run = smoke_run_fixture(bosman.run, "bo_smoke")


def test_smoke_end_to_end(smoke_run):
    out, summary = smoke_run
    cfg = bosman.config("smoke")
    assert summary["figures"] == ["fig1_curvature.png", "fig2_lg_clouds_xor.png", "fig3_lg_depth_xor.png",
                                  "fig4_digits_accuracy.png", "fig5_lg_clouds_digits.png"]
    assert_run_outputs(out, summary)
    assert json.loads((out / "summary.json").read_text())["cells"].keys() == summary["cells"].keys()
    n_set = 2 * len(cfg.init_ranges)
    with np.load(out / "results.npz") as r:
        for prob, widths, depths in (("xor", cfg.xor_widths, cfg.xor_depths),
                                     ("digits", cfg.digits_widths, cfg.digits_depths)):
            n = len(widths) * len(depths) * n_set
            assert r[f"{prob}_cell_dim"].shape == (n,)
            # D walks, capped at max_walkers; steps + 1 samples each, concatenated cell by cell
            assert np.all(r[f"{prob}_cell_walkers"] == np.minimum(r[f"{prob}_cell_dim"], cfg.max_walkers))
            sizes = r[f"{prob}_cell_walkers"] * (r[f"{prob}_cell_steps"] + 1)
            np.testing.assert_array_equal(np.diff(r[f"{prob}_start"]), sizes)
            for k in ("loss", "grad_norm", "acc"):
                assert r[f"{prob}_{k}"].shape == (sizes.sum(),)
            assert np.all(np.isfinite(r[f"{prob}_loss"])) and np.all(r[f"{prob}_loss"] >= 0)
            assert np.all(np.isfinite(r[f"{prob}_grad_norm"])) and np.all(r[f"{prob}_grad_norm"] >= 0)
            assert np.all((r[f"{prob}_acc"] >= 0) & (r[f"{prob}_acc"] <= 1))
            assert r[f"{prob}_finite"].all()
        # XOR: the accuracy on 4 patterns is a multiple of 1/4; the curvature fractions sum to 1
        assert np.all(np.isin(r["xor_acc"], [0, 0.25, 0.5, 0.75, 1]))
        assert r["xor_frac"].shape == (len(r["xor_cell_dim"]), 4)
        np.testing.assert_allclose(r["xor_frac"].sum(1), 1.0)
        assert np.all(np.diff(r["xor_hess_start"]) == cfg.hessian_points)
        assert set(np.unique(r["xor_hess_class"])) <= {0, 1, 2, 3}
        # micro steps are 10x smaller than macro ones, and scale with the range
        np.testing.assert_allclose(r["xor_cell_step_bound"],
                                   np.where(r["xor_cell_micro"], 0.01, 0.1) * 2 * r["xor_cell_range"])
        for k in ("digits_end_train_acc", "digits_end_test_acc"):
            assert np.all((r[k] >= 0) & (r[k] <= 1)) and r[k].shape == (r["digits_cell_walkers"].sum(),)
        # the gradient walks go downhill: at the small range, the digits loss falls from start to end
        a = r["digits_start"]
        for i in np.flatnonzero(r["digits_cell_range"] == 1.0):
            W, S = r["digits_cell_walkers"][i], r["digits_cell_steps"][i]
            loss = r["digits_loss"][a[i]:a[i + 1]].reshape(W, S + 1)
            assert np.median(loss[:, -1]) < np.median(loss[:, 0])
    for cell in summary["cells"].values():
        if "curvature" in cell:
            assert sum(cell["curvature"].values()) == pytest.approx(1.0)


def test_interrupted_run_resumes_to_the_same_results(smoke_run, tmp_path):
    ref_out, _ = smoke_run
    out = tmp_path / "run"
    with pytest.raises(common.RunInterrupted, match=r"stopped after 3 chunk\(s\)"):
        bosman.run("smoke", out, progress=False, figures=False, stop_after_chunks=3)
    assert len(list((out / "checkpoints").glob("*.npz"))) == 3
    bosman.run("smoke", out, resume=True, progress=False, figures=False)
    with np.load(ref_out / "results.npz") as a, np.load(out / "results.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_bad_scale_is_named(tmp_path):
    with pytest.raises(ValueError, match="scale: got 'huge'"):
        bosman.run("huge", tmp_path / "x", progress=False)


def test_paper_scale_runs_on_mnist_files(tmp_path):
    """The paper scale's own path (MNIST from --data-dir for the second problem), shrunk to seconds."""
    mnist = write_mnist(tmp_path / "mnist", n_train=120, n_test=40)
    out = tmp_path / "run"
    summary = bosman.run("paper", out, progress=False, data_dir=str(mnist), xor_widths=(2,), xor_depths=(1,),
                         digits_widths=(10,), digits_depths=(1,), micro_steps=5, macro_steps=3, max_walkers=4,
                         batch_size=50, eval_patterns=50, hessian_points=4)
    assert_run_outputs(out, summary)
    assert summary["dataset"] == "mnist"
    with np.load(out / "results.npz") as r:
        assert np.all(r["digits_cell_dim"] == 784 * 10 + 10 + 10 * 10 + 10)  # 784-10-10 on MNIST
        assert np.all(np.isfinite(r["digits_loss"]))


def test_paper_capped_caps_only_the_mnist_walks(tmp_path):
    """'paper-capped': the paper's D walks per XOR cell, digits_max_walkers per MNIST cell."""
    cfg = bosman.config("paper-capped")
    assert cfg.max_walkers is None and cfg.digits_max_walkers == 64 and cfg.dataset == "mnist"
    assert (cfg.digits_widths, cfg.digits_depths, cfg.micro_steps) == ((10, 20, 100), (1, 2, 3), 1000)
    mnist = write_mnist(tmp_path / "mnist", n_train=120, n_test=40)
    summary = bosman.run("paper-capped", tmp_path / "run", progress=False, data_dir=str(mnist),
                         xor_widths=(2,), xor_depths=(1,), digits_widths=(10,), digits_depths=(1,), micro_steps=3,
                         macro_steps=2, digits_max_walkers=3, batch_size=50, eval_patterns=50, hessian_points=4,
                         figures=False)
    with np.load(tmp_path / "run" / "results.npz") as r:
        assert np.all(r["xor_cell_walkers"] == r["xor_cell_dim"])  # uncapped: D = 9 walks
        assert np.all(r["digits_cell_walkers"] == 3)
    assert all(c["walkers"] == (9 if k.startswith("xor") else 3) for k, c in summary["cells"].items())
