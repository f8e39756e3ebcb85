import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from cramlm.eval.metrics import accuracy, f1, mcc, pearson, rank, spearman


@pytest.mark.parametrize("seed", range(5))
def test_classification_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels, pred = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    assert accuracy(pred, labels) == pytest.approx(skm.accuracy_score(labels, pred))
    assert f1(pred, labels) == pytest.approx(skm.f1_score(labels, pred))
    assert mcc(pred, labels) == pytest.approx(skm.matthews_corrcoef(labels, pred))
    three_labels, three_pred = rng.integers(0, 3, 300), rng.integers(0, 3, 300)
    assert mcc(three_pred, three_labels) == pytest.approx(skm.matthews_corrcoef(three_labels, three_pred))


@pytest.mark.parametrize("seed", range(5))
def test_correlations_match_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 6, 150) / 5.0  # STS-B style scores with many ties
    y = x + rng.normal(0, 0.5, 150)
    assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0])
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0])
    assert np.allclose(rank(x), stats.rankdata(x))


def test_degenerate_cases_are_zero_not_nan():
    assert mcc([1, 1, 1], [0, 1, 0]) == 0.0
    assert f1([0, 0], [0, 0]) == 0.0
    assert pearson([1, 1, 1], [1, 2, 3]) == 0.0
    assert mcc([0, 1, 0, 1], [0, 1, 0, 1]) == pytest.approx(1.0)
