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

import warnings
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.preprocessing import LabelEncoder

from ._base import (
    Curvature,
    FoldData,
    Problem,
    check_classes_in_folds,
    class_weights,
    fold_weights,
    hyperparameter,
    validation_mean,
)

SGD_CLASSIFIER_LOSSES = ("log_loss", "modified_huber", "squared_hinge", "squared_error")
SGD_REGRESSOR_LOSSES = ("squared_error", "huber", "squared_epsilon_insensitive")


def _matmul(X, coef):
    """``X @ coef`` per fold, (K, n, c); one matrix product when X is shared."""
    if X.dim() == 2:
        n_folds, n_features, n_outputs = coef.shape
        flat = coef.permute(1, 0, 2).reshape(n_features, n_folds * n_outputs)
        return (X @ flat).reshape(X.shape[0], n_folds, n_outputs).permute(1, 0, 2)
    return X @ coef


def _transposed_matmul(X, response):
    """``X^T @ response`` per fold, (K, d, c)."""
    if X.dim() == 2:
        n_folds, n, n_outputs = response.shape
        flat = response.permute(1, 0, 2).reshape(n, n_folds * n_outputs)
        return (X.T @ flat).reshape(X.shape[1], n_folds, n_outputs).permute(1, 0, 2)
    return X.transpose(-1, -2) @ response


def _decision(X, params):
    scores = _matmul(X, params["coef"])
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


# Levenberg-Marquardt damping of the Newton steps, relative to the gradient.
DAMPING = 1e-2
# Newton recomputes its preconditioner after a linear solve this long.
REFRESH_PRODUCTS = 20
# Most features for the block-Jacobi preconditioner.
BLOCK_FEATURES = 128
# Hessian products in single precision first, from this many multiply-adds
# per matrix product (below, casting costs more than it saves); the
# preconditioner's Gram matrices from 16 times as many.
FAST_SIZE = 2**20
# Loosest linear solve of a Newton step done in double precision throughout.
FAST_FORCING = 1e-3


def _fold_dot(a, b):
    """Per-fold inner products (K,) of two dicts of (K, ...) tensors."""
    return sum((a[name] * b[name]).flatten(1).sum(1) for name in a)


def _per_fold(scalars, tensor):
    return scalars.reshape(-1, *([1] * (tensor.dim() - 1)))


def _batched_pcg(matvec, b, precondition, tol, max_iter, x0=None):
    """Preconditioned conjugate gradient run separately (but batched) per fold.

    Solves ``H_k x_k = b_k`` for every fold k, each to the relative residual
    ``tol`` (a float, or one per fold), from ``x0`` (zero by default); a fold
    that has converged stops moving. Returns the solutions, whether every
    fold converged and the number of products taken.
    """
    if x0 is None:
        x = {name: torch.zeros_like(value) for name, value in b.items()}
        residual = dict(b)
    else:
        x = dict(x0)
        product = matvec(x)
        residual = {name: b[name] - product[name] for name in b}
    preconditioned = precondition(residual)
    direction = dict(preconditioned)
    rz = _fold_dot(residual, preconditioned)
    threshold = tol * torch.sqrt(_fold_dot(b, b))
    iterations = 0
    for iterations in range(max_iter + 1):
        active = torch.sqrt(_fold_dot(residual, residual)) > threshold
        if not bool(active.any()) or iterations == max_iter:
            break
        product = matvec(direction)
        curvature = _fold_dot(direction, product)
        alpha = torch.where(active & (curvature > 0), rz / curvature, 0.0)
        for name in x:
            step = _per_fold(alpha, x[name])
            x[name] = x[name] + step * direction[name]
            residual[name] = residual[name] - step * product[name]
        preconditioned = precondition(residual)
        rz_new = _fold_dot(residual, preconditioned)
        beta = torch.where(rz > 0, rz_new / rz, 0.0)
        for name in x:
            direction[name] = (
                preconditioned[name] + _per_fold(beta, x[name]) * direction[name]
            )
        rz = rz_new
    converged = torch.sqrt(_fold_dot(residual, residual)) <= threshold
    return x, bool(converged.all()), iterations


