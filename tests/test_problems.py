"""The inner problems against scikit-learn's own solvers and finite differences."""

import importlib

import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification, make_regression
from sklearn.kernel_ridge import KernelRidge
from sklearn.linear_model import (
    LogisticRegression,
    Ridge,
    RidgeClassifier,
    SGDClassifier,
    SGDRegressor,
)
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.tree import DecisionTreeClassifier

from skbilevel.problems import feature_scale, fold_data, make_problem

OPTIONS = {"tol": 1e-10, "max_iter": 500}


def _regression(n_targets=1):
    X, y = make_regression(
        n_samples=60, n_features=5, n_targets=n_targets, noise=5.0, random_state=0
    )
    return X, y


def _classification(n_classes=2):
    X, y = make_classification(
        n_samples=90,
        n_features=5,
        n_informative=4,
        n_redundant=0,
        n_classes=n_classes,
        random_state=0,
    )
    return X, y


def _solve(estimator, X, y, hparams=None, sample_weight=None, classifier=False):
    cv = StratifiedKFold(3) if classifier else KFold(3)
    splits = list(cv.split(X, y))
    final, data = fold_data(estimator, X, y, splits, sample_weight, "cpu", "float64")
    hparams = {
        k: torch.as_tensor(v, dtype=torch.float64) for k, v in (hparams or {}).items()
    }
    kinds = {name: "real" for name in hparams}
    problem = make_problem(final, data, kinds, OPTIONS)
    params = problem.solve(problem.init_params(), hparams)
    return problem, params, hparams, splits


def _check_folds(estimator, X, y, attributes, splits, sample_weight=None, rtol=1e-5):
    for fold, (train, _) in zip(attributes, splits):
        fit_params = {}
        if sample_weight is not None:
            fit_params["sample_weight"] = sample_weight[train]
        fitted = estimator.fit(X[train], y[train], **fit_params)
        for name, value in fold.items():
            np.testing.assert_allclose(
                value, getattr(fitted, name), rtol=rtol, atol=rtol * 1e-2
            )


@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("n_targets", [1, 2])
def test_ridge_matches_scikit_learn(fit_intercept, n_targets):
    X, y = _regression(n_targets)
    weights = np.random.RandomState(0).uniform(0.5, 2.0, size=len(y))
    estimator = Ridge(alpha=3.0, fit_intercept=fit_intercept)
    problem, params, _, splits = _solve(estimator, X, y, sample_weight=weights)
    attributes = problem.fitted_attributes(params)
    _check_folds(estimator, X, y, attributes, splits, weights)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_ridge_classifier_matches_scikit_learn(n_classes):
    X, y = _classification(n_classes)
    estimator = RidgeClassifier(alpha=2.0, class_weight={0: 2.0, 1: 1.0, 2: 0.5})
    problem, params, _, splits = _solve(estimator, X, y, classifier=True)
    _check_folds(estimator, X, y, problem.fitted_attributes(params), splits)


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("class_weight", [None, "balanced"])
def test_logistic_regression_matches_scikit_learn(
    n_classes, fit_intercept, class_weight
):
    X, y = _classification(n_classes)
    estimator = LogisticRegression(
        C=0.7,
        fit_intercept=fit_intercept,
        class_weight=class_weight,
        tol=1e-12,
        max_iter=10_000,
    )
    weights = np.random.RandomState(1).uniform(0.5, 2.0, size=len(y))
    problem, params, _, splits = _solve(
        estimator, X, y, {"C": 0.7}, sample_weight=weights, classifier=True
    )
    _check_folds(estimator, X, y, problem.fitted_attributes(params), splits, weights)


