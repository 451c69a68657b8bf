"""Generalized linear models and the Huber regressor.

Each inner loss is the estimator's objective exactly as scikit-learn defines it
(up to a positive factor per fold, which moves neither the minimizer nor the
implicit hypergradient), with ``s_i`` the product of the fitted and the learned
sample weights and ``S = sum_i s_i``:

- ``PoissonRegressor``, ``GammaRegressor``, ``TweedieRegressor``:
  ``(1 / S) sum_i s_i l(y_i, z_i) + alpha / 2 ||w||^2`` with ``z = X w + b``
  and ``l`` scikit-learn's half deviance (``sklearn/_loss``) through its link:
  the log link for Poisson (power 1), Gamma (power 2) and Tweedie with
  ``1 <= power <= 2``; the identity link for Tweedie with ``power=0`` (the
  half squared error, solved exactly). Elsewhere the half Tweedie deviance is
  not convex in the scores (``0 < power < 1``, ``power > 2``, ``power < 0``,
  power 0 with the log link): refused. The validation loss is the mean half
  deviance, so its folds' minimizers are those of the estimator's ``score``
  (D^2, one minus the deviance over the null deviance of the fold).
- ``HuberRegressor``: ``sum_i s_i (sigma + H_eps((y_i - x_i w - b) / sigma)
  sigma) + alpha ||w||^2``, jointly in ``w``, ``b`` and the scale
  ``sigma > 0`` (``sklearn/linear_model/_huber.py``), ``H_eps(z) = z^2`` for
  ``|z| <= eps``, ``2 eps |z| - eps^2`` beyond. The loss is once but not twice
  differentiable: its Hessian, ``sum_{inliers} (2 s_i / sigma) v_i v_i^T``
  with ``v_i = (x_i, 1, r_i / sigma)``, jumps where a residual crosses
  ``eps sigma``. Away from those kinks the inner solution is smooth in
  ``alpha`` and ``epsilon`` and the implicit hypergradient exact; the
  validation loss is the squared error (the estimator's ``score`` is R^2).

A per-feature ``alpha_j`` (:class:`~skbilevel.PerFeature`) penalizes
``w_j^2`` alone, as a rescaling of feature ``j`` does.
"""

import warnings
from functools import partial
from typing import NamedTuple

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import GammaRegressor, PoissonRegressor
from sklearn.utils import check_array
from torch import Tensor

from ..utils import to_numpy, to_tensor
from ._base import (
    Curvature,
    FoldData,
    Params,
    Problem,
    fold_weights,
    hyperparameter,
    validation_mean,
)
from ._linear import linear_problem
from ._linear_loss import LinearLoss

# Levenberg-Marquardt damping of the Huber Newton steps, relative to the
# gradient (as the linear models' Newton method).
DAMPING = 1e-2


def _family(estimator):
    """The Tweedie power and whether the link is the identity."""
    if isinstance(estimator, PoissonRegressor):
        return 1.0, False
    if isinstance(estimator, GammaRegressor):
        return 2.0, False
    power, link = float(estimator.power), estimator.link
    identity = link == "identity" or (link == "auto" and power <= 0)
    if (power == 0 and identity) or (1 <= power <= 2 and not identity):
        return power, identity
    raise ValueError(
        f"Continuous hyperparameters of TweedieRegressor are not supported with "
        f"power={estimator.power!r} and link={link!r}: the half Tweedie deviance "
        "is not convex in the scores there (with the identity link and a "
        "power other than 0, it is defined only for positive scores), so its "
        "minimizer cannot be differentiated reliably. Supported: power=0 with "
        "the identity link, 1 <= power <= 2 with the log link."
    )


def _loss_name(estimator, power):
    if isinstance(estimator, PoissonRegressor):
        return "HalfPoissonLoss"
    if isinstance(estimator, GammaRegressor):
        return "HalfGammaLoss"
    return "HalfTweedieLossIdentity" if power == 0 else "HalfTweedieLoss"


