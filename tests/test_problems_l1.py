"""Lasso, ElasticNet and L1 / elastic-net LogisticRegression: the support's
hypergradient (sparse-ho), against scikit-learn's own solvers, finite
differences and fine grid searches."""

import warnings

import numpy as np
import pytest
import scipy.sparse
import sklearn
import torch
from sklearn.base import clone
from sklearn.datasets import load_diabetes, make_classification, make_regression
from sklearn.linear_model import ElasticNet, Lasso, LogisticRegression
from sklearn.model_selection import (
    GridSearchCV,
    KFold,
    PredefinedSplit,
    cross_val_score,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skbilevel import BilevelSearchCV, PerFeature, Real
from skbilevel.hypergrad import METHODS, gradient_descent
from skbilevel.problems import fold_data, make_problem
from skbilevel.problems._base import fold_weights
from skbilevel.problems._l1 import (
    SparseLinear,
    _support_columns,
    active_set_polish,
    fitted_attributes,
    kkt,
    l1_ratio_of,
)

# scikit-learn 1.8 deprecates ``penalty`` in favour of ``l1_ratio`` alone.
NEW_SPELLING = tuple(int(p) for p in sklearn.__version__.split(".")[:2]) >= (1, 8)
OPTIONS = {"tol": 1e-8, "max_iter": 100}


@pytest.fixture(autouse=True)
def one_thread():
    # Small problems: one torch thread is several times faster on 2 cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sparse_logistic(l1_ratio=1.0, **params):
    """An L1 (or elastic-net) LogisticRegression in this version's spelling."""
    params = {"solver": "saga", **params}
    if NEW_SPELLING:
        return LogisticRegression(l1_ratio=l1_ratio, **params)
    penalty = "l1" if l1_ratio == 1 else "elasticnet"
    ratio = None if l1_ratio == 1 else l1_ratio
    return LogisticRegression(penalty=penalty, l1_ratio=ratio, **params)


@pytest.fixture(scope="module")
def diabetes():
    X, y = load_diabetes(return_X_y=True)
    return X, y, list(KFold(5, shuffle=True, random_state=0).split(X))


@pytest.fixture(scope="module")
def binary():
    X, y = make_classification(
        n_samples=150, n_features=12, n_informative=4, flip_y=0.1, random_state=0
    )
    X = StandardScaler().fit_transform(X)
    return X, y, list(KFold(3, shuffle=True, random_state=0).split(X))


def _problem(estimator, X, y, splits, learned, sample_weight=None):
    final, data = fold_data(estimator, X, y, splits, sample_weight, "cpu", "float64")
    return make_problem(final, data, learned, OPTIONS)


def _hparams(values):
    return {k: torch.as_tensor(v, dtype=torch.float64) for k, v in values.items()}


def _solve(problem, values):
    hparams = _hparams(values)
    return problem.solve(problem.init_params(), hparams), hparams


@pytest.mark.parametrize(
    "estimator, values",
    [
        (Lasso(), {"alpha": 0.05}),
        (Lasso(fit_intercept=False), {"alpha": 0.3}),
        (ElasticNet(), {"alpha": 0.01, "l1_ratio": 0.4}),
    ],
)
def test_lasso_family_coefficients_match_scikit_learn(diabetes, estimator, values):
    X, y, splits = diabetes
    weights = np.random.RandomState(0).uniform(0.5, 2.0, len(y))
    problem = _problem(estimator, X, y, splits, dict.fromkeys(values, "real"), weights)
    params, _ = _solve(problem, values)
    for k, (train, _) in enumerate(splits):
        reference = (
            type(estimator)(**estimator.get_params())
            .set_params(**values, tol=1e-12, max_iter=100_000)
            .fit(X[train], y[train], sample_weight=weights[train])
        )
        fitted = problem.fitted_attributes(params)[k]
        np.testing.assert_allclose(fitted["coef_"], reference.coef_, atol=1e-6)
        assert abs(fitted["intercept_"] - reference.intercept_) < 1e-6
        assert (
            0 < np.count_nonzero(fitted["coef_"]) < X.shape[1] or "l1_ratio" in values
        )


def test_multi_target_lasso_matches_scikit_learn(diabetes):
    X, y, splits = diabetes
    Y = np.column_stack([y, y[::-1]])
    problem = _problem(Lasso(), X, Y, splits[:2], {"alpha": "real"})
    params, _ = _solve(problem, {"alpha": 0.1})
    reference = Lasso(alpha=0.1, tol=1e-12, max_iter=100_000).fit(
        X[splits[1][0]], Y[splits[1][0]]
    )
    fitted = problem.fitted_attributes(params)[1]
    np.testing.assert_allclose(fitted["coef_"], reference.coef_, atol=1e-6)
    np.testing.assert_allclose(fitted["intercept_"], reference.intercept_, atol=1e-6)


def test_wide_weighted_lasso_matches_scikit_learn():
    # More features than samples: coordinate descent on working sets.
    X, y = make_regression(60, 400, n_informative=10, noise=5.0, random_state=0)
    splits = list(KFold(3, shuffle=True, random_state=0).split(X))
    weights = np.random.RandomState(1).uniform(0.5, 2.0, len(y))
    problem = _problem(Lasso(), X, y, splits, {"alpha": "real"}, weights)
    params, _ = _solve(problem, {"alpha": 0.5})
    for k, (train, _) in enumerate(splits):
        reference = Lasso(alpha=0.5, tol=1e-12, max_iter=100_000).fit(
            X[train], y[train], sample_weight=weights[train]
        )
        fitted = problem.fitted_attributes(params)[k]
        assert 10 < np.count_nonzero(reference.coef_) < len(train)
        np.testing.assert_allclose(fitted["coef_"], reference.coef_, atol=1e-6)
        assert abs(fitted["intercept_"] - reference.intercept_) < 1e-6


def test_active_set_polish_corrects_a_wrong_support():
    # From scikit-learn's fits at a loose tolerance, whose signs are wrong on
    # a few features, the semismooth Newton steps reach its solutions at a
    # tight one, which pass the KKT check.
    X, y = make_regression(60, 400, n_informative=10, noise=5.0, random_state=0)
    splits = list(KFold(3, shuffle=True, random_state=0).split(X))
    _, data = fold_data(Lasso(), X, y, splits, None, "cpu", "float64")
    alpha = torch.full((len(splits), X.shape[1]), 5.0, dtype=torch.float64)
    model = SparseLinear(
        data=data,
        squared=True,
        targets=torch.as_tensor(y[:, None]),
        fit_intercept=True,
        weights=lambda hparams: fold_weights(data, hparams),
        penalties=lambda hparams: (alpha, torch.zeros_like(alpha)),
        fit=None,
        tol=1e-8,
        one_dimensional=True,
    )
    fits = {
        tol: [
            Lasso(alpha=5.0, tol=tol, max_iter=100_000).fit(X[t], y[t])
            for t, _ in splits
        ]
        for tol in (1e-3, 1e-12)
    }
    loose, references = fits[1e-3], fits[1e-12]
    assert any(
        (np.sign(a.coef_) != np.sign(b.coef_)).any() for a, b in zip(loose, references)
    )
    start = {
        "coef": torch.as_tensor(np.stack([fit.coef_ for fit in loose])[..., None]),
        "intercept": torch.as_tensor([[fit.intercept_] for fit in loose]),
    }
    params, signs = active_set_polish(model, start, {})
    assert bool(kkt(model, params, signs, {}).all())
    for k, reference in enumerate(references):
        fitted = fitted_attributes(model, params)[k]
        np.testing.assert_allclose(fitted["coef_"], reference.coef_, atol=1e-6)
        assert abs(fitted["intercept_"] - reference.intercept_) < 1e-6


def test_pipeline_lasso_matches_scikit_learn_and_finite_differences(diabetes):
    # A fitted prefix gives each fold its own features (a (K, n, d) design).
    X, y, splits = diabetes
    pipeline = make_pipeline(StandardScaler(), ElasticNet(l1_ratio=0.8))
    final, data = fold_data(pipeline, X, y, splits, None, "cpu", "float64")
    assert data.X.dim() == 3
    problem = make_problem(final, data, {"alpha": "real"}, OPTIONS)
    grad, params = _hypergradient(problem, {"alpha": 3.0}, "implicit_forward")
    for k, (train, _) in enumerate(splits):
        reference = clone(pipeline).set_params(
            elasticnet__alpha=3.0, elasticnet__tol=1e-12, elasticnet__max_iter=10**5
        )
        reference = reference.fit(X[train], y[train])[-1]
        fitted = problem.fitted_attributes(params)[k]
        assert 0 < np.count_nonzero(reference.coef_) < X.shape[1]
        np.testing.assert_allclose(fitted["coef_"], reference.coef_, atol=1e-6)
    expected = _central_difference(problem, {"alpha": 3.0}, "alpha")
    assert float(grad["alpha"]) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("layout", ["shared", "per_fold", "sparse"])
def test_support_columns_are_the_supports_features(layout):
    # The exact preconditioner's gathered columns, against a loop: column s
    # of fold k and output o is feature index[k, s, o], zero past the support.
    rng = np.random.RandomState(0)
    n_folds, n, d, c = 3, 7, 11, 2
    mask = torch.as_tensor(rng.uniform(size=(n_folds, d, c)) < 0.4).double()
    size = int(mask.sum(1).max())
    index = torch.argsort(mask, dim=1, descending=True, stable=True)[:, :size]
    valid = (torch.arange(size)[None, :, None] < mask.sum(1, keepdim=True)).double()
    dense = rng.normal(size=(n_folds, n, d)) * (rng.uniform(size=(1, n, d)) < 0.5)
    if layout == "shared":
        dense = dense[:1].repeat(n_folds, 0)
        X = torch.as_tensor(dense[0])
    elif layout == "per_fold":
        X = torch.as_tensor(dense)
    else:
        dense = dense[:1].repeat(n_folds, 0)
        splits = [(np.arange(n), np.arange(n))] * n_folds
        X = fold_data(
            Lasso(),
            scipy.sparse.csr_matrix(dense[0]),
            np.ones(n),
            splits,
            None,
            "cpu",
            "float64",
        )[1].X
    got = _support_columns(X, mask, index, valid).numpy()
    assert got.shape == (n_folds, c, n, size)
    for k, o, s in np.ndindex(n_folds, c, size):
        feature = int(index[k, s, o])
        expected = dense[k][:, feature] * float(valid[k, s, o])
        np.testing.assert_array_equal(got[k, o, :, s], expected)
    assert int(valid.sum()) == int(mask.sum()) and 0 < mask.sum() < mask.numel()


def test_sparse_logistic_coefficients_match_scikit_learn(binary):
    X, y, splits = binary
    # liblinear solves the same objective exactly when there is no intercept
    # (it would penalize one).
    estimator = sparse_logistic(fit_intercept=False)
    problem = _problem(estimator, X, y, splits, {"C": "real"})
    params, _ = _solve(problem, {"C": 0.2})
    for k, (train, _) in enumerate(splits):
        reference = LogisticRegression(
            **({} if NEW_SPELLING else {"penalty": "l1"}),
            **({"l1_ratio": 1.0} if NEW_SPELLING else {}),
            solver="liblinear",
            C=0.2,
            fit_intercept=False,
            tol=1e-12,
            max_iter=100_000,
        ).fit(X[train], y[train])
        fitted = problem.fitted_attributes(params)[k]
        np.testing.assert_allclose(fitted["coef_"], reference.coef_, atol=1e-6)
        assert 0 < np.count_nonzero(fitted["coef_"]) < X.shape[1]


def test_elastic_net_logistic_with_intercept_matches_saga(binary):
    X, y, splits = binary
    train = splits[0][0]
    problem = _problem(sparse_logistic(0.5), X, y, splits[:1], {"C": "real"})
    params, _ = _solve(problem, {"C": 0.1})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sklearn.exceptions.ConvergenceWarning)
        reference = sparse_logistic(0.5, C=0.1, tol=1e-12, max_iter=100_000)
        reference.fit(X[train], y[train])
    fitted = problem.fitted_attributes(params)[0]
    np.testing.assert_allclose(fitted["coef_"], reference.coef_, atol=1e-6)
    np.testing.assert_allclose(fitted["intercept_"], reference.intercept_, atol=1e-6)


