"""Torch MLP estimators: hypergradients through training, refit, scikit-learn parity."""

import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import make_classification, make_regression
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import log_loss, mean_squared_error
from sklearn.utils.estimator_checks import parametrize_with_checks

from skbilevel.hypergrad import METHODS, unroll
from skbilevel.neural_network import TorchMLPClassifier, TorchMLPRegressor
from skbilevel.neural_network._network import init_params
from skbilevel.problems import FoldData


def _tensor(array):
    return torch.as_tensor(np.asarray(array, dtype=np.float64))


def _classification(n_classes=3, n_samples=20):
    return make_classification(
        n_samples=n_samples,
        n_features=4,
        n_informative=3,
        n_redundant=0,
        n_classes=n_classes,
        n_clusters_per_class=1,
        random_state=0,
    )


def _folds(X, y, n_folds=2):
    """FoldData of interleaved folds (every class in every training part)."""
    n = len(y)
    train = np.ones((n_folds, n))
    for k in range(n_folds):
        train[k, k::n_folds] = 0.0
    data = FoldData(
        _tensor(X), y, _tensor(train), _tensor(1 - train), _tensor(np.ones(n))
    )
    return data, train.astype(bool)


def _outer(problem, hparams):
    """The T-step K-fold validation loss, without a graph."""
    with torch.no_grad():
        state = unroll(problem.dynamics, problem.init_params(), hparams, problem.T)
        return float(problem.outer_loss(state[0], hparams))


# name, estimator, learned kinds and values; T=15 steps everywhere.
CASES = {
    "sgd-scalars": (
        TorchMLPClassifier((5,), solver="sgd", alpha=0.1, max_iter=15, random_state=0),
        {"learning_rate": 0.1, "momentum": 0.8, "alpha": 0.1},
    ),
    "sgd-per-step-schedule": (
        TorchMLPClassifier((5,), solver="sgd", max_iter=15, random_state=0),
        {"learning_rate": np.linspace(0.2, 0.05, 15)},
    ),
    "sgd-minibatch-weights": (
        TorchMLPClassifier(
            (5,), solver="sgd", batch_size=4, max_iter=15, random_state=0
        ),
        {"learning_rate": 0.1, "momentum": 0.5, "sample_weight": "random"},
    ),
    "adam-blocks-per-layer-alpha": (
        TorchMLPRegressor(
            (5,), activation="tanh", learning_rate=0.05, max_iter=15, random_state=0
        ),
        {
            "learning_rate": np.array([0.05, 0.02, 0.01]),
            "alpha": np.array([0.1, 0.3]),
            "sample_weight": "random",
        },
    ),
}


def _case(name):
    estimator, values = CASES[name]
    if isinstance(estimator, TorchMLPRegressor):
        X, y = make_regression(n_samples=20, n_features=4, noise=1.0, random_state=0)
        y = y / y.std()
    else:
        X, y = _classification()
    data, _ = _folds(X, y)
    rng = np.random.RandomState(0)
    hparams = {
        name: _tensor(rng.uniform(0.2, 1.0, len(y)) if isinstance(v, str) else v)
        for name, v in values.items()
    }
    kinds = {"sample_weight": "sample_weight"}
    learned = {
        name: kinds.get(name, "real" if value.dim() == 0 else "per_step")
        for name, value in hparams.items()
    }
    if "alpha" in learned and hparams["alpha"].dim():
        learned["alpha"] = "per_layer"
    return estimator._bilevel_problem(data, learned, {}), hparams


@pytest.mark.parametrize("name", list(CASES))
def test_reverse_hypergradient_matches_finite_differences(name):
    problem, hparams = _case(name)
    result = METHODS["reverse"](
        problem.init_params(), hparams, problem.T, problem.dynamics, problem.outer_loss
    )
    assert result.outer_loss == pytest.approx(_outer(problem, hparams), rel=1e-12)
    rng = np.random.RandomState(1)
    eps = 1e-6
    for key, value in hparams.items():
        # A random direction checks every entry of a vector hyperparameter.
        direction = _tensor(rng.uniform(-1, 1, value.shape))
        plus = {**hparams, key: value + eps * direction}
        minus = {**hparams, key: value - eps * direction}
        numeric = (_outer(problem, plus) - _outer(problem, minus)) / (2 * eps)
        exact = float((result.grad[key] * direction).sum())
        assert exact == pytest.approx(numeric, rel=1e-6, abs=1e-9), key


