"""The GLM and Huber inner problems against scikit-learn, finite differences and
fine grid searches."""

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import (
    GammaRegressor,
    HuberRegressor,
    PoissonRegressor,
    TweedieRegressor,
)
from sklearn.metrics import make_scorer, mean_tweedie_deviance
from sklearn.model_selection import GridSearchCV, KFold, PredefinedSplit
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from skbilevel import BilevelSearchCV, PerFeature, Real
from skbilevel.hypergrad import gradient_descent, implicit_cg
from skbilevel.problems import fold_data, lookup, make_problem
from skbilevel.problems._glm import half_deviance

OPTIONS = {"tol": 1e-11, "max_iter": 200}
# scikit-learn's own fits, as tight as their solvers go.
TIGHT = {"tol": 1e-12, "max_iter": 100_000}


def _data(kind, n=90, d=4, seed=0):
    rng = np.random.RandomState(seed)
    X = rng.randn(n, d)
    linear = X @ np.linspace(0.4, -0.3, d) + 0.3
    if kind == "poisson":
        y = rng.poisson(np.exp(linear)).astype(float)
    elif kind == "gamma":
        y = rng.gamma(2.0, np.exp(linear) / 2.0)
    else:
        y = 2.0 * linear + 0.5 * rng.standard_t(2, n)
        outliers = rng.choice(n, n // 10, replace=False)
        y[outliers] += 8.0 * np.sign(rng.randn(outliers.size))
    return X, y


def _problem(estimator, X, y, learned, sample_weight=None, options=OPTIONS):
    splits = list(KFold(3).split(X))
    final, data = fold_data(estimator, X, y, splits, sample_weight, "cpu", "float64")
    kinds = {name: "real" for name in learned}
    hparams = {
        name: torch.as_tensor(value, dtype=torch.float64)
        for name, value in learned.items()
    }
    return make_problem(final, data, kinds, options), hparams, splits


GLMS = [
    (PoissonRegressor(), "poisson"),
    (GammaRegressor(), "gamma"),
    (TweedieRegressor(power=1.5), "poisson"),
    (TweedieRegressor(power=1), "poisson"),
    (TweedieRegressor(power=2, link="log"), "gamma"),
    (TweedieRegressor(power=0), "normal"),
]


@pytest.mark.parametrize("estimator, kind", GLMS)
@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
def test_glm_coefficients_match_scikit_learn(estimator, kind, fit_intercept, weighted):
    X, y = _data(kind)
    weights = np.random.RandomState(1).uniform(0.2, 2.0, len(y)) if weighted else None
    estimator = clone(estimator).set_params(
        alpha=0.3, fit_intercept=fit_intercept, **TIGHT
    )
    problem, hparams, splits = _problem(estimator, X, y, {}, weights)
    params = problem.solve(problem.init_params(), hparams)
    for fold, (train, _) in zip(problem.fitted_attributes(params), splits):
        fit_params = {} if weights is None else {"sample_weight": weights[train]}
        fitted = clone(estimator).fit(X[train], y[train], **fit_params)
        np.testing.assert_allclose(fold["coef_"], fitted.coef_, rtol=0, atol=1e-6)
        np.testing.assert_allclose(
            fold["intercept_"], fitted.intercept_, rtol=0, atol=1e-6
        )


def test_glm_matches_newton_cholesky_and_a_pipeline():
    X, y = _data("poisson")
    estimator = PoissonRegressor(alpha=0.05, solver="newton-cholesky", **TIGHT)
    pipeline = make_pipeline(StandardScaler(), estimator)
    problem, hparams, splits = _problem(pipeline, X, y, {})
    params = problem.solve(problem.init_params(), hparams)
    for fold, (train, _) in zip(problem.fitted_attributes(params), splits):
        fitted = clone(pipeline).fit(X[train], y[train])[-1]
        np.testing.assert_allclose(fold["coef_"], fitted.coef_, rtol=0, atol=1e-6)


def _huber_reference(estimator, X, y, sample_weight):
    """scikit-learn's fit, warm-started until it stops moving: its L-BFGS-B
    stops on a relative decrease long before its gradient tolerance (and
    fails its line search, raising, once it cannot decrease any more).

    Without an intercept, scikit-learn's warm start passes one anyway (its
    fit optimizes an intercept it then drops): the cold fit is the reference.
    """
    fitted = clone(estimator).set_params(warm_start=estimator.fit_intercept)
    fitted.fit(X, y, sample_weight=sample_weight)
    if not estimator.fit_intercept:
        return fitted
    previous = None
    for _ in range(30):
        try:
            fitted.fit(X, y, sample_weight=sample_weight)
        except ValueError:
            break
        current = np.r_[fitted.coef_, fitted.intercept_, fitted.scale_]
        if previous is not None and np.abs(current - previous).max() < 1e-10:
            break
        previous = current
    return fitted


@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
def test_huber_coefficients_match_scikit_learn(fit_intercept, weighted):
    X, y = _data("huber")
    weights = np.random.RandomState(1).uniform(0.2, 2.0, len(y)) if weighted else None
    estimator = HuberRegressor(alpha=0.1, fit_intercept=fit_intercept, **TIGHT)
    problem, hparams, splits = _problem(estimator, X, y, {}, weights)
    params = problem.solve(problem.init_params(), hparams)
    for fold, (train, _) in zip(problem.fitted_attributes(params), splits):
        fitted = _huber_reference(
            estimator, X[train], y[train], None if weights is None else weights[train]
        )
        # The cold fit stops at about 1e-5 (8 to 10 L-BFGS-B iterations).
        atol = 1e-6 if fit_intercept else 3e-5
        for name in ("coef_", "intercept_", "scale_"):
            np.testing.assert_allclose(
                fold[name], getattr(fitted, name), rtol=0, atol=atol
            )


@pytest.mark.parametrize("power", [0, 1, 1.5, 2])
def test_validation_loss_is_half_scikit_learn_deviance(power):
    rng = np.random.RandomState(0)
    y = rng.gamma(2.0, 1.0, 50)
    y[:5] = 0.0 if power < 2 else y[:5]
    mu = rng.uniform(0.5, 3.0, 50)
    raw = mu if power == 0 else np.log(mu)
    ours = half_deviance(power, torch.as_tensor(y), torch.as_tensor(raw))
    expected = mean_tweedie_deviance(y, mu, power=power)
    np.testing.assert_allclose(2 * float(ours.mean()), expected, rtol=1e-12)


def _central_difference(problem, params, hparams, name, index=None, rel=1e-4):
    """Central difference of the validation loss in ``hparams[name]`` (entry
    ``index`` of an array), re-solving warm from ``params``."""
    value = hparams[name].clone()
    step = rel * (float(value) if index is None else float(value[index]))

    def validation(sign):
        moved = value.clone()
        if index is None:
            moved = moved + sign * step
        else:
            moved[index] += sign * step
        h = {**hparams, name: moved}
        return float(problem.outer_loss(problem.solve(params, h), h))

    return (validation(1.0) - validation(-1.0)) / (2 * step)


def _implicit(problem, params, hparams):
    at = problem.curvature(params, hparams)
    dynamics = gradient_descent(problem.inner_loss, 1.0)
    return implicit_cg(
        params,
        hparams,
        0,
        dynamics,
        problem.outer_loss,
        hessian_vector=at.hessian_vector,
        preconditioner=at.precondition,
        cg_tol=1e-12,
    ).grad


@pytest.mark.parametrize("estimator, kind", GLMS)
def test_glm_hypergradient_matches_finite_differences(estimator, kind):
    X, y = _data(kind)
    problem, hparams, _ = _problem(estimator, X, y, {"alpha": 0.2})
    params = problem.solve(problem.init_params(), hparams)
    grad = float(_implicit(problem, params, hparams)["alpha"])
    expected = _central_difference(problem, params, hparams, "alpha")
    np.testing.assert_allclose(grad, expected, rtol=1e-5)


@pytest.mark.parametrize("estimator", [PoissonRegressor(), HuberRegressor()])
def test_per_feature_and_sample_weight_hypergradients(estimator):
    """One penalty per feature, and sample weights, which also enter a GLM's
    penalty through the normalization by their sum."""
    X, y = _data("poisson" if isinstance(estimator, PoissonRegressor) else "huber")
    splits = list(KFold(3).split(X))
    final, data = fold_data(estimator, X, y, splits, None, "cpu", "float64")
    kinds = {"alpha": "per_feature", "sample_weight": "sample_weight"}
    problem = make_problem(final, data, kinds, OPTIONS)
    rng = np.random.RandomState(0)
    hparams = {
        "alpha": torch.as_tensor(rng.uniform(0.1, 1.0, X.shape[1])),
        "sample_weight": torch.as_tensor(rng.uniform(0.3, 1.0, len(y))),
    }
    params = problem.solve(problem.init_params(), hparams)
    grad = _implicit(problem, params, hparams)
    for name, index in [("alpha", 1), ("sample_weight", 3), ("sample_weight", 40)]:
        expected = _central_difference(problem, params, hparams, name, index)
        np.testing.assert_allclose(
            float(grad[name][index]), expected, rtol=1e-4, atol=1e-9
        )


@pytest.mark.parametrize("name, value", [("alpha", 0.3), ("epsilon", 1.6)])
def test_huber_hypergradient_matches_finite_differences_away_from_kinks(name, value):
    """Where no residual crosses ``epsilon * scale`` between the two points of
    the difference, the loss is smooth and the hypergradient exact."""
    X, y = _data("huber")
    learned = {"alpha": 0.3, "epsilon": 1.6}
    problem, hparams, _ = _problem(HuberRegressor(), X, y, learned)
    params = problem.solve(problem.init_params(), hparams)
    step = 1e-4 * value

    def inliers(h):
        solution = problem.solve(params, h)
        X_, y_ = torch.as_tensor(X), torch.as_tensor(y)
        residuals = y_ - solution["coef"] @ X_.T - solution["intercept"]
        return residuals.abs() <= h["epsilon"] * solution["scale"]

    around = [
        inliers({**hparams, name: hparams[name] + sign * step}) for sign in (-1, 1)
    ]
    assert torch.equal(around[0], around[1]), "a kink between the two points"
    grad = float(_implicit(problem, params, hparams)[name])
    expected = _central_difference(problem, params, hparams, name)
    np.testing.assert_allclose(grad, expected, rtol=1e-5)


def test_huber_warns_where_epsilon_one_degenerates_the_scale():
    """At epsilon = 1 the scale has no unique optimum (least absolute
    deviation): the solver says so rather than returning silently."""
    X, y = _data("huber")
    options = {"tol": 1e-11, "max_iter": 30}
    problem, hparams, _ = _problem(
        HuberRegressor(), X, y, {"epsilon": 1.0}, None, options
    )
    with pytest.warns(ConvergenceWarning, match="not solved"):
        problem.solve(problem.init_params(), hparams)


@pytest.mark.parametrize("estimator", [PoissonRegressor(), HuberRegressor()])
def test_per_feature_refit_is_the_inner_solution_rescaled(estimator):
    """The learned per-feature penalties are expressed as a rescaling step in
    front of a plain estimator whose own fit lands on the inner solution."""
    kind = "poisson" if isinstance(estimator, PoissonRegressor) else "huber"
    X, y = _data(kind)
    estimator = clone(estimator).set_params(**TIGHT)
    search = BilevelSearchCV(
        estimator, {"alpha": PerFeature(1e-2, 10.0)}, cv=3, max_iter=3
    ).fit(X, y)
    alphas = search.best_params_["alpha"]
    rescale, final = search.best_estimator_.steps[0][1], search.best_estimator_[-1]
    assert type(final) is type(estimator) and final.alpha == 1.0
    everything = [(np.arange(len(y)), np.arange(0))]
    _, data = fold_data(estimator, X, y, everything, None, "cpu", "float64")
    problem = make_problem(estimator, data, {"alpha": "per_feature"}, OPTIONS)
    hparams = {"alpha": torch.as_tensor(alphas)}
    ours = problem.fitted_attributes(problem.solve(problem.init_params(), hparams))
    coef = final.coef_ * rescale.kw_args["scale"]
    # HuberRegressor's fit stops at about 1e-5 (see _huber_reference).
    atol = 1e-6 if kind == "poisson" else 3e-5
    np.testing.assert_allclose(coef, ours[0]["coef_"], rtol=0, atol=atol)


def test_huber_epsilon_below_one_is_refused_in_scikit_learn_words():
    X, y = _data("huber")
    problem, hparams, _ = _problem(HuberRegressor(), X, y, {"epsilon": 0.8})
    with pytest.raises(ValueError, match=r"'epsilon' parameter .* range \[1.0, inf\)"):
        problem.solve(problem.init_params(), hparams)


def _split(n, n_train):
    return PredefinedSplit(np.where(np.arange(n) < n_train, -1, 0))


@pytest.mark.parametrize(
    "estimator, kind, scoring",
    [
        (PoissonRegressor(), "poisson", "neg_mean_poisson_deviance"),
        (GammaRegressor(), "gamma", "neg_mean_gamma_deviance"),
        (
            TweedieRegressor(power=1.5),
            "poisson",
            make_scorer(mean_tweedie_deviance, power=1.5, greater_is_better=False),
        ),
        (HuberRegressor(epsilon=1.5), "huber", "neg_mean_squared_error"),
    ],
)
def test_learned_alpha_matches_fine_grid_search(estimator, kind, scoring):
    X, y = _data(kind, n=120, d=20, seed=3)
    estimator = clone(estimator).set_params(tol=1e-8, max_iter=10_000)
    kwargs = {"cv": _split(len(y), 80), "scoring": scoring}
    alphas = np.logspace(-3, 2, 50)
    with threadpool_limits(1):  # small fits: threads only cost
        grid = GridSearchCV(estimator, {"alpha": alphas}, **kwargs).fit(X, y)
    # the optimum is inside the grid, not on its border
    assert 0 < grid.best_index_ < len(alphas) - 1
    search = BilevelSearchCV(
        estimator, {"alpha": Real(1e-3, 1e2)}, inner_tol=1e-10, **kwargs
    ).fit(X, y)
    assert search.best_score_ >= grid.best_score_ - 1e-4 * abs(grid.best_score_)
    assert type(search.best_estimator_) is type(estimator)
    assert search.best_estimator_.alpha == search.best_params_["alpha"]


@pytest.mark.parametrize("init", [1.2, 2.0, 2.6])
def test_learned_epsilon_matches_fine_grid_search_without_oscillating(init):
    """The validation loss is piecewise smooth in epsilon, with a kink
    wherever a training sample changes sides; here its minimum is such a kink
    (the hypergradient jumps from -0.02 to +0.05 at epsilon ~ 1.405), so no
    step size makes the hypergradient vanish. From either side, the run
    stops on its own long before max_iter, at the grid's optimum."""
    rng = np.random.RandomState(0)
    X = rng.randn(120, 5)
    y = X @ np.array([1.0, -2.0, 0.5, 0.0, 0.3]) + 0.5 * rng.standard_t(2, 120)
    # Gross outliers in the training part only.
    outliers = rng.choice(80, 12, replace=False)
    y[outliers] += 8 * np.sign(rng.randn(12)) + 2 * rng.randn(12)
    estimator = HuberRegressor(alpha=1e-3, tol=1e-10, max_iter=10_000)
    kwargs = {"cv": _split(len(y), 80), "scoring": "neg_mean_squared_error"}
    epsilons = np.linspace(1.05, 3.0, 40)
    with threadpool_limits(1):
        grid = GridSearchCV(estimator, {"epsilon": epsilons}, **kwargs).fit(X, y)
    assert 0 < grid.best_index_ < len(epsilons) - 1
    max_iter = 30
    search = BilevelSearchCV(
        estimator,
        {"epsilon": Real(1.05, 3.0, init=init, log=False)},
        inner_tol=1e-10,
        max_iter=max_iter,
        **kwargs,
    ).fit(X, y)
    assert len(search.history_) <= max_iter // 2
    assert search.best_score_ >= grid.best_score_ - 2e-4 * abs(grid.best_score_)
    best = grid.best_params_["epsilon"]
    assert abs(search.best_params_["epsilon"] - best) < 0.05


@pytest.mark.parametrize(
    "estimator, match",
    [
        (TweedieRegressor(power=3), "power=3"),
        (TweedieRegressor(power=0.5), "not convex"),
        (TweedieRegressor(power=0, link="log"), "link='log'"),
        (TweedieRegressor(power=1.5, link="identity"), "link='identity'"),
    ],
)
def test_unsupported_tweedie_settings_are_refused(estimator, match):
    X, y = _data("poisson")
    with pytest.raises(ValueError, match=match):
        _problem(estimator, X, y, {"alpha": 1.0})


@pytest.mark.parametrize(
    "estimator, loss",
    [
        (PoissonRegressor(), "HalfPoissonLoss"),
        (GammaRegressor(), "HalfGammaLoss"),
        (TweedieRegressor(power=1.5), "HalfTweedieLoss"),
    ],
)
def test_targets_outside_the_loss_domain_are_refused(estimator, loss):
    X, y = _data("poisson")
    y = y - 1.0  # negative counts; zeros for the Gamma loss too
    with pytest.raises(
        ValueError, match=f"out of the valid range of the loss '{loss}'"
    ):
        _problem(estimator, X, y, {"alpha": 1.0})
    # scikit-learn's own words
    with pytest.raises(ValueError, match="out of the valid range"):
        estimator.fit(X, y)


@pytest.mark.parametrize(
    "estimator, equivalent",
    [(MLPClassifier(), "TorchMLPClassifier"), (MLPRegressor(), "TorchMLPRegressor")],
)
def test_scikit_learn_mlps_name_their_torch_equivalent(estimator, equivalent):
    with pytest.raises(TypeError, match=f"{equivalent}.*learning_rate_init"):
        lookup(estimator)
    X, y = _data("poisson")
    search = BilevelSearchCV(estimator, {"alpha": Real(1e-4, 1.0)}, cv=3)
    with pytest.raises(TypeError, match=f"neural_network.{equivalent}"):
        search.fit(X, y > 1 if equivalent.endswith("Classifier") else y)
