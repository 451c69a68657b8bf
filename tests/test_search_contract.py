"""BilevelSearchCV's continuous path: one test per defect of issue 11 (inputs,
settings, stopping, numerical trouble, interrupts, routing, drop-in forms)."""

import numpy as np
import pandas as pd
import pytest
import sklearn
from scipy.stats import loguniform
from sklearn.base import clone
from sklearn.datasets import (
    load_breast_cancer,
    load_diabetes,
    make_classification,
    make_regression,
)
from sklearn.exceptions import ConvergenceWarning, DataConversionWarning
from sklearn.linear_model import ElasticNet, LogisticRegression, Ridge
from sklearn.metrics import make_scorer
from sklearn.model_selection import (
    GroupKFold,
    KFold,
    ShuffleSplit,
    StratifiedKFold,
    cross_val_score,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skbilevel import BilevelSearchCV, PerFeature, Real, SampleWeight
from skbilevel._search import _objective
from skbilevel.neural_network import TorchMLPClassifier


@pytest.fixture(scope="module")
def frame():
    X, y = make_regression(n_samples=60, n_features=4, noise=5.0, random_state=0)
    return pd.DataFrame(X, columns=["a", "b", "c", "d"]), y


@pytest.mark.parametrize("spec", [Real(1e-3, 1e3), PerFeature(1e-3, 1e3)])
def test_feature_names_and_counts_checked_at_predict(frame, spec):
    X, y = frame
    search = BilevelSearchCV(Ridge(), {"alpha": spec}, cv=3, max_iter=3).fit(X, y)
    np.testing.assert_array_equal(search.feature_names_in_, ["a", "b", "c", "d"])
    assert search.n_features_in_ == 4
    with pytest.raises(ValueError, match="feature names"):
        search.predict(X[["d", "c", "b", "a"]])
    with pytest.raises(ValueError, match="feature"):
        search.predict(X[["a", "b", "c"]])


@pytest.mark.parametrize(
    "weights, match",
    [
        (np.ones(59), "sample_weight.shape"),
        (np.zeros(60), "at least one non-zero"),
        (np.r_[np.nan, np.ones(59)], "NaN"),
        (np.r_[-1.0, np.ones(59)], "Negative values"),
    ],
)
@pytest.mark.parametrize("estimator", [Ridge(), LogisticRegression()])
def test_sample_weight_is_validated(estimator, weights, match):
    X, y = make_classification(n_samples=60, n_features=4, random_state=0)
    search = BilevelSearchCV(
        estimator, {"alpha" if "alpha" in estimator.get_params() else "C": 1.0}, cv=3
    )
    with pytest.raises(ValueError, match=match):
        search.fit(X, y, sample_weight=weights)


def test_column_y_of_a_torch_mlp_search():
    X, y = make_classification(n_samples=60, n_features=4, random_state=0)
    mlp = TorchMLPClassifier((4,), max_iter=5, random_state=0)
    search = BilevelSearchCV(mlp, {"alpha": Real(1e-5, 1e-1)}, cv=2, max_iter=2)
    with pytest.warns(DataConversionWarning, match="column-vector y"):
        search.fit(X, y[:, None])
    assert search.predict(X).shape == (60,)


@pytest.mark.parametrize("method", ["auto", "implicit_cg", "truncated_reverse"])
def test_unknown_method_params_are_refused(method):
    X, y = make_regression(n_samples=40, n_features=3, random_state=0)
    search = BilevelSearchCV(
        Ridge(), {"alpha": 1.0}, method=method, method_params={"Q": 10}, cv=2
    )
    with pytest.raises(ValueError, match=r"not options of method=.*its options are"):
        search.fit(X, y)


def test_truncation_length_refused_on_the_default_path():
    """``{"K": 10}`` belongs to truncated reverse mode, not to "auto"."""
    X, y = make_regression(n_samples=40, n_features=3, random_state=0)
    search = BilevelSearchCV(Ridge(), {"alpha": 1.0}, method_params={"K": 10}, cv=2)
    with pytest.raises(ValueError, match="'implicit_forward'.*cg_tol, max_iter"):
        search.fit(X, y)


@pytest.mark.parametrize(
    "estimator, space, words",
    [
        (
            ElasticNet(),
            {"l1_ratio": Real(0.1, 2.0, log=False)},
            "'l1_ratio' parameter of ElasticNet must be a float in the range",
        ),
        (
            make_pipeline(StandardScaler(), LogisticRegression(solver="saga")),
            {"logisticregression__l1_ratio": Real(0.5, 3.0, log=False)},
            "'l1_ratio' parameter of LogisticRegression must be a float in the range",
        ),
    ],
)
def test_bounds_the_estimator_refuses_are_refused_before_any_run(
    estimator, space, words, monkeypatch
):
    # Refused in fit, in scikit-learn's words, before any hypergradient run.
    from skbilevel._search import _search

    def no_run(*args):
        raise AssertionError("a run started")

    monkeypatch.setattr(_search, "run", no_run)
    X, y = load_breast_cancer(return_X_y=True)
    with pytest.raises(ValueError, match=words):
        BilevelSearchCV(estimator, space, cv=3).fit(X[:100], y[:100])


def test_shuffling_splitter_without_seed_is_refused():
    X, y = make_regression(n_samples=40, n_features=3, random_state=0)
    for cv in (KFold(3, shuffle=True), ShuffleSplit(3)):
        with pytest.raises(ValueError, match="consistent folds"):
            BilevelSearchCV(Ridge(), {"alpha": 1.0}, cv=cv).fit(X, y)


def test_run_ending_at_a_bound_warns():
    X, y = make_regression(n_samples=60, n_features=50, noise=80.0, random_state=0)
    search = BilevelSearchCV(Ridge(), {"alpha": Real(1e-4, 1e-3)}, cv=3)
    with pytest.warns(ConvergenceWarning, match="upper bound of 'alpha'"):
        search.fit(X, y)


def test_run_stopped_at_max_iter_while_improving_warns():
    X, y = make_classification(n_samples=80, n_features=5, random_state=0)
    search = BilevelSearchCV(
        LogisticRegression(), {"C": Real(1e-4, 1e4, init=1e-4)}, cv=3, max_iter=2
    )
    with pytest.warns(ConvergenceWarning, match="max_iter=2 outer steps"):
        search.fit(X, y)


def test_ties_in_the_score_go_to_the_lowest_descended_loss():
    """Every visited setting ties under a constant scorer: the best is the one
    whose validation loss the run descended lowest, not the first (the start)."""
    X, y = make_classification(n_samples=80, n_features=5, random_state=0)
    constant = make_scorer(lambda y_true, y_pred: 1.0)
    search = BilevelSearchCV(
        LogisticRegression(), {"C": 1e-3}, cv=3, scoring=constant
    ).fit(X, y)
    losses = {entry["candidate"]: entry["outer_loss"] for entry in search.history_}
    assert len(losses) > 2
    assert search.best_index_ == min(losses, key=losses.__getitem__) != 0
    assert search.best_params_["C"] != 1e-3


def test_adam_keeps_its_best_iterate_not_its_last():
    """A non-exact fit has one row, the learned setting: the run's best."""
    X, y = make_classification(n_samples=60, n_features=4, random_state=0)
    mlp = TorchMLPClassifier((4,), solver="sgd", max_iter=10, random_state=0)
    search = BilevelSearchCV(
        mlp,
        {"learning_rate": Real(1e-3, 10.0, init=0.05)},
        cv=2,
        outer_optimizer="adam",
        outer_learning_rate=2.0,
        max_iter=6,
    ).fit(X, y)
    losses = [entry["outer_loss"] for entry in search.history_]
    best = search.history_[int(np.argmin(losses))]["params"]["learning_rate"]
    assert np.argmin(losses) != len(losses) - 1  # the last step was worse
    assert search.best_params_["learning_rate"] == best


def _failing_after(monkeypatch, n_calls, error):
    calls = []
    original = _objective.Objective.__call__

    def flaky(self, u):
        calls.append(1)
        if len(calls) > n_calls:
            raise error
        return original(self, u)

    monkeypatch.setattr(_objective.Objective, "__call__", flaky)
    return calls


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_non_finite_step_is_undone_and_reported(monkeypatch, optimizer):
    X, y = make_regression(n_samples=60, n_features=4, noise=5.0, random_state=0)
    _failing_after(monkeypatch, 2, _objective.NonFinite("loss nan"))
    search = BilevelSearchCV(
        Ridge(), {"alpha": 1.0}, cv=3, outer_optimizer=optimizer, max_iter=5
    )
    with pytest.warns(RuntimeWarning, match="non-finite result .*undone"):
        search.fit(X, y)
    assert len(search.history_) == 2
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()


@pytest.mark.filterwarnings("ignore:One or more of the test scores are non-finite")
def test_run_failing_at_its_start_follows_error_score(monkeypatch):
    X, y = make_regression(n_samples=60, n_features=4, noise=5.0, random_state=0)
    _failing_after(monkeypatch, 0, _objective.NonFinite("loss nan"))
    space = [{"alpha": 1.0}, {"alpha": [1.0]}]
    search = BilevelSearchCV(Ridge(), space, cv=3)
    with pytest.warns(sklearn.exceptions.FitFailedWarning):
        search.fit(X, y)
    assert np.isnan(search.cv_results_["mean_test_score"][0])
    assert search.best_params_ == {"alpha": 1.0}
    with pytest.raises(FloatingPointError, match="loss nan"):
        BilevelSearchCV(Ridge(), space, cv=3, error_score="raise").fit(X, y)


def test_keyboard_interrupt_keeps_the_settings_found(monkeypatch):
    X, y = make_regression(n_samples=60, n_features=4, noise=5.0, random_state=0)
    _failing_after(monkeypatch, 3, KeyboardInterrupt())
    search = BilevelSearchCV(Ridge(), {"alpha": Real(1e-3, 1e3)}, cv=3)
    with pytest.warns(UserWarning, match="Interrupted"):
        search.fit(X, y)
    assert len(search.cv_results_["params"]) == 3
    assert search.predict(X).shape == (60,)
    monkeypatch.undo()
    _failing_after(monkeypatch, 0, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        BilevelSearchCV(Ridge(), {"alpha": 1.0}, cv=3).fit(X, y)


def test_param_grid_keyword_and_scipy_distributions():
    X, y = make_regression(n_samples=60, n_features=4, noise=5.0, random_state=0)
    by_keyword = BilevelSearchCV(Ridge(), param_grid={"alpha": Real(1e-3, 1e3)}, cv=3)
    by_distribution = BilevelSearchCV(Ridge(), {"alpha": loguniform(1e-3, 1e3)}, cv=3)
    expected = BilevelSearchCV(Ridge(), {"alpha": Real(1e-3, 1e3)}, cv=3).fit(X, y)
    for search in (by_keyword, by_distribution):
        assert search.fit(X, y).best_params_ == expected.best_params_
    with pytest.raises(TypeError, match="exactly one of param_space and param_grid"):
        BilevelSearchCV(Ridge(), {"alpha": 1.0}, param_grid={"alpha": [1.0]}).fit(X, y)


def test_metadata_routing_of_sample_weight_and_groups():
    X, y = make_classification(n_samples=90, n_features=4, random_state=0)
    weights = np.random.RandomState(0).uniform(0.5, 2.0, size=90)
    groups = np.arange(90) % 6
    space = {"C": Real(1e-2, 1e2), "sample_weight": SampleWeight()}
    plain = BilevelSearchCV(LogisticRegression(), space, cv=GroupKFold(3), max_iter=3)
    plain.fit(X, y, sample_weight=weights, groups=groups)
    with sklearn.config_context(enable_metadata_routing=True):
        estimator = (
            LogisticRegression()
            .set_fit_request(sample_weight=True)
            .set_score_request(sample_weight=True)
        )
        routed = BilevelSearchCV(estimator, space, cv=GroupKFold(3), max_iter=3)
        routed.fit(X, y, sample_weight=weights, groups=groups)
    np.testing.assert_allclose(
        routed.cv_results_["mean_test_score"], plain.cv_results_["mean_test_score"]
    )
    assert routed.best_params_["C"] == pytest.approx(plain.best_params_["C"])


def test_metadata_routing_refuses_unrequested_sample_weight():
    X, y = make_classification(n_samples=60, n_features=4, random_state=0)
    with sklearn.config_context(enable_metadata_routing=True):
        search = BilevelSearchCV(
            LogisticRegression(), {"C": 1.0}, cv=StratifiedKFold(2)
        )
        with pytest.raises(sklearn.exceptions.UnsetMetadataPassedError):
            search.fit(X, y, sample_weight=np.ones(60))


def test_callbacks_see_every_evaluation_of_a_continuous_search():
    """scikit-learn's callback API (where installed): the hooks of the fit,
    the search, each candidate on each split and the refit, as GridSearchCV's."""
    utils = pytest.importorskip("sklearn.callback.tests._utils")
    X, y = make_regression(n_samples=60, n_features=4, noise=5.0, random_state=0)
    callback = utils.RecordingCallback()
    search = BilevelSearchCV(Ridge(), {"alpha": 1.0}, cv=2, max_iter=3)
    search.set_callbacks(callback).fit(X, y)
    n_rows = len(search.cv_results_["params"])
    assert callback.count_hooks("on_fit_task_begin") == 3 + 2 * n_rows
    assert callback.count_hooks("on_fit_task_end") == 3 + 2 * n_rows


def _cv_loss(estimator, X, y, cv, scoring):
    return -cross_val_score(estimator, X, y, cv=cv, scoring=scoring).mean()


def _datasets(kind):
    if kind == "classification":
        X, y = make_classification(
            n_samples=150, n_features=10, n_informative=3, flip_y=0.1, random_state=0
        )
        yield "binary", X, y
        X, y = make_classification(
            n_samples=150,
            n_features=8,
            n_informative=4,
            n_classes=3,
            flip_y=0.05,
            random_state=1,
        )
        yield "three classes", X, y
        X, y = load_breast_cancer(return_X_y=True)
        yield "breast_cancer", (X - X.mean(0)) / X.std(0), y
    else:
        X, y = make_regression(n_samples=80, n_features=30, noise=40.0, random_state=0)
        yield "wide regression", X, y
        X, y = load_diabetes(return_X_y=True)
        yield "diabetes", X, y


@pytest.mark.parametrize(
    "kind, estimator, key, grid, scoring",
    [
        (
            "classification",
            LogisticRegression(solver="newton-cholesky", tol=1e-10, max_iter=1000),
            "C",
            np.logspace(-3, 2, 60),
            "neg_log_loss",
        ),
        (
            "regression",
            Ridge(),
            "alpha",
            np.logspace(-3, 4, 100),
            "neg_mean_squared_error",
        ),
    ],
)
def test_returned_setting_is_at_the_fine_grid_optimum(
    kind, estimator, key, grid, scoring
):
    """The returned setting's cross-validation loss, by scikit-learn's own fits
    at a tight tolerance, is within 0.1% of the optimum of a fine 1-D grid."""
    for name, X, y in _datasets(kind):
        cv = KFold(3, shuffle=True, random_state=0)
        losses = [
            _cv_loss(clone(estimator).set_params(**{key: v}), X, y, cv, scoring)
            for v in grid
        ]
        assert 0 < int(np.argmin(losses)) < len(grid) - 1, name  # inside the grid
        search = BilevelSearchCV(
            estimator, {key: Real(grid[0], grid[-1], init=1.0)}, cv=cv, scoring=scoring
        ).fit(X, y)
        found = _cv_loss(
            clone(estimator).set_params(**search.best_params_), X, y, cv, scoring
        )
        assert found <= min(losses) * (1 + 1e-3), (name, found, min(losses))


def test_discrete_values_of_a_per_feature_key_stay_plain():
    """A scalar value of a key learned PerFeature in another subspace is the
    estimator's own parameter, refitted as a plain estimator."""
    X, y = make_regression(n_samples=60, n_features=4, noise=5.0, random_state=0)
    space = [{"alpha": PerFeature(1e2, 1e3)}, {"alpha": [1e-3]}]
    search = BilevelSearchCV(Ridge(), space, cv=3, max_iter=2).fit(X, y)
    assert search.best_params_ == {"alpha": 1e-3}
    assert type(search.best_estimator_) is Ridge


def test_a_flat_start_neither_overflows_nor_moves():
    # On all-zero features every alpha gives the same model (the intercept
    # alone): the hypergradient is exactly zero at the start, which once
    # scaled the positive outer loss by a tiny number (an overflow
    # RuntimeWarning, an error under this suite's filter).
    y = 10 * np.random.RandomState(0).randn(40)
    search = BilevelSearchCV(Ridge(), {"alpha": Real(0.1, 10, init=1.0)}, cv=2).fit(
        np.zeros((40, 3)), y
    )
    assert search.best_params_["alpha"] == 1.0
    assert len(search.cv_results_["params"]) == 1
