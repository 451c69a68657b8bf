"""The loss of a linear model over the K folds, and the state its solvers share.

A :class:`LinearLoss` describes the model (its sample loss, penalty, weights
and outputs); :class:`LinearFolds` holds the fold data with what is derived
from it once per problem, and the :class:`PreconditionerCache`. The functions
here are the model's scores and losses; the curvature and the solvers are in
:mod:`._curvature` and :mod:`._newton`.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..utils import to_numpy
from ._base import FoldData, Params, validation_mean

# The products of a dense or sparse design, re-exported for the adapters.
from ._sparse import SparseDesign, matmul
from ._sparse import transposed_matmul as transposed_matmul


@dataclass(frozen=True, eq=False)
class LinearLoss:
    """The training and validation losses of a linear model.

    Each fold's inner loss is
    ``(sum_i weights_i sample_loss(z_i) + sum_j penalty_j ||W_j||^2) / n_k``
    with scores ``Z = X W + b``.

    Attributes
    ----------
    n_outputs : int
        Columns of the scores (1 for a binary classifier or one target).
    fit_intercept : bool
        Whether the model has an (unpenalized) intercept.
    sample_loss : callable
        ``sample_loss(Z) -> (K, n)``, the loss of each sample in each fold.
    validation_loss : callable
        ``validation_loss(Z) -> (K, n)``, what the outer loss averages.
    penalty : callable
        ``penalty(hparams) -> (K, d)``, the factor of ``||W_j||^2``.
    weights : callable
        ``weights(hparams) -> (K, n)``, the weights of the training samples.
    tol, max_iter : float, int
        The inner solver's gradient tolerance and Newton iterations.
    ridge_targets : Tensor, default=None
        Targets when the sample loss is ``ridge_scale * ||y - z||^2``: the
        problem is then solved exactly by the normal equations.
    ridge_scale : float, default=1.0
        The factor of the squared error, with ``ridge_targets``.
    score_curvature : callable, default=None
        A closed form of :func:`._curvature._score_curvature` for this loss.
    softmax : bool, default=False
        Whether the scores feed a softmax (blind to a common shift).
    one_dimensional : bool, default=False
        Whether the fitted estimator holds one-dimensional ``coef_``.
    """

    n_outputs: int
    fit_intercept: bool
    sample_loss: Callable[[Tensor], Tensor]
    validation_loss: Callable[[Tensor], Tensor]
    penalty: Callable[[Params], Tensor]
    weights: Callable[[Params], Tensor]
    tol: float
    max_iter: int
    ridge_targets: Tensor | None = None
    ridge_scale: float = 1.0
    score_curvature: Callable | None = None
    softmax: bool = False
    one_dimensional: bool = False


@dataclass(eq=False)
class PreconditionerCache:
    """What the curvature reuses from one call to the next.

    ``products``, the table of feature products behind the Gram matrices (the
    design does not change); ``grams``, the block-Jacobi Gram matrices of the
    last call that computed them; ``left``, the per-fold Gram matrices of a
    squared loss's normal equations, and ``mean_left``, the folds' mean Gram
    matrix behind the Kronecker preconditioner's left factor (both unless
    sample weights are learned); ``ridge``, the normal equations' right-hand
    sides (with fixed weights); ``single``, the features in single precision;
    ``stale``, whether the block-Jacobi Gram matrices must be recomputed at
    the next inner solution (they were not computed at one, or a Newton step
    with them took many products).
    """

    products: Tensor | None = None
    grams: Tensor | None = None
    stale: bool = True
    left: Tensor | None = None
    mean_left: Tensor | None = None
    ridge: Tensor | None = None
    single: Tensor | None = None


@dataclass(frozen=True, eq=False)
class LinearFolds:
    """The fold data of a linear problem and what is decided from its sizes.

    ``blocks``: the block-Jacobi preconditioner (few features) rather than the
    Kronecker one; ``grams``: whether Gram matrices are formed at all (not
    for a sparse design with many features: a diagonal preconditioner and
    Newton's conjugate gradient serve instead); ``single_products`` and
    ``single_grams``: whether Hessian products and the block-Jacobi Gram
    matrices may be taken in single precision.
    """

    data: FoldData
    n_train: Tensor
    blocks: bool
    single_products: bool
    single_grams: bool
    grams: bool = True
    cache: PreconditionerCache = field(default_factory=PreconditionerCache)

    @property
    def X(self) -> Tensor:
        return self.data.X


def decision(X: Tensor, params: Params) -> Tensor:
    """The scores ``X W + b`` of every fold, (K, n, c)."""
    scores = matmul(X, params["coef"])
    if "intercept" in params:
        scores = scores + params["intercept"][:, None, :]
    return scores


def with_intercept(X: Tensor, fit_intercept: bool) -> Tensor:
    """The design: ``X``, with a column of ones when fitting an intercept."""
    if isinstance(X, SparseDesign):
        return X.with_intercept(fit_intercept)
    if not fit_intercept:
        return X
    ones = torch.ones(X.shape[-2], 1, dtype=X.dtype, device=X.device)
    return torch.cat([X, ones.expand(*X.shape[:-1], 1)], dim=-1)


def init_params(loss: LinearLoss, folds: LinearFolds) -> Params:
    """Zero coefficients (and intercepts), with a leading fold dimension."""
    X = folds.X
    n_folds = folds.n_train.shape[0]
    params = {
        "coef": torch.zeros(
            n_folds, X.shape[-1], loss.n_outputs, dtype=X.dtype, device=X.device
        )
    }
    if loss.fit_intercept:
        params["intercept"] = torch.zeros(
            n_folds, loss.n_outputs, dtype=X.dtype, device=X.device
        )
    return params


def fold_losses(
    loss: LinearLoss, folds: LinearFolds, params: Params, hparams: Params
) -> Tensor:
    """Each fold's training objective divided by its training size, (K,)."""
    fit = (loss.weights(hparams) * loss.sample_loss(decision(folds.X, params))).sum(1)
    penalty = (loss.penalty(hparams) * (params["coef"] ** 2).sum(-1)).sum(1)
    return (fit + penalty) / folds.n_train


def inner_loss(
    loss: LinearLoss, folds: LinearFolds, params: Params, hparams: Params
) -> Tensor:
    """The sum of the fold losses: its minimizer is every fold's."""
    return fold_losses(loss, folds, params, hparams).sum()


def outer_loss(
    loss: LinearLoss, folds: LinearFolds, params: Params, hparams: Params
) -> Tensor:
    """The mean over folds of the mean validation loss."""
    return validation_mean(loss.validation_loss(decision(folds.X, params)), folds.data)


def fitted_attributes(loss: LinearLoss, params: Params) -> list:
    """Per fold, the ``coef_`` and ``intercept_`` of the fitted estimator."""
    return linear_attributes(params, loss.one_dimensional, loss.softmax)


def linear_attributes(params: Params, one_dimensional: bool, softmax=False) -> list:
    """Per fold, ``coef_`` and ``intercept_`` from coefficients (K, d, c) and
    intercepts (K, c): one-dimensional for one output, intercepts summing to
    zero under a softmax (blind to a common shift; scikit-learn's sum to 0)."""
    folds = []
    for k in range(params["coef"].shape[0]):
        coef = to_numpy(params["coef"][k].T)
        intercept = (
            to_numpy(params["intercept"][k])
            if "intercept" in params
            else np.zeros(coef.shape[0])
        )
        if softmax:
            intercept = intercept - intercept.mean()
        if one_dimensional:
            coef, intercept = coef[0], float(intercept[0])
        folds.append({"coef_": coef, "intercept_": intercept})
    return folds
