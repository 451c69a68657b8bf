"""KernelRidge with a linear, RBF or Laplacian kernel.

scikit-learn fits ``dual_coef_ = sqrt(s) (sqrt(s) K sqrt(s) + alpha I)^{-1} sqrt(s) y``
(``s`` the sample weights). The inner loss is the quadratic whose minimizer is
that system's solution, ``d^T (sqrt(s) K sqrt(s) + alpha I) d / 2 - d^T sqrt(s) y``,
strongly convex for any ``alpha > 0``, so implicit differentiation applies;
``dual_coef_ = sqrt(s) d``. The kernel is ``exp(-gamma ||x - x'||^2)`` (RBF) or
``exp(-gamma ||x - x'||_1)`` (Laplacian), differentiable in ``gamma``.
"""

import numpy as np
import torch

from ._base import FoldData, Problem, hyperparameter, validation_mean

KERNELS = ("linear", "rbf", "laplacian")


def _distances(X, kernel):
    if kernel == "rbf":
        squared = (X**2).sum(-1)
        product = X @ X.transpose(-1, -2)
        return (squared[..., :, None] + squared[..., None, :] - 2 * product).clamp_min(
            0
        )
    return torch.cdist(X, X, p=1)


def kernel_ridge(estimator, data: FoldData, options) -> Problem:
    """Inner problem of :class:`~sklearn.kernel_ridge.KernelRidge`."""
    X = data.X
    n_folds, n = data.train.shape
    Y = np.asarray(data.y, dtype=float)
    one_dimensional = Y.ndim == 1
    targets = torch.as_tensor(Y.reshape(n, -1), dtype=X.dtype).to(X.device)
    root = torch.sqrt(data.train * data.sample_weight)[..., None]
    identity = torch.eye(n, dtype=X.dtype, device=X.device)
    kernel = estimator.kernel
    distances = None if kernel == "linear" else _distances(X, kernel)
    gamma = 1.0 / X.shape[-1] if estimator.gamma is None else estimator.gamma

    def gram(hparams):
        if kernel == "linear":
            return X @ X.transpose(-1, -2)
        return torch.exp(-hyperparameter(hparams, "gamma", gamma, X) * distances)

    def system(hparams):
        alpha = hyperparameter(hparams, "alpha", estimator.alpha, X)
        matrix = root * gram(hparams) * root.transpose(1, 2) + alpha * identity
        return matrix, root * targets

    def init_params():
        return {
            "dual": torch.zeros(
                n_folds, n, targets.shape[1], dtype=X.dtype, device=X.device
            )
        }

    def inner_loss(params, hparams):
        matrix, rhs = system(hparams)
        d = params["dual"]
        quadratic = 0.5 * (d * (matrix @ d)).sum((1, 2)) - (d * rhs).sum((1, 2))
        return (quadratic / data.train.sum(1)).sum()

    def outer_loss(params, hparams):
        predictions = gram(hparams) @ (root * params["dual"])
        errors = ((targets - predictions) ** 2).mean(-1)
        return validation_mean(errors, data)

    def solve(params, hparams):
        with torch.no_grad():
            matrix, rhs = system({k: v.detach() for k, v in hparams.items()})
            return {"dual": torch.linalg.solve(matrix, rhs)}

    def fitted_attributes(params):
        coefficients = (root * params["dual"]).detach().cpu().numpy()
        train = data.train.cpu().numpy().astype(bool)
        features = X.cpu().numpy()
        folds = []
        for k in range(n_folds):
            dual = coefficients[k][train[k]]
            fold_features = features[k] if features.ndim == 3 else features
            folds.append(
                {
                    "dual_coef_": dual[:, 0] if one_dimensional else dual,
                    "X_fit_": fold_features[train[k]],
                }
            )
        return folds

    return Problem(init_params, inner_loss, outer_loss, solve, fitted_attributes)