def test_both_spellings_of_the_l1_penalty():
    # scikit-learn 1.6 to 1.7 name the penalty, 1.8+ give l1_ratio alone.
    assert l1_ratio_of(LogisticRegression(penalty="l1")) == 1.0
    assert l1_ratio_of(LogisticRegression(penalty="elasticnet", l1_ratio=0.3)) == 0.3
    assert l1_ratio_of(LogisticRegression(penalty="l2", l1_ratio=0.3)) == 0.0
    assert l1_ratio_of(Lasso()) == 1.0
    if NEW_SPELLING:
        assert l1_ratio_of(LogisticRegression(l1_ratio=0.7)) == 0.7
        assert l1_ratio_of(LogisticRegression()) == 0.0


def _hypergradient(problem, values, method):
    params, hparams = _solve(problem, values)
    hparams = {k: v.requires_grad_() for k, v in hparams.items()}
    options = {"cg_tol": 1e-12, "max_iter": 1000}
    at = problem.curvature(params, hparams)
    options.update(hessian_vector=at.hessian_vector, preconditioner=at.precondition)
    if method == "implicit_forward":
        options["batched"] = True
    dynamics = gradient_descent(problem.inner_loss, 1.0)
    result = METHODS[method](
        params, hparams, 0, dynamics, problem.outer_loss, **options
    )
    return result.grad, params


