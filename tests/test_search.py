"""BilevelSearchCV: exactness, parity with GridSearchCV, the scikit-learn contract."""

import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import make_classification, make_regression
from sklearn.kernel_ridge import KernelRidge
from sklearn.linear_model import (
    Lasso,
    LogisticRegression,
    Ridge,
    RidgeClassifier,
    SGDClassifier,
)
from sklearn.metrics import get_scorer, mean_squared_error
from sklearn.model_selection import (
    GridSearchCV,
    GroupKFold,
    KFold,
    PredefinedSplit,
    StratifiedKFold,
    cross_val_score,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import PolynomialFeatures, StandardScaler
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

from skbilevel import PerFeature, Real, SampleWeight
from skbilevel._search import BilevelSearchCV
from skbilevel._search._evaluate import LearnedSettings
from skbilevel.problems import fold_data, make_problem


@pytest.fixture(scope="module")
def classification():
    X, y = make_classification(
        n_samples=120, n_features=6, n_informative=4, random_state=0
    )
    return StandardScaler().fit_transform(X), y


@pytest.fixture(scope="module")
def regression():
    X, y = make_regression(
        n_samples=80, n_features=12, n_informative=6, noise=30.0, random_state=0
    )
    return X, y


def _assert_same_results(ours, theirs):
    assert set(ours) == set(theirs)
    for key in theirs:
        if "time" in key:
            continue
        if key == "params":
            assert ours[key] == theirs[key]
        elif isinstance(theirs[key], np.ma.MaskedArray):
            np.testing.assert_array_equal(ours[key].mask, theirs[key].mask)
            assert list(ours[key].compressed()) == list(theirs[key].compressed())
        else:
            np.testing.assert_array_equal(
                np.asarray(ours[key]), np.asarray(theirs[key])
            )


@pytest.mark.parametrize(
    "estimator, grid, cv, kwargs",
    [
        (SVC(), {"C": [0.1, 1.0, 10.0], "kernel": ["linear", "rbf"]}, 3, {}),
        (
            DecisionTreeRegressor(random_state=0),
            [{"max_depth": [1, 2, 3]}, {"min_samples_leaf": [5, 10]}],
            KFold(4, shuffle=True, random_state=0),
            {"return_train_score": True},
        ),
        (
            LogisticRegression(),
            {"C": [0.01, 1.0]},
            StratifiedKFold(3),
            {"scoring": {"acc": "accuracy", "ll": "neg_log_loss"}, "refit": "ll"},
        ),
    ],
)
def test_discrete_space_is_grid_search(classification, estimator, grid, cv, kwargs):
    X, y = classification
    if isinstance(estimator, DecisionTreeRegressor):
        y = X[:, 0] + 0.1 * y
    ours = BilevelSearchCV(estimator, grid, cv=cv, **kwargs).fit(X, y)
    theirs = GridSearchCV(estimator, grid, cv=cv, **kwargs).fit(X, y)
    _assert_same_results(ours.cv_results_, theirs.cv_results_)
    assert ours.best_index_ == theirs.best_index_
    assert ours.best_params_ == theirs.best_params_
    np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))
    assert ours.history_ == []


def test_discrete_space_with_groups_is_grid_search(classification):
    X, y = classification
    groups = np.arange(len(y)) % 6
    grid = {"C": [0.1, 1.0]}
    ours = BilevelSearchCV(SVC(), grid, cv=GroupKFold(3)).fit(X, y, groups=groups)
    theirs = GridSearchCV(SVC(), grid, cv=GroupKFold(3)).fit(X, y, groups=groups)
    _assert_same_results(ours.cv_results_, theirs.cv_results_)


def test_ridge_alpha_matches_fine_search_of_validation_error(regression):
    X, y = regression
    fold = np.where(np.arange(len(y)) < 50, -1, 0)
    train, test = fold == -1, fold == 0
    alphas = np.logspace(-2, 3, 2001)
    errors = [
        mean_squared_error(
            y[test], Ridge(alpha=a).fit(X[train], y[train]).predict(X[test])
        )
        for a in alphas
    ]
    best = alphas[np.argmin(errors)]
    assert alphas[5] < best < alphas[-5]
    search = BilevelSearchCV(
        Ridge(),
        {"alpha": Real(1e-2, 1e3)},
        cv=PredefinedSplit(fold),
        scoring="neg_mean_squared_error",
        tol=1e-10,
    ).fit(X, y)
    assert abs(search.best_params_["alpha"] / best - 1) < 0.01