def _check_targets(estimator, y, power):
    """Refuse targets outside the loss's domain, in scikit-learn's words."""
    valid = np.isfinite(y).all()
    if 0 < power < 2:
        valid = valid and (y >= 0).all()
    elif power >= 2:
        valid = valid and (y > 0).all()
    if not valid:
        raise ValueError(
            "Some value(s) of y are out of the valid range of the loss "
            f"{_loss_name(estimator, power)!r}."
        )


def half_deviance(power, y: Tensor, z: Tensor, constant=True) -> Tensor:
    """scikit-learn's half Tweedie deviance of ``y`` at raw predictions ``z``.

    The identity link for ``power=0``, the log link otherwise; ``constant``
    adds the terms in ``y`` alone, which make it a deviance (zero at
    ``mu = y``).
    """
    if power == 0:
        return 0.5 * (y - z) ** 2
    if power == 1:
        loss = torch.exp(z) - y * z
        return loss + (torch.xlogy(y, y) - y if constant else 0.0)
    if power == 2:
        loss = z + y * torch.exp(-z)
        return loss - (torch.log(y) + 1.0 if constant else 0.0)
    loss = torch.exp((2 - power) * z) / (2 - power)
    loss = loss - y * torch.exp((1 - power) * z) / (1 - power)
    if constant:
        loss = loss + y ** (2 - power) / ((1 - power) * (2 - power))
    return loss


def _glm_penalty(data: FoldData, default, hparams: Params) -> Tensor:
    """``alpha S / 2`` per fold and feature: the objective times ``S``."""
    alpha = hyperparameter(hparams, "alpha", default, data.X)
    total = fold_weights(data, hparams).sum(1)
    return 0.5 * total[:, None] * alpha.expand(data.X.shape[-1])[None, :]


def _glm_init(init, data: FoldData, targets: Tensor):
    """Zero coefficients and the log of each fold's weighted mean target as
    intercept (scikit-learn's start): Newton's first steps then do not
    overflow the exponential."""
    params = init()
    weights = data.train * data.sample_weight
    mean = (weights * targets).sum(1) / weights.sum(1)
    params["intercept"] = torch.log(mean.clamp_min(1e-12))[:, None]
    return params


def generalized_linear(estimator, data: FoldData, options) -> Problem:
    """Inner problem of PoissonRegressor, GammaRegressor or TweedieRegressor."""
    power, identity = _family(estimator)
    y = check_array(data.y, ensure_2d=False, dtype=np.float64)
    _check_targets(estimator, y, power)
    targets = to_tensor(y, device=data.X.device, dtype=data.X.dtype)

    def sample_loss(Z):
        return half_deviance(power, targets, Z[..., 0], constant=False)

    loss = LinearLoss(
        n_outputs=1,
        fit_intercept=estimator.fit_intercept,
        sample_loss=sample_loss,
        validation_loss=lambda Z: half_deviance(power, targets, Z[..., 0]),
        penalty=partial(_glm_penalty, data, estimator.alpha),
        weights=partial(fold_weights, data),
        tol=options["tol"],
        max_iter=options["max_iter"],
        ridge_targets=targets[:, None] if identity else None,
        ridge_scale=0.5,
        one_dimensional=True,
    )
    problem = linear_problem(data, loss)
    if identity or not estimator.fit_intercept:
        return problem
    return problem._replace(
        init_params=partial(_glm_init, problem.init_params, data, targets)
    )


class HuberLoss(NamedTuple):
    """The data and fixed settings of a HuberRegressor's K inner problems."""

    data: FoldData
    targets: Tensor  # (n,)
    n_train: Tensor  # (K,)
    fit_intercept: bool
    alpha: float
    epsilon: float
    tol: float
    max_iter: int


def _stack(huber: HuberLoss, params: Params) -> Tensor:
    """Coefficients, intercept and scale as one (K, D) tensor."""
    parts = [params["coef"]]
    if huber.fit_intercept:
        parts.append(params["intercept"])
    return torch.cat([*parts, params["scale"]], dim=1)


