"""SVC, SVR, LinearSVC and LinearSVR inner problems against scikit-learn,
finite differences and fine grid searches."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import make_classification, make_regression
from sklearn.model_selection import GridSearchCV, KFold, PredefinedSplit
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, SVR, LinearSVC, LinearSVR

from skbilevel import BilevelSearchCV, Real
from skbilevel.hypergrad import gradient_descent, implicit_cg
from skbilevel.problems import fold_data, make_problem
from skbilevel.problems._linear_svm import _active as _linear_active
from skbilevel.problems._svm import _masks as _svm_masks

OPTIONS = {"tol": 1e-8, "max_iter": 100}
# libsvm and liblinear as tight as they go.
TIGHT = {"tol": 1e-10}


def _classification(n_classes=2, n=90, seed=0, n_features=4):
    X, y = make_classification(
        n_samples=n,
        n_features=n_features,
        n_informative=3,
        n_redundant=0,
        n_classes=n_classes,
        n_clusters_per_class=1,
        flip_y=0.1,
        random_state=seed,
    )
    return StandardScaler().fit_transform(X), y


def _regression(n=80, seed=0, n_features=4):
    """Linear targets for many features, a smooth nonlinear one for few."""
    X, y = make_regression(
        n_samples=n,
        n_features=n_features,
        n_informative=3,
        noise=20.0,
        random_state=seed,
    )
    X = StandardScaler().fit_transform(X)
    if n_features < 10:
        noise = np.random.RandomState(seed).randn(n)
        return X, np.sin(2 * X[:, 0]) + 0.5 * X[:, 1] ** 2 + 0.3 * noise
    return X, y / 50.0


def _splits(y, n_splits=3):
    return list(KFold(n_splits, shuffle=True, random_state=0).split(np.zeros(len(y))))


def _problem(estimator, X, y, learned, sample_weight=None):
    splits = _splits(y)
    final, data = fold_data(estimator, X, y, splits, sample_weight, "cpu", "float64")
    problem = make_problem(final, data, {name: "real" for name in learned}, OPTIONS)
    hparams = {
        name: torch.as_tensor(value, dtype=torch.float64)
        for name, value in learned.items()
    }
    return problem, hparams, splits


def _smooth_loss(estimator, X, y, weights):
    """The validation loss the hypergradient descends, from scikit-learn's own
    fitted estimator: the squared hinge of every binary decision value a
    sample enters (averaged), or the squared error of a regressor; weighted
    by the fit's sample weights."""
    return np.average(_sample_losses(estimator, X, y), weights=weights)


def _sample_losses(estimator, X, y):
    if not hasattr(estimator, "classes_"):
        return (y - estimator.predict(X)) ** 2
    classes = estimator.classes_
    if isinstance(estimator, LinearSVC) and len(classes) > 2:
        decision = estimator.decision_function(X)
        signs = np.where(y[:, None] == classes[None, :], 1.0, -1.0)
        return np.mean(np.clip(1 - signs * decision, 0, None) ** 2, axis=1)
    if len(classes) == 2:
        signs = np.where(y == classes[1], 1.0, -1.0)
        return np.clip(1 - signs * estimator.decision_function(X), 0, None) ** 2
    shape = estimator.decision_function_shape
    estimator.decision_function_shape = "ovo"
    decision = estimator.decision_function(X)
    estimator.decision_function_shape = shape
    losses = np.zeros(len(y))
    pairs = [(i, j) for i in range(len(classes)) for j in range(i + 1, len(classes))]
    for p, (i, j) in enumerate(pairs):
        inside = (y == classes[i]) | (y == classes[j])
        sign = np.where(y == classes[i], 1.0, -1.0)
        losses += inside * np.clip(1 - sign * decision[:, p], 0, None) ** 2
    return losses / (len(classes) - 1)


def _scikit_learn_loss(estimator, X, y, splits, learned, sample_weight):
    losses = []
    for train, test in splits:
        fitted = clone(estimator).set_params(**learned)
        fitted.fit(X[train], y[train], sample_weight=sample_weight[train])
        losses.append(_smooth_loss(fitted, X[test], y[test], sample_weight[test]))
    return np.mean(losses)