@pytest.mark.parametrize("kernel", ["linear", "rbf", "laplacian"])
def test_kernel_ridge_matches_scikit_learn(kernel):
    X, y = _regression()
    X = X / X.std(axis=0)
    weights = np.random.RandomState(2).uniform(0.5, 2.0, size=len(y))
    estimator = KernelRidge(alpha=0.5, kernel=kernel, gamma=0.3)
    problem, params, _, splits = _solve(estimator, X, y, sample_weight=weights)
    _check_folds(estimator, X, y, problem.fitted_attributes(params), splits, weights)


def test_sgd_regressor_approaches_the_minimizer():
    X, y = _regression()
    X, y = X / X.std(axis=0), (y - y.mean()) / y.std()
    estimator = SGDRegressor(
        alpha=0.05,
        loss="huber",
        epsilon=0.5,
        max_iter=20_000,
        tol=None,
        learning_rate="invscaling",
        eta0=0.01,
        average=True,
        random_state=0,
    )
    problem, params, _, splits = _solve(estimator, X, y)
    _check_folds(
        estimator, X, y, problem.fitted_attributes(params)[:1], splits, rtol=0.05
    )


@pytest.mark.parametrize("loss", ["log_loss", "modified_huber", "squared_hinge"])
def test_sgd_classifier_approaches_the_minimizer(loss):
    X, y = _classification(2)
    X = X / X.std(axis=0)
    estimator = SGDClassifier(
        alpha=0.1,
        loss=loss,
        max_iter=20_000,
        tol=None,
        learning_rate="invscaling",
        eta0=0.05,
        average=True,
        random_state=0,
    )
    problem, params, _, splits = _solve(estimator, X, y, classifier=True)
    fold = problem.fitted_attributes(params)[0]
    train = splits[0][0]
    fitted = estimator.fit(X[train], y[train])
    np.testing.assert_allclose(fold["coef_"], fitted.coef_, rtol=0.05, atol=0.01)


@pytest.mark.parametrize(
    "estimator, name, value, classifier",
    [
        (LogisticRegression(), "C", 0.5, True),
        (Ridge(), "alpha", 2.0, False),
        (KernelRidge(kernel="rbf"), "gamma", 0.2, False),
        (SGDClassifier(loss="log_loss"), "alpha", 0.1, True),
    ],
)
def test_hypergradient_matches_finite_differences(estimator, name, value, classifier):
    from skbilevel.hypergrad import gradient_descent, implicit_cg

    X, y = _classification() if classifier else _regression()
    X = X / X.std(axis=0)
    problem, params, hparams, _ = _solve(
        estimator, X, y, {name: value}, classifier=classifier
    )

    def validation(v):
        h = {name: torch.as_tensor(v, dtype=torch.float64)}
        return float(problem.outer_loss(problem.solve(params, h), h))

    dynamics = gradient_descent(problem.inner_loss, 1.0)
    result = implicit_cg(params, hparams, 0, dynamics, problem.outer_loss)
    # Central differences: O(step^2) truncation, inner-solve error / step.
    step = 1e-3 * value
    expected = (validation(value + step) - validation(value - step)) / (2 * step)
    np.testing.assert_allclose(float(result.grad[name]), expected, rtol=1e-3)


def test_unsupported_estimator_names_the_supported_ones():
    X, y = _classification()
    splits = list(StratifiedKFold(3).split(X, y))
    tree = DecisionTreeClassifier()
    final, data = fold_data(tree, X, y, splits, None, "cpu", "float64")
    with pytest.raises(TypeError, match="LogisticRegression.*KernelRidge"):
        make_problem(final, data, {"ccp_alpha": "real"}, OPTIONS)


@pytest.mark.parametrize(
    "estimator, learned, match",
    [
        (LogisticRegression(solver="liblinear"), {"C": "real"}, "liblinear"),
        (SGDClassifier(), {"alpha": "real"}, "not smooth"),
        (Ridge(), {"C": "real"}, "'C' cannot be learned"),
        (KernelRidge(), {"gamma": "real"}, "linear kernel"),
        (KernelRidge(), {"sample_weight": "sample_weight"}, "SampleWeight"),
        (
            LogisticRegression(class_weight="balanced"),
            {"sample_weight": "sample_weight"},
            "balanced",
        ),
    ],
)
def test_unsupported_settings_are_refused(estimator, learned, match):
    X, y = _classification()
    splits = list(StratifiedKFold(3).split(X, y))
    final, data = fold_data(estimator, X, y, splits, None, "cpu", "float64")
    with pytest.raises(ValueError, match=match):
        make_problem(final, data, learned, OPTIONS)