def _unstack(huber: HuberLoss, theta: Tensor) -> Params:
    n_features = huber.data.X.shape[-1]
    # Every parameter is (K, ...) with a dimension after the folds'.
    params = {"coef": theta[:, :n_features], "scale": theta[:, -1:]}
    if huber.fit_intercept:
        params["intercept"] = theta[:, n_features : n_features + 1]
    return params


def _residuals(huber: HuberLoss, params: Params) -> Tensor:
    """``y - X w - b`` of every fold, (K, n)."""
    X, coef = huber.data.X, params["coef"]
    scores = coef @ X.T if X.dim() == 2 else (X @ coef[..., None])[..., 0]
    if huber.fit_intercept:
        scores = scores + params["intercept"]
    return huber.targets - scores


def _huber_hparams(huber: HuberLoss, hparams: Params):
    like = huber.data.X
    alpha = hyperparameter(hparams, "alpha", huber.alpha, like)
    epsilon = hyperparameter(hparams, "epsilon", huber.epsilon, like)
    return alpha.expand(like.shape[-1]), epsilon


def huber_fold_losses(huber: HuberLoss, params: Params, hparams: Params) -> Tensor:
    """Each fold's HuberRegressor objective over its training size, (K,);
    infinite where the scale is not positive."""
    alpha, epsilon = _huber_hparams(huber, hparams)
    positive = params["scale"][:, 0] > 0
    sigma = torch.where(positive[:, None], params["scale"], 1.0)
    residuals = _residuals(huber, params)
    absolute = residuals.abs()
    inlier = absolute <= epsilon * sigma
    terms = sigma + torch.where(
        inlier,
        residuals**2 / sigma,
        2.0 * epsilon * absolute - epsilon**2 * sigma,
    )
    fit = (fold_weights(huber.data, hparams) * terms).sum(1)
    losses = (fit + (alpha * params["coef"] ** 2).sum(1)) / huber.n_train
    return torch.where(positive, losses, torch.inf)


def _huber_hessian(huber: HuberLoss, params: Params, hparams: Params) -> Tensor:
    """The exact Hessian of each fold's loss, (K, D, D), away from the kinks:
    ``(sum_{inliers} (2 s_i / sigma) v_i v_i^T + 2 diag(alpha, 0, 0)) / n_k``
    with ``v_i = (x_i, 1, r_i / sigma)``."""
    alpha, epsilon = _huber_hparams(huber, hparams)
    X = huber.data.X
    n_folds, n = huber.n_train.shape[0], X.shape[-2]
    sigma = params["scale"]
    residuals = _residuals(huber, params)
    inlier = residuals.abs() <= epsilon * sigma
    weights = fold_weights(huber.data, hparams) * inlier * 2.0 / sigma
    columns = [X.expand(n_folds, n, X.shape[-1])]
    if huber.fit_intercept:
        columns.append(torch.ones_like(residuals)[..., None])
    columns.append((residuals / sigma)[..., None])
    design = torch.cat(columns, dim=-1)
    hessian = design.transpose(1, 2) @ (weights[..., None] * design)
    diagonal = torch.zeros_like(hessian[:, 0])
    diagonal[:, : X.shape[-1]] = 2.0 * alpha
    hessian = hessian + torch.diag_embed(diagonal)
    return hessian / huber.n_train[:, None, None]


def _cholesky(hessian: Tensor, damping: Tensor) -> Tensor:
    """The Cholesky factor of ``hessian + damping I`` with a relative jitter
    (the scale's and the intercept's rows vanish without inliers)."""
    eye = torch.eye(hessian.shape[-1], dtype=hessian.dtype, device=hessian.device)
    jitter = 1e-10 * torch.diagonal(hessian, dim1=-2, dim2=-1).mean(-1)
    extra = damping + jitter.clamp_min(torch.finfo(hessian.dtype).tiny)
    return torch.linalg.cholesky(hessian + extra[:, None, None] * eye)