@pytest.mark.parametrize(
    "name", ["sgd-minibatch-weights", "adam-blocks-per-layer-alpha"]
)
def test_forward_and_full_truncation_equal_reverse(name):
    problem, hparams = _case(name)
    args = (problem.init_params(), hparams, problem.T, problem.dynamics)
    reverse = METHODS["reverse"](*args, problem.outer_loss)
    forward = METHODS["forward"](*args, problem.outer_loss)
    truncated = METHODS["truncated_reverse"](*args, problem.outer_loss, K=problem.T)
    for key in hparams:
        torch.testing.assert_close(forward.grad[key], reverse.grad[key])
        torch.testing.assert_close(truncated.grad[key], reverse.grad[key])


@pytest.mark.parametrize(
    "estimator",
    [
        TorchMLPClassifier((4, 3), solver="sgd", batch_size=3, max_iter=15),
        TorchMLPClassifier((), learning_rate=0.1, max_iter=15),
        TorchMLPRegressor((5,), solver="sgd", learning_rate=0.05, max_iter=15),
    ],
)
def test_fit_reproduces_the_differentiated_model(estimator):
    """Each fold's network is ``fit`` on that fold's training part; same losses."""
    estimator = clone(estimator).set_params(random_state=3, dtype="float64")
    regression = isinstance(estimator, TorchMLPRegressor)
    if regression:
        X, y = make_regression(n_samples=21, n_features=4, random_state=0)
        y = y / y.std()
    else:
        X, y = _classification(n_classes=2, n_samples=21)
    data, train = _folds(X, y, n_folds=3)
    weights = np.random.RandomState(0).uniform(0.1, 1.0, len(y))
    schedule = np.array([0.1, 0.05, 0.02])
    hparams = {"learning_rate": _tensor(schedule), "sample_weight": _tensor(weights)}
    problem = estimator._bilevel_problem(
        data, {"learning_rate": "per_step", "sample_weight": "sample_weight"}, {}
    )
    with torch.no_grad():
        state = unroll(problem.dynamics, problem.init_params(), hparams, problem.T)
    attributes = problem.fitted_attributes(state[0])
    losses = []
    for k, mask in enumerate(train):
        fitted = clone(estimator).set_params(learning_rate=schedule)
        fitted.fit(X[mask], y[mask], sample_weight=weights[mask])
        for ours, theirs in zip(fitted.coefs_, attributes[k]["coefs_"]):
            np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)
        for ours, theirs in zip(fitted.intercepts_, attributes[k]["intercepts_"]):
            np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)
        if regression:
            losses.append(mean_squared_error(y[~mask], fitted.predict(X[~mask])))
        else:
            proba = fitted.predict_proba(X[~mask])
            losses.append(log_loss(y[~mask], proba, labels=fitted.classes_))
    assert float(problem.outer_loss(state[0], hparams)) == pytest.approx(
        np.mean(losses), rel=1e-10
    )


def test_per_fold_features_of_a_pipeline():
    """X of shape (K, n, d) (a Pipeline's earlier steps fitted per fold)."""
    X, y = _classification()
    data, _ = _folds(X, y)
    estimator = TorchMLPClassifier((5,), solver="sgd", batch_size=6, max_iter=10)
    shared = estimator.set_params(random_state=0)._bilevel_problem(data, {}, {})
    stacked = data._replace(X=data.X.expand(2, *data.X.shape))
    per_fold = estimator._bilevel_problem(stacked, {}, {})
    assert _outer(per_fold, {}) == pytest.approx(_outer(shared, {}), rel=1e-12)


def test_hypergradient_descent_raises_a_too_small_learning_rate():
    X, y = _classification(n_samples=40)
    data, _ = _folds(X, y)
    estimator = TorchMLPClassifier((8,), solver="sgd", max_iter=20, random_state=0)
    problem = estimator._bilevel_problem(data, {"learning_rate": "real"}, {})
    # The outer variable is log(learning_rate), as BilevelSearchCV's Real.
    problem = problem.transformed(lambda u: {"learning_rate": torch.exp(u["log_lr"])})
    u = {"log_lr": _tensor(np.log(1e-3))}
    first = None
    for _ in range(6):
        result = METHODS["reverse"](
            problem.init_params(), u, problem.T, problem.dynamics, problem.outer_loss
        )
        first = float(result.outer_loss) if first is None else first
        gradient = result.grad["log_lr"]
        u = {"log_lr": u["log_lr"] - gradient / gradient.abs()}
    final = _outer(problem, u)
    assert float(torch.exp(u["log_lr"])) > 1e-2
    assert final < 0.9 * first


