"""The Huang et al. reproduction at smoke scale: end to end (good minima have far larger basins than
bad ones), and interrupted + resumed."""
import numpy as np
import pytest
from conftest import assert_run_outputs, smoke_run_fixture
from lscape.experiments import common, huang

smoke_run = smoke_run_fixture(huang.run, "hu_smoke")


def test_smoke_good_minima_have_larger_basins(smoke_run):
    out, summary = smoke_run
    assert_run_outputs(out, summary)
    with np.load(out / "results.npz") as r:
        bad = r["kind_is_bad"]
        assert bad.tolist() == [False, False, True, True]
        assert np.all(r["train_acc"] == 1.0) and np.all(r["train_loss"] < 0.1)
        assert r["test_acc"][~bad].min() > r["test_acc"][bad].max()  # the poison made them generalise worse
        assert np.all(np.isfinite(r["log_volume"])) and np.all(r["log_volume_se"] >= 0)
        # the paper's point: bad minima sit in basins many orders of magnitude smaller
        assert r["log_volume"][~bad].min() > r["log_volume"][bad].max() + 10 * np.log(10)
        assert r["tsne"].shape == (r["good_iterates"].shape[0] + 2, 2)
    assert summary["good_minus_bad_log10_volume"] > 10


def test_interrupted_run_resumes_to_the_same_results(smoke_run, tmp_path):
    ref_out, _ = smoke_run
    out = tmp_path / "run"
    with pytest.raises(common.RunInterrupted, match=r"stopped after 2 chunk\(s\)"):
        huang.run("smoke", out, progress=False, figures=False, stop_after_chunks=2)
    huang.run("smoke", out, resume=True, progress=False, figures=False)
    with np.load(ref_out / "results.npz") as a, np.load(out / "results.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
