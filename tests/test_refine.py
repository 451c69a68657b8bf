"""The bisection of the score after the runs (``n_refine``)."""

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, make_classification
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skbilevel import BilevelSearchCV, Real
from skbilevel._search._evaluate import refinements


def test_refinements_bisect_toward_the_better_neighbour():
    params = [
        {"C": 1.0, "tol": 1e-4},
        {"C": 100.0, "tol": 1e-4},
        {"C": 10.0, "tol": 1e-4},
    ]
    log = Real(1e-2, 1e3)
    setting, rows = refinements(params, [0.5, 0.6, 0.7], "C", log)
    assert setting == {"C": pytest.approx(10**1.5), "tol": 1e-4}
    assert rows == (2, 1)
    setting, rows = refinements(params, [0.6, 0.5, 0.7], "C", log)
    assert setting["C"] == pytest.approx(10**0.5) and rows == (2, 0)
    linear = Real(0.1, 200, log=False)
    setting, _ = refinements(params, [0.5, 0.6, 0.7], "C", linear)
    assert setting["C"] == pytest.approx(55.0)
    # Equal neighbours: the wider gap (on the Real's scale).
    setting, _ = refinements(params, [0.6, 0.6, 0.7], "C", linear)
    assert setting["C"] == pytest.approx(55.0)
    # The best at an end of the scored range; NaN scores skipped.
    setting, rows = refinements(params, [0.5, 0.9, np.nan], "C", log)
    assert setting["C"] == pytest.approx(10.0) and rows == (1, 0)
    assert refinements(params, [np.nan] * 3, "C", log) is None


def test_refinements_stay_with_the_best_discrete_setting_and_stop_at_small_gaps():
    params = [
        {"C": 1.0, "penalty": "l2"},
        {"C": 4.0, "penalty": "l2"},
        {"C": 2.0, "penalty": None},
    ]
    # The best one's setting has no other scored value.
    assert refinements(params, [0.6, 0.7, 0.9], "C", Real(1e-2, 1e3)) is None
    # The evaluation's own key is not a parameter.
    rows = [
        {"C": 1.0, "candidate": 0},
        {"C": 100.0, "candidate": 1},
        {"C": 10.0, "candidate": 2},
    ]
    setting, _ = refinements(rows, [0.5, 0.6, 0.7], "C", Real(1e-2, 1e3))
    assert setting == {"C": pytest.approx(10**1.5)}
    close = [{"C": 1.0}, {"C": 1.0005}]
    assert refinements(close, [0.7, 0.6], "C", Real(1e-2, 1e3)) is None


def _breast_cancer_search(n_refine):
    X, y = load_breast_cancer(return_X_y=True)
    estimator = make_pipeline(StandardScaler(), LogisticRegression())
    space = {"logisticregression__C": Real(1e-3, 1e3)}
    cv = StratifiedKFold(5)
    search = BilevelSearchCV(estimator, space, cv=cv, n_refine=n_refine)
    return search.fit(X, y), X, y, cv


def test_refined_rows_are_scikit_learns_scores_of_the_bisection():
    search, X, y, cv = _breast_cancer_search(2)
    refined, _, _, _ = _breast_cancer_search(0)
    results = search.cv_results_
    n_visited = len(search.history_)
    assert len(refined.cv_results_["params"]) == n_visited
    assert len(results["params"]) == n_visited + 2
    # The visited rows are unchanged; each refined row is a midpoint on the
    # log scale between two scored values, scored as scikit-learn scores it.
    np.testing.assert_allclose(
        results["mean_test_score"][:n_visited],
        refined.cv_results_["mean_test_score"],
    )
    key = "logisticregression__C"
    for row in range(n_visited, n_visited + 2):
        value = results["params"][row][key]
        scored = [p[key] for p in results["params"][:row]]
        logs = np.log(scored)
        assert any(np.isclose(np.log(value), 0.5 * (a + b)) for a in logs for b in logs)
        pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=value))
        expected = cross_val_score(pipeline, X, y, cv=cv).mean()
        assert results["mean_test_score"][row] == pytest.approx(expected, abs=1e-12)
    assert search.best_score_ == np.max(results["mean_test_score"])
    assert search.best_score_ >= refined.best_score_