def _central_difference(problem, values, name, index=None, eps=1e-6):
    def loss(sign):
        moved = {k: np.array(v, dtype=float) for k, v in values.items()}
        step = eps * (moved[name] if index is None else moved[name][index])
        if index is None:
            moved[name] = moved[name] + sign * step
        else:
            moved[name][index] += sign * step
        params, hparams = _solve(problem, moved)
        return float(problem.outer_loss(params, hparams)), params["coef"] != 0

    (up, up_support), (down, down_support) = loss(1), loss(-1)
    # Away from kinks: the support is the same on both sides.
    assert torch.equal(up_support, down_support)
    step = eps * (values[name] if index is None else values[name][index])
    return (up - down) / (2 * step)


@pytest.mark.parametrize("method", ["implicit_cg", "implicit_forward"])
@pytest.mark.parametrize(
    "estimator, values",
    [
        (Lasso(), {"alpha": 0.05}),
        (ElasticNet(), {"alpha": 0.01, "l1_ratio": 0.7}),
    ],
)
def test_lasso_family_hypergradient_is_finite_differences(
    diabetes, estimator, values, method
):
    X, y, splits = diabetes
    problem = _problem(estimator, X, y, splits, dict.fromkeys(values, "real"))
    grad, params = _hypergradient(problem, values, method)
    assert 0 < int((params["coef"] != 0).sum()) < params["coef"].numel()
    for name in values:
        expected = _central_difference(problem, values, name)
        assert float(grad[name]) == pytest.approx(expected, rel=1e-5)