def test_logistic_c_matches_fine_grid_search():
    X, y = make_classification(
        n_samples=120, n_features=20, n_informative=3, flip_y=0.1, random_state=0
    )
    X = StandardScaler().fit_transform(X)
    fold = np.where(np.arange(len(y)) < 80, -1, 0)
    estimator = LogisticRegression(tol=1e-6)
    kwargs = {"cv": PredefinedSplit(fold), "scoring": "neg_log_loss"}
    grid = GridSearchCV(estimator, {"C": np.logspace(-3, 1, 200)}, **kwargs)
    grid.fit(X, y)
    # the optimum is inside the grid, not on its border
    assert 0 < grid.best_index_ < 199
    search = BilevelSearchCV(
        estimator, {"C": Real(1e-3, 1e1)}, inner_tol=1e-9, **kwargs
    ).fit(X, y)
    assert search.best_score_ >= grid.best_score_ - 1e-4


def test_logistic_refit_starts_from_the_fold_solutions():
    # The refit is scikit-learn's fit of the best C, started from the mean of
    # that setting's fold solutions: fewer iterations to the same optimum, and
    # the estimator's parameters as the user set them.
    X, y = make_classification(
        n_samples=300, n_features=30, n_informative=5, n_classes=3, random_state=0
    )
    estimator = LogisticRegression(tol=1e-8, max_iter=1000)
    search = BilevelSearchCV(estimator, {"C": Real(1e-3, 1e2)}, cv=3).fit(X, y)
    best = search.best_params_["C"]
    cold = clone(estimator).set_params(C=best).fit(X, y)
    assert search.best_estimator_.get_params() == cold.get_params()
    assert search.best_estimator_.n_iter_[0] < cold.n_iter_[0]
    np.testing.assert_allclose(
        search.best_estimator_.coef_, cold.coef_, rtol=1e-4, atol=1e-5
    )


def test_per_feature_refit_predicts_as_the_torch_solution(regression):
    X, y = regression
    search = BilevelSearchCV(
        Ridge(), {"alpha": PerFeature(1e-2, 1e3)}, cv=3, max_iter=5
    ).fit(X, y)
    alphas = search.best_params_["alpha"]
    assert alphas.shape == (X.shape[1],)
    everything = [(np.arange(len(y)), np.arange(len(y)))]
    final, data = fold_data(Ridge(), X, y, everything, None, "cpu", "float64")
    problem = make_problem(
        final, data, {"alpha": "per_feature"}, {"tol": 1e-10, "max_iter": 10}
    )
    params = problem.solve(problem.init_params(), {"alpha": torch.as_tensor(alphas)})
    fitted = problem.fitted_attributes(params)[0]
    expected = X @ fitted["coef_"] + fitted["intercept_"]
    np.testing.assert_allclose(search.best_estimator_.predict(X), expected, rtol=1e-6)
    assert type(search.best_estimator_).__name__ == "Pipeline"


def test_continuous_results_have_grid_search_keys(classification):
    X, y = classification
    kwargs = {
        "cv": 3,
        "scoring": {"acc": "accuracy", "ll": "neg_log_loss"},
        "refit": "acc",
        "return_train_score": True,
    }
    space = {"C": Real(1e-2, 1e2), "fit_intercept": [True, False]}
    search = BilevelSearchCV(LogisticRegression(), space, max_iter=5, **kwargs).fit(
        X, y
    )
    grid = GridSearchCV(
        LogisticRegression(), {"C": [1.0], "fit_intercept": [True, False]}, **kwargs
    ).fit(X, y)
    assert set(search.cv_results_) == set(grid.cv_results_)
    # One row per setting the two runs evaluated (each outer step).
    rows = search.cv_results_["params"]
    assert len(rows) == len({entry["candidate"] for entry in search.history_})
    assert len(rows) == len(search.n_iter_) > 2
    for entry in search.history_:
        row = rows[entry["candidate"]]
        assert row["C"] == entry["params"]["C"]
    assert {row["fit_intercept"] for row in rows} == {True, False}
    assert search.best_params_["fit_intercept"] in (True, False)
    frame = pd.DataFrame(search.cv_results_)
    assert frame.shape[0] == len(rows)
    assert set(search.history_[0]) == {
        "candidate",
        "step",
        "params",
        "outer_loss",
        "hypergradient_norm",
        "time",
    }


