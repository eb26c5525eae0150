"""The grokking reproduction at smoke scale: end to end, resumed from a kill, training segments that
continue exactly, fixed-norm (d = D sphere) training that keeps |theta| to rounding, and bad --set values
refused by name before any training."""
import json

import numpy as np
import pytest
import torch
from conftest import assert_run_outputs, smoke_run_fixture
from lscape import cli
from lscape.experiments import common
from lscape.experiments import grokking as gk
from lscape.experiments import grokking_probes as gp
from lscape.experiments import grokking_stages as st
from lscape.experiments import grokking_train as gt

smoke_run = smoke_run_fixture(gk.run, "grok_smoke")


def test_smoke_writes_everything(smoke_run):
    out, summary = smoke_run
    cfg = gk.SCALES["smoke"]
    assert_run_outputs(out, summary)
    assert {"fig1_grokking.png", "fig2_hessian.png", "fig3_pca_plane.png", "fig4_paths.png", "fig5_lu.png",
            "fig6_mnist_grokking.png"} <= set(summary["figures"])
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["modular_addition"]["final_train_acc"] == summary["modular_addition"]["final_train_acc"]
    with np.load(out / "results.npz") as r:
        step, rec = r["mod_rec_step"], r["mod_rec"]
        assert step[0] == 0 and step[-1] == cfg.epochs and np.all(np.diff(step) > 0)
        assert rec.shape == (len(step), 5) and np.all((rec[:, [1, 3]] >= 0) & (rec[:, [1, 3]] <= 1))
        S = len(r["mod_snap_step"])
        assert set(r["mod_snap_step"]) <= set(step)  # every snapshot has its record
        assert r["hess_eigs"].shape == (S, cfg.hessian_k) and r["hess_trace"].shape == (S,)
        assert np.all(np.diff(r["hess_eigs"], axis=1) <= 1e-6)  # descending
        n = cfg.surface_grid
        assert r["plane_train_loss"].shape == r["plane_test_loss"].shape == (n, n)
        assert r["plane_trajectory"].shape == (S, 2) and np.allclose(r["plane_trajectory"][-1], 0, atol=1e-6)
        assert np.isclose(r["path_line_train"][-1], r["path_neb_train"][-1], rtol=1e-4)  # same grokked end
        assert r["lu_mod_final"].shape == r["lu_mnist_final"].shape == (len(cfg.lu_scales), 4)
        assert r["mnist_rec"][-1, 1] >= 0 and r["mnist_rec_step"][-1] == cfg.mnist_steps
        # a model trained from init x 8 starts at 8 w0: the records' first norm
        assert np.isclose(r["mnist_rec"][0, 4], cfg.mnist_init_scale * float(r["lu_mnist_w0"]), rtol=1e-5)


def test_lu_cells_stay_on_their_spheres(smoke_run):
    _, summary = smoke_run
    for net in ("lu_transformer", "lu_mnist"):
        assert summary[net]["max_relative_norm_error"] < 1e-5, summary[net]


def test_sphere_training_at_d_equal_D_keeps_the_norm_to_rounding():
    cfg = gk.config("smoke")
    d = st.load_data(cfg, None).mod
    model = gt.transformer(cfg, 3)
    w = 2.5 * gt.norm(model)
    out = gt.sphere_cell(model, w, gt.cross_entropy, tuple(d), lr=1e-2, steps=30, batch=None, seed=0, evals=31,
                         dev=torch.device("cpu"))
    assert out["norm_error"] < 1e-6  # float32 parameters: |theta| = w to rounding at every step checked
    assert out["curve"][-1, 0] < out["curve"][0, 0]  # and it trained


