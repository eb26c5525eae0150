"""The experiments' hand-written statistics against statsmodels (lowess, logistic regression) and scipy
(Spearman's rank correlation with ties)."""
import numpy as np
import pytest
from lscape.experiments.stats import logistic_fit, lowess, spearman

sm = pytest.importorskip("statsmodels.api", reason="the independent implementation to compare with")


@pytest.mark.parametrize("frac", [0.3, 2.0 / 3.0])
def test_lowess_equals_statsmodels(frac):
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 2, 200)
    y = np.sin(3 * x) + rng.normal(0, 0.3, 200)
    y[::37] += 4.0  # outliers: the robustness passes must down-weight them as statsmodels does
    xs, fit = lowess(x, y, frac=frac, iterations=3)
    ref = sm.nonparametric.lowess(y, x, frac=frac, it=3, delta=0.0)
    np.testing.assert_allclose(xs, ref[:, 0])
    np.testing.assert_allclose(fit, ref[:, 1], rtol=1e-8, atol=1e-10)


def test_logistic_fit_equals_statsmodels_logit():
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 2, 400)
    y = (rng.uniform(size=400) < 1 / (1 + np.exp(-(3.0 - 4.0 * x)))).astype(float)
    fit = logistic_fit(x, y)
    ref = sm.Logit(y, sm.add_constant(x)).fit(disp=0, tol=1e-12)
    np.testing.assert_allclose([fit.intercept, fit.slope], ref.params, rtol=1e-6)
    assert fit.x50 == pytest.approx(-ref.params[0] / ref.params[1], rel=1e-6)


def test_spearman_gives_ties_their_mean_rank_whatever_the_order():
    stats = pytest.importorskip("scipy.stats", reason="the reference")
    a = np.array([1.0, 2.0, 2.0, 3.0, 3.0, 3.0, 5.0])  # ties, as accuracies and cell dimensions have
    b = np.array([0.1, 0.5, 0.2, 0.9, 0.4, 0.6, 1.0])
    perm = np.random.default_rng(0).permutation(len(a))
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, rel=1e-12)
    assert spearman(a[perm], b[perm]) == pytest.approx(spearman(a, b), rel=1e-12)
    assert np.isnan(spearman(np.ones(5), b[:5])) and np.isnan(spearman(a[:2], b[:2]))