def test_refit_callable_and_false(classification):
    X, y = classification
    space = {"C": Real(1e-2, 1e2)}
    search = BilevelSearchCV(
        LogisticRegression(), space, cv=3, max_iter=3, refit=lambda results: 0
    ).fit(X, y)
    assert search.best_index_ == 0
    search = BilevelSearchCV(LogisticRegression(), space, cv=3, max_iter=3, refit=False)
    search.fit(X, y)
    assert not hasattr(search, "best_estimator_")


def test_pipeline_routing_clone_pickle_and_nested_cv(classification):
    X, y = classification
    model = make_pipeline(StandardScaler(), LogisticRegression())
    space = {
        "logisticregression__C": Real(1e-2, 1e2),
        "standardscaler__with_mean": [True, False],
    }
    search = BilevelSearchCV(model, space, cv=3, max_iter=4)
    assert clone(search).get_params()["param_space"] == space
    search.fit(X, y)
    assert set(search.history_[0]["params"]) == {"logisticregression__C"}
    restored = pickle.loads(pickle.dumps(search))
    np.testing.assert_array_equal(restored.predict_proba(X), search.predict_proba(X))
    scores = cross_val_score(search, X, y, cv=2)
    assert scores.shape == (2,) and np.all(scores > 0.6)


def test_continuous_search_with_groups(classification):
    X, y = classification
    groups = np.arange(len(y)) % 4
    search = BilevelSearchCV(
        LogisticRegression(), {"C": 1.0}, cv=GroupKFold(4), max_iter=3
    ).fit(X, y, groups=groups)
    assert search.n_splits_ == 4


def test_n_jobs_and_restarts_are_reproducible(regression):
    X, y = regression
    space = {"alpha": Real(1e-2, 1e3), "fit_intercept": [True, False]}
    kwargs = {"cv": 2, "n_restarts": 2, "random_state": 0, "max_iter": 3}
    one = BilevelSearchCV(Ridge(), space, n_jobs=1, **kwargs).fit(X, y)
    two = BilevelSearchCV(Ridge(), space, n_jobs=2, **kwargs).fit(X, y)
    # Two discrete values x two restarts, each run adding its settings.
    assert len({entry["candidate"] for entry in one.history_}) == len(
        one.cv_results_["params"]
    )
    assert len(one.cv_results_["params"]) > 4
    np.testing.assert_allclose(
        one.cv_results_["mean_test_score"], two.cv_results_["mean_test_score"]
    )
    assert one.best_params_ == two.best_params_


def test_sample_weights_find_flipped_labels(noisy_split):
    # The setting of data hyper-cleaning: noisy training part, clean validation.
    X, y_noisy, train, flipped = noisy_split
    space = {"C": Real(1e-2, 1e2, init=1.0), "sample_weight": SampleWeight()}
    cv = PredefinedSplit(np.where(train, -1, 0))
    search = BilevelSearchCV(LogisticRegression(), space, cv=cv, max_iter=10)
    with pytest.warns(UserWarning, match="60 of 200 examples are in no training"):
        search.fit(X, y_noisy)
    weights = search.best_params_["sample_weight"]
    assert weights.shape == (200,)
    assert weights[train][flipped].mean() < weights[train][~flipped].mean() - 0.3
    np.testing.assert_array_equal(weights[~train], 1.0)
    assert type(search.best_estimator_) is LogisticRegression


def test_sample_weight_budget_is_respected(regression):
    X, y = regression
    space = {"sample_weight": SampleWeight(budget=0.5)}
    search = BilevelSearchCV(Ridge(), space, cv=2, max_iter=3).fit(X, y)
    assert search.best_params_["sample_weight"].sum() <= 0.5 * len(y) + 1e-6


