"""The inner solvers of the linear models: normal equations or damped Newton.

A squared loss (Ridge, RidgeClassifier, SGD's squared error) is solved exactly
by the normal equations; any other by a damped Newton method whose steps come
from the batched conjugate gradient with exact Hessian-vector products and the
preconditioners of :mod:`._curvature`, each fold with its own step.
"""

import warnings

import torch
from sklearn.exceptions import ConvergenceWarning
from torch import Tensor

from ..hypergrad._cg import conjugate_gradient, fold_dot, per_fold
from ._base import Params
from ._curvature import curvature, weighted_gram
from ._linear_loss import LinearFolds, LinearLoss, decision, with_intercept
from ._sparse import SparseDesign, transposed_matmul

# Levenberg-Marquardt damping of the Newton steps, relative to the gradient.
DAMPING = 1e-2
# Newton recomputes its preconditioner after a linear solve this long: on
# digits (LogisticRegression C, cv=5) the block-Jacobi Gram matrices cost as
# much as 9 Hessian products, and those of the cold start's uniform
# probabilities had its last two Newton steps take 18 and 24 products, 5 and
# 5 once recomputed (a search's whole cost: 124 products and 4 Gram
# computations, against 178 and 2 at 20).
REFRESH_PRODUCTS = 8
# Loosest linear solve of a Newton step done in double precision throughout.
FAST_FORCING = 1e-3


def _ridge_solve(gram: Tensor, rhs: Tensor, penalty: Tensor, fit_intercept) -> Params:
    """Exact minimizer, per fold k, of the weighted ridge objective.

    ``sum_i w_ki ||Y_i - x_i W_k - b_k||^2 + sum_j p_kj ||W_kj||^2``, by the
    normal equations ``(G_k + diag(p_k)) theta_k = r_k``, with ``G_k`` and
    ``r_k`` the design's weighted Gram matrix and right-hand side (the
    intercept column unpenalized).
    """
    if fit_intercept:
        penalty = torch.cat([penalty, torch.zeros_like(penalty[..., :1])], dim=-1)
    factor = torch.linalg.cholesky(gram + torch.diag_embed(penalty))
    theta = torch.cholesky_solve(rhs, factor)
    if fit_intercept:
        return {"coef": theta[:, :-1], "intercept": theta[:, -1]}
    return {"coef": theta}


def _ridge_rhs(loss: LinearLoss, folds: LinearFolds, design, weights, learned):
    """``design^T diag(w_k) Y`` per fold, computed once per run unless the
    sample weights are learned."""
    if learned or folds.cache.ridge is None:
        if isinstance(design, SparseDesign):
            rhs = transposed_matmul(design, weights[..., None] * loss.ridge_targets)
        else:
            rhs = design.transpose(-1, -2) @ (weights[..., None] * loss.ridge_targets)
        if learned:
            return rhs
        folds.cache.ridge = rhs
    return folds.cache.ridge


def _score_losses(loss, folds, params, hparams, scores) -> Tensor:
    """Each fold's training objective over its training size, (K,), from the
    scores ``X W + b`` of ``params``."""
    fit = (loss.weights(hparams) * loss.sample_loss(scores)).sum(1)
    penalty = (loss.penalty(hparams) * (params["coef"] ** 2).sum(-1)).sum(1)
    return (fit + penalty) / folds.n_train


def _fold_gradients(loss, folds, params, hparams, scores) -> tuple[Tensor, Params]:
    """The fold losses (K,) and their gradients in ``params``, from the
    scores of ``params``: one product with the transposed design."""
    with torch.enable_grad():
        leaf = scores.detach().requires_grad_()
        fit = (loss.weights(hparams) * loss.sample_loss(leaf)).sum(1)
        (response,) = torch.autograd.grad(fit.sum(), leaf)
    penalty = loss.penalty(hparams)
    coef = params["coef"]
    n_train = folds.n_train
    losses = (fit.detach() + (penalty * (coef**2).sum(-1)).sum(1)) / n_train
    grads = {
        "coef": (transposed_matmul(folds.X, response) + 2.0 * penalty[..., None] * coef)
        / n_train[:, None, None]
    }
    if "intercept" in params:
        grads["intercept"] = response.sum(1) / n_train[:, None]
    return losses, grads


