"""Linear models: Ridge, RidgeClassifier, LogisticRegression, SGDClassifier/Regressor.

Each inner loss is the estimator's objective exactly as scikit-learn defines it
(up to a positive factor per fold, which moves neither the minimizer nor the
implicit hypergradient):

- ``Ridge``: ``sum_i s_i ||y_i - x_i W - b||^2 + sum_j alpha_j ||W_j||^2``;
- ``RidgeClassifier``: the same on targets coded in {-1, 1};
- ``LogisticRegression`` (L2): ``sum_i s_i logloss_i + sum_j ||W_j||^2 / (2 C_j)``,
  binomial for two classes, multinomial otherwise;
- ``SGDClassifier`` / ``SGDRegressor`` (L2):
  ``(1/n) sum_i s_i L(y_i, f(x_i)) + sum_j alpha_j ||W_j||^2 / 2``, one-vs-rest
  for several classes;

with ``s_i`` the product of the fitted ``sample_weight``, the class weight and
the learned weight, and the intercept never penalized. A per-feature penalty
``alpha_j`` (``C_j``) comes from :class:`~skbilevel.PerFeature`.
"""

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import is_classifier
from sklearn.preprocessing import LabelEncoder

from ._base import (
    FoldData,
    Problem,
    check_classes_in_folds,
    class_weights,
    fold_weights,
    hyperparameter,
    lbfgs_solve,
    validation_mean,
)

SGD_CLASSIFIER_LOSSES = ("log_loss", "modified_huber", "squared_hinge", "squared_error")
SGD_REGRESSOR_LOSSES = ("squared_error", "huber", "squared_epsilon_insensitive")


def _decision(X, params):
    scores = torch.matmul(X, params["coef"])
    if "intercept" in params:
        scores = scores + params["intercept"][:, None, :]
    return scores


def _ridge_solve(X, Y, weights, penalty, fit_intercept):
    """Exact minimizer, per fold k, of the weighted ridge objective.

    ``sum_i w_ki ||Y_i - x_i W_k - b_k||^2 + sum_j p_kj ||W_kj||^2``, by the
    normal equations (the intercept column unpenalized).
    """
    n_folds = weights.shape[0]
    n = X.shape[-2]
    design = X.expand(n_folds, n, X.shape[-1])
    if fit_intercept:
        design = torch.cat([design, torch.ones_like(design[..., :1])], dim=-1)
        penalty = torch.cat([penalty, torch.zeros_like(penalty[..., :1])], dim=-1)
    weighted = design * weights[..., None]
    gram = weighted.transpose(1, 2) @ design + torch.diag_embed(penalty)
    theta = torch.linalg.solve(gram, weighted.transpose(1, 2) @ Y)
    if fit_intercept:
        return {"coef": theta[:, :-1], "intercept": theta[:, -1]}
    return {"coef": theta}