@pytest.mark.parametrize(
    "method, params",
    [
        ("implicit_fixed_point", {"max_iter": 2000}),
        ("reverse", {}),
        ("forward", {}),
        ("truncated_reverse", {"K": 60}),
    ],
)
def test_other_hypergradient_methods(regression, method, params):
    X, y = regression
    X = StandardScaler().fit_transform(X)
    kwargs = {"cv": 2, "max_iter": 1}
    # A strong penalty makes gradient descent converge in few steps, where
    # every method approaches the implicit hypergradient.
    space = {"alpha": Real(1e-1, 1e3, init=100.0)}
    reference = BilevelSearchCV(Ridge(), space, **kwargs).fit(X, y)
    search = BilevelSearchCV(
        Ridge(),
        space,
        method=method,
        method_params=params,
        inner_steps=60,
        **kwargs,
    ).fit(X, y)
    expected = reference.history_[0]["hypergradient_norm"]
    assert np.isclose(search.history_[0]["hypergradient_norm"], expected, rtol=0.05)


@pytest.mark.parametrize(
    "estimator, space, error, match",
    [
        (
            DecisionTreeClassifier(),
            {"ccp_alpha": Real(0.1, 10)},
            TypeError,
            "supported for: Ridge",
        ),
        (Ridge(), {"alpha": "big"}, TypeError, "must be a list"),
        (Ridge(), {"alpha": (1.0, 2.0, 3.0)}, ValueError, "bounds"),
        (Ridge(), {"alpha": -1.0}, ValueError, "positive"),
        (Ridge(), {"sample_weight": [1.0]}, ValueError, "SampleWeight"),
        (Ridge(), {"alpha": PerFeature(0.1, 1), "fit_intercept": [True]}, None, None),
    ],
)
def test_bad_param_space(regression, estimator, space, error, match):
    X, y = regression
    search = BilevelSearchCV(estimator, space, cv=2, max_iter=1)
    if error is None:
        search.fit(X, y)
        return
    with pytest.raises(error, match=match):
        search.fit(X, y)


def test_unsupported_fit_params_are_refused(regression):
    X, y = regression
    search = BilevelSearchCV(Ridge(), {"alpha": 1.0}, cv=2)
    with pytest.raises(
        ValueError, match="only the parameters groups and sample_weight"
    ):
        search.fit(X, y, check_input=False)


def test_kernel_ridge_learns_alpha_and_gamma(regression):
    from sklearn.kernel_ridge import KernelRidge

    X, y = regression
    X = StandardScaler().fit_transform(X)
    space = {"alpha": Real(1e-3, 1e2, init=1.0), "gamma": Real(1e-3, 1.0, init=0.1)}
    search = BilevelSearchCV(
        KernelRidge(kernel="rbf"), space, cv=3, max_iter=8, verbose=2
    ).fit(X, y)
    losses = [entry["outer_loss"] for entry in search.history_]
    assert min(losses) < losses[0]
    assert search.best_estimator_.gamma == search.best_params_["gamma"]


def test_verbose_prints_outer_steps(regression, capsys):
    X, y = regression
    BilevelSearchCV(Ridge(), {"alpha": 1.0}, cv=2, max_iter=2, verbose=2).fit(X, y)
    assert "[BilevelSearchCV] step 0: alpha=1, outer loss" in capsys.readouterr().out


def test_per_feature_inside_a_pipeline(classification):
    X, y = classification
    model = make_pipeline(StandardScaler(), LogisticRegression())
    space = {"logisticregression__C": PerFeature(1e-2, 1e2, init=1.0)}
    search = BilevelSearchCV(model, space, cv=3, max_iter=3).fit(X, y)
    names = [name for name, _ in search.best_estimator_.steps]
    assert names == ["standardscaler", "feature_scale", "logisticregression"]
    assert search.best_estimator_[-1].C == 1.0
    assert search.predict(X).shape == y.shape


def test_discrete_and_continuous_subspaces(regression):
    X, y = regression
    space = [{"alpha": Real(1e-2, 1e3)}, {"alpha": [0.1, 10.0]}]
    search = BilevelSearchCV(Ridge(), space, cv=3, max_iter=5).fit(X, y)
    grid = GridSearchCV(Ridge(), {"alpha": [0.1, 10.0]}, cv=3).fit(X, y)
    # The continuous run's rows first, then the two discrete settings.
    np.testing.assert_allclose(
        search.cv_results_["mean_test_score"][-2:], grid.cv_results_["mean_test_score"]
    )
    assert list(search.n_iter_[-2:]) == [0, 0] and min(search.n_iter_[:-2]) >= 1


