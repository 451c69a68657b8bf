"""PerFeature's prior: its value, its hypergradient and what it buys.

The search descends the validation loss times ``1 + prior(u)``, where the
prior counts the per-feature penalties that depart from their common value.
"""

import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification, make_regression
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import KFold, StratifiedKFold

from skbilevel import BilevelSearchCV, PerFeature, Real
from skbilevel._search._objective import Objective, RunSettings
from skbilevel.problems import fold_data, make_problem


def _settings(method):
    return RunSettings(
        method=method,
        method_params={"cg_tol": 1e-13, "max_iter": 1000},
        inner_steps=100,
        inner_tol=1e-13,
        max_iter=30,
        tol=1e-4,
        outer_optimizer="lbfgs",
        outer_learning_rate=0.1,
        device="cpu",
        dtype="float64",
    )


def test_prior_counts_departures_from_the_common_value():
    space = PerFeature(1e-3, 1e3, shrinkage=2.0)
    u = torch.zeros(10, dtype=torch.float64)
    assert float(space.prior(u)) == 0.0
    # A common shift of every log-penalty is free: the scalar search's move.
    assert float(space.prior(u + 2.5)) == 0.0
    # One penalty moved far counts about 1 / d; the others stay the center.
    u[3] = 5.0
    t = 5.0 / space.width
    assert float(space.prior(u)) == pytest.approx(2 * t**2 / (1 + t**2) / 10)
    # Two clusters: the center is the larger one, and the count is that of
    # the smaller.
    u = torch.tensor([0.0] * 7 + [4.0] * 3, dtype=torch.float64)
    t = 4.0 / space.width
    assert float(space.prior(u)) == pytest.approx(0.6 * t**2 / (1 + t**2))
    assert float(PerFeature(1e-3, 1e3, shrinkage=1.0).prior(u)) == pytest.approx(
        0.3 * t**2 / (1 + t**2)
    )
    assert float(PerFeature(1e-3, 1e3, shrinkage=0).prior(u)) == 0.0


@pytest.mark.parametrize(
    "n_penalties, n_samples, expected",
    # Akaike's 2 d / n where the penalties are many for the examples, else
    # the floor of 1.5.
    [(10, 5, 4.0), (200, 200, 2.0), (200, 400, 1.5), (10, 309, 1.5), (300, 400, 1.5)],
)
def test_auto_strength_is_akaikes_cost_with_a_floor(n_penalties, n_samples, expected):
    space = PerFeature(1e-3, 1e3)
    assert space.shrinkage == "auto"
    assert space.strength(n_penalties, n_samples) == pytest.approx(expected)
    u = torch.zeros(n_penalties, dtype=torch.float64)
    u[0] = 5.0
    t = 5.0 / space.width
    fraction = t**2 / (1 + t**2) / n_penalties
    assert float(space.prior(u, n_samples=n_samples)) == pytest.approx(
        expected * fraction
    )
    # A given strength ignores the number of examples.
    fixed = PerFeature(1e-3, 1e3, shrinkage=0.7)
    assert fixed.strength(n_penalties, n_samples) == 0.7
    assert float(fixed.prior(u)) == pytest.approx(0.7 * fraction)