def test_sparse_logistic_hypergradient_is_finite_differences(binary):
    X, y, splits = binary
    values = {"C": 0.3, "l1_ratio": 0.6}
    estimator = sparse_logistic(0.6)
    problem = _problem(estimator, X, y, splits, dict.fromkeys(values, "real"))
    grad, params = _hypergradient(problem, values, "implicit_cg")
    assert 0 < int((params["coef"] != 0).sum()) < params["coef"].numel()
    for name in values:
        expected = _central_difference(problem, values, name)
        assert float(grad[name]) == pytest.approx(expected, rel=1e-5)


def test_weighted_lasso_hypergradient_is_finite_differences(diabetes):
    X, y, splits = diabetes
    alphas = np.linspace(0.02, 0.2, X.shape[1])
    problem = _problem(Lasso(), X, y, splits, {"alpha": "per_feature"})
    grad, params = _hypergradient(problem, {"alpha": alphas}, "implicit_cg")
    active = np.flatnonzero(params["coef"].flatten(1).abs().sum(0))
    for j in [active[0], active[-1]]:
        expected = _central_difference(problem, {"alpha": alphas}, "alpha", j)
        assert float(grad["alpha"][j]) == pytest.approx(expected, rel=1e-5)


def test_weighted_lasso_is_lasso_on_rescaled_features(diabetes):
    X, y, splits = diabetes
    alphas = np.linspace(0.02, 0.5, X.shape[1])
    problem = _problem(Lasso(), X, y, splits[:1], {"alpha": "per_feature"})
    params, _ = _solve(problem, {"alpha": alphas})
    train = splits[0][0]
    # s_j = 1 / alpha_j: a weight v_j on x_j / alpha_j costs |v_j| = alpha_j |w_j|.
    reference = Lasso(alpha=1.0, tol=1e-12, max_iter=100_000)
    reference.fit(X[train] / alphas, y[train])
    fitted = problem.fitted_attributes(params)[0]
    np.testing.assert_allclose(fitted["coef_"], reference.coef_ / alphas, atol=1e-6)


