"""BilevelSearchCV learning the training dynamics of the torch MLPs."""

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedKFold

from skbilevel import BilevelSearchCV, Real, TorchMLPClassifier


@pytest.fixture(scope="module")
def data():
    return make_classification(
        n_samples=80, n_features=6, n_informative=4, random_state=0
    )


def _mlp(learning_rate):
    return TorchMLPClassifier(
        hidden_layer_sizes=(8,),
        solver="sgd",
        learning_rate=learning_rate,
        momentum=0.5,
        max_iter=30,
        random_state=0,
        dtype="float64",
    )


def _cv_log_loss(estimator, X, y, cv):
    losses = []
    for train, test in cv.split(X, y):
        fitted = estimator.fit(X[train], y[train])
        losses.append(log_loss(y[test], fitted.predict_proba(X[test])))
    return float(np.mean(losses))


def test_search_raises_a_learning_rate_100x_too_small(data):
    X, y = data
    cv = StratifiedKFold(2, shuffle=True, random_state=0)
    start = 1e-3
    search = BilevelSearchCV(
        _mlp(start),
        {"learning_rate": Real(1e-5, 1.0, init=start)},
        method="reverse",
        outer_optimizer="adam",
        outer_learning_rate=0.5,
        max_iter=15,
        cv=cv,
    ).fit(X, y)
    learned = search.best_params_["learning_rate"]
    assert learned > 10 * start
    # The refitted model is the one that was differentiated: its validation
    # loss, computed independently by scikit-learn, fell with the learning rate.
    assert _cv_log_loss(_mlp(learned), X, y, cv) < _cv_log_loss(_mlp(start), X, y, cv)
    assert search.best_estimator_.learning_rate == learned
    losses = [entry["outer_loss"] for entry in search.history_]
    assert losses[-1] < losses[0]


def test_implicit_method_is_refused_for_unrolled_training(data):
    X, y = data
    search = BilevelSearchCV(
        _mlp(1e-2), {"learning_rate": Real(1e-4, 1.0)}, method="implicit_cg", cv=2
    )
    with pytest.raises(ValueError, match="fixed number of training steps"):
        search.fit(X, y)


def test_auto_method_differentiates_the_training_steps(data):
    X, y = data
    space = {"learning_rate": Real(1e-4, 1.0, init=1e-2)}
    runs = [
        BilevelSearchCV(_mlp(1e-2), space, method=method, max_iter=2, cv=2).fit(X, y)
        for method in ("auto", "reverse")
    ]
    assert runs[0].get_params()["method"] == "auto"
    assert runs[0].best_params_ == runs[1].best_params_
    assert runs[0].history_[-1]["outer_loss"] == runs[1].history_[-1]["outer_loss"]