def _huber_curvature(huber: HuberLoss, params: Params, hparams: Params) -> Curvature:
    """Exact Hessian products and their exact inverse (a Cholesky solve)."""
    hparams = {name: value.detach() for name, value in hparams.items()}
    params = {name: value.detach() for name, value in params.items()}
    hessian = _huber_hessian(huber, params, hparams)
    factor = _cholesky(hessian, torch.zeros_like(huber.n_train))

    def hessian_vector(v):
        return _unstack(huber, (hessian @ _stack(huber, v)[..., None])[..., 0])

    def precondition(v):
        stacked = _stack(huber, v)[..., None]
        return _unstack(huber, torch.cholesky_solve(stacked, factor)[..., 0])

    return Curvature(hessian_vector, precondition)


def _value_and_gradient(huber: HuberLoss, theta: Tensor, hparams: Params):
    with torch.enable_grad():
        leaf = theta.detach().requires_grad_()
        losses = huber_fold_losses(huber, _unstack(huber, leaf), hparams)
        (gradient,) = torch.autograd.grad(losses.sum(), leaf)
    return losses.detach(), gradient


def _backtrack(huber, theta, hparams, step, losses, slope) -> Tensor:
    """Each fold's Armijo step size along ``step`` (0 without a decrease);
    a step to a non-positive scale has an infinite loss."""
    eps = torch.finfo(losses.dtype).eps
    negligible = -slope <= 100 * eps * losses.abs()
    size = torch.ones_like(losses)
    for _ in range(40):
        trial = huber_fold_losses(
            huber, _unstack(huber, theta + size[:, None] * step), hparams
        )
        decrease = trial <= losses + 1e-4 * size * slope
        accepted = decrease | (negligible & torch.isfinite(trial))
        if bool(accepted.all()):
            break
        size = torch.where(accepted, size, 0.5 * size)
    return torch.where(accepted, size, 0.0)


def _optimal_scale(huber: HuberLoss, theta: Tensor, hparams: Params) -> Tensor:
    """The exact minimizer in the scale of each fold's loss at fixed (w, b).

    With the m samples of smallest ``|r_i| / eps`` inliers, the derivative
    in sigma is ``S - eps^2 (S - S_m) - Q_m / sigma^2`` (``S_m``, ``Q_m`` the
    inliers' weights and weighted squared residuals): it vanishes at
    ``sigma_m = (Q_m / (S - eps^2 (S - S_m)))^(1/2)``, the minimizer where
    sigma_m lies between the m-th and the (m + 1)-th threshold ``|r_i| / eps``
    (the derivative increases: the loss is convex in sigma).
    """
    _, epsilon = _huber_hparams(huber, hparams)
    residuals = _residuals(huber, _unstack(huber, theta))
    weights = fold_weights(huber.data, hparams)
    thresholds, order = (residuals.abs() / epsilon).sort(dim=1)
    weights = weights.gather(1, order)
    inside = weights.cumsum(1)
    squares = (weights * residuals.gather(1, order) ** 2).cumsum(1)
    total = inside[:, -1:]
    denominator = total - epsilon**2 * (total - inside)
    sigma = torch.sqrt(squares / denominator.clamp_min(torch.finfo(theta.dtype).tiny))
    above = torch.cat(
        [thresholds[:, 1:], torch.full_like(thresholds[:, :1], torch.inf)], 1
    )
    valid = (denominator > 0) & (sigma >= thresholds) & (sigma < above) & (sigma > 0)
    first = valid.to(torch.int8).argmax(1, keepdim=True)
    found = valid.any(1)
    return torch.where(found, sigma.gather(1, first)[:, 0], theta[:, -1])