@pytest.mark.parametrize(
    "estimator, space, scoring, classifier",
    [
        (
            make_pipeline(StandardScaler(), LogisticRegression(tol=1e-12)),
            {"logisticregression__C": Real(1e-2, 1e2)},
            ["accuracy", "neg_log_loss"],
            True,
        ),
        (
            LogisticRegression(tol=1e-12, max_iter=10_000),
            {"C": PerFeature(1e-2, 1e2)},
            ["neg_log_loss"],
            True,
        ),
        (
            Ridge(),
            {"alpha": Real(1e-2, 1e2), "sample_weight": SampleWeight()},
            ["r2"],
            False,
        ),
        (
            RidgeClassifier(),
            {"alpha": Real(1e-2, 1e2)},
            ["accuracy", "balanced_accuracy"],
            True,
        ),
        (
            KernelRidge(kernel="rbf"),
            {"alpha": Real(1e-3, 1e1), "gamma": Real(1e-3, 1e1)},
            ["neg_mean_squared_error"],
            False,
        ),
    ],
)
def test_rows_scored_from_fold_solutions_match_scikit_learn_fits(
    estimator, space, scoring, classifier, monkeypatch
):
    """Every row is scored from the run's exact fold solutions, without
    refitting (RidgeClassifier's by its own direct refit: its classes live in
    a private attribute that only its fit sets); scikit-learn's own fits of
    the same settings give the same validation scores (the oracle)."""
    assembled = []
    original = LearnedSettings._from_solution

    def spy(self, *args):
        assembled.append(1)
        return original(self, *args)

    monkeypatch.setattr(LearnedSettings, "_from_solution", spy)
    if classifier:
        X, y = make_classification(
            n_samples=120, n_features=5, n_informative=3, n_classes=3, random_state=0
        )
        cv = StratifiedKFold(3, shuffle=True, random_state=0)
    else:
        X, y = make_regression(n_samples=80, n_features=4, noise=10.0, random_state=0)
        cv = KFold(3, shuffle=True, random_state=0)
    search = BilevelSearchCV(
        estimator,
        space,
        cv=cv,
        scoring=scoring,
        refit=False,
        max_iter=4,
        inner_tol=1e-10,
    ).fit(X, y)
    results = search.cv_results_
    assert len(results["params"]) >= 2
    refitted = isinstance(estimator, RidgeClassifier)
    assert len(assembled) == (0 if refitted else 3 * len(results["params"]))
    monkeypatch.undo()
    splits = list(cv.split(X, y))
    for row, params in enumerate(results["params"]):
        learned = {k: v for k, v in params.items() if isinstance(v, np.ndarray)}
        model = LearnedSettings(
            clone(estimator).set_params(
                **{k: v for k, v in params.items() if k not in learned}
            ),
            specs={k: space[k] for k in learned},
            learned=learned,
        )
        for k, (train, test) in enumerate(splits):
            fitted = clone(model).fit(X[train], y[train], sample_index=train)
            for name in scoring:
                expected = get_scorer(name)(fitted, X[test], y[test])
                got = results[f"split{k}_test_{name}"][row]
                assert got == pytest.approx(expected, rel=1e-6, abs=1e-8), (row, k)