CASES = [
    (SVC(kernel="rbf"), 2, {"C": 2.0, "gamma": 0.3}),
    (SVC(kernel="rbf"), 3, {"C": 2.0, "gamma": 0.3}),
    (SVC(kernel="poly", degree=3, coef0=1.0), 3, {"C": 0.5, "gamma": 0.2}),
    (SVC(kernel="linear"), 3, {"C": 0.3}),
    (SVC(kernel="rbf", class_weight="balanced"), 3, {"C": 1.5, "gamma": 0.5}),
    (SVC(kernel="rbf", gamma="scale"), 2, {"C": 3.0}),
    (SVR(kernel="rbf", epsilon=0.2), None, {"C": 3.0, "gamma": 0.4}),
    (SVR(kernel="poly", degree=2), None, {"C": 1.0, "gamma": 0.3, "epsilon": 0.1}),
    (LinearSVC(), 2, {"C": 0.5}),
    (LinearSVC(intercept_scaling=3.0), 3, {"C": 0.2}),
    (LinearSVR(loss="squared_epsilon_insensitive"), None, {"C": 0.7, "epsilon": 0.15}),
]


def _data(n_classes):
    return _regression() if n_classes is None else _classification(n_classes)


@pytest.mark.parametrize("estimator, n_classes, learned", CASES)
def test_validation_loss_matches_scikit_learn_fit(estimator, n_classes, learned):
    """The inner solution's validation loss is the one computed from
    scikit-learn's own fit of each fold at the same hyperparameters (libsvm and
    liblinear to their tightest tolerance), so the decision functions agree."""
    X, y = _data(n_classes)
    estimator = clone(estimator).set_params(**TIGHT)
    weights = np.random.RandomState(0).uniform(0.5, 1.5, len(y))
    problem, hparams, splits = _problem(estimator, X, y, learned, weights)
    params = problem.solve(problem.init_params(), hparams)
    loss = float(problem.outer_loss(params, hparams))
    expected = _scikit_learn_loss(estimator, X, y, splits, learned, weights)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_dual_coefficients_match_libsvm():
    """A binary SVC's signed dual coefficients are libsvm's (signs as libsvm
    keeps them: f > 0 for the first class), to libsvm's precision: it caches
    the kernel in single precision, so its tightest solution is exact to about
    1e-6 (the polished one solves the optimality conditions in double)."""
    X, y = _classification(2)
    estimator = SVC(kernel="rbf", tol=1e-10)
    problem, hparams, splits = _problem(estimator, X, y, {"C": 2.0, "gamma": 0.3})
    params = problem.solve(problem.init_params(), hparams)
    for attributes, (train, _) in zip(problem.fitted_attributes(params), splits):
        fitted = clone(estimator).set_params(C=2.0, gamma=0.3).fit(X[train], y[train])
        expected = np.zeros(len(train))
        expected[fitted.support_] = -fitted.dual_coef_[0]
        np.testing.assert_allclose(attributes["pair_dual_coef"][0], expected, atol=1e-5)
        np.testing.assert_allclose(
            attributes["pair_intercept"][0], -fitted.intercept_[0], atol=1e-5
        )


def _pattern(problem, params, hparams):
    """The free / bounded / active sets of the solution, to detect a kink."""
    folds = problem.solve.args[0]
    if hasattr(folds, "base"):
        C = hparams.get("C", torch.as_tensor(folds.estimator.C))
        return torch.stack(_svm_masks(folds, params, C)[:2])
    return _linear_active(folds, params, hparams) > 0


def _implicit(problem, params, hparams):
    at = problem.curvature(params, hparams)
    return implicit_cg(
        params,
        hparams,
        0,
        gradient_descent(problem.inner_loss, 1.0),
        problem.outer_loss,
        hessian_vector=at.hessian_vector,
        preconditioner=at.precondition,
        cg_tol=1e-12,
    ).grad