def linear_problem(data: FoldData, spec) -> Problem:
    """The :class:`Problem` of a linear model described by ``spec`` (a dict).

    ``spec`` holds ``n_outputs``, ``fit_intercept``, ``sample_loss(Z) -> (K, n)``,
    ``validation_loss(Z) -> (K, n)``, ``penalty(hparams) -> (K, d)`` (the factor
    of ``||W_j||^2`` in each fold's loss), ``weights(hparams) -> (K, n)``,
    ``ridge_targets`` (targets when the sample loss is ``q * ||y - z||^2``, with
    ``q = ridge_scale``: solved exactly) and ``solver_options``.
    """
    X = data.X
    n_folds, n_features = data.train.shape[0], X.shape[-1]
    n_train = data.train.sum(dim=1)
    dtype, device = X.dtype, X.device

    def init_params():
        params = {
            "coef": torch.zeros(
                n_folds, n_features, spec["n_outputs"], dtype=dtype, device=device
            )
        }
        if spec["fit_intercept"]:
            params["intercept"] = torch.zeros(
                n_folds, spec["n_outputs"], dtype=dtype, device=device
            )
        return params

    def inner_loss(params, hparams):
        fit = (
            spec["weights"](hparams) * spec["sample_loss"](_decision(X, params))
        ).sum(1)
        penalty = (spec["penalty"](hparams) * (params["coef"] ** 2).sum(-1)).sum(1)
        return ((fit + penalty) / n_train).sum()

    def outer_loss(params, hparams):
        return validation_mean(spec["validation_loss"](_decision(X, params)), data)

    def solve(params, hparams):
        with torch.no_grad():
            hparams = {name: value.detach() for name, value in hparams.items()}
            if spec.get("ridge_targets") is not None:
                penalty = spec["penalty"](hparams) / spec["ridge_scale"]
                return _ridge_solve(
                    X,
                    spec["ridge_targets"],
                    spec["weights"](hparams),
                    penalty.expand(n_folds, n_features),
                    spec["fit_intercept"],
                )
        return lbfgs_solve(
            lambda p: inner_loss(p, hparams), params, **spec["solver_options"]
        )

    def fitted_attributes(params):
        folds = []
        for k in range(n_folds):
            coef = params["coef"][k].T.detach().cpu().numpy()
            intercept = (
                params["intercept"][k].detach().cpu().numpy()
                if "intercept" in params
                else np.zeros(coef.shape[0])
            )
            if spec.get("one_dimensional"):
                coef, intercept = coef[0], float(intercept[0])
            folds.append({"coef_": coef, "intercept_": intercept})
        return folds

    return Problem(init_params, inner_loss, outer_loss, solve, fitted_attributes)


def _tensor(array, like):
    return torch.as_tensor(np.asarray(array), dtype=like.dtype).to(like.device)


def _encode(data: FoldData):
    codes = LabelEncoder().fit_transform(data.y)
    n_classes = int(codes.max()) + 1
    if n_classes < 2:
        raise ValueError("The target needs at least two classes.")
    check_classes_in_folds(codes, n_classes, data)
    return codes, n_classes


def _signed_targets(codes, n_classes, like):
    """Targets in {-1, 1}: one column for two classes, one per class otherwise."""
    columns = 1 if n_classes == 2 else n_classes
    signs = -np.ones((codes.size, columns))
    if n_classes == 2:
        signs[codes == 1, 0] = 1.0
    else:
        signs[np.arange(codes.size), codes] = 1.0
    return _tensor(signs, like)


def _penalty(name, default, data, factor, inverse=False):
    """Per-fold, per-feature penalty ``factor * value`` (or ``factor / value``)."""

    def penalty(hparams):
        value = hyperparameter(hparams, name, default, data.X)
        value = 1.0 / value if inverse else value
        return factor[:, None] * value.expand(data.X.shape[-1])[None, :]

    return penalty


def _solver_options(options):
    return {"tol": options["tol"], "max_iter": options["max_iter"]}


def ridge(estimator, data: FoldData, options) -> Problem:
    """Inner problem of :class:`~sklearn.linear_model.Ridge`."""
    Y = np.asarray(data.y, dtype=float)
    targets = _tensor(Y.reshape(Y.shape[0], -1), data.X)
    return _squared_problem(estimator, data, targets, None, options, Y.ndim == 1)


def ridge_classifier(estimator, data: FoldData, options) -> Problem:
    """Inner problem of :class:`~sklearn.linear_model.RidgeClassifier`."""
    codes, n_classes = _encode(data)
    fixed = class_weights(estimator.class_weight, codes, n_classes, data)
    targets = _signed_targets(codes, n_classes, data.X)
    return _squared_problem(estimator, data, targets, fixed, options, n_classes == 2)


def _squared_problem(estimator, data, targets, fixed, options, one_dimensional):
    ones = torch.ones(data.train.shape[0], dtype=data.X.dtype, device=data.X.device)

    def squared(Z):
        return ((targets - Z) ** 2).sum(-1)

    return linear_problem(
        data,
        {
            "n_outputs": targets.shape[1],
            "fit_intercept": estimator.fit_intercept,
            "sample_loss": squared,
            "validation_loss": lambda Z: squared(Z) / targets.shape[1],
            "penalty": _penalty("alpha", estimator.alpha, data, ones),
            "weights": lambda h: fold_weights(data, h, fixed),
            "ridge_targets": targets,
            "ridge_scale": 1.0,
            "one_dimensional": one_dimensional,
            "solver_options": _solver_options(options),
        },
    )