@pytest.mark.parametrize("with_names", [False, True])
def test_assembled_pipeline_estimators_carry_what_fit_sets(with_names):
    """A row's fold estimators, assembled from the run's solutions behind a
    Pipeline's fitted earlier steps, carry what scikit-learn's own fit of the
    fold sets on the final step: the number of features the prefix gives
    (here a width-changing one), their names where it outputs a DataFrame,
    the classes; in every row of each fold, whichever discrete value the row
    has."""
    X, y = make_classification(
        n_samples=90, n_features=3, n_informative=3, n_redundant=0, random_state=0
    )
    X = pd.DataFrame(X, columns=["a", "b", "c"])
    model = make_pipeline(
        PolynomialFeatures(degree=2, include_bias=False),
        StandardScaler(),
        LogisticRegression(),
    )
    if with_names:
        model.set_output(transform="pandas")
    seen = []

    def scorer(estimator, X_test, y_test):
        final = estimator.estimator_[-1]
        names = getattr(final, "feature_names_in_", None)
        seen.append((final.n_features_in_, names, tuple(final.classes_)))
        return estimator.score(X_test, y_test)

    cv = KFold(3, shuffle=True, random_state=0)
    search = BilevelSearchCV(
        model,
        {
            "logisticregression__C": Real(1e-2, 1e2),
            "logisticregression__fit_intercept": [True, False],
        },
        cv=cv,
        scoring=scorer,
        max_iter=3,
    ).fit(X, y)
    rows = len(search.cv_results_["params"])
    assert rows >= 4 and len(seen) == 3 * rows
    train = next(cv.split(X, y))[0]
    final = clone(model).fit(X.iloc[train], y[train])[-1]
    expected_names = getattr(final, "feature_names_in_", None)
    assert (expected_names is not None) == with_names
    for n_features, names, classes in seen:
        assert n_features == final.n_features_in_ == 9
        assert classes == (0, 1)
        if with_names:
            np.testing.assert_array_equal(names, expected_names)
        else:
            assert names is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_search_matches_cpu():
    """The same runs on a GPU (float64): same settings, scores and refit."""
    X, y = make_classification(
        n_samples=150, n_features=6, n_informative=4, n_classes=3, random_state=0
    )
    space = {"C": Real(1e-2, 1e2), "sample_weight": SampleWeight()}
    kwargs = {"cv": 3, "max_iter": 4, "outer_optimizer": "adam"}
    cpu = BilevelSearchCV(LogisticRegression(), space, device="cpu", **kwargs)
    gpu = BilevelSearchCV(LogisticRegression(), space, device="cuda", **kwargs)
    cpu.fit(X, y)
    gpu.fit(X, y)
    np.testing.assert_allclose(
        gpu.best_params_["sample_weight"], cpu.best_params_["sample_weight"], atol=1e-6
    )
    assert gpu.best_params_["C"] == pytest.approx(cpu.best_params_["C"], rel=1e-6)
    np.testing.assert_allclose(
        gpu.cv_results_["mean_test_score"], cpu.cv_results_["mean_test_score"]
    )
    np.testing.assert_array_equal(gpu.predict(X), cpu.predict(X))


def test_sgd_settings_are_refitted_not_taken_from_the_minimizer():
    """SGD's fit only approximates the minimizer: its learned setting is one
    row, scored by refitting SGD itself."""
    X, y = make_classification(n_samples=120, n_features=5, random_state=0)
    search = BilevelSearchCV(
        SGDClassifier(loss="log_loss", random_state=0),
        {"alpha": Real(1e-4, 1e0)},
        cv=3,
        max_iter=3,
    ).fit(X, y)
    assert len(search.cv_results_["params"]) == 1
    assert search.n_iter_[0] == len(search.history_)