def test_auto_strength_needs_the_number_of_examples():
    u = torch.tensor([0.0, 0.0, 3.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="needs n_samples"):
        PerFeature(1e-3, 1e3).prior(u)


def test_search_sizes_the_prior_by_the_validated_examples():
    # Two folds whose validation parts overlap: examples 0-29 are validated,
    # 10-19 twice; the validation loss averages 30 distinct examples.
    seen = []

    class Recording(PerFeature):
        def prior(self, u, n_samples=None):
            seen.append(n_samples)
            return super().prior(u, n_samples=n_samples)

    X, y = make_regression(n_samples=60, n_features=8, noise=5.0, random_state=0)
    everything = np.arange(60)
    cv = [
        (np.setdiff1d(everything, np.arange(0, 20)), np.arange(0, 20)),
        (np.setdiff1d(everything, np.arange(10, 30)), np.arange(10, 30)),
    ]
    BilevelSearchCV(Ridge(), {"alpha": Recording(1e-3, 1e3)}, cv=cv, max_iter=3).fit(
        X, y
    )
    assert seen and set(seen) == {30}


@pytest.mark.parametrize("shrinkage", ["auto", 2.0])
def test_prior_gradient_matches_finite_differences(shrinkage):
    space = PerFeature(1e-3, 1e3, shrinkage=shrinkage)
    u = torch.linspace(-1.0, 1.5, 9, dtype=torch.float64) ** 3
    # With 9 penalties and 6 examples, "auto" is 2 * 9 / 6 = 3.
    assert torch.autograd.gradcheck(
        lambda v: space.prior(v, n_samples=6), (u.clone().requires_grad_(True),)
    )


@pytest.mark.parametrize("shrinkage", ["auto", 2.0, 0.0])
def test_objective_is_the_validation_loss_times_one_plus_the_prior(shrinkage):
    X, y = make_regression(n_samples=60, n_features=6, noise=5.0, random_state=0)
    splits = list(KFold(3).split(X))
    final, data = fold_data(Ridge(), X, y, splits, None, "cpu", "float64")
    options = {"tol": 1e-13, "max_iter": 100}
    problem = make_problem(final, data, {"alpha": "per_feature"}, options)
    space = PerFeature(1e-3, 1e3, shrinkage=shrinkage)
    objective = Objective(
        problem,
        {"alpha": space},
        _settings("implicit_cg"),
        unrolled=False,
        keeps_solutions=True,
        # Fewer than the 60 examples, so that "auto" is 2 * 6 / 4 = 3, not
        # its floor.
        n_validated=4,
    )
    u = {"alpha": torch.tensor([0.0, 0.1, -0.2, 2.0, 0.05, 3.0], dtype=torch.float64)}
    result = objective(u)
    params = problem.solve(problem.init_params(), {"alpha": torch.exp(u["alpha"])})
    validation = problem.outer_loss(params, {"alpha": torch.exp(u["alpha"])})
    expected = validation * (1 + space.prior(u["alpha"], n_samples=4))
    torch.testing.assert_close(result.outer_loss, expected, rtol=1e-10, atol=0)
    assert objective.history[-1]["outer_loss"] == pytest.approx(float(expected))


@pytest.mark.parametrize("estimator", ["ridge", "logistic"])
def test_hypergradient_with_the_prior_matches_finite_differences(estimator):
    if estimator == "ridge":
        X, y = make_regression(n_samples=60, n_features=6, noise=5.0, random_state=0)
        splits = list(KFold(3).split(X))
        final, key = Ridge(), "alpha"
    else:
        X, y = make_classification(n_samples=80, n_features=6, random_state=0)
        splits = list(StratifiedKFold(3).split(X, y))
        final, key = LogisticRegression(), "C"
    final, data = fold_data(final, X, y, splits, None, "cpu", "float64")
    options = {"tol": 1e-13, "max_iter": 100}
    problem = make_problem(final, data, {key: "per_feature"}, options)
    objective = Objective(
        problem,
        {key: PerFeature(1e-3, 1e3)},
        _settings("implicit_cg"),
        unrolled=False,
        keeps_solutions=True,
        n_validated=len(y),
    )
    u0 = torch.tensor([0.0, 0.1, -0.2, 2.0, 0.05, 3.0], dtype=torch.float64)
    # The prior is not flat here: some penalties depart, some do not.
    assert float(PerFeature(1e-3, 1e3).prior(u0, n_samples=len(y))) > 0.05
    grad = objective({key: u0}).grad[key]
    h = 1e-5
    for j in range(u0.numel()):
        step = torch.zeros_like(u0)
        step[j] = h
        up = float(objective({key: u0 + step}).outer_loss)
        down = float(objective({key: u0 - step}).outer_loss)
        assert float(grad[j]) == pytest.approx((up - down) / (2 * h), rel=1e-5)


def test_per_feature_beats_the_scalar_search_with_few_relevant_features():
    # 4 relevant features of 40, 100 examples to train, 300 held out.
    X, y, coef = make_regression(
        n_samples=400,
        n_features=40,
        n_informative=4,
        noise=50.0,
        coef=True,
        random_state=0,
    )
    X, y, X_test, y_test = X[:100], y[:100], X[100:], y[100:]
    scores, searches = {}, {}
    for name, spec in [
        ("scalar", Real(1e-3, 1e4)),
        ("prior", PerFeature(1e-3, 1e4)),
        ("free", PerFeature(1e-3, 1e4, shrinkage=0)),
    ]:
        searches[name] = BilevelSearchCV(Ridge(), {"alpha": spec}, cv=5).fit(X, y)
        scores[name] = searches[name].score(X_test, y_test)
    # Measured: 0.562 (prior; 0.564 at shrinkage=2), 0.507 (no prior), 0.504
    # (one penalty).
    assert scores["prior"] > scores["scalar"] + 0.04
    assert scores["prior"] > scores["free"] + 0.02
    # Most irrelevant features share one penalty (within 10% of their median,
    # about 410; a few depart upwards); the two strongest relevant ones
    # (coefficients 35 and 44) depart below a tenth of it.
    alphas = searches["prior"].best_params_["alpha"]
    common = np.median(alphas[coef == 0])
    assert np.mean(np.abs(np.log(alphas[coef == 0] / common)) < 0.1) > 0.8
    strongest = np.argsort(np.abs(coef))[-2:]
    assert alphas[strongest].max() < 0.1 * common


@pytest.mark.parametrize("shrinkage", [-1.0, np.nan, np.inf, True, "Auto", "2", None])
def test_shrinkage_is_validated(shrinkage):
    with pytest.raises(ValueError, match='shrinkage must be "auto" or a non-negative'):
        PerFeature(1e-3, 1e3, shrinkage=shrinkage)


def test_repr_and_equality_with_shrinkage():
    assert repr(PerFeature(1e-3, 1e3)) == "PerFeature(0.001, 1000.0)"
    assert repr(PerFeature(1e-3, 1e3, shrinkage="auto")) == "PerFeature(0.001, 1000.0)"
    assert repr(PerFeature(1e-3, 1e3, shrinkage=0)) == (
        "PerFeature(0.001, 1000.0, shrinkage=0)"
    )
    assert PerFeature(1e-3, 1e3) != PerFeature(1e-3, 1e3, shrinkage=2.0)
    assert PerFeature(1e-3, 1e3) != PerFeature(1e-3, 1e3, shrinkage=0.5)
    assert PerFeature(1e-3, 1e3, shrinkage=0.5) == PerFeature(1e-3, 1e3, shrinkage=0.5)


@pytest.mark.parametrize("estimator", ["ridge", "logistic"])
def test_penalty_balance_shrinks_the_median_feature_by_half(estimator):
    # Features of different scales, so that the median is one of them.
    rng = np.random.RandomState(0)
    X = rng.randn(90, 5) * np.array([0.5, 1.0, 2.0, 3.0, 4.0]) + 1.0
    splits = list(KFold(3).split(X))
    if estimator == "ridge":
        y = X @ rng.randn(5) + rng.randn(90)
        final, key = Ridge(), "alpha"
    else:
        y = (X[:, 0] + rng.randn(90) > 1.0).astype(int)
        final, key = LogisticRegression(), "C"
    final, data = fold_data(final, X, y, splits, None, "cpu", "float64")
    problem = make_problem(
        final, data, {key: "per_feature"}, {"tol": 1e-10, "max_iter": 100}
    )
    balance = problem.penalty_balance(key, problem.init_params())
    # Oracle: the centered sums of squares of the third feature (the
    # median), per fold; the squared loss's curvature is 2, the log-loss's
    # 1/4 at zero scores, against 2 alpha or 1 / C.
    squares = [((X[t, 2] - X[t, 2].mean()) ** 2).sum() for t, _ in splits]
    per_fold = squares if estimator == "ridge" else [4.0 / v for v in squares]
    expected = np.exp(np.mean(np.log(per_fold)))
    assert balance == pytest.approx(expected, rel=1e-10)
    if estimator == "ridge":
        # At that penalty, scikit-learn's Ridge on the median feature alone
        # halves its least-squares coefficient (one fold: its own balance).
        train = splits[0][0]
        column = X[train, 2:3]
        alone = Ridge(alpha=squares[0]).fit(column, y[train]).coef_[0]
        free = Ridge(alpha=0.0).fit(column, y[train]).coef_[0]
        assert alone == pytest.approx(free / 2, rel=1e-10)


def test_run_descends_the_common_penalty_first_from_the_balance():
    X, y = make_regression(n_samples=120, n_features=8, noise=20.0, random_state=0)
    search = BilevelSearchCV(Ridge(), {"alpha": PerFeature(1e-3, 1e4)}, cv=3)
    search.fit(X, y)
    history = search.history_
    final, data = fold_data(
        Ridge(), X, y, list(KFold(3).split(X)), None, "cpu", "float64"
    )
    problem = make_problem(
        final, data, {"alpha": "per_feature"}, {"tol": 1e-10, "max_iter": 100}
    )
    balance = problem.penalty_balance("alpha", problem.init_params())
    np.testing.assert_allclose(history[0]["params"]["alpha"], 10**0.5, rtol=1e-12)
    # The first steps (about a third of max_iter=30: L-BFGS-B ends its last
    # line search) keep every penalty equal, from the bounds' midpoint: the
    # scalar search, where the prior is zero; then the per-feature descent
    # starts from the balance.
    tied = [np.ptp(np.log(e["params"]["alpha"])) < 1e-12 for e in history]
    restart = max(
        i for i, e in enumerate(history) if np.allclose(e["params"]["alpha"], balance)
    )
    assert 2 <= restart < 15 and all(tied[: restart + 1]) and not tied[restart + 1]
    # Its best point is at least as good as the scalar search's.
    scalar = BilevelSearchCV(Ridge(), {"alpha": Real(1e-3, 1e4)}, cv=3).fit(X, y)
    best = min(e["outer_loss"] for e in history)
    assert best <= min(e["outer_loss"] for e in scalar.history_) * (1 + 1e-3)