# Largest table of products x_ij x_ik kept for the Gram matrices (entries).
PRODUCTS_SIZE = 2**25


def _weighted_grams(design, weights, cache, precision=None):
    """``sum_i weights[k, i, a] x_i x_i^T`` for every fold k and output a,
    (K, c, D, D), with ``design`` (n, D) or (K, n, D).

    One matrix product against the table of the products ``x_ij x_ik``,
    j <= k, when it fits in :data:`PRODUCTS_SIZE` entries (computed once, in
    ``cache``, as the design does not change) and there are at least 16
    folds times outputs to amortize reading it; else one product per output.
    The products are taken in ``precision`` (the design's by default), the
    result returned in the design's.
    """
    n_folds, n, n_outputs = weights.shape
    size = design.shape[-1]
    precision = precision or design.dtype
    table = design[..., 0].numel() * size * (size + 1) // 2
    # The table is read once per product: worth it for many folds and outputs.
    if table > PRODUCTS_SIZE or n_folds * n_outputs < 16:
        reduced = design.to(precision)
        transposed = reduced.transpose(-1, -2)
        grams = torch.stack(
            [
                transposed @ (weights[..., a, None].to(precision) * reduced)
                for a in range(n_outputs)
            ],
            dim=1,
        )
        return grams.to(design.dtype)
    rows, columns = torch.triu_indices(size, size, device=design.device)
    if "products" not in cache:
        reduced = design.to(precision)
        cache["products"] = reduced[..., rows] * reduced[..., columns]
    products = cache["products"]
    if design.dim() == 2:
        flat = weights.transpose(1, 2).reshape(n_folds * n_outputs, n)
        packed = (flat.to(precision) @ products).reshape(n_folds, n_outputs, -1)
    else:
        packed = weights.transpose(1, 2).to(precision) @ products  # (K, c, T)
    packed = packed.to(design.dtype)
    grams = packed.new_zeros(n_folds, n_outputs, size, size)
    grams[..., rows, columns] = packed
    grams[..., columns, rows] = packed
    return grams


def _refined_pcg(curvature, b, tol, max_iter, x0=None):
    """:func:`_batched_pcg` on ``curvature``: first with its single-precision
    products, if it has them, then in double precision from that solution,
    so that the residual ``tol`` is reached with exact products."""
    products = 0
    if curvature.fast_hessian_vector is not None:
        x0, _, products = _batched_pcg(
            curvature.fast_hessian_vector,
            b,
            curvature.precondition,
            tol,
            max_iter,
            x0=x0,
        )
    x, converged, more = _batched_pcg(
        curvature.hessian_vector, b, curvature.precondition, tol, max_iter, x0=x0
    )
    return x, converged, products + more


def _score_curvature(sample_loss, scores, weights):
    """The curvature ``B_i`` of the weighted sample losses in the scores.

    Returns ``product(U) -> (B_i u_i)_i``, ``sum_i B_i`` (K, c, c) and the
    diagonals of the ``B_i`` (K, n, c), from the ``c`` second-derivative rows
    of any ``sample_loss(Z) -> (K, n)`` (autograd).
    """
    n_outputs = scores.shape[-1]
    with torch.enable_grad():
        scores = scores.detach().requires_grad_()
        total = (weights * sample_loss(scores)).sum()
        (first,) = torch.autograd.grad(total, scores, create_graph=True)
        rows = []
        for a in range(n_outputs):
            (row,) = torch.autograd.grad(
                first[..., a].sum(), scores, retain_graph=True, allow_unused=True
            )
            rows.append(torch.zeros_like(scores) if row is None else row)
    hessians = torch.stack(rows, dim=-1).detach()  # (K, n, c, c)

    def product(U):
        return torch.einsum("knab,knb->kna", hessians, U)

    return product, hessians.sum(1), torch.diagonal(hessians, dim1=-2, dim2=-1)