def logistic_regression(estimator, data: FoldData, options) -> Problem:
    """Inner problem of :class:`~sklearn.linear_model.LogisticRegression` (L2)."""
    codes, n_classes = _encode(data)
    fixed = class_weights(estimator.class_weight, codes, n_classes, data)
    ones = torch.ones(data.train.shape[0], dtype=data.X.dtype, device=data.X.device)
    if n_classes == 2:
        signs = _signed_targets(codes, 2, data.X)[:, 0]

        def sample_loss(Z):
            return F.softplus(-signs * Z[..., 0])
    else:
        labels = torch.as_tensor(codes, device=data.X.device)

        def sample_loss(Z):
            picked = Z.gather(-1, labels.expand(Z.shape[0], -1)[..., None])[..., 0]
            return torch.logsumexp(Z, dim=-1) - picked

    return linear_problem(
        data,
        {
            "n_outputs": 1 if n_classes == 2 else n_classes,
            "fit_intercept": estimator.fit_intercept,
            "sample_loss": sample_loss,
            "validation_loss": sample_loss,
            "penalty": _penalty("C", estimator.C, data, 0.5 * ones, inverse=True),
            "weights": lambda h: fold_weights(data, h, fixed),
            "solver_options": _solver_options(options),
        },
    )


def _sgd_loss(loss, epsilon):
    """Pointwise loss of SGD, as a function of margin z = y f (classification)
    or residual r = y - f (regression), with scikit-learn's constants."""
    if loss == "log_loss":
        return lambda z: F.softplus(-z)
    if loss == "modified_huber":
        return lambda z: torch.where(z >= -1.0, F.relu(1.0 - z) ** 2, -4.0 * z)
    if loss == "squared_hinge":
        return lambda z: F.relu(1.0 - z) ** 2
    if loss == "huber":
        return lambda r: torch.where(
            r.abs() <= epsilon, 0.5 * r**2, epsilon * r.abs() - 0.5 * epsilon**2
        )
    if loss == "squared_epsilon_insensitive":
        return lambda r: F.relu(r.abs() - epsilon) ** 2
    return lambda r: 0.5 * r**2


def sgd(estimator, data: FoldData, options) -> Problem:
    """Inner problem of SGDClassifier / SGDRegressor with a smooth loss and L2.

    The fitted estimator is a stochastic approximation of this minimizer.
    """
    pointwise = _sgd_loss(estimator.loss, estimator.epsilon)
    n_train = data.train.sum(dim=1)
    classifier = is_classifier(estimator)
    if classifier:
        codes, n_classes = _encode(data)
        fixed = class_weights(estimator.class_weight, codes, n_classes, data)
        targets = _signed_targets(codes, n_classes, data.X)
        if estimator.loss == "squared_error":

            def sample_loss(Z):
                return pointwise(targets - Z).sum(-1)
        else:

            def sample_loss(Z):
                return pointwise(targets * Z).sum(-1)
    else:
        fixed = None
        targets = _tensor(np.asarray(data.y, dtype=float)[:, None], data.X)

        def sample_loss(Z):
            return pointwise(targets - Z).sum(-1)

    quadratic = estimator.loss == "squared_error"
    return linear_problem(
        data,
        {
            "n_outputs": targets.shape[1],
            "fit_intercept": estimator.fit_intercept,
            "sample_loss": sample_loss,
            "validation_loss": sample_loss,
            "penalty": _penalty("alpha", estimator.alpha, data, 0.5 * n_train),
            "weights": lambda h: fold_weights(data, h, fixed),
            "ridge_targets": targets if quadratic else None,
            "ridge_scale": 0.5,
            "one_dimensional": not classifier,
            "solver_options": _solver_options(options),
        },
    )