@pytest.mark.parametrize("estimator, n_classes, learned", CASES)
def test_hypergradient_matches_finite_differences_away_from_kinks(
    estimator, n_classes, learned
):
    """Where the free set (the active set of a squared loss) is the same at
    both points of a central difference, the validation loss is smooth there
    and the implicit hypergradient is its derivative."""
    X, y = _data(n_classes)
    estimator = clone(estimator).set_params(**TIGHT)
    problem, hparams, _ = _problem(estimator, X, y, learned)
    params = problem.solve(problem.init_params(), hparams)
    grad = _implicit(problem, params, hparams)
    for name in learned:
        step = 1e-4 * float(hparams[name])
        values, patterns = [], []
        for sign in (1.0, -1.0):
            moved = {**hparams, name: hparams[name] + sign * step}
            solution = problem.solve(params, moved)
            values.append(float(problem.outer_loss(solution, moved)))
            patterns.append(_pattern(problem, solution, moved))
        assert torch.equal(patterns[0], patterns[1]), f"a kink in {name}"
        expected = (values[0] - values[1]) / (2 * step)
        np.testing.assert_allclose(float(grad[name]), expected, rtol=1e-4, atol=1e-9)


def _neg_smooth_loss(estimator, X, y):
    """scikit-learn scorer: minus the validation loss the search descends."""
    estimator = getattr(estimator, "estimator_", estimator)
    return -float(np.mean(_sample_losses(estimator, X, y)))


def _split(n, n_train):
    fold = np.zeros(n, dtype=int)
    fold[:n_train] = -1
    return PredefinedSplit(fold)


SEARCHES = [
    (SVC(), 3, 4, {"C": (0.1, 100.0), "gamma": (0.01, 10.0)}),
    (SVR(epsilon=0.1), None, 4, {"C": (0.1, 1000.0), "gamma": (1e-3, 10.0)}),
    (LinearSVC(), 3, 20, {"C": (1e-4, 10.0)}),
    (LinearSVR(loss="squared_epsilon_insensitive"), None, 20, {"C": (1e-4, 10.0)}),
]


@pytest.mark.parametrize("estimator, n_classes, n_features, ranges", SEARCHES)
def test_learned_values_match_fine_grid_search(
    estimator, n_classes, n_features, ranges
):
    """On one split, the learned C (and gamma) reach the smooth validation loss
    of a fine GridSearchCV over the same ranges, measured by scikit-learn's own
    fits, and best_estimator_ is the plain estimator at the learned values."""
    if n_classes is None:
        X, y = _regression(n=300, n_features=n_features)
    else:
        X, y = _classification(n_classes, n=300, n_features=n_features)
    estimator = clone(estimator).set_params(**TIGHT)
    kwargs = {"cv": _split(len(y), 200), "scoring": _neg_smooth_loss}
    size = 25 if len(ranges) == 2 else 80
    grid = {
        name: np.logspace(np.log10(low), np.log10(high), size)
        for name, (low, high) in ranges.items()
    }
    reference = GridSearchCV(estimator, grid, **kwargs).fit(X, y)
    for name, values in grid.items():
        assert values[0] < reference.best_params_[name] < values[-1]
    space = {name: Real(low, high) for name, (low, high) in ranges.items()}
    search = BilevelSearchCV(estimator, space, **kwargs).fit(X, y)
    assert search.best_score_ >= reference.best_score_ - 1e-3 * abs(
        reference.best_score_
    )
    assert type(search.best_estimator_) is type(estimator)
    for name in ranges:
        assert getattr(search.best_estimator_, name) == search.best_params_[name]


@pytest.mark.parametrize("init", [(0.2, 0.03), (1.0, 1.0)])
def test_run_settles_where_the_support_set_changes(init):
    """Every outer step changes the free set of some pair (the validation loss
    is only piecewise smooth): the run still stops on its own, its last steps
    close together, from either side of the optimum."""
    X, y = _classification(3, n=120, seed=1)
    max_iter = 30
    search = BilevelSearchCV(
        SVC(tol=1e-8),
        {"C": Real(0.1, 100.0, init=init[0]), "gamma": Real(0.01, 10.0, init=init[1])},
        cv=_split(len(y), 80),
        max_iter=max_iter,
    ).fit(X, y)
    losses = np.array([entry["outer_loss"] for entry in search.history_])
    assert len(losses) < max_iter
    # The last steps stay near the best loss: no jumping between free sets.
    assert np.all(losses[-3:] <= 1.02 * losses.min()), losses
    assert losses.min() < 0.29, losses