def test_refinement_moves_the_best_score_toward_the_accuracy_optimum():
    # The log-loss optimum and the accuracy optimum differ: the bisection
    # finds a setting that scores higher than every visited one.
    X, y = make_classification(
        n_samples=300, n_features=30, n_informative=5, flip_y=0.2, random_state=3
    )
    cv = StratifiedKFold(4)
    kwargs = {"cv": cv, "n_refine": 6}
    space = {"C": Real(1e-3, 1e2)}
    search = BilevelSearchCV(LogisticRegression(), space, **kwargs).fit(X, y)
    n_visited = len(search.history_)
    visited = search.cv_results_["mean_test_score"][:n_visited]
    assert search.best_index_ >= n_visited
    assert search.best_score_ > visited.max()
    best = search.best_params_["C"]
    expected = cross_val_score(LogisticRegression(C=best), X, y, cv=cv).mean()
    assert search.best_score_ == pytest.approx(expected, abs=1e-12)
    assert search.best_estimator_.C == best


@pytest.mark.parametrize(
    "estimator, space, params",
    [
        (LogisticRegression(), {"C": Real(1e-2, 1e2)}, {"scoring": "neg_log_loss"}),
        (Ridge(), {"alpha": Real(1e-2, 1e2)}, {}),
        (LogisticRegression(), {"C": Real(1e-2, 1e2), "tol": [1e-4]}, {"refit": False}),
    ],
)
def test_no_refinement_where_the_score_is_the_descended_loss(estimator, space, params):
    X, y = make_classification(n_samples=80, n_features=5, random_state=0)
    kwargs = {"cv": 3, "max_iter": 4, "n_refine": 2, **params}
    search = BilevelSearchCV(estimator, space, **kwargs).fit(X, y)
    assert len(search.cv_results_["params"]) == len(search.history_)


def test_refinement_is_a_task_of_the_callback_api():
    utils = pytest.importorskip("sklearn.callback.tests._utils")
    X, y = make_classification(n_samples=80, n_features=5, random_state=0)
    callback = utils.RecordingCallback()
    space = {"C": Real(1e-2, 1e2)}
    search = BilevelSearchCV(LogisticRegression(), space, cv=2, n_refine=2)
    search.set_callbacks(callback).fit(X, y)
    n_rows = len(search.cv_results_["params"])
    assert n_rows > len(search.history_)
    begins = [r for r in callback.record if r["name"] == "on_fit_task_begin"]
    rounds = [r for r in begins if r["context"].task_name == "round"]
    assert len(rounds) >= 2
    assert len(begins) == 3 + len(rounds) + 2 * n_rows
    assert callback.count_hooks("on_fit_task_end") == len(begins)


def test_the_default_scores_the_visited_settings_only():
    X, y = make_classification(n_samples=80, n_features=5, random_state=0)
    search = BilevelSearchCV(LogisticRegression(), {"C": Real(1e-2, 1e2)}, cv=3)
    search.fit(X, y)
    assert search.n_refine == 0
    assert len(search.cv_results_["params"]) == len(search.history_)


def test_refined_rows_in_a_multimetric_search_with_discrete_entries():
    X, y = make_classification(n_samples=120, n_features=6, random_state=1)
    search = BilevelSearchCV(
        LogisticRegression(),
        {"C": Real(1e-2, 1e2), "fit_intercept": [True, False]},
        cv=3,
        max_iter=5,
        scoring={"acc": "accuracy", "ll": "neg_log_loss"},
        refit="acc",
        n_refine=2,
    ).fit(X, y)
    rows = search.cv_results_["params"]
    n_visited = len(search.history_)
    assert len(rows) == n_visited + 2 == len(search.n_iter_)
    assert (search.n_iter_ > 0).all()
    assert "param_candidate" not in search.cv_results_
    assert all(set(row) == {"C", "fit_intercept"} for row in rows)
    # The bisection stays with the best row's discrete setting.
    best = rows[int(np.argmax(search.cv_results_["mean_test_acc"][:n_visited]))]
    assert all(row["fit_intercept"] == best["fit_intercept"] for row in rows[-2:])
    assert np.isfinite(search.cv_results_["mean_test_ll"]).all()


def test_refinement_with_parallel_runs_equals_the_sequential_search():
    X, y = make_classification(n_samples=120, n_features=6, random_state=2)
    space = {"C": Real(1e-2, 1e2), "fit_intercept": [True, False]}
    kwargs = {"cv": 3, "max_iter": 4, "n_refine": 2}
    one = BilevelSearchCV(LogisticRegression(), space, **kwargs).fit(X, y)
    two = BilevelSearchCV(LogisticRegression(), space, n_jobs=2, **kwargs).fit(X, y)
    assert len(two.cv_results_["params"]) == len(two.history_) + 2
    np.testing.assert_array_equal(
        one.cv_results_["mean_test_score"], two.cv_results_["mean_test_score"]
    )
    assert one.best_params_ == two.best_params_
    np.testing.assert_array_equal(one.n_iter_, two.n_iter_)
