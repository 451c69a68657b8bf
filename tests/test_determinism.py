"""BilevelSearchCV is deterministic: the same ``random_state`` gives the same
search whatever runs it (``n_jobs``, the joblib backend, a pickled copy).

Each case mixes what can differ between executions: several independent
hypergradient runs (a discrete entry next to a continuous one, dispatched to
joblib workers), random restarts, array-valued hyperparameters, and a torch MLP
whose training is differentiated.
"""

import pickle

import joblib
import numpy as np
import pytest
from sklearn.datasets import make_classification, make_regression
from sklearn.linear_model import LogisticRegression, Ridge

from skbilevel import BilevelSearchCV, PerFeature, Real, SampleWeight
from skbilevel.neural_network import TorchMLPClassifier

X_CLF, Y_CLF = make_classification(
    n_samples=40, n_features=4, n_informative=3, n_redundant=0, random_state=0
)
X_REG, Y_REG = make_regression(n_samples=40, n_features=4, noise=10.0, random_state=0)


def _logreg_mixed():
    space = {"C": Real(1e-2, 1e2), "fit_intercept": [True, False]}
    return BilevelSearchCV(
        LogisticRegression(), space, cv=2, max_iter=3, n_restarts=2, random_state=0
    )


def _ridge_per_feature():
    space = {"alpha": PerFeature(1e-2, 1e2), "fit_intercept": [True, False]}
    return BilevelSearchCV(Ridge(), space, cv=2, max_iter=3, random_state=0)


def _logreg_sample_weight():
    space = {"sample_weight": SampleWeight(), "C": [0.1, 1.0]}
    return BilevelSearchCV(
        LogisticRegression(), space, cv=2, max_iter=3, random_state=0
    )


def _mlp_mixed():
    # Shuffled mini-batches: the estimator's own random_state is in play too.
    mlp = TorchMLPClassifier((4,), max_iter=5, batch_size=8, random_state=0)
    space = {"learning_rate": Real(1e-3, 1.0), "alpha": [1e-4, 1e-2]}
    return BilevelSearchCV(mlp, space, cv=2, max_iter=2, random_state=0)


def _discrete_only():
    space = {"C": [0.1, 1.0], "fit_intercept": [True, False]}
    return BilevelSearchCV(LogisticRegression(), space, cv=2)


CASES = {
    "logreg_mixed": (_logreg_mixed, "clf"),
    "ridge_per_feature": (_ridge_per_feature, "reg"),
    "logreg_sample_weight": (_logreg_sample_weight, "clf"),
    "mlp_mixed": (_mlp_mixed, "clf"),
}
CONTINUOUS = sorted(CASES)
ALL_CASES = CONTINUOUS + ["discrete_only"]
CASES["discrete_only"] = (_discrete_only, "clf")


def _data(kind):
    return (X_CLF, Y_CLF) if kind == "clf" else (X_REG, Y_REG)


def _fit(case, **params):
    make, kind = CASES[case]
    return make().set_params(**params).fit(*_data(kind))


@pytest.fixture(scope="module")
def reference():
    """One sequential fit per case, computed on first use."""
    fitted = {}

    def get(case):
        if case not in fitted:
            fitted[case] = _fit(case, n_jobs=1)
        return fitted[case]

    return get


def _assert_same_params(ours, theirs):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]))


def _assert_same_search(ours, theirs, case):
    _assert_same_params([ours.best_params_], [theirs.best_params_])
    assert ours.best_index_ == theirs.best_index_
    np.testing.assert_array_equal(
        ours.cv_results_["mean_test_score"], theirs.cv_results_["mean_test_score"]
    )
    _assert_same_params(ours.cv_results_["params"], theirs.cv_results_["params"])
    X, _ = _data(CASES[case][1])
    np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))
    if hasattr(theirs, "predict_proba"):
        np.testing.assert_array_equal(ours.predict_proba(X), theirs.predict_proba(X))
    if hasattr(theirs, "history_"):
        assert [h["params"].keys() for h in ours.history_] == [
            h["params"].keys() for h in theirs.history_
        ]
        np.testing.assert_array_equal(
            [h["outer_loss"] for h in ours.history_],
            [h["outer_loss"] for h in theirs.history_],
        )


