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

Each adapter describes its model by a :class:`~._linear_loss.LinearLoss`;
:func:`linear_problem` makes it a :class:`Problem` from the losses of
:mod:`._linear_loss`, the curvature of :mod:`._curvature` and the solvers of
:mod:`._newton`.
"""

import math
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import is_classifier
from sklearn.preprocessing import LabelEncoder

from ..utils import to_tensor
from ._base import (
    FoldData,
    Problem,
    check_classes_in_folds,
    class_weights,
    fold_weights,
    hyperparameter,
)
from ._curvature import (
    _logistic_curvature,
    _score_curvature,
    _softmax_curvature,
    curvature,
)
from ._curvature import _refined_pcg as _refined_pcg
from ._linear_loss import (
    LinearFolds,
    LinearLoss,
    decision,
    fitted_attributes,
    init_params,
    inner_loss,
    outer_loss,
)
from ._newton import solve
from ._sparse import SPARSE_GRAM_FEATURES, SparseDesign

SGD_CLASSIFIER_LOSSES = ("log_loss", "modified_huber", "squared_hinge", "squared_error")
SGD_REGRESSOR_LOSSES = ("squared_error", "huber", "squared_epsilon_insensitive")

# Most features for the block-Jacobi preconditioner: it costs as much as
# d / 2 Hessian products per fold; past this (MNIST's 784), a Kronecker
# product whose left factor is computed once per run serves instead.
BLOCK_FEATURES = 128
# Hessian products in single precision first, from this many multiply-adds
# per matrix product (below, casting costs more than it saves); the
# preconditioner's Gram matrices from 16 times as many.
FAST_SIZE = 2**20


def linear_problem(data: FoldData, loss: LinearLoss) -> Problem:
    """The :class:`Problem` of the linear model whose loss is ``loss``.

    A squared loss is solved exactly, any other by damped Newton
    (:mod:`._newton`) with the exact curvature and its preconditioner
    (:mod:`._curvature`), which also serve the implicit hypergradient. The
    preconditioner and the precision of the products are decided here, once,
    from the problem's sizes.
    """
    X = data.X
    size = X.numel() * data.train.shape[0] * loss.n_outputs
    double = X.dtype == torch.float64
    # A sparse design forms Gram matrices only on few features, in its own
    # precision.
    dense = not isinstance(X, SparseDesign)
    folds = LinearFolds(
        data,
        n_train=data.train.sum(dim=1),
        blocks=X.shape[-1] <= BLOCK_FEATURES,
        single_products=double and size >= FAST_SIZE,
        single_grams=dense and double and size * X.shape[-1] >= FAST_SIZE * 16,
        grams=dense or X.shape[-1] <= SPARSE_GRAM_FEATURES,
    )
    return Problem(
        partial(init_params, loss, folds),
        partial(inner_loss, loss, folds),
        partial(outer_loss, loss, folds),
        partial(solve, loss, folds),
        partial(fitted_attributes, loss),
        partial(curvature, loss, folds),
        partial(penalty_balance, loss, folds),
    )


def penalty_balance(loss: LinearLoss, folds: LinearFolds, name, params):
    """The value of the per-feature penalty ``name`` that shrinks the median
    feature's coefficient by half at ``params``: where the penalty's curvature
    ``2 p_j`` equals the training loss's, ``sum_i b_i (x_ij - mean_b x_j)^2``
    (centered with an intercept), ``b_i`` the weighted curvature of sample
    ``i``'s loss in its scores. The geometric mean over the folds; None for a
    sparse design."""
    X = folds.X
    if isinstance(X, SparseDesign):
        return None
    weights = loss.weights({})
    scores = decision(X, params)
    if loss.score_curvature is not None:
        score = loss.score_curvature(scores, weights)
    else:
        score = _score_curvature(loss.sample_loss, scores, weights)
    b = score.diagonal.mean(-1)  # (K, n)
    design = X if X.dim() == 3 else X[None]
    squares = torch.einsum("kn,knd->kd", b, design**2)
    if loss.fit_intercept:
        sums = torch.einsum("kn,knd->kd", b, design)
        squares = squares - sums**2 / b.sum(1, keepdim=True)
    ones = torch.ones(X.shape[-1], dtype=X.dtype, device=X.device)
    # The penalty is a power of the value (alpha_j, or 1 / C_j): its
    # exponent from two values.
    at_one = loss.penalty({name: ones})
    power = torch.log(loss.penalty({name: math.e * ones}) / at_one)
    target = (0.5 * squares).clamp_min(torch.finfo(X.dtype).tiny)
    log_values = torch.log(target / at_one) / power
    return float(torch.exp(log_values.median(dim=1).values.mean()))


def _tensor(array, like):
    return to_tensor(array, device=like.device, dtype=like.dtype)


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


def _problem(data: FoldData, options, fixed, **fields) -> Problem:
    """:func:`linear_problem` of the :class:`LinearLoss` with ``fields``,
    weighted by the fold masks, the fitted and ``fixed`` sample weights (and
    the learned ones), solved to ``options``' ``tol`` in ``max_iter``."""
    loss = LinearLoss(
        weights=partial(fold_weights, data, fixed=fixed),
        tol=options["tol"],
        max_iter=options["max_iter"],
        **fields,
    )
    return linear_problem(data, loss)


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

    return _problem(
        data,
        options,
        fixed,
        n_outputs=targets.shape[1],
        fit_intercept=estimator.fit_intercept,
        sample_loss=squared,
        validation_loss=lambda Z: squared(Z) / targets.shape[1],
        penalty=_penalty("alpha", estimator.alpha, data, ones),
        ridge_targets=targets,
        ridge_scale=1.0,
        one_dimensional=one_dimensional,
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
        labels = to_tensor(codes, device=data.X.device)

        def sample_loss(Z):
            picked = Z.gather(-1, labels.expand(Z.shape[0], -1)[..., None])[..., 0]
            return torch.logsumexp(Z, dim=-1) - picked

    return _problem(
        data,
        options,
        fixed,
        n_outputs=1 if n_classes == 2 else n_classes,
        fit_intercept=estimator.fit_intercept,
        sample_loss=sample_loss,
        validation_loss=sample_loss,
        penalty=_penalty("C", estimator.C, data, 0.5 * ones, inverse=True),
        score_curvature=(_logistic_curvature if n_classes == 2 else _softmax_curvature),
        softmax=n_classes > 2,
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
    return _problem(
        data,
        options,
        fixed,
        n_outputs=targets.shape[1],
        fit_intercept=estimator.fit_intercept,
        sample_loss=sample_loss,
        validation_loss=sample_loss,
        penalty=_penalty("alpha", estimator.alpha, data, 0.5 * n_train),
        ridge_targets=targets if quadratic else None,
        ridge_scale=0.5,
        one_dimensional=not classifier,
    )