def test_fold_missing_a_class_is_refused():
    X, y = _classification()
    order = np.argsort(y)
    X, y = X[order], y[order]
    splits = list(KFold(2).split(X, y))
    final, data = fold_data(LogisticRegression(), X, y, splits, None, "cpu", "float64")
    with pytest.raises(ValueError, match="every class"):
        make_problem(final, data, {"C": "real"}, OPTIONS)


def test_feature_scale_expresses_per_feature_penalties():
    X, y = _regression()
    alphas = np.array([0.1, 1.0, 10.0, 100.0, 3.0])
    scale = feature_scale("alpha", alphas)
    rescaled = Ridge(alpha=1.0).fit(X * scale, y)
    splits = [(np.arange(len(y)), np.arange(len(y)))]
    final, data = fold_data(Ridge(), X, y, splits, None, "cpu", "float64")
    problem = make_problem(final, data, {"alpha": "per_feature"}, OPTIONS)
    h = {"alpha": torch.as_tensor(alphas)}
    params = problem.solve(problem.init_params(), h)
    fold = problem.fitted_attributes(params)[0]
    np.testing.assert_allclose(fold["coef_"], rescaled.coef_ * scale, rtol=1e-8)
    assert np.allclose(feature_scale("C", [4.0]), [2.0])


@pytest.mark.parametrize(
    "estimator, classifier, n_classes",
    [
        (LogisticRegression(C=3.0), True, 2),
        (LogisticRegression(C=3.0), True, 3),
        (LogisticRegression(C=3.0, fit_intercept=False), True, 3),
        (SGDClassifier(loss="modified_huber", alpha=0.01), True, 3),
        (SGDRegressor(loss="huber", alpha=0.01), False, None),
        (Ridge(alpha=2.0), False, None),
        (RidgeClassifier(alpha=2.0), True, 3),
        (SGDRegressor(loss="squared_error", alpha=0.01), False, None),
    ],
)
@pytest.mark.parametrize("many_features", [False, True])
def test_curvature_is_the_exact_hessian(
    estimator, classifier, n_classes, many_features, monkeypatch
):
    """Newton's Hessian products equal double back-propagation; the
    preconditioner is symmetric positive definite. With many features (the
    Kronecker preconditioner; squared losses then take their products from
    the Gram matrices) too."""
    if many_features:
        linear = importlib.import_module("skbilevel.problems._linear")
        monkeypatch.setattr(linear, "BLOCK_FEATURES", 0)
    X, y = _classification(n_classes) if classifier else _regression()
    problem, params, hparams, _ = _solve(estimator, X, y, classifier=classifier)
    curvature = problem.curvature(params, hparams)
    generator = torch.Generator().manual_seed(0)

    def draw():
        return {
            k: torch.randn(v.shape, generator=generator, dtype=v.dtype)
            for k, v in params.items()
        }

    u, v = draw(), draw()
    leaves = {k: p.clone().requires_grad_() for k, p in params.items()}
    grads = torch.autograd.grad(
        problem.inner_loss(leaves, hparams), list(leaves.values()), create_graph=True
    )
    expected = torch.autograd.grad(
        grads, list(leaves.values()), grad_outputs=list(v.values())
    )
    got = curvature.hessian_vector(v)
    for name, value in zip(leaves, expected):
        np.testing.assert_allclose(got[name], value, rtol=1e-9, atol=1e-12)

    def dot(a, b):
        return float(sum((a[k] * b[k]).sum() for k in a))

    pu, pv = curvature.precondition(u), curvature.precondition(v)
    assert dot(u, pv) == pytest.approx(dot(pu, v), rel=1e-8)
    assert dot(v, pv) > 0