def test_weighted_lasso_search_refits_a_rescaled_lasso(diabetes):
    X, y, _ = diabetes
    search = BilevelSearchCV(
        Lasso(), {"alpha": PerFeature(1e-3, 1e1, init=0.1)}, cv=3, max_iter=4
    ).fit(X, y)
    alphas = search.best_params_["alpha"]
    step, final = search.best_estimator_.steps[0][1], search.best_estimator_[-1]
    np.testing.assert_allclose(step.kw_args["scale"], 1.0 / alphas)
    assert isinstance(final, Lasso) and final.alpha == 1.0
    # The refit is scikit-learn's own, at the estimator's own tolerance.
    reference = Lasso(alpha=1.0).fit(X / alphas, y)
    np.testing.assert_allclose(final.coef_, reference.coef_, rtol=1e-12)


@pytest.mark.parametrize("estimator", [Lasso(), ElasticNet(l1_ratio=0.7)])
def test_lasso_family_refit_starts_from_the_fold_solutions(estimator):
    # The refit is scikit-learn's own fit at the estimator's tolerance, warm
    # started from the mean of the best setting's fold solutions: as close
    # to the exact solution as its fit from zero, and warm_start off again.
    X, y = make_regression(100, 300, n_informative=10, noise=5.0, random_state=0)
    search = BilevelSearchCV(estimator, {"alpha": Real(1e-2, 10.0)}, cv=3)
    final = search.fit(X, y).best_estimator_
    alpha = search.best_params_["alpha"]
    cold = clone(estimator).set_params(alpha=alpha).fit(X, y)
    exact = clone(estimator).set_params(alpha=alpha, tol=1e-12, max_iter=10**6)
    exact = exact.fit(X, y)
    assert final.warm_start is False
    error = np.abs(final.coef_ - exact.coef_).max()
    assert error <= 2 * np.abs(cold.coef_ - exact.coef_).max()


def test_lasso_first_outer_step_is_newtons_on_the_support():
    # The validation loss is quadratic in alpha while the supports hold: the
    # first outer step lands on the minimizer of that quadratic, here fitted
    # to scikit-learn's own cross-validated MSE at alpha0 and +-1%.
    X, y = load_diabetes(return_X_y=True)
    cv = KFold(5)
    search = BilevelSearchCV(Lasso(), {"alpha": Real(2e-3, 2.0)}, cv=cv).fit(X, y)
    start, first = (entry["params"]["alpha"] for entry in search.history_[:2])

    def cv_mse(alpha):
        lasso = Lasso(alpha=alpha, tol=1e-14, max_iter=10**6)
        scoring = "neg_mean_squared_error"
        return -cross_val_score(lasso, X, y, cv=cv, scoring=scoring).mean()

    step = 0.01 * start
    below, at, above = (cv_mse(start + t * step) for t in (-1, 0, 1))
    slope = (above - below) / (2 * step)
    curvature = (above + below - 2 * at) / step**2
    assert first == pytest.approx(start - slope / curvature, rel=1e-6)


def test_first_outer_step_goes_to_the_bound_the_loss_falls_to():
    # ElasticNet alpha at l1_ratio=0.5 on diabetes: scikit-learn's CV MSE
    # falls all the way from the start to the lower bound (checked on a grid
    # of 12 alphas), and both of the first step's models put their minimizer
    # past that bound: the first step lands on it, and the run stops there.
    X, y = load_diabetes(return_X_y=True)
    cv = KFold(5)
    centered = X - X.mean(axis=0)
    high = np.abs(centered.T @ (y - y.mean())).max() / (len(y) * 0.5)
    low = 1e-3 * high
    search = BilevelSearchCV(
        ElasticNet(),
        {"alpha": Real(low, high)},
        cv=cv,
        scoring="neg_mean_squared_error",
    )
    with pytest.warns(
        sklearn.exceptions.ConvergenceWarning, match="lower bound of 'alpha'"
    ):
        search.fit(X, y)
    alphas = [entry["params"]["alpha"] for entry in search.history_]
    grid = np.geomspace(alphas[0], low, 12)
    mse = [
        -cross_val_score(
            ElasticNet(alpha=a, tol=1e-10),
            X,
            y,
            cv=cv,
            scoring="neg_mean_squared_error",
        ).mean()
        for a in grid
    ]
    assert np.all(np.diff(mse) < 0)
    assert len(alphas) == 2
    assert alphas[1] == pytest.approx(low, rel=1e-9)
    assert search.best_params_["alpha"] == pytest.approx(low, rel=1e-9)