def test_learning_rate_schedules():
    X, y = _classification()
    base = TorchMLPClassifier(
        (5,), solver="sgd", max_iter=10, random_state=0, dtype="float64"
    )
    constant = clone(base).set_params(learning_rate=0.1).fit(X, y)
    per_step = clone(base).set_params(learning_rate=np.full(10, 0.1)).fit(X, y)
    np.testing.assert_array_equal(constant.coefs_[0], per_step.coefs_[0])
    # Step t uses entry floor(t * B / T): blocks of 4, 3 and 3 steps for B=3.
    blocks = clone(base).set_params(learning_rate=[0.3, 0.2, 0.1]).fit(X, y)
    explicit = np.array([0.3] * 4 + [0.2] * 3 + [0.1] * 3)
    expanded = clone(base).set_params(learning_rate=explicit).fit(X, y)
    np.testing.assert_array_equal(blocks.coefs_[0], expanded.coefs_[0])
    assert not np.allclose(blocks.coefs_[0], constant.coefs_[0])


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_minibatch_training_matches_torch_optim(solver):
    """Sequential batches of 7, 7, 6 samples, stepped by torch.optim itself."""
    X, y = _classification()
    estimator = TorchMLPClassifier(
        (5,),
        activation="tanh",
        solver=solver,
        alpha=0.5,
        batch_size=7,
        shuffle=False,
        learning_rate=0.05,
        momentum=0.7,
        max_iter=8,
        random_state=0,
        dtype="float64",
    ).fit(X, y)
    params = init_params([4, 5, 3], "tanh", 1, 0, dtype=torch.float64, device="cpu")
    layers = [p[0].clone().requires_grad_() for p in params.values()]
    if solver == "sgd":
        optimizer = torch.optim.SGD(layers, lr=0.05, momentum=0.7)
    else:
        optimizer = torch.optim.Adam(layers, lr=0.05)
    X_t, y_t = _tensor(X), torch.as_tensor(y)
    for t in range(8):
        batch = slice(7 * (t % 3), 7 * (t % 3) + 7)
        W0, b0, W1, b1 = layers
        scores = torch.tanh(X_t[batch] @ W0 + b0) @ W1 + b1
        penalty = 0.5 * 0.5 * ((W0**2).sum() + (W1**2).sum()) / len(y)
        loss = torch.nn.functional.cross_entropy(scores, y_t[batch]) + penalty
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for ours, theirs in zip(estimator.coefs_, layers[::2]):
        np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-6)


@pytest.mark.parametrize("Estimator", [TorchMLPClassifier, TorchMLPRegressor])
def test_zero_sample_weight_removes_the_sample(Estimator):
    if Estimator is TorchMLPRegressor:
        X, y = make_regression(n_samples=30, n_features=4, random_state=0)
        y = y / y.std()
    else:
        X, y = _classification(n_samples=30)
    weights = np.ones(len(y))
    weights[::4] = 0.0
    estimator = Estimator((6,), max_iter=30, random_state=0, dtype="float64")
    weighted = clone(estimator).fit(X, y, sample_weight=weights)
    removed = clone(estimator).fit(X[weights > 0], y[weights > 0])
    method = "predict" if Estimator is TorchMLPRegressor else "predict_proba"
    np.testing.assert_allclose(
        getattr(weighted, method)(X), getattr(removed, method)(X), rtol=1e-10
    )


def test_linear_classifier_converges_to_logistic_regression():
    """alpha = 1 / C: (sum_i loss_i + alpha/2 ||w||^2) / n has LR's minimizer."""
    X, y = _classification(n_classes=2, n_samples=40)
    clf = TorchMLPClassifier(
        (), solver="sgd", alpha=2.0, learning_rate=0.5, max_iter=400, dtype="float64"
    ).fit(X, y)
    reference = LogisticRegression(C=0.5, tol=1e-10).fit(X, y)
    np.testing.assert_allclose(
        clf.coefs_[0].ravel(), reference.coef_.ravel(), rtol=1e-6
    )
    np.testing.assert_allclose(clf.intercepts_[0], reference.intercept_, rtol=1e-6)


def test_linear_regressor_converges_to_ridge():
    X, y = make_regression(n_samples=40, n_features=4, noise=1.0, random_state=0)
    reg = TorchMLPRegressor(
        (), solver="sgd", alpha=3.0, learning_rate=0.1, max_iter=300, dtype="float64"
    ).fit(X, y)
    reference = Ridge(alpha=3.0).fit(X, y)
    np.testing.assert_allclose(reg.coefs_[0].ravel(), reference.coef_, rtol=1e-6)
    np.testing.assert_allclose(reg.predict(X), reference.predict(X), rtol=1e-6)