@pytest.mark.parametrize(
    "estimator, learned, match",
    [
        (SVC(kernel="sigmoid"), {"C": 1.0}, "kernel='sigmoid'"),
        (SVC(kernel="precomputed"), {"C": 1.0}, "kernel='precomputed'"),
        (SVC(kernel="linear"), {"C": 1.0, "gamma": 0.1}, "a linear kernel has none"),
        (SVR(max_iter=50), {"C": 1.0}, "max_iter=50"),
        (LinearSVC(loss="hinge"), {"C": 1.0}, "loss='hinge'"),
        (LinearSVC(penalty="l1"), {"C": 1.0}, "penalty='l1'"),
        (LinearSVC(multi_class="crammer_singer"), {"C": 1.0}, "crammer_singer"),
        (LinearSVC(class_weight="balanced"), {"C": 1.0}, "class_weight"),
        (LinearSVR(), {"C": 1.0}, "loss='epsilon_insensitive'"),
    ],
)
def test_unsupported_settings_are_refused(estimator, learned, match):
    X, y = _regression() if isinstance(estimator, SVR | LinearSVR) else _data(3)
    with pytest.raises(ValueError, match=match):
        _problem(estimator, X, y, learned)


def test_probability_svc_is_searched_and_refitted_with_probabilities():
    """probability=True does not change the dual solution (Platt scaling is
    fitted afterwards): the search learns C as without it, and its refit is
    the plain SVC with probabilities."""
    X, y = _classification(2, n=120)
    space = {"C": Real(0.1, 100.0)}
    plain = BilevelSearchCV(SVC(), space, cv=3)
    with warnings.catch_warnings():
        # scikit-learn 1.9 deprecates probability=True.
        warnings.simplefilter("ignore", FutureWarning)
        search = BilevelSearchCV(
            SVC(probability=True, random_state=0), space, cv=3, scoring="neg_log_loss"
        ).fit(X, y)
        plain.fit(X, y)
        assert search.predict_proba(X).shape == (len(y), 2)
    losses = [entry["outer_loss"] for entry in search.history_]
    expected = [entry["outer_loss"] for entry in plain.history_]
    np.testing.assert_allclose(losses, expected)


def test_pipeline_features_per_fold():
    """After a Pipeline's earlier steps, fitted per fold, each fold has its own
    kernel (and its own gamma="scale"): the loss is still scikit-learn's."""
    X, y = _classification(3)
    X = X * np.array([1.0, 10.0, 0.1, 3.0])
    pipeline = make_pipeline(StandardScaler(), SVC(gamma="scale", **TIGHT))
    splits = _splits(y)
    final, data = fold_data(pipeline, X, y, splits, None, "cpu", "float64")
    problem = make_problem(final, data, {"C": "real"}, OPTIONS)
    hparams = {"C": torch.as_tensor(2.0, dtype=torch.float64)}
    params = problem.solve(problem.init_params(), hparams)
    loss = float(problem.outer_loss(params, hparams))
    expected = []
    for train, test in splits:
        fitted = clone(pipeline).set_params(svc__C=2.0).fit(X[train], y[train])
        features = fitted[:-1].transform(X[test])
        expected.append(_smooth_loss(fitted[-1], features, y[test], None))
    np.testing.assert_allclose(loss, np.mean(expected), rtol=1e-6)


@pytest.mark.parametrize(
    "method", ["reverse", "forward", "truncated_reverse", "implicit_fixed_point"]
)
def test_methods_through_gradient_steps_are_refused(method):
    """The dual residual is only defined at libsvm's solution: differentiating
    steps of gradient descent from zero gets a clear error, not an answer."""
    X, y = _classification(3)
    search = BilevelSearchCV(SVC(), {"C": Real(0.1, 100.0)}, cv=3, method=method)
    with pytest.raises(ValueError, match="method='auto', 'implicit_forward'"):
        search.fit(X, y)