def _newton_step(at, grads: Params, largest: Tensor, tol: float):
    """The Newton step ``-H^{-1} g`` of every fold, by an inexact linear solve,
    and the number of Hessian products it took."""
    # Inexact Newton: a looser linear solve far from the solution, and
    # none tighter than needed to bring the gradient below tol (the
    # next gradient is about the linear solve's residual).
    needed = 0.5 * tol / torch.sqrt(fold_dot(grads, grads))
    forcing = torch.maximum(torch.sqrt(largest), needed).clamp(max=0.5, min=1e-6)
    # Inexact Newton: an unconverged step is still a descent direction.
    # Single-precision products suffice for the loose solves: the
    # gradient, which decides convergence, stays in double.
    product = at.hessian_vector
    if at.fast_hessian_vector is not None and bool((forcing >= FAST_FORCING).all()):
        product = at.fast_hessian_vector
    step, _, products = conjugate_gradient(
        product,
        {k: -g for k, g in grads.items()},
        tol=forcing,
        max_iter=100,
        precondition=at.precondition,
        batched=True,
    )
    return step, products


def _backtrack(loss, folds, params, hparams, step, losses, slope, scores):
    """Each fold's Armijo step size along ``step`` (0 for a fold without a
    decrease after the backtracking), and the scores of the step taken."""
    # Near the solution the decrease is below rounding: take the step.
    eps = torch.finfo(losses.dtype).eps
    negligible = -slope <= 100 * eps * losses.abs()
    # The scores are linear in the parameters: one product for every trial.
    moved = decision(folds.X, step)
    size = torch.ones_like(losses)
    for _ in range(40):
        trial = {k: v + per_fold(size, v) * step[k] for k, v in params.items()}
        trial_scores = scores + per_fold(size, moved) * moved
        trial_losses = _score_losses(loss, folds, trial, hparams, trial_scores)
        accepted = (trial_losses <= losses + 1e-4 * size * slope) | negligible
        if bool(accepted.all()):
            break
        size = torch.where(accepted, size, 0.5 * size)
    size = torch.where(accepted, size, 0.0)
    return size, scores + per_fold(size, moved) * moved


def newton_solve(
    loss: LinearLoss, folds: LinearFolds, params: Params, hparams: Params
) -> Params:
    """Regularized Newton, each fold with its own Armijo backtracking step.

    The Hessian is damped by the gradient's largest entry, which keeps the
    steps finite where the loss is piecewise linear (Huber, modified
    Huber) and vanishes at the solution (quadratic convergence)."""
    params = {name: value.detach().clone() for name, value in params.items()}
    scores = decision(folds.X, params)
    slow_solve = False
    for _ in range(loss.max_iter + 1):
        losses, grads = _fold_gradients(loss, folds, params, hparams, scores)
        largest = torch.stack(
            [g.abs().flatten(1).max(1).values for g in grads.values()]
        ).amax(0)
        if float(largest.max()) <= loss.tol:
            return params
        if not torch.isfinite(losses).all():
            raise FloatingPointError(
                "The inner problem diverged (non-finite training loss); check "
                "the scale of the features and the hyperparameter bounds."
            )
        at = curvature(
            loss,
            folds,
            params,
            hparams,
            damping=DAMPING * largest,
            refresh=slow_solve,
            scores=scores,
        )
        step, products = _newton_step(at, grads, largest, loss.tol)
        # A preconditioner from an earlier point serves while it keeps
        # the linear solves short.
        slow_solve = products > REFRESH_PRODUCTS
        if slow_solve:
            folds.cache.stale = True
        slope = fold_dot(grads, step)
        size, scores = _backtrack(
            loss, folds, params, hparams, step, losses, slope, scores
        )
        params = {k: v + per_fold(size, v) * step[k] for k, v in params.items()}
    warnings.warn(
        f"The inner problem was not solved to tol={loss.tol} in {loss.max_iter} "
        "Newton iterations (inner_steps); hypergradients may be inaccurate.",
        ConvergenceWarning,
        stacklevel=2,
    )
    return params


def solve(
    loss: LinearLoss, folds: LinearFolds, params: Params, hparams: Params
) -> Params:
    """The inner solution, warm-started from ``params``, without a graph."""
    with torch.no_grad():
        hparams = {name: value.detach() for name, value in hparams.items()}
        if loss.ridge_targets is not None and folds.grams:
            # The normal equations from the per-fold Gram matrices; without
            # them (a wide sparse design), Newton's conjugate gradient.
            penalty = loss.penalty(hparams) / loss.ridge_scale
            weights = loss.weights(hparams)
            learned = "sample_weight" in hparams
            design = with_intercept(folds.X, loss.fit_intercept)
            return _ridge_solve(
                weighted_gram(design, weights, folds, learned),
                _ridge_rhs(loss, folds, design, weights, learned),
                penalty.expand(folds.n_train.shape[0], folds.X.shape[-1]),
                loss.fit_intercept,
            )
        return newton_solve(loss, folds, params, hparams)
