"""Shared pieces of the inner problems: fold data, the Problem protocol, weights.

The K cross-validation folds are K independent inner problems that share the
hyperparameters. They are computed together: one data tensor, 0/1 masks of
shape (K, n) for the training and validation parts, and inner parameters with
a leading fold dimension. The inner loss is the sum of the K fold losses, so
its minimizer is the K fold minimizers side by side.
"""

import inspect
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from sklearn.utils.class_weight import compute_class_weight
from torch import Tensor

from ..utils import to_numpy, to_tensor

Params = dict[str, Tensor]
_WEIGHTED = "sample_weight" in inspect.signature(compute_class_weight).parameters


class FoldData(NamedTuple):
    """The training data of the K folds as tensors.

    ``X`` is (n, d) when every fold sees the same features, or (K, n, d) when
    the earlier steps of a Pipeline were fitted on each fold. ``train`` and
    ``test`` are 0/1 masks of shape (K, n); ``sample_weight`` holds the fixed
    weights given to ``fit`` (ones by default).
    """

    X: Tensor
    y: np.ndarray
    train: Tensor
    test: Tensor
    sample_weight: Tensor


class Problem(NamedTuple):
    """A differentiable inner problem over K folds.

    ``hparams`` are the constrained hyperparameter values keyed by the
    estimator's parameter names (and ``"sample_weight"``); names not given take
    the estimator's own value.

    - ``init_params() -> params``: zeros, with a leading fold dimension.
    - ``inner_loss(params, hparams) -> Tensor``: the sum over folds of the
      training objective of the estimator (up to a positive factor per fold).
    - ``outer_loss(params, hparams) -> Tensor``: the mean over folds of the
      mean validation loss.
    - ``solve(params, hparams) -> params``: the inner solution, warm-started
      from ``params``, without a graph.
    - ``fitted_attributes(params) -> list of dict``: per fold, the attributes
      (``coef_``, ``intercept_``, ``dual_coef_``) a fitted scikit-learn
      estimator would hold.
    - ``curvature(params, hparams) -> Curvature`` (optional): exact inner
      Hessian-vector products at ``params`` and a preconditioner, for the
      implicit hypergradient's linear system (solved by the batched
      :func:`~skbilevel.hypergrad._cg.conjugate_gradient`).
    - ``penalty_balance(name, params) -> float or None`` (optional): the
      value of the per-feature penalty ``name`` at which the median feature's
      coefficient is shrunk by half at ``params`` (its penalty's curvature
      equals the training loss's): where :class:`~skbilevel.PerFeature`
      starts.
    - ``newton_first_step`` (default False): whether the outer L-BFGS-B of
      one scalar hyperparameter may shorten its first step to the minimizer
      of the validation loss's Gauss-Newton model along the solution's
      tangent, in the hyperparameter's own scale: the exact minimizer for
      the Lasso while its support holds (its solution is affine in alpha
      there, the squared validation loss quadratic).
    """

    init_params: Callable[[], Params]
    inner_loss: Callable[[Params, Params], Tensor]
    outer_loss: Callable[[Params, Params], Tensor]
    solve: Callable[[Params, Params], Params]
    fitted_attributes: Callable[[Params], list]
    curvature: Callable | None = None
    penalty_balance: Callable | None = None
    newton_first_step: bool = False


class Curvature(NamedTuple):
    """The inner Hessian at a point, as products: ``hessian_vector(v) -> H v``
    and ``precondition(v)``, a positive-definite approximation of ``H^{-1} v``
    (dicts shaped like the inner parameters); optionally
    ``fast_hessian_vector``, the same product with its matrix products in
    single precision, for the first iterations of a solve."""

    hessian_vector: Callable[[Params], Params]
    precondition: Callable[[Params], Params]
    fast_hessian_vector: Callable[[Params], Params] | None = None


def hyperparameter(hparams: Params, name: str, default, like: Tensor) -> Tensor:
    """The value of ``name``: learned if present, the estimator's otherwise."""
    if name in hparams:
        return hparams[name]
    return torch.as_tensor(float(default), dtype=like.dtype, device=like.device)


def class_weights(class_weight, y_codes, n_classes, data: FoldData) -> np.ndarray:
    """Per-fold class weights of each sample, shape (K, n), as scikit-learn sets them.

    ``"balanced"`` is computed on each fold's training part, as the estimator
    fitted on that fold would compute it.
    """
    n_folds, n = data.train.shape
    if class_weight is None:
        return np.ones((n_folds, n))
    train = to_numpy(data.train).astype(bool)
    sample_weight = to_numpy(data.sample_weight)
    weights = np.empty((n_folds, n))
    for k in range(n_folds):
        # scikit-learn weighs "balanced" by the fit's sample weights since
        # 1.7, as its estimators' fits do; before, by counts alone.
        weighted = {"sample_weight": sample_weight[train[k]]} if _WEIGHTED else {}
        per_class = compute_class_weight(
            class_weight, classes=np.arange(n_classes), y=y_codes[train[k]], **weighted
        )
        weights[k] = per_class[y_codes]
    return weights


def check_classes_in_folds(y_codes, n_classes, data: FoldData):
    """Refuse folds whose training part misses a class: no fold minimizer exists."""
    train = to_numpy(data.train).astype(bool)
    for k in range(train.shape[0]):
        if np.unique(y_codes[train[k]]).size < n_classes:
            raise ValueError(
                f"The training part of fold {k} does not contain every class; "
                "continuous hyperparameters need every class in every training "
                "fold. Use a stratified splitter (e.g. StratifiedKFold)."
            )


def fold_weights(data: FoldData, hparams: Params, fixed=None) -> Tensor:
    """Weights (K, n) of the training samples: mask x fixed x learned weights."""
    weights = data.train * data.sample_weight
    if fixed is not None:
        weights = weights * to_tensor(fixed, device=weights.device, dtype=weights.dtype)
    if "sample_weight" in hparams:
        weights = weights * hparams["sample_weight"]
    return weights


def validation_mean(losses: Tensor, data: FoldData) -> Tensor:
    """Mean over folds of the (fit-weighted) mean loss on each validation part."""
    weights = data.test * data.sample_weight
    return ((weights * losses).sum(dim=1) / weights.sum(dim=1)).mean()