def test_segments_continue_exactly_where_the_last_one_stopped():
    cfg = gk.config("smoke")
    d = st.load_data(cfg, None).mnist
    run = gt.Run(lambda: gt.mlp(d.x_train.shape[1], 16, 3, 10, 0), gt.one_hot_mse, tuple(d), 1e-2, 0.01,
                 (0.9, 0.999), 64, 0, (0, 7, 13), (13,), "cpu")
    whole = gt.segment(run, 0, 13, None)
    first = gt.segment(run, 0, 7, None)
    second = gt.segment(run, 7, 13, gt.State.of(first))
    assert np.array_equal(second["params"], whole["params"]) and np.array_equal(second["exp_avg_sq"],
                                                                              whole["exp_avg_sq"])
    assert np.array_equal(np.concatenate([first["rec"], second["rec"]]), whole["rec"])
    assert np.array_equal(second["snap"], whole["snap"]) and int(second["step"]) == 13


def test_schedule_samples_early_epochs_logarithmically_and_the_rest_evenly():
    s = st.schedule(10_000, 9, 1_000)
    assert s[0] == 0 and s[-1] == 10_000 and list(s) == sorted(set(s))
    assert {1, 3, 10, 32, 100, 316, 1000, 3162, 5000} <= set(s)


def test_an_interrupted_run_resumes_to_the_same_results(smoke_run, tmp_path):
    ref, _ = smoke_run
    out = tmp_path / "run"
    with pytest.raises(common.RunInterrupted):
        gk.run("smoke", out, progress=False, figures=False, stop_after_chunks=1)  # killed after one segment
    assert [p.name for p in (out / "checkpoints").glob("*.npz")] == ["mod_seg_0.npz"]
    gk.run("smoke", out, resume=True, progress=False, figures=False)
    with np.load(ref / "results.npz") as a, np.load(out / "results.npz") as b:
        for k in ("mod_rec", "mod_snap", "hess_eigs", "lu_mod_final", "mnist_rec", "path_line_train"):
            assert np.array_equal(a[k], b[k]), k


@pytest.mark.parametrize("bad, named", [("p=15", "p: got 15, expected a prime"), ("p=2", "p: got 2"),
                                        ("train_fraction=1.0", "train_fraction: got 1.0"),
                                        ("train_fraction=0", "train_fraction: got 0.0"),
                                        ("lu_scales=", "lu_scales: got an empty grid"),
                                        ("lu_scales=1,-0.5", "lu_scales: got -0.5"),
                                        ("lu_scales=0", "lu_scales: got 0.0")])
def test_set_values_that_make_no_study_are_refused_by_name_before_any_training(bad, named, tmp_path, capsys):
    out = tmp_path / "never"
    rc = cli.main(["reproduce", "grokking", "--scale", "smoke", "--out", str(out), "--set", bad])
    assert rc == 2
    assert named in capsys.readouterr().err
    assert not out.exists()  # refused before the run folder, let alone a chunk


def test_hessian_products_through_sdpa_equal_autograd_on_the_written_out_twin():
    """The Hessian chunks' landscape (the trained network, SDPA, last position alone) against plain autograd
    on the attention="math" twin computing every position."""
    from lscape import probes
    from lscape._flat import FlatLayout
    cfg = gk.config("smoke")
    split = st.load_data(cfg, None).mod
    L = gp._landscape(cfg, split, True, gp.HESSIAN_ATTENTION)
    twin = gt.transformer(cfg, cfg.seed, attention="math").double()
    layout = FlatLayout.of(twin.gpt)  # LastToken's own parameters, in the same order
    theta = layout.flatten(twin.gpt)
    v = torch.randn(layout.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def loss(t):
        logits = torch.func.functional_call(twin.gpt, layout.split(t), (split.x_train,))
        return torch.nn.functional.cross_entropy(logits[:, -1, :cfg.p], split.y_train)

    want = torch.autograd.functional.hvp(loss, theta, v)[1]
    got = probes.hvp(L, theta.float(), v[None].float())[0].double()
    torch.testing.assert_close(got, want, rtol=2e-4, atol=2e-5 * float(want.abs().max()))