@pytest.mark.parametrize("precision", [None, torch.float32])
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("table", [True, False])
def test_weighted_grams_match_their_definition(shared, table, precision, monkeypatch):
    """sum_i w_kia x_i x_i^T, by the packed table of products or by one
    product per output, for a design shared by the folds or one per fold,
    in double or in single precision (returned in double)."""
    from skbilevel.problems import _curvature
    from skbilevel.problems._linear_loss import PreconditionerCache

    if not table:
        monkeypatch.setattr(_curvature, "PRODUCTS_SIZE", 0)
    generator = torch.Generator().manual_seed(3)
    shape = (7, 4) if shared else (3, 7, 4)
    design = torch.randn(shape, generator=generator, dtype=torch.float64)
    # (3 folds times 6 outputs: enough to use the table)
    weights = torch.rand(3, 7, 6, generator=generator, dtype=torch.float64)
    cache = PreconditionerCache()
    grams = _curvature._weighted_grams(design, weights, cache, precision)
    assert (cache.products is not None) == table
    per_fold = design.expand(3, 7, 4)
    expected = torch.einsum("kia,kij,kil->kajl", weights, per_fold, per_fold)
    assert grams.dtype == torch.float64
    tolerance = 1e-5 if precision == torch.float32 else 1e-12
    torch.testing.assert_close(grams, expected, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_single_precision_products_still_solve_exactly(n_classes, monkeypatch):
    """Large problems take Newton's loose linear solves with single-precision
    matrix products (forced here on a small one): the products agree with
    the exact ones to single precision, and the solution is the one found
    with double-precision products, to a tight tolerance."""
    _linear = importlib.import_module("skbilevel.problems._linear")

    monkeypatch.setattr(_linear, "FAST_SIZE", 0)
    X, y = _classification(n_classes)
    estimator = LogisticRegression(C=3.0, tol=1e-12, max_iter=10_000)
    problem, params, hparams, splits = _solve(estimator, X, y, classifier=True)
    curvature = problem.curvature(params, hparams)
    assert curvature.fast_hessian_vector is not None
    v = {k: torch.ones_like(p) for k, p in params.items()}
    fast = curvature.fast_hessian_vector(v)
    exact = curvature.hessian_vector(v)
    for name in v:
        np.testing.assert_allclose(fast[name], exact[name], rtol=1e-5, atol=1e-6)
        assert fast[name].dtype == torch.float64
    _check_folds(estimator, X, y, problem.fitted_attributes(params), splits)
    monkeypatch.setattr(_linear, "FAST_SIZE", np.inf)
    _, double, _, _ = _solve(estimator, X, y, classifier=True)
    # (fitted attributes: a softmax's intercepts up to their common shift)
    pairs = zip(problem.fitted_attributes(params), problem.fitted_attributes(double))
    for single_fold, double_fold in pairs:
        for name, value in single_fold.items():
            np.testing.assert_allclose(value, double_fold[name], rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize(
    "estimator, n_classes",
    [
        (LogisticRegression(C=3.0), 2),
        (SGDClassifier(loss="modified_huber", alpha=0.01), 3),
        (SGDClassifier(loss="log_loss", alpha=0.01, fit_intercept=False), 4),
    ],
)
def test_block_jacobi_inverts_a_block_diagonal_hessian(estimator, n_classes):
    """With independent outputs (binary, one-vs-rest) the Hessian is block
    diagonal over the outputs, and the block-Jacobi preconditioner is its
    exact inverse."""
    X, y = _classification(n_classes)
    problem, params, hparams, _ = _solve(estimator, X, y, classifier=True)
    curvature = problem.curvature(params, hparams, refresh=True)
    generator = torch.Generator().manual_seed(1)
    v = {
        k: torch.randn(p.shape, generator=generator, dtype=p.dtype)
        for k, p in params.items()
    }
    back = curvature.precondition(curvature.hessian_vector(v))
    for name in v:
        np.testing.assert_allclose(back[name], v[name], rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("blocks", [True, False])
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_softmax_preconditioner_inverts_the_shift_exactly(
    fit_intercept, blocks, monkeypatch
):
    """A softmax's Hessian maps a common shift of every class's coefficients
    (``u (x) 1``) to the penalty's shift alone; both preconditioners invert
    that part exactly, and the block-Jacobi one approximates the rest to
    within a small factor."""
    _linear = importlib.import_module("skbilevel.problems._linear")

    if not blocks:
        monkeypatch.setattr(_linear, "BLOCK_FEATURES", 0)
    X, y = _classification(4)
    estimator = LogisticRegression(C=0.3, fit_intercept=fit_intercept)
    problem, params, hparams, _ = _solve(estimator, X, y, classifier=True)
    curvature = problem.curvature(params, hparams, refresh=True)
    generator = torch.Generator().manual_seed(2)
    shift = torch.randn(3, X.shape[1], 1, generator=generator, dtype=torch.float64)
    v = {k: torch.zeros_like(p) for k, p in params.items()}
    v["coef"] = shift.expand_as(params["coef"]).clone()
    product = curvature.hessian_vector(v)
    np.testing.assert_allclose(
        product["coef"], product["coef"][..., :1].expand_as(product["coef"]), atol=1e-12
    )
    back = curvature.precondition(product)
    for name in v:
        np.testing.assert_allclose(back[name], v[name], rtol=1e-8, atol=1e-10)
    if not blocks:
        return
    # Off the shift, the preconditioned Hessian's Rayleigh quotients stay
    # within a small band.
    quotients = []
    for _ in range(20):
        w = {
            k: torch.randn(p.shape, generator=generator, dtype=p.dtype)
            for k, p in params.items()
        }
        w = {k: x - x.mean(-1, keepdim=True) for k, x in w.items()}
        hw = curvature.hessian_vector(w)
        pw = curvature.precondition(hw)
        quotients.append(
            float(sum((hw[k] * pw[k]).sum() for k in w))
            / float(sum((w[k] * hw[k]).sum() for k in w))
        )
    assert 0.1 < min(quotients) and max(quotients) < 10.0


def test_many_features_match_scikit_learn():
    """Past 128 features Newton's preconditioner is a Kronecker product whose
    left factor is computed once."""
    X, y = make_classification(
        n_samples=150, n_features=150, n_informative=10, random_state=0
    )
    estimator = LogisticRegression(C=0.5, tol=1e-10, max_iter=10_000)
    splits = list(StratifiedKFold(3).split(X, y))
    final, data = fold_data(estimator, X, y, splits, None, "cpu", "float64")
    options = {"tol": 1e-8, "max_iter": 2000}
    problem = make_problem(final, data, {"C": "real"}, options)
    hparams = {"C": torch.tensor(0.5, dtype=torch.float64)}
    params = problem.solve(problem.init_params(), hparams)
    _check_folds(estimator, X, y, problem.fitted_attributes(params), splits, rtol=1e-4)
    first = problem.curvature(params, hparams)
    second = problem.curvature(params, hparams)
    v = {k: torch.ones_like(p) for k, p in params.items()}
    for name in params:
        torch.testing.assert_close(
            first.precondition(v)[name], second.precondition(v)[name]
        )


def test_newton_solution_is_stationary_and_warm_starts():
    X, y = _classification(3)
    problem, params, hparams, _ = _solve(
        LogisticRegression(C=100.0), X, y, classifier=True
    )
    leaves = {k: p.clone().requires_grad_() for k, p in params.items()}
    grads = torch.autograd.grad(
        problem.inner_loss(leaves, hparams), list(leaves.values())
    )
    assert max(float(g.abs().max()) for g in grads) <= OPTIONS["tol"]
    # Warm-started at a nearby C, the solution is the same as from zeros.
    nearby = {"C": torch.tensor(120.0, dtype=torch.float64)}
    warm = problem.solve(params, nearby)
    cold = problem.solve(problem.init_params(), nearby)
    np.testing.assert_allclose(warm["coef"], cold["coef"], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("n_classes", [2, 4])
def test_closed_form_score_curvature_matches_autograd(n_classes):
    from skbilevel.problems._curvature import (
        _logistic_curvature,
        _score_curvature,
        _softmax_curvature,
    )

    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(
        3,
        7,
        1 if n_classes == 2 else n_classes,
        generator=generator,
        dtype=torch.float64,
    )
    weights = torch.rand(3, 7, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, n_classes, (7,), generator=generator)
    if n_classes == 2:
        signs = 2.0 * labels - 1.0

        def sample_loss(Z):
            return torch.nn.functional.softplus(-signs * Z[..., 0])

        closed = _logistic_curvature
    else:

        def sample_loss(Z):
            picked = Z.gather(-1, labels.expand(Z.shape[0], -1)[..., None])[..., 0]
            return torch.logsumexp(Z, dim=-1) - picked

        closed = _softmax_curvature
    U = torch.randn(scores.shape, generator=generator, dtype=torch.float64)
    expected = _score_curvature(sample_loss, scores, weights)
    got = closed(scores, weights)
    torch.testing.assert_close(got[0](U), expected[0](U))
    torch.testing.assert_close(got[1], expected[1])
    torch.testing.assert_close(got[2], expected[2])


@pytest.mark.parametrize("single", [False, True])
@pytest.mark.parametrize("n_classes, fit_intercept", [(2, True), (3, False)])
def test_refined_pcg_matches_a_dense_solve_of_the_hessian(
    n_classes, fit_intercept, single, monkeypatch
):
    """_refined_pcg (single-precision products first when the problem has
    them, then double) solves each fold's Hessian system, as a dense solve of
    that fold's Hessian (built column by column from its products) does.
    (A softmax with intercepts is singular along their common shift.)"""
    _linear = importlib.import_module("skbilevel.problems._linear")

    if single:
        monkeypatch.setattr(_linear, "FAST_SIZE", 0)
    X, y = _classification(n_classes)
    estimator = LogisticRegression(C=3.0, fit_intercept=fit_intercept)
    problem, params, hparams, _ = _solve(estimator, X, y, classifier=True)
    curvature = problem.curvature(params, hparams)
    assert (curvature.fast_hessian_vector is not None) == single
    names = list(params)
    sizes = [params[k][0].numel() for k in names]
    n_folds = params["coef"].shape[0]

    def unflatten(flat):  # (K, P) -> dict
        parts = torch.split(flat, sizes, dim=1)
        return {k: p.reshape(params[k].shape) for k, p in zip(names, parts)}

    def flatten(v):
        return torch.cat([v[k].flatten(1) for k in names], dim=1)

    eye = torch.eye(sum(sizes), dtype=torch.float64)
    columns = [
        flatten(curvature.hessian_vector(unflatten(e.expand(n_folds, -1)))) for e in eye
    ]
    dense = torch.stack(columns, dim=-1)  # (K, P, P)
    generator = torch.Generator().manual_seed(4)
    b = torch.randn(n_folds, sum(sizes), generator=generator, dtype=torch.float64)
    x, converged, n_products = _linear._refined_pcg(
        curvature, unflatten(b), 1e-12, 200, x0=unflatten(0.1 * b)
    )
    assert converged and n_products > 0
    expected = torch.linalg.solve(dense, b)
    torch.testing.assert_close(flatten(x), expected, rtol=1e-8, atol=1e-10)