def _softmax_curvature(scores, weights):
    """:func:`_score_curvature` of the multinomial log-loss, in closed form:
    ``B_i = w_i (diag(p_i) - p_i p_i^T)``."""
    probabilities = torch.softmax(scores, dim=-1)
    weighted = weights[..., None] * probabilities

    def product(U):
        return weighted * (U - (probabilities * U).sum(-1, keepdim=True))

    total = torch.diag_embed(weighted.sum(1)) - weighted.transpose(1, 2) @ probabilities
    return product, total, weighted * (1.0 - probabilities)


def _logistic_curvature(scores, weights):
    """:func:`_score_curvature` of the binomial log-loss, ``softplus(-y z)``:
    ``B_i = w_i s_i (1 - s_i)`` with ``s_i = sigmoid(z_i)``, whatever ``y_i``."""
    sigmoid = torch.sigmoid(scores)
    hessians = weights[..., None] * sigmoid * (1.0 - sigmoid)  # (K, n, 1)

    def product(U):
        return hessians * U

    return product, hessians.sum(1)[..., None], hessians


def linear_problem(data: FoldData, spec) -> Problem:
    """The :class:`Problem` of a linear model described by ``spec`` (a dict).

    ``spec`` holds ``n_outputs``, ``fit_intercept``, ``sample_loss(Z) -> (K, n)``,
    ``validation_loss(Z) -> (K, n)``, ``penalty(hparams) -> (K, d)`` (the factor
    of ``||W_j||^2`` in each fold's loss), ``weights(hparams) -> (K, n)``,
    ``ridge_targets`` (targets when the sample loss is ``q * ||y - z||^2``, with
    ``q = ridge_scale``: solved exactly), ``solver_options`` and optionally
    ``score_curvature`` (a closed form of :func:`_score_curvature`).

    Other losses are solved by a damped Newton method whose steps come from
    conjugate gradient with exact Hessian-vector products and a block-Jacobi
    (few features) or Kronecker-factored (many) preconditioner
    (:func:`curvature`), each fold with its own step; the same curvature
    serves the implicit hypergradient.
    """
    X = data.X
    n_folds, n_features = data.train.shape[0], X.shape[-1]
    n_train = data.train.sum(dim=1)
    dtype, device = X.dtype, X.device
    n_outputs = spec["n_outputs"]
    # The block-Jacobi preconditioner costs as much as d / 2 Hessian
    # products per fold; past BLOCK_FEATURES (MNIST's 784), a Kronecker
    # product whose left factor is computed once per run serves instead.
    blocks = n_features <= BLOCK_FEATURES
    cache = {}

    def init_params():
        params = {
            "coef": torch.zeros(
                n_folds, n_features, n_outputs, dtype=dtype, device=device
            )
        }
        if spec["fit_intercept"]:
            params["intercept"] = torch.zeros(
                n_folds, n_outputs, dtype=dtype, device=device
            )
        return params

    def fold_losses(params, hparams):
        fit = (
            spec["weights"](hparams) * spec["sample_loss"](_decision(X, params))
        ).sum(1)
        penalty = (spec["penalty"](hparams) * (params["coef"] ** 2).sum(-1)).sum(1)
        return (fit + penalty) / n_train

    def inner_loss(params, hparams):
        return fold_losses(params, hparams).sum()

    def outer_loss(params, hparams):
        return validation_mean(spec["validation_loss"](_decision(X, params)), data)

    def curvature(params, hparams, damping=None, refresh=False):
        """Exact Hessian products and a preconditioner.

        ``damping`` (K,), if given, is added to each fold's Hessian
        (Levenberg-Marquardt), for the Newton steps of :func:`newton_solve`.
        The block-Jacobi preconditioner's Gram matrices cost ``c n d^2`` per
        fold: a damped call reuses those of the last call that computed them
        (a preconditioner from a nearby point still serves) unless
        ``refresh``; an undamped one (at an inner solution, for the
        hypergradient) computes them.

        With scores ``Z = X W + b`` and ``B_i`` the (weighted) Hessian of the
        sample loss in ``z_i``, each fold's Hessian is
        ``(sum_i x_i x_i^T (x) B_i + 2 diag(penalty) (x) I) / n_k`` (intercept
        as a column of ones). The preconditioner is, on up to
        :data:`BLOCK_FEATURES` features, :func:`block_jacobi`; on more, a
        Kronecker product :func:`kronecker`, whose left factor is computed
        once per run; for a softmax, either is completed by
        :func:`exact_shift`. On large problems, ``fast_hessian_vector`` takes
        the matrix products in single precision.
        """
        hparams = {name: value.detach() for name, value in hparams.items()}
        params = {name: value.detach() for name, value in params.items()}
        weights = spec["weights"](hparams)
        penalty = spec["penalty"](hparams)
        if spec.get("score_curvature") is not None:
            # Closed form: products in O(n c), not O(n c^2).
            score_product, curvature_sum, diagonal = spec["score_curvature"](
                _decision(X, params), weights
            )
        else:
            score_product, curvature_sum, diagonal = _score_curvature(
                spec["sample_loss"], _decision(X, params), weights
            )
        scale = n_train[:, None, None]
        ones = torch.ones(X.shape[-2], 1, dtype=dtype, device=device)
        design = X
        if spec["fit_intercept"]:
            design = torch.cat([X, ones.expand(*X.shape[:-1], 1)], dim=-1)
        # The penalty on the design's columns (none on the intercept's).
        column_penalty = 2.0 * penalty
        if spec["fit_intercept"]:
            column_penalty = torch.cat(
                [column_penalty, torch.zeros_like(column_penalty[:, :1])], 1
            )

        def hessian_vector(v, features=X):
            """``H v``, the matrix products with ``features`` (X, or X in
            single precision) and the rest in X's precision."""
            scores = _matmul(features, v["coef"].to(features.dtype)).to(dtype)
            if "intercept" in v:
                scores = scores + v["intercept"][:, None, :]
            response = score_product(scores)
            product = {
                "coef": (
                    _transposed_matmul(features, response.to(features.dtype)).to(dtype)
                    + 2.0 * penalty[..., None] * v["coef"]
                )
                / scale
            }
            if "intercept" in v:
                product["intercept"] = response.sum(1) / n_train[:, None]
            if damping is not None:
                product = {
                    k: p + _per_fold(damping, p) * v[k] for k, p in product.items()
                }
            return product

        # Large problems take their products (Hessian, Gram) in single
        # precision where double is not needed.
        single = dtype == torch.float64 and X.numel() * n_folds * n_outputs >= FAST_SIZE
        single_grams = (
            dtype == torch.float64
            and X.numel() * X.shape[-1] * n_folds * n_outputs >= FAST_SIZE * 16
        )

        def stack(v):
            if "intercept" in v:
                return torch.cat([v["coef"], v["intercept"][:, None, :]], dim=1)
            return v["coef"]

        def unstack(stacked):
            out = {"coef": stacked[:, :n_features]}
            if spec["fit_intercept"]:
                out["intercept"] = stacked[:, n_features]
            return out

        def block_jacobi():
            """The exact diagonal blocks of the Hessian, one per output.

            Block ``a`` is ``(sum_i (B_i)_aa x_i x_i^T + 2 diag(penalty)) / n_k``:
            exact when the outputs are independent (one-vs-rest, binary).
            """
            eye = torch.eye(design.shape[-1], dtype=dtype, device=device)
            # Undamped, the curvature is at an inner solution, for the
            # hypergradient's tight solves: its blocks are always fresh (and
            # then serve the next outer step's Newton steps).
            if refresh or damping is None or "grams" not in cache:
                cache["grams"] = _weighted_grams(
                    design, diagonal, cache, torch.float32 if single_grams else None
                )
            blocks = cache["grams"] + torch.diag_embed(column_penalty)[:, None]
            extra = torch.zeros_like(n_train)
            if damping is not None:
                extra = damping * n_train
            # The intercept block is singular on data a model separates, and
            # single-precision blocks are positive definite to within rounding.
            relative = 1e-6 if single_grams else 1e-10
            jitter = relative * torch.diagonal(blocks, dim1=-2, dim2=-1).mean(-1)
            extra = extra[:, None] + jitter.clamp_min(torch.finfo(dtype).tiny)
            factors = torch.linalg.cholesky(blocks + extra[..., None, None] * eye)

            def precondition(stacked):  # (K, D, c)
                solved = torch.cholesky_solve(
                    stacked.transpose(-1, -2)[..., None], factors
                )
                return solved[..., 0].transpose(-1, -2) * scale

            return precondition

        def exact_shift(precondition):
            """A softmax's Hessian splits exactly between the common shift of
            every output (``w (x) 1``, curved by the penalty and the damping
            alone: inverted exactly) and the rest (``precondition``, projected
            off the shift)."""
            if not spec.get("softmax"):
                return lambda v: unstack(precondition(stack(v)))
            shift = column_penalty / n_train[:, None]
            if damping is not None:
                shift = shift + damping[:, None]
            shift_inverse = torch.where(shift > 0, 1.0 / shift, 0.0)[..., None]

            def shifted(v):
                stacked = stack(v)
                mean = stacked.mean(-1, keepdim=True)
                solved = precondition(stacked - mean)
                solved = solved - solved.mean(-1, keepdim=True)
                return unstack(solved + shift_inverse * mean)

            return shifted

        def kronecker():
            """Replaces ``B_i`` by ``s_i S`` (``s_i`` the sample weight), with
            ``S = sum_i B_i / sum_i s_i``, and the penalty by
            ``diag(2 penalty / sigma) (x) S`` (``sigma`` the mean eigenvalue of
            ``S``): a Kronecker product ``A (x) S``, inverted by two Cholesky
            factorizations, ``A`` computed once per run."""
            total = weights.sum(1).clamp_min(torch.finfo(dtype).tiny)
            right = curvature_sum / total[:, None, None]
            sigma = torch.diagonal(right, dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)
            eye_c = torch.eye(n_outputs, dtype=dtype, device=device)
            if n_outputs > 1:
                # A softmax's curvature is blind to adding a constant to every
                # score; give that direction the mean curvature.
                flat = torch.full((n_outputs, n_outputs), 1.0 / n_outputs, dtype=dtype)
                right = right + sigma[:, None, None] * flat.to(device)
            right = right + 1e-8 * sigma[:, None, None] * eye_c
            if "sample_weight" in hparams or "left" not in cache:
                left = design.transpose(-1, -2) @ (weights[..., None] * design)
                if "sample_weight" not in hparams:
                    cache["left"] = left
            else:
                left = cache["left"]
            left = left + torch.diag_embed(column_penalty / sigma[:, None])
            if damping is not None:
                left = left + (damping * n_train / sigma)[:, None, None] * torch.eye(
                    left.shape[-1], dtype=dtype, device=device
                )
            size = left.shape[-1]
            jitter = 1e-10 * torch.diagonal(left, dim1=-2, dim2=-1).mean(-1)
            jitter = jitter.clamp_min(1.0)
            left = left + jitter[:, None, None] * torch.eye(size, dtype=dtype).to(
                device
            )
            left_factor = torch.linalg.cholesky(left)
            right_factor = torch.linalg.cholesky(right)

            def precondition(stacked):  # (K, D, c)
                solved = torch.cholesky_solve(stacked, left_factor)
                solved = torch.cholesky_solve(solved.transpose(-1, -2), right_factor)
                return solved.transpose(-1, -2) * scale

            return precondition

        fast = None
        if single:
            if "single" not in cache:
                cache["single"] = X.float()
            fast = partial(hessian_vector, features=cache["single"])
        return Curvature(
            hessian_vector,
            exact_shift(block_jacobi() if blocks else kronecker()),
            fast,
        )

    def newton_solve(params, hparams, tol, max_iter):
        """Regularized Newton, each fold with its own Armijo backtracking step.

        The Hessian is damped by the gradient's largest entry, which keeps the
        steps finite where the loss is piecewise linear (Huber, modified
        Huber) and vanishes at the solution (quadratic convergence)."""
        params = {name: value.detach().clone() for name, value in params.items()}
        slow_solve = False
        for _ in range(max_iter + 1):
            with torch.enable_grad():
                leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
                losses = fold_losses(leaves, hparams)
                grads = dict(
                    zip(
                        leaves,
                        torch.autograd.grad(losses.sum(), list(leaves.values())),
                    )
                )
            losses = losses.detach()
            largest = torch.stack(
                [g.abs().flatten(1).max(1).values for g in grads.values()]
            ).amax(0)
            if float(largest.max()) <= tol:
                return params
            if not torch.isfinite(losses).all():
                raise FloatingPointError(
                    "The inner problem diverged (non-finite training loss); check "
                    "the scale of the features and the hyperparameter bounds."
                )
            curv = curvature(
                params, hparams, damping=DAMPING * largest, refresh=slow_solve
            )
            # Inexact Newton: a looser linear solve far from the solution, and
            # none tighter than needed to bring the gradient below tol (the
            # next gradient is about the linear solve's residual).
            needed = 0.5 * tol / torch.sqrt(_fold_dot(grads, grads))
            forcing = torch.maximum(torch.sqrt(largest), needed).clamp(
                max=0.5, min=1e-6
            )
            # Inexact Newton: an unconverged step is still a descent direction.
            # Single-precision products suffice for the loose solves: the
            # gradient, which decides convergence, stays in double.
            product = curv.hessian_vector
            if curv.fast_hessian_vector is not None and bool(
                (forcing >= FAST_FORCING).all()
            ):
                product = curv.fast_hessian_vector
            step, _, products = _batched_pcg(
                product,
                {k: -g for k, g in grads.items()},
                curv.precondition,
                forcing,
                max_iter=100,
            )
            # A preconditioner from an earlier point serves while it keeps
            # the linear solves short.
            slow_solve = products > REFRESH_PRODUCTS
            slope = _fold_dot(grads, step)
            # Near the solution the decrease is below rounding: take the step.
            negligible = -slope <= 100 * torch.finfo(dtype).eps * losses.abs()
            size = torch.ones_like(losses)
            for _ in range(40):
                trial = {k: v + _per_fold(size, v) * step[k] for k, v in params.items()}
                trial_losses = fold_losses(trial, hparams)
                accepted = (trial_losses <= losses + 1e-4 * size * slope) | negligible
                if bool(accepted.all()):
                    break
                size = torch.where(accepted, size, 0.5 * size)
            # A fold without a decrease after the backtracking stays put.
            size = torch.where(accepted, size, 0.0)
            params = {k: v + _per_fold(size, v) * step[k] for k, v in params.items()}
        warnings.warn(
            f"The inner problem was not solved to tol={tol} in {max_iter} Newton "
            "iterations (inner_steps); hypergradients may be inaccurate.",
            ConvergenceWarning,
            stacklevel=2,
        )
        return params

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
            return newton_solve(params, hparams, **spec["solver_options"])

    def fitted_attributes(params):
        folds = []
        for k in range(n_folds):
            coef = params["coef"][k].T.detach().cpu().numpy()
            intercept = (
                params["intercept"][k].detach().cpu().numpy()
                if "intercept" in params
                else np.zeros(coef.shape[0])
            )
            if spec.get("softmax"):
                # A softmax is blind to a common shift of the intercepts;
                # scikit-learn's sum to zero.
                intercept = intercept - intercept.mean()
            if spec.get("one_dimensional"):
                coef, intercept = coef[0], float(intercept[0])
            folds.append({"coef_": coef, "intercept_": intercept})
        return folds

    return Problem(
        init_params, inner_loss, outer_loss, solve, fitted_attributes, curvature
    )


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
            "score_curvature": (
                _logistic_curvature if n_classes == 2 else _softmax_curvature
            ),
            "softmax": n_classes > 2,
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