@pytest.mark.parametrize("case", ALL_CASES)
def test_same_random_state_same_search(case, reference):
    _assert_same_search(_fit(case, n_jobs=1), reference(case), case)


@pytest.mark.parametrize("case", ALL_CASES)
def test_n_jobs_does_not_change_the_search(case, reference):
    _assert_same_search(_fit(case, n_jobs=2), reference(case), case)


THREADING_CONTEXTS = {
    "parallel_backend": lambda: joblib.parallel_backend("threading", n_jobs=2),
    "parallel_config": lambda: joblib.parallel_config(backend="threading", n_jobs=2),
}
# The ways users pick loky with more than one worker.
LOKY_CONTEXTS = {
    "parallel_backend": (lambda: joblib.parallel_backend("loky"), None),
    "parallel_config_n_jobs": (
        lambda: joblib.parallel_config(backend="loky", n_jobs=2),
        None,
    ),
    "parallel_config_search_n_jobs": (
        lambda: joblib.parallel_config(backend="loky"),
        2,
    ),
}


@pytest.mark.parametrize("context", sorted(THREADING_CONTEXTS))
@pytest.mark.parametrize("case", ALL_CASES)
def test_threading_context_does_not_change_the_search(case, context, reference):
    with THREADING_CONTEXTS[context]():
        search = _fit(case)
    _assert_same_search(search, reference(case), case)


@pytest.mark.parametrize("context", sorted(LOKY_CONTEXTS))
def test_loky_context_discrete_only(context, reference):
    make_context, n_jobs = LOKY_CONTEXTS[context]
    with make_context():
        search = _fit("discrete_only", n_jobs=n_jobs)
    _assert_same_search(search, reference("discrete_only"), "discrete_only")


@pytest.mark.parametrize("case", CONTINUOUS)
def test_loky_context_with_one_job(case, reference):
    expected = reference(case)
    with joblib.parallel_backend("loky"):
        search = _fit(case, n_jobs=1)
    _assert_same_search(search, expected, case)


@pytest.mark.parametrize("context", sorted(LOKY_CONTEXTS))
@pytest.mark.parametrize("case", CONTINUOUS)
def test_loky_context_does_not_change_the_search(case, context, reference):
    # Issue 11: the runs' own Parallel call, made inside the Parallel context
    # that BaseSearchCV.fit holds open, terminated the shared loky backend
    # (AttributeError: 'NoneType' object has no attribute 'terminate').
    expected = reference(case)
    make_context, n_jobs = LOKY_CONTEXTS[context]
    with make_context():
        search = _fit(case, n_jobs=n_jobs)
    _assert_same_search(search, expected, case)


@pytest.mark.parametrize("case", ALL_CASES)
def test_pickled_unfitted_search_fits_the_same(case, reference):
    make, kind = CASES[case]
    copy = pickle.loads(pickle.dumps(make().set_params(n_jobs=1)))
    _assert_same_search(copy.fit(*_data(kind)), reference(case), case)


@pytest.mark.parametrize("case", ALL_CASES)
def test_pickled_fitted_search_predicts_the_same(case, reference):
    fitted = reference(case)
    _assert_same_search(pickle.loads(pickle.dumps(fitted)), fitted, case)


def test_random_state_instance_seeded_alike_gives_the_same_search():
    # Random restarts drawn from a RandomState instance, as scikit-learn allows.
    searches = [
        _logreg_mixed().set_params(random_state=np.random.RandomState(0))
        for _ in range(2)
    ]
    first, second = (search.fit(X_CLF, Y_CLF) for search in searches)
    _assert_same_search(first, second, "logreg_mixed")