def _grid_and_search(estimator, grid_values, space, X, y, fold, **params):
    kwargs = {"cv": PredefinedSplit(fold), "scoring": "neg_mean_squared_error"}
    reference = type(estimator)(**estimator.get_params()).set_params(tol=1e-10)
    grid = GridSearchCV(reference, grid_values, **kwargs).fit(X, y)
    search = BilevelSearchCV(estimator, space, **kwargs, **params).fit(X, y)
    return grid, search


def test_lasso_alpha_matches_fine_grid_search():
    X, y = make_regression(
        n_samples=80, n_features=40, n_informative=5, noise=10.0, random_state=0
    )
    fold = np.where(np.arange(len(y)) < 55, -1, 0)
    grid, search = _grid_and_search(
        Lasso(),
        {"alpha": np.logspace(-2, 2, 200)},
        {"alpha": Real(1e-2, 1e2)},
        X,
        y,
        fold,
        tol=1e-8,
    )
    assert 0 < grid.best_index_ < 199
    scale = abs(grid.best_score_)
    assert search.best_score_ >= grid.best_score_ - 1e-4 * scale
    # The outer run settles: its last steps stay at the best loss, without
    # oscillating between supports.
    losses = np.array([entry["outer_loss"] for entry in search.history_])
    assert np.all(np.abs(losses[-3:] - losses.min()) <= 1e-3 * losses.min())


def test_elastic_net_alpha_and_l1_ratio_match_fine_grid_search():
    # Groups of correlated features, all informative: the grouping effect of
    # the L2 part makes the best l1_ratio interior.
    rng = np.random.RandomState(2)
    factors = rng.randn(80, 4)
    X = np.repeat(factors, 6, axis=1) + 0.5 * rng.randn(80, 24)
    y = factors @ np.array([3.0, -2.0, 1.5, 0.0]) + rng.randn(80)
    fold = np.where(np.arange(len(y)) < 55, -1, 0)
    grid, search = _grid_and_search(
        ElasticNet(),
        {"alpha": np.logspace(-1.5, 0.5, 30), "l1_ratio": np.linspace(0.02, 1.0, 25)},
        {"alpha": Real(10**-1.5, 10**0.5), "l1_ratio": Real(0.02, 1.0, log=False)},
        X,
        y,
        fold,
        tol=1e-8,
    )
    assert 0 < grid.best_params_["l1_ratio"] < 1
    assert 0.02 < search.best_params_["l1_ratio"] < 1
    scale = abs(grid.best_score_)
    assert search.best_score_ >= grid.best_score_ - 1e-3 * scale


def test_support_changes_do_not_make_the_run_oscillate(diabetes):
    X, y, splits = diabetes
    search = BilevelSearchCV(
        Lasso(), {"alpha": Real(1e-4, 1e1, init=1.0)}, cv=splits, max_iter=30
    ).fit(X, y)
    losses = np.array([entry["outer_loss"] for entry in search.history_])
    alphas = np.array([entry["params"]["alpha"] for entry in search.history_])
    supports = [
        np.count_nonzero(est.coef_)
        for est in [Lasso(alpha=a).fit(X, y) for a in alphas]
    ]
    # The run crosses several supports from alpha=1 (2 features) without
    # oscillating: every visited loss is below the one before, the last is
    # the best and within 0.05% of a fine grid's best on the same splits.
    assert len(set(supports)) >= 3
    assert np.all(np.diff(losses) < 0)
    grid = GridSearchCV(
        Lasso(tol=1e-10, max_iter=100_000),
        {"alpha": np.logspace(-3, 0, 100)},
        cv=splits,
        scoring="neg_mean_squared_error",
    ).fit(X, y)
    assert losses[-1] <= -grid.best_score_ * (1 + 5e-4)