def test_fitted_attributes_and_float32_default():
    X, y = _classification()
    clf = TorchMLPClassifier((7, 5), max_iter=25, random_state=0).fit(X, y)
    assert [c.shape for c in clf.coefs_] == [(4, 7), (7, 5), (5, 3)]
    assert all(c.dtype == np.float32 for c in clf.coefs_ + clf.intercepts_)
    assert clf.n_iter_ == 25 and len(clf.loss_curve_) == 25
    assert clf.n_layers_ == 4 and clf.n_outputs_ == 3
    assert clf.out_activation_ == "softmax"
    assert clf.loss_ < clf.loss_curve_[0]
    assert clf.predict_proba(X).dtype == np.float64
    assert clf.predict_proba(X.astype(np.float32)).dtype == np.float32


def test_pickle_keeps_no_tensor():
    X, y = _classification()
    clf = TorchMLPClassifier((5,), max_iter=10, random_state=0).fit(X, y)
    assert not any(isinstance(v, torch.Tensor) for v in vars(clf).values())
    restored = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(restored.predict_proba(X), clf.predict_proba(X))


def test_divergence_raises():
    X, y = _classification()
    clf = TorchMLPClassifier((5,), solver="sgd", learning_rate=1e6, max_iter=20)
    with pytest.raises(FloatingPointError, match="diverged"):
        clf.fit(X * 100, y)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"learning_rate": np.full(11, 0.1)}, "at most one value per step"),
        ({"learning_rate": [0.1, -0.1]}, "positive finite"),
        ({"learning_rate": [[0.1, 0.2]]}, "1-D array of positive finite"),
        ({"learning_rate": []}, "1-D array of positive finite"),
        ({"alpha": [0.1, np.nan]}, "1-D array of non-negative finite"),
        ({"alpha": [0.1, 0.1, 0.1]}, "one value per weight layer"),
        ({"hidden_layer_sizes": (3, 0)}, "hidden_layer_sizes"),
    ],
)
def test_invalid_hyperparameters(params, message):
    X, y = _classification()
    clf = TorchMLPClassifier((5,), max_iter=10).set_params(**params)
    with pytest.raises(ValueError, match=message):
        clf.fit(X, y)


def test_bilevel_problem_refuses_what_it_cannot_learn():
    X, y = _classification()
    data, _ = _folds(X, y)
    clf = TorchMLPClassifier((5,), max_iter=10)
    with pytest.raises(
        ValueError, match="momentum is a hyperparameter of solver='sgd'"
    ):
        clf._bilevel_problem(data, {"momentum": "real"}, {})
    with pytest.raises(ValueError, match="'beta_1' cannot be learned"):
        clf._bilevel_problem(data, {"beta_1": "real"}, {})
    with pytest.raises(ValueError, match="'alpha' cannot be learned as PerFeature"):
        clf._bilevel_problem(data, {"alpha": "per_feature"}, {})
    train = np.zeros((2, len(y)))
    train[0, y != 0] = 1.0
    train[1, y == 0] = 1.0
    split = data._replace(train=_tensor(train), test=_tensor(1 - train))
    with pytest.raises(ValueError, match="does not contain every class"):
        clf._bilevel_problem(split, {}, {})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_fit_matches_cpu_and_unpickles():
    X, y = _classification()
    params = {"max_iter": 20, "random_state": 0, "dtype": "float64", "batch_size": 7}
    gpu = TorchMLPClassifier((5,), device="cuda", **params).fit(X, y)
    cpu = TorchMLPClassifier((5,), device="cpu", **params).fit(X, y)
    np.testing.assert_allclose(gpu.predict_proba(X), cpu.predict_proba(X), rtol=1e-8)
    restored = pickle.loads(pickle.dumps(gpu))
    np.testing.assert_array_equal(restored.predict(X), gpu.predict(X))


@parametrize_with_checks(
    [
        TorchMLPClassifier(
            (8,), max_iter=50, random_state=0, device="cpu", dtype="float64"
        ),
        TorchMLPRegressor(
            (8,), max_iter=50, random_state=0, device="cpu", dtype="float64"
        ),
    ]
)
def test_scikit_learn_checks(estimator, check):
    check(estimator)