def _huber_solve(huber: HuberLoss, params: Params, hparams: Params) -> Params:
    """Damped Newton on (w, b, sigma), each fold with its own Armijo step,
    each step followed by the exact minimization in sigma.

    The loss is piecewise twice differentiable: Newton's model is exact
    between kinks and the line search keeps every step a descent. Near
    ``epsilon = 1`` the optimal scale tends to 0 (the loss tends to least
    absolute deviation), where Newton's steps in sigma alone would crawl;
    its exact minimization (:func:`_optimal_scale`) keeps it optimal for the
    current residuals.
    """
    epsilon = float(_huber_hparams(huber, hparams)[1])
    if epsilon < 1:
        raise ValueError(
            "The 'epsilon' parameter of HuberRegressor must be a float in the "
            f"range [1.0, inf). Got {epsilon!r} instead: give epsilon's Real "
            "bounds of at least 1."
        )
    with torch.no_grad():
        hparams = {name: value.detach() for name, value in hparams.items()}
        theta = _stack(huber, params).detach().clone()
        theta[:, -1] = torch.where(theta[:, -1] > 0, theta[:, -1], 1.0)
        for _ in range(huber.max_iter + 1):
            theta[:, -1] = _optimal_scale(huber, theta, hparams)
            losses, gradient = _value_and_gradient(huber, theta, hparams)
            largest = gradient.abs().amax(1)
            if float(largest.max()) <= huber.tol:
                return _unstack(huber, theta)
            if not torch.isfinite(losses).all():
                raise FloatingPointError(
                    "The inner problem diverged (non-finite training loss); "
                    "check the scale of the features and the hyperparameter bounds."
                )
            hessian = _huber_hessian(huber, _unstack(huber, theta), hparams)
            factor = _cholesky(hessian, DAMPING * largest)
            step = -torch.cholesky_solve(gradient[..., None], factor)[..., 0]
            slope = (gradient * step).sum(1)
            size = _backtrack(huber, theta, hparams, step, losses, slope)
            theta = theta + size[:, None] * step
    warnings.warn(
        f"The inner problem was not solved to tol={huber.tol} in "
        f"{huber.max_iter} Newton iterations (inner_steps); hypergradients may "
        "be inaccurate.",
        ConvergenceWarning,
        stacklevel=2,
    )
    return _unstack(huber, theta)


def _huber_init(huber: HuberLoss) -> Params:
    """Zero coefficients and intercepts, unit scales (scikit-learn's start)."""
    X = huber.data.X
    n_folds = huber.n_train.shape[0]
    theta = torch.zeros(
        n_folds,
        X.shape[-1] + 1 + huber.fit_intercept,
        dtype=X.dtype,
        device=X.device,
    )
    theta[:, -1] = 1.0
    return _unstack(huber, theta)


def _huber_outer(huber: HuberLoss, params: Params, hparams: Params) -> Tensor:
    """The mean over folds of the mean squared validation error."""
    return validation_mean(_residuals(huber, params) ** 2, huber.data)


def _huber_attributes(huber: HuberLoss, params: Params) -> list:
    """Per fold, the ``coef_``, ``intercept_`` and ``scale_`` of the fit."""
    coef, scale = to_numpy(params["coef"]), to_numpy(params["scale"][:, 0])
    intercept = np.zeros(coef.shape[0])
    if huber.fit_intercept:
        intercept = to_numpy(params["intercept"][:, 0])
    return [
        {"coef_": coef[k], "intercept_": float(intercept[k]), "scale_": float(scale[k])}
        for k in range(coef.shape[0])
    ]


def huber(estimator, data: FoldData, options) -> Problem:
    """Inner problem of :class:`~sklearn.linear_model.HuberRegressor`."""
    y = check_array(data.y, ensure_2d=False, dtype=np.float64)
    loss = HuberLoss(
        data,
        to_tensor(y, device=data.X.device, dtype=data.X.dtype),
        data.train.sum(dim=1),
        estimator.fit_intercept,
        estimator.alpha,
        estimator.epsilon,
        options["tol"],
        options["max_iter"],
    )
    return Problem(
        partial(_huber_init, loss),
        lambda params, hparams: huber_fold_losses(loss, params, hparams).sum(),
        partial(_huber_outer, loss),
        partial(_huber_solve, loss),
        partial(_huber_attributes, loss),
        partial(_huber_curvature, loss),
    )