def test_l1_logistic_search_matches_fine_grid_search(binary):
    X, y, _ = binary
    fold = np.where(np.arange(len(y)) < 100, -1, 0)
    kwargs = {"cv": PredefinedSplit(fold), "scoring": "neg_log_loss"}
    grid = GridSearchCV(
        sparse_logistic(tol=1e-8, max_iter=10_000),
        {"C": np.logspace(-1.5, 1, 60)},
        **kwargs,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sklearn.exceptions.ConvergenceWarning)
        grid.fit(X, y)
    assert 0 < grid.best_index_ < 59
    search = BilevelSearchCV(
        sparse_logistic(), {"C": Real(10**-1.5, 10.0)}, **kwargs, tol=1e-8
    ).fit(X, y)
    assert search.best_score_ >= grid.best_score_ - 1e-3


@pytest.mark.parametrize(
    "estimator, space, message",
    [
        (Lasso(positive=True), {"alpha": Real(1e-3, 1.0)}, "positive=True"),
        (
            ElasticNet(l1_ratio=0.5),
            {"alpha": PerFeature(1e-3, 1.0)},
            "needs a pure L1 penalty",
        ),
        (
            sparse_logistic(solver="lbfgs"),
            {"C": Real(1e-3, 1.0)},
            "need solver='saga'",
        ),
    ],
)
def test_refusals(diabetes, binary, estimator, space, message):
    X, y, _ = binary if isinstance(estimator, LogisticRegression) else diabetes
    with pytest.raises(ValueError, match=message):
        BilevelSearchCV(estimator, space, cv=3).fit(X, y)


def test_multiclass_sparse_logistic_is_refused():
    X, y = make_classification(n_samples=90, n_classes=3, n_informative=4)
    with pytest.raises(ValueError, match="binary targets only"):
        BilevelSearchCV(sparse_logistic(), {"C": Real(1e-2, 1.0)}, cv=3).fit(X, y)


@pytest.mark.parametrize("estimator", [sparse_logistic(), Lasso()])
def test_sparse_input_gives_the_dense_solution(binary, estimator):
    X, y, splits = binary
    X = np.where(np.abs(X) > 1.0, X, 0.0)
    if isinstance(estimator, Lasso):
        y = X @ np.linspace(-1, 1, X.shape[1]) + 0.1 * np.sin(np.arange(len(y)))
    learned = {"C" if isinstance(estimator, LogisticRegression) else "alpha": "real"}
    values = dict.fromkeys(learned, 0.05)
    dense = _solve(_problem(estimator, X, y, splits, learned), values)[0]
    problem = _problem(estimator, scipy.sparse.csr_matrix(X), y, splits, learned)
    sparse = _solve(problem, values)[0]
    torch.testing.assert_close(sparse["coef"], dense["coef"], rtol=0, atol=1e-8)


def test_steps_of_gradient_descent_are_refused(binary):
    # The restricted inner loss is defined at the solution only: from the zero
    # start, gradient steps would keep every coefficient at zero.
    X, y, _ = binary
    search = BilevelSearchCV(
        sparse_logistic(), {"C": Real(1e-2, 1.0)}, cv=3, method="reverse"
    )
    with pytest.raises(ValueError, match="support of the inner solution"):
        search.fit(X, y)


def test_per_feature_c_of_l1_logistic_is_a_rescaling_by_c(binary):
    X, y, splits = binary
    Cs = np.linspace(0.05, 0.5, X.shape[1])
    estimator = sparse_logistic(fit_intercept=False)
    problem = _problem(estimator, X, y, splits[:1], {"C": "per_feature"})
    params, _ = _solve(problem, {"C": Cs})
    train = splits[0][0]
    # s_j = C_j: a weight v_j on C_j x_j costs |v_j| = |w_j| / C_j at C=1.
    reference = LogisticRegression(
        **({"l1_ratio": 1.0} if NEW_SPELLING else {"penalty": "l1"}),
        solver="liblinear",
        C=1.0,
        fit_intercept=False,
        tol=1e-12,
        max_iter=100_000,
    ).fit(X[train] * Cs, y[train])
    fitted = problem.fitted_attributes(params)[0]
    np.testing.assert_allclose(fitted["coef_"], reference.coef_ * Cs, atol=1e-6)
    search = BilevelSearchCV(
        estimator, {"C": PerFeature(1e-2, 1.0, init=0.2)}, cv=3, max_iter=2
    ).fit(X, y)
    step = search.best_estimator_.steps[0][1]
    np.testing.assert_allclose(step.kw_args["scale"], search.best_params_["C"])
