"""BilevelSearchCV learning the training dynamics of the torch MLPs: scalars,
learning-rate schedules (PerStep), per-layer penalties (PerLayer), weights."""

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import make_classification
from sklearn.linear_model import Ridge
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skbilevel import (
    BilevelSearchCV,
    PerLayer,
    PerStep,
    Real,
    SampleWeight,
    TorchMLPClassifier,
)
from skbilevel.hypergrad import METHODS, unroll
from skbilevel.problems import fold_data, make_problem


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


# Vector hyperparameters: learning-rate schedules (PerStep), per-layer alpha.


def _fold_problem(estimator, X, y, kinds):
    splits = list(StratifiedKFold(2, shuffle=True, random_state=0).split(X, y))
    final, data = fold_data(estimator, X, y, splits, None, "cpu", "float64")
    return make_problem(final, data, kinds, {}), splits


@pytest.mark.parametrize(
    "specs",
    [
        {"learning_rate": PerStep(1e-4, 1.0, init=0.05)},
        {
            "learning_rate": PerStep(1e-4, 1.0, init=0.05, n_blocks=4),
            "alpha": PerLayer(1e-6, 1.0, init=1e-2),
            "momentum": Real(0.1, 0.99, init=0.5, log=False),
            "sample_weight": SampleWeight(init=0.8),
        },
    ],
    ids=["one-rate-per-step", "blocks-layers-momentum-weights"],
)
def test_vector_hypergradients_match_finite_differences(data, specs):
    """The search's variables u (log rates, log alphas): reverse mode vs FD."""
    X, y = data
    kinds = {
        "learning_rate": "per_step",
        "alpha": "per_layer",
        "momentum": "real",
        "sample_weight": "sample_weight",
    }
    problem, _ = _fold_problem(
        _mlp(0.05).set_params(max_iter=12), X, y, {k: kinds[k] for k in specs}
    )
    rng = np.random.RandomState(0)
    u = {}
    for name, spec in specs.items():
        if isinstance(spec, PerStep | PerLayer):
            shape = spec.shape(X.shape[1], len(y), problem)
        else:
            shape = {"momentum": (), "sample_weight": (len(y),)}[name]
        start = spec.initial(shape)
        u[name] = spec.project(start + 0.1 * torch.as_tensor(rng.normal(size=shape)))
    assert u["learning_rate"].shape == ((12,) if len(specs) == 1 else (4,))
    problem = problem.transformed(
        lambda u: {name: spec.transform(u[name]) for name, spec in specs.items()}
    )
    result = METHODS["reverse"](
        problem.init_params(), u, problem.T, problem.dynamics, problem.outer_loss
    )

    def outer(u):
        with torch.no_grad():
            state = unroll(problem.dynamics, problem.init_params(), u, problem.T)
            return float(problem.outer_loss(state[0], u))

    eps = 1e-6
    for name, value in u.items():
        direction = torch.as_tensor(rng.uniform(-1, 1, value.shape))
        plus = outer({**u, name: value + eps * direction})
        minus = outer({**u, name: value - eps * direction})
        exact = float((result.grad[name] * direction).sum())
        assert exact == pytest.approx((plus - minus) / (2 * eps), rel=1e-6), name


def test_search_refit_reproduces_the_differentiated_schedule(data):
    X, y = data
    cv = StratifiedKFold(2, shuffle=True, random_state=0)
    search = BilevelSearchCV(
        _mlp(0.05),
        {
            "learning_rate": PerStep(1e-4, 1.0, init=0.05, n_blocks=3),
            "alpha": PerLayer(1e-6, 1.0, init=1e-3),
            "sample_weight": SampleWeight(),
        },
        outer_optimizer="adam",
        max_iter=3,
        cv=cv,
    ).fit(X, y)
    # The last outer step's values: the network fitted with them on each
    # fold's training part has the validation loss the search differentiated.
    last = search.history_[-1]
    losses = []
    for train, test in cv.split(X, y):
        fitted = _mlp(last["params"]["learning_rate"]).set_params(
            alpha=last["params"]["alpha"]
        )
        weights = last["params"]["sample_weight"][train]
        fitted.fit(X[train], y[train], sample_weight=weights)
        losses.append(log_loss(y[test], fitted.predict_proba(X[test])))
    assert last["outer_loss"] == pytest.approx(np.mean(losses), rel=1e-10)
    # best_params_ holds the arrays; best_estimator_ takes them as its own.
    best = search.best_params_
    assert best["learning_rate"].shape == (3,) and best["alpha"].shape == (2,)
    assert search.cv_results_["param_learning_rate"][0].shape == (3,)
    estimator = search.best_estimator_
    assert isinstance(estimator, TorchMLPClassifier)
    np.testing.assert_array_equal(estimator.learning_rate, best["learning_rate"])
    np.testing.assert_array_equal(estimator.alpha, best["alpha"])
    manual = _mlp(best["learning_rate"]).set_params(alpha=best["alpha"])
    manual.fit(X, y, sample_weight=best["sample_weight"])
    np.testing.assert_array_equal(estimator.predict_proba(X), manual.predict_proba(X))


