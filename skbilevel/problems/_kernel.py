"""KernelRidge with a linear, RBF or Laplacian kernel.

scikit-learn fits ``dual_coef_ = sqrt(s) (sqrt(s) K sqrt(s) + alpha I)^{-1} sqrt(s) y``
(``s`` the sample weights). The inner loss is the quadratic whose minimizer is
that system's solution, ``d^T (sqrt(s) K sqrt(s) + alpha I) d / 2 - d^T sqrt(s) y``,
strongly convex for any ``alpha > 0``, so implicit differentiation applies;
``dual_coef_ = sqrt(s) d``. The kernel is ``exp(-gamma ||x - x'||^2)`` (RBF) or
``exp(-gamma ||x - x'||_1)`` (Laplacian), differentiable in ``gamma``.
"""

from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import Tensor

from ..utils import to_numpy, to_tensor
from ._base import FoldData, Params, Problem, hyperparameter, validation_mean

KERNELS = ("linear", "rbf", "laplacian")


@dataclass(frozen=True, eq=False)
class _KernelFolds:
    """The fold data of a KernelRidge problem and its fixed settings.

    ``targets`` (n, c); ``root``, the square roots of the training weights,
    (K, n, 1); ``distances`` between samples (none for the linear kernel);
    ``gamma`` and ``alpha``, the estimator's values where not learned.
    """

    data: FoldData
    targets: Tensor
    root: Tensor
    identity: Tensor
    kernel: str
    distances: Tensor | None
    gamma: float
    alpha: float
    one_dimensional: bool


def _distances(X, kernel):
    if kernel == "rbf":
        squared = (X**2).sum(-1)
        product = X @ X.transpose(-1, -2)
        return (squared[..., :, None] + squared[..., None, :] - 2 * product).clamp_min(
            0
        )
    return torch.cdist(X, X, p=1)


def _gram(folds: _KernelFolds, hparams: Params) -> Tensor:
    X = folds.data.X
    if folds.kernel == "linear":
        return X @ X.transpose(-1, -2)
    return torch.exp(
        -hyperparameter(hparams, "gamma", folds.gamma, X) * folds.distances
    )


def _system(folds: _KernelFolds, hparams: Params) -> tuple[Tensor, Tensor]:
    """Each fold's matrix ``sqrt(s) K sqrt(s) + alpha I`` and right side."""
    alpha = hyperparameter(hparams, "alpha", folds.alpha, folds.data.X)
    root = folds.root
    matrix = root * _gram(folds, hparams) * root.transpose(1, 2)
    return matrix + alpha * folds.identity, root * folds.targets


def _init_params(folds: _KernelFolds) -> Params:
    X = folds.data.X
    n_folds, n = folds.data.train.shape
    shape = (n_folds, n, folds.targets.shape[1])
    return {"dual": torch.zeros(shape, dtype=X.dtype, device=X.device)}


def _inner_loss(folds: _KernelFolds, params: Params, hparams: Params) -> Tensor:
    matrix, rhs = _system(folds, hparams)
    d = params["dual"]
    quadratic = 0.5 * (d * (matrix @ d)).sum((1, 2)) - (d * rhs).sum((1, 2))
    return (quadratic / folds.data.train.sum(1)).sum()


def _outer_loss(folds: _KernelFolds, params: Params, hparams: Params) -> Tensor:
    predictions = _gram(folds, hparams) @ (folds.root * params["dual"])
    errors = ((folds.targets - predictions) ** 2).mean(-1)
    return validation_mean(errors, folds.data)


def _solve(folds: _KernelFolds, params: Params, hparams: Params) -> Params:
    with torch.no_grad():
        matrix, rhs = _system(folds, {k: v.detach() for k, v in hparams.items()})
        return {"dual": torch.linalg.solve(matrix, rhs)}


def _fitted_attributes(folds: _KernelFolds, params: Params) -> list:
    coefficients = to_numpy(folds.root * params["dual"])
    train = to_numpy(folds.data.train).astype(bool)
    features = to_numpy(folds.data.X)
    attributes = []
    for k in range(train.shape[0]):
        dual = coefficients[k][train[k]]
        fold_features = features[k] if features.ndim == 3 else features
        attributes.append(
            {
                "dual_coef_": dual[:, 0] if folds.one_dimensional else dual,
                "X_fit_": fold_features[train[k]],
            }
        )
    return attributes


def kernel_ridge(estimator, data: FoldData, options) -> Problem:
    """Inner problem of :class:`~sklearn.kernel_ridge.KernelRidge`."""
    X = data.X
    n = data.train.shape[1]
    Y = np.asarray(data.y, dtype=float)
    kernel = estimator.kernel
    folds = _KernelFolds(
        data,
        targets=to_tensor(Y.reshape(n, -1), device=X.device, dtype=X.dtype),
        root=torch.sqrt(data.train * data.sample_weight)[..., None],
        identity=torch.eye(n, dtype=X.dtype, device=X.device),
        kernel=kernel,
        distances=None if kernel == "linear" else _distances(X, kernel),
        gamma=1.0 / X.shape[-1] if estimator.gamma is None else estimator.gamma,
        alpha=estimator.alpha,
        one_dimensional=Y.ndim == 1,
    )
    return Problem(
        partial(_init_params, folds),
        partial(_inner_loss, folds),
        partial(_outer_loss, folds),
        partial(_solve, folds),
        partial(_fitted_attributes, folds),
    )