@pytest.mark.parametrize("single", [False, True])
@pytest.mark.parametrize("n_classes", [2, 3])
def test_tangent_hypergradient_matches_adjoint_and_predicts(
    n_classes, single, monkeypatch
):
    """Few hyperparameters use forward implicit differentiation (dw*/du by
    conjugate gradient); it equals the adjoint (implicit_cg) hypergradient,
    and its tangent predicts the solution at a nearby u to second order.
    Also with the single-precision products of large problems (forced here),
    whose solves are refined in double precision."""
    from skbilevel._search._objective import Objective, RunSettings
    from skbilevel.hypergrad import gradient_descent, implicit_cg
    from skbilevel.problems import _linear

    if single:
        monkeypatch.setattr(_linear, "FAST_SIZE", 0)

    X, y = make_classification(
        n_samples=90,
        n_features=4,
        n_informative=3,
        n_redundant=0,
        n_classes=n_classes,
        random_state=0,
    )
    splits = list(StratifiedKFold(3).split(X, y))
    final, data = fold_data(LogisticRegression(), X, y, splits, None, "cpu", "float64")
    problem = make_problem(final, data, {"C": "real"}, {"tol": 1e-12, "max_iter": 100})
    settings = RunSettings(
        method="implicit_forward",
        method_params={"cg_tol": 1e-12, "max_iter": 500},
        inner_steps=100,
        inner_tol=1e-12,
        max_iter=30,
        tol=1e-4,
        outer_optimizer="lbfgs",
        outer_learning_rate=0.1,
        device="cpu",
        dtype="float64",
    )
    objective = Objective(
        problem,
        {"C": Real(1e-2, 1e2)},
        settings,
        unrolled=False,
        keeps_solutions=True,
    )
    u = {"C": torch.tensor(0.3, dtype=torch.float64)}
    tangent = objective(u)
    adjoint = implicit_cg(
        tangent.params,
        u,
        0,
        gradient_descent(objective.inner_loss, 1.0),
        objective.outer_loss,
        cg_tol=1e-12,
        max_iter=500,
    )
    torch.testing.assert_close(
        tangent.grad["C"], adjoint.grad["C"], rtol=1e-7, atol=1e-12
    )
    # First-order prediction of the solution at u + h: error O(h^2).
    errors = []
    for h in (1e-2, 1e-3):
        moved = {"C": u["C"] + h}
        exact = problem.solve(tangent.params, objective.constrained(moved))
        predicted = objective._warm_start(moved)
        # (up to a common shift of a softmax's intercepts, which changes nothing)
        center = n_classes > 2
        shift = {
            k: v - v.mean(-1, keepdim=True) if k == "intercept" and center else v
            for k, v in exact.items()
        }
        guess = {
            k: v - v.mean(-1, keepdim=True) if k == "intercept" and center else v
            for k, v in predicted.items()
        }
        errors.append(max(float((shift[k] - guess[k]).abs().max()) for k in exact))
    assert errors[1] < errors[0] / 30


def test_small_data_refits_on_one_native_thread(regression, monkeypatch):
    """Small data: scikit-learn's refit runs with one BLAS and one OpenMP
    thread and the user's limit is back afterwards; large data keeps the
    user's limit."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from skbilevel.utils import _threads

    def blas_threads():
        apis = ("blas", "openmp")
        return {p["num_threads"] for p in threadpool_info() if p["user_api"] in apis}

    seen = []
    fit = LearnedSettings.fit

    def recording_fit(self, *args, **kwargs):
        seen.append(blas_threads())
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(LearnedSettings, "fit", recording_fit)
    X, y = regression
    with threadpool_limits(limits=2):
        BilevelSearchCV(Ridge(), {"alpha": 1.0}, cv=2, max_iter=2).fit(X, y)
        assert seen and all(threads == {1} for threads in seen)
        assert blas_threads() == {2}
        seen.clear()
        monkeypatch.setattr(_threads, "SMALL_DATA", 0)
        BilevelSearchCV(Ridge(), {"alpha": 1.0}, cv=2, max_iter=2).fit(X, y)
        assert seen and all(threads == {2} for threads in seen)


def test_small_data_runs_on_one_cpu_thread(monkeypatch):
    """Small data: the run takes one torch thread, and the user's setting is
    restored afterwards; large data keeps it."""
    from skbilevel._search import _run
    from skbilevel.utils import _threads

    seen = []
    adam = _run.adam

    def recording_adam(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return adam(*args, **kwargs)

    monkeypatch.setattr(_run, "adam", recording_adam)
    X, y = make_classification(
        n_samples=60, n_features=5, n_classes=3, n_informative=3, random_state=0
    )
    search = BilevelSearchCV(
        LogisticRegression(), {"C": 1.0}, cv=3, max_iter=2, outer_optimizer="adam"
    )
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        search.fit(X, y)
        assert seen == [1]
        assert torch.get_num_threads() == 2
        monkeypatch.setattr(_threads, "SMALL_DATA", 0)
        search.fit(X, y)
        assert seen == [1, 2]
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("method", ["reverse", "forward", "implicit_fixed_point"])
def test_support_differentiated_problems_refuse_step_methods(regression, method):
    # A Lasso's inner problem is defined only at its solution (on its
    # support): methods that take gradient steps on it are refused up front.
    X, y = regression
    search = BilevelSearchCV(Lasso(), {"alpha": Real(1e-3, 10)}, cv=2, method=method)
    with pytest.raises(ValueError, match="defined only at its solution"):
        search.fit(X, y)