def test_search_learns_a_schedule_from_100x_too_small(data):
    X, y = data
    cv = StratifiedKFold(2, shuffle=True, random_state=0)
    start = 1e-3
    search = BilevelSearchCV(
        _mlp(start),
        {"learning_rate": PerStep(1e-5, 1.0, init=start, n_blocks=3)},
        outer_optimizer="adam",
        outer_learning_rate=0.5,
        max_iter=15,
        cv=cv,
    ).fit(X, y)
    schedule = search.best_params_["learning_rate"]
    assert schedule.shape == (3,) and np.all(schedule > 10 * start)
    assert _cv_log_loss(_mlp(schedule), X, y, cv) < _cv_log_loss(_mlp(start), X, y, cv)


@pytest.mark.parametrize(
    "estimator, space, message",
    [
        (
            Ridge(),
            {"alpha": PerLayer(1e-3, 1.0)},
            "'alpha' cannot be learned as a PerLayer hyperparameter of Ridge",
        ),
        (
            _mlp(0.1),
            {"learning_rate": PerLayer(1e-3, 1.0)},
            "'learning_rate' cannot be learned as PerLayer",
        ),
        (
            _mlp(0.1),
            {"momentum": PerStep(1e-3, 0.9)},
            r"'momentum' cannot be learned as PerStep .* momentum \(Real\)",
        ),
        (
            _mlp(0.1),
            {"learning_rate": PerStep(1e-3, 1.0, n_blocks=31)},
            "at most one value per step, but the estimator runs max_iter=30",
        ),
    ],
)
def test_vector_entries_refused_where_they_mean_nothing(
    data, estimator, space, message
):
    X, y = data
    with pytest.raises(ValueError, match=message):
        BilevelSearchCV(estimator, space, max_iter=1, cv=2).fit(X, y)


def test_schedule_in_a_pipeline_by_every_unrolled_method(data):
    X, y = data
    pipe = make_pipeline(StandardScaler(), _mlp(0.01).set_params(max_iter=12))
    space = {"torchmlpclassifier__learning_rate": PerStep(1e-4, 1.0, n_blocks=4)}
    learned = {}
    for method, options in [
        ("reverse", None),
        ("forward", None),
        ("truncated_reverse", {"K": 3}),
    ]:
        search = BilevelSearchCV(
            pipe, space, method=method, method_params=options, max_iter=2, cv=2
        ).fit(X, y)
        learned[method] = search.best_params_["torchmlpclassifier__learning_rate"]
    np.testing.assert_allclose(learned["forward"], learned["reverse"], rtol=1e-8)
    # Truncated to the last 3 of 12 steps: only the last block's rate moves.
    start = PerStep(1e-4, 1.0).transform(PerStep(1e-4, 1.0).initial()).item()
    np.testing.assert_allclose(learned["truncated_reverse"][:3], start, rtol=1e-12)
    assert learned["truncated_reverse"][3] != pytest.approx(start)


def test_default_dtype_follows_the_mlp_so_the_refit_reproduces(data, monkeypatch):
    """dtype="auto": a float32 MLP is differentiated in float32 (scikit-learn
    estimators in float64), and the network fitted with the learned value has
    the loss the search recorded."""
    import skbilevel._search._run as bilevel

    seen = []
    original = bilevel.fold_data

    def spy(*args, **kwargs):
        seen.append(args[6])
        return original(*args, **kwargs)

    monkeypatch.setattr(bilevel, "fold_data", spy)
    X, y = data
    cv = StratifiedKFold(2, shuffle=True, random_state=0)
    mlp = _mlp(0.05).set_params(dtype="float32")
    search = BilevelSearchCV(
        mlp, {"learning_rate": Real(1e-3, 1.0, init=0.05)}, max_iter=2, cv=cv
    ).fit(X, y)
    BilevelSearchCV(Ridge(), {"alpha": Real(1e-2, 1e2)}, max_iter=1, cv=2).fit(
        X, y.astype(float)
    )
    assert seen == ["float32", "float64"]
    last = search.history_[-1]
    losses = []
    for train, test in cv.split(X, y):
        fitted = clone(mlp).set_params(learning_rate=last["params"]["learning_rate"])
        fitted.fit(X[train], y[train])
        losses.append(log_loss(y[test], fitted.predict_proba(X[test])))
    assert last["outer_loss"] == pytest.approx(np.mean(losses), rel=1e-5)
