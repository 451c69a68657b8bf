"""The defaults of a SampleWeight search (data hyper-cleaning)."""

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import PredefinedSplit

from skbilevel import BilevelSearchCV, Real, SampleWeight
from skbilevel._search._settings import resolve_outer_optimizer


@pytest.fixture(scope="module")
def noisy(noisy_split):
    """A training part with 30% of labels flipped, a clean validation part."""
    X, y_noisy, train, flipped = noisy_split
    return X, y_noisy, PredefinedSplit(np.where(train, -1, 0)), flipped


@pytest.mark.parametrize(
    "space, expected",
    [
        ({"w": SampleWeight()}, "adam"),
        ({"C": Real(1e-2, 1e2), "w": SampleWeight()}, "adam"),
        ({"C": Real(1e-2, 1e2)}, "lbfgs"),
    ],
)
def test_auto_outer_optimizer_is_adam_for_sample_weights(space, expected):
    assert resolve_outer_optimizer("auto", space) == expected
    assert resolve_outer_optimizer("lbfgs", space) == "lbfgs"
    assert resolve_outer_optimizer("adam", space) == "adam"


def _fit(noisy, **kwargs):
    X, y, cv, _ = noisy
    search = BilevelSearchCV(
        LogisticRegression(), {"sample_weight": SampleWeight()}, cv=cv, **kwargs
    )
    with pytest.warns(UserWarning, match="60 of 200 examples are in no training"):
        return search.fit(X, y)


def test_sample_weight_search_defaults_to_projected_adam(noisy):
    default = _fit(noisy, max_iter=5)
    adam = _fit(noisy, max_iter=5, outer_optimizer="adam")
    lbfgs = _fit(noisy, max_iter=5, outer_optimizer="lbfgs")
    weights = default.best_params_["sample_weight"]
    np.testing.assert_array_equal(weights, adam.best_params_["sample_weight"])
    assert not np.allclose(weights, lbfgs.best_params_["sample_weight"])
    # Adam's first step moves every weight with a nonzero hypergradient by
    # the step size: from 1 to 0.9 at most.
    first = default.history_[1]["params"]["sample_weight"][:140]
    assert first.min() == pytest.approx(0.9)
    # After five such steps the flipped examples are already set apart.
    _, _, _, flipped = noisy
    assert weights[:140][flipped].mean() < weights[:140][~flipped].mean() - 0.2


def test_other_spaces_keep_lbfgs():
    X, y = make_classification(n_samples=120, n_features=4, random_state=0)
    space = {"alpha": Real(1e-3, 1e3, init=1.0)}
    default = BilevelSearchCV(Ridge(), space, cv=3).fit(X, y)
    lbfgs = BilevelSearchCV(Ridge(), space, cv=3, outer_optimizer="lbfgs").fit(X, y)
    assert default.best_params_ == lbfgs.best_params_
    assert len(default.history_) == len(lbfgs.history_)


@pytest.mark.parametrize("kwargs", [{"init": 0.5}, {"budget": 0.5}])
def test_examples_in_no_training_fold_keep_weight_one(noisy, kwargs):
    # No inner problem weighs the validation part: its weights stay 1, not
    # init nor a share of the budget, and the budget counts the others.
    X, y, cv, _ = noisy
    search = BilevelSearchCV(
        LogisticRegression(), {"sample_weight": SampleWeight(**kwargs)}, cv=cv
    )
    with pytest.warns(UserWarning, match="60 of 200 examples are in no training"):
        search.set_params(max_iter=3).fit(X, y)
    weights = search.best_params_["sample_weight"]
    np.testing.assert_array_equal(weights[140:], 1.0)
    if "budget" in kwargs:
        assert weights[:140].sum() <= 0.5 * 140 + 1e-6
    assert weights[:140].min() < 1.0
    # The refit is that weighted fit; it starts from the fold's solution, and
    # both stop at lbfgs's tol (1e-4), hence the tolerance.
    plain = LogisticRegression().fit(X, y, sample_weight=weights)
    np.testing.assert_allclose(search.best_estimator_.coef_, plain.coef_, atol=1e-3)
