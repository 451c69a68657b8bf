"""The inner Hessian of a linear model, as exact products, and its preconditioners.

With scores ``Z = X W + b`` and ``B_i`` the (weighted) Hessian of the sample
loss in ``z_i``, each fold's Hessian is
``(sum_i x_i x_i^T (x) B_i + 2 diag(penalty) (x) I) / n_k`` (the intercept as a
column of ones). Its preconditioner is, on few features, the exact diagonal
blocks of one output each (:func:`_block_jacobi`); on many, a Kronecker product
whose left factor is computed once per run (:func:`_kronecker`); for a softmax,
either is completed by :func:`_exact_shift`. The same curvature serves Newton's
steps (damped) and the implicit hypergradient's linear systems (undamped, at
an inner solution).
"""

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import torch
from torch import Tensor

from ..hypergrad._cg import conjugate_gradient, per_fold
from ._base import Curvature, Params
from ._linear_loss import (
    LinearFolds,
    LinearLoss,
    PreconditionerCache,
    decision,
    with_intercept,
)
from ._sparse import SparseDesign, matmul, transposed_matmul

# Largest table of products x_ij x_ik kept for the Gram matrices (entries).
PRODUCTS_SIZE = 2**25


class ScoreCurvature(NamedTuple):
    """The curvatures ``B_i`` of the weighted sample losses in the scores:
    ``product(U) -> (B_i u_i)_i``, ``total = sum_i B_i`` (K, c, c) and the
    diagonals of the ``B_i`` (K, n, c)."""

    product: Callable[[Tensor], Tensor]
    total: Tensor
    diagonal: Tensor


def _score_curvature(sample_loss, scores: Tensor, weights: Tensor) -> ScoreCurvature:
    """The :class:`ScoreCurvature` of any ``sample_loss(Z) -> (K, n)``, from its
    ``c`` second-derivative rows (autograd)."""
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

    return ScoreCurvature(
        product, hessians.sum(1), torch.diagonal(hessians, dim1=-2, dim2=-1)
    )


def _softmax_curvature(scores: Tensor, weights: Tensor) -> ScoreCurvature:
    """:func:`_score_curvature` of the multinomial log-loss, in closed form:
    ``B_i = w_i (diag(p_i) - p_i p_i^T)``."""
    # torch.softmax over a last dimension of a few classes took 2.2 ms on
    # digits' (5, 1797, 10) scores, this 1.5 ms.
    probabilities = torch.exp(scores - torch.logsumexp(scores, -1, keepdim=True))
    weighted = weights[..., None] * probabilities

    def product(U):
        # One (K, n, c) result, not three temporaries: in a fresh process
        # each is a fresh mapping of pages for the allocator (digits' are
        # 0.7 MB).
        out = probabilities * U
        torch.sub(U, out.sum(-1, keepdim=True), out=out)
        return out.mul_(weighted)

    total = torch.diag_embed(weighted.sum(1)) - weighted.transpose(1, 2) @ probabilities
    return ScoreCurvature(product, total, weighted * (1.0 - probabilities))


def _logistic_curvature(scores: Tensor, weights: Tensor) -> ScoreCurvature:
    """:func:`_score_curvature` of the binomial log-loss, ``softplus(-y z)``:
    ``B_i = w_i s_i (1 - s_i)`` with ``s_i = sigmoid(z_i)``, whatever ``y_i``."""
    sigmoid = torch.sigmoid(scores)
    hessians = weights[..., None] * sigmoid * (1.0 - sigmoid)  # (K, n, 1)

    def product(U):
        return hessians * U

    return ScoreCurvature(product, hessians.sum(1)[..., None], hessians)


def _weighted_grams(
    design: Tensor,
    weights: Tensor,
    cache: PreconditionerCache,
    precision: torch.dtype | None = None,
) -> Tensor:
    """``sum_i weights[k, i, a] x_i x_i^T`` for every fold k and output a,
    (K, c, D, D), with ``design`` (n, D) or (K, n, D).

    One matrix product against the table of the products ``x_ij x_ik``,
    j <= k, when it fits in :data:`PRODUCTS_SIZE` entries (computed once, in
    ``cache``, as the design does not change) and there are at least 16
    folds times outputs to amortize reading it; else one product per output.
    The products are taken in ``precision`` (the design's by default), the
    result returned in the design's. A sparse design forms its own (sparse
    products, in its precision).
    """
    if isinstance(design, SparseDesign):
        return design.grams(weights)
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
    if cache.products is None:
        reduced = design.to(precision)
        # Row j's products x_j x_k, k >= j, side by side (the order of
        # triu_indices): 10 ms on digits, advanced indexing 70 ms.
        cache.products = torch.cat(
            [reduced[..., j : j + 1] * reduced[..., j:] for j in range(size)], dim=-1
        )
    products = cache.products
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


class _Point(NamedTuple):
    """What every part of the curvature at one point of one problem reads."""

    design: Tensor  # X, with a column of ones for the intercept
    weights: Tensor  # (K, n)
    penalty: Tensor  # (K, d), the factor of ||W_j||^2
    column_penalty: Tensor  # (K, D), 2 x penalty on the design (0: intercept)
    n_train: Tensor  # (K,)
    score: ScoreCurvature
    damping: Tensor | None  # (K,), Levenberg-Marquardt


def _hessian_vector(v: Params, point: _Point, features: Tensor) -> Params:
    """``H v``, the matrix products with ``features`` (X, or X in single
    precision) and the rest in X's precision (the products cast)."""
    scores = matmul(features, v["coef"])
    if "intercept" in v:
        # In place on the fresh product (see the softmax curvature's product).
        scores.add_(v["intercept"][:, None, :])
    response = point.score.product(scores)
    # In place on the fresh product: each (K, D, c) temporary costs a pass
    # over memory (with the casts folded into the products' layout copies,
    # 13% less time per product on the 20,000 x 50,000 sparse benchmark).
    coef = transposed_matmul(features, response)
    coef.addcmul_(point.penalty[..., None], v["coef"], value=2.0)
    product = {"coef": coef.div_(point.n_train[:, None, None])}
    if "intercept" in v:
        product["intercept"] = response.sum(1) / point.n_train[:, None]
    if point.damping is not None:
        product = {k: p + per_fold(point.damping, p) * v[k] for k, p in product.items()}
    return product


def _solve_blocks(stacked: Tensor, factors: Tensor, scale: Tensor) -> Tensor:
    solved = torch.cholesky_solve(stacked.transpose(-1, -2)[..., None], factors)
    return solved[..., 0].transpose(-1, -2) * scale


def _block_jacobi(
    point: _Point, folds: LinearFolds, refresh: bool
) -> Callable[[Tensor], Tensor]:
    """The exact diagonal blocks of the Hessian, one per output, inverted.

    Block ``a`` is ``(sum_i (B_i)_aa x_i x_i^T + 2 diag(penalty)) / n_k``:
    exact when the outputs are independent (one-vs-rest, binary). Its Gram
    matrices cost ``c n d^2`` per fold, as much time as about 9 Hessian
    products on digits: every call reuses those of the last call that
    computed them (a preconditioner from a nearby point still serves) unless
    ``refresh`` (a damped call: a Newton step), or, for an undamped call (at
    an inner solution, for the hypergradient's tight solves), unless they are
    ``stale`` (:class:`PreconditionerCache`). On digits (LogisticRegression
    C, cv=5, six outer steps) a search computed them 4 times instead of 7,
    and took 124 Hessian products instead of 151 (with Newton's refresh
    after 8 products, :data:`~._newton.REFRESH_PRODUCTS`).
    """
    design, n_train = point.design, point.n_train
    dtype = design.dtype
    eye = torch.eye(design.shape[-1], dtype=dtype, device=design.device)
    cache = folds.cache
    at_solution = point.damping is None
    if refresh or cache.grams is None or (at_solution and cache.stale):
        precision = torch.float32 if folds.single_grams else None
        cache.grams = _weighted_grams(design, point.score.diagonal, cache, precision)
        cache.stale = not at_solution
    blocks = cache.grams + torch.diag_embed(point.column_penalty)[:, None]
    extra = torch.zeros_like(n_train)
    if point.damping is not None:
        extra = point.damping * n_train
    # The intercept block is singular on data a model separates, and
    # single-precision blocks are positive definite to within rounding.
    relative = 1e-6 if folds.single_grams else 1e-10
    jitter = relative * torch.diagonal(blocks, dim1=-2, dim2=-1).mean(-1)
    extra = extra[:, None] + jitter.clamp_min(torch.finfo(dtype).tiny)
    factors = torch.linalg.cholesky(blocks + extra[..., None, None] * eye)
    return partial(_solve_blocks, factors=factors, scale=n_train[:, None, None])


def _kronecker_right(point: _Point, n_outputs: int) -> tuple[Tensor, Tensor]:
    """``S = sum_i B_i / sum_i s_i`` with its shift direction curved, and
    ``sigma``, the mean eigenvalue of ``S``."""
    dtype, device = point.design.dtype, point.design.device
    total = point.weights.sum(1).clamp_min(torch.finfo(dtype).tiny)
    right = point.score.total / total[:, None, None]
    sigma = torch.diagonal(right, dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)
    eye = torch.eye(n_outputs, dtype=dtype, device=device)
    if n_outputs > 1:
        # A softmax's curvature is blind to adding a constant to every
        # score; give that direction the mean curvature.
        flat = torch.full((n_outputs, n_outputs), 1.0 / n_outputs, dtype=dtype)
        right = right + sigma[:, None, None] * flat.to(device)
    return right + 1e-8 * sigma[:, None, None] * eye, sigma


def _solve_kronecker(
    stacked: Tensor, left_factor: Tensor, right_factor: Tensor, scale: Tensor
) -> Tensor:
    dtype = stacked.dtype
    n_folds, size, n_outputs = stacked.shape
    # One left factor for every fold: one solve with the folds' columns.
    flat = stacked.permute(1, 0, 2).reshape(1, size, n_folds * n_outputs)
    solved = torch.cholesky_solve(flat.to(left_factor.dtype), left_factor)
    solved = solved.reshape(size, n_folds, n_outputs).permute(1, 0, 2)
    solved = torch.cholesky_solve(solved.transpose(-1, -2), right_factor)
    return solved.transpose(-1, -2).to(dtype) * scale


def _kronecker(
    point: _Point, folds: LinearFolds, n_outputs: int, learned_weights: bool
) -> Callable[[Tensor], Tensor]:
    """Replaces ``B_i`` by ``s_i S`` (``s_i`` the sample weight), with
    ``S = sum_i B_i / sum_i s_i``, and the penalty by
    ``diag(2 penalty / sigma) (x) S`` (``sigma`` the mean eigenvalue of ``S``):
    a Kronecker product ``A (x) S``, inverted by two Cholesky factorizations,
    one ``A`` for every fold, the folds' mean: the folds share most of their
    rows (MNIST-5000: 8% more products than one factor per fold, each applied
    at about a third of the cost). Its Gram matrix is computed once per run
    unless the sample weights are learned."""
    design, n_train = point.design, point.n_train
    right, sigma = _kronecker_right(point, n_outputs)
    gram = mean_gram(design, point.weights, folds, learned_weights)
    diagonal = point.column_penalty / sigma[:, None]
    if point.damping is not None:
        diagonal = diagonal + (point.damping * n_train / sigma)[:, None]
    jitter = 1e-10 * (torch.diagonal(gram, dim1=-2, dim2=-1) + diagonal).mean(-1)
    diagonal = diagonal + jitter.clamp_min(1.0)[:, None]
    diagonal = diagonal.mean(0, keepdim=True)
    # Applying the factors reads all of the left one, (K, D, D): on a problem
    # big enough for single-precision Hessian products, that read, not the
    # arithmetic, bounds the preconditioner (MNIST-5000: 5 ms of a 13 ms
    # conjugate-gradient iteration in double, half that in single), and an
    # approximate inverse loses nothing at single precision: the factor is
    # then taken in single precision too, unless rounding makes it fail.
    precision = torch.float32 if folds.single_products else design.dtype
    return partial(
        _solve_kronecker,
        left_factor=_shifted_cholesky(gram, diagonal, precision),
        right_factor=torch.linalg.cholesky(right).to(precision),
        scale=n_train[:, None, None],
    )


def _shifted_cholesky(gram: Tensor, diagonal: Tensor, precision) -> Tensor:
    """The Cholesky factor of ``gram + diag(diagonal)`` in ``precision``,
    from the double-precision matrix where ``precision``'s fails."""
    for dtype in dict.fromkeys((precision, gram.dtype)):
        shifted = gram.to(dtype, copy=True)
        shifted.diagonal(dim1=-2, dim2=-1).add_(diagonal.to(dtype))
        factor, info = torch.linalg.cholesky_ex(shifted)
        if not bool(info.any()):
            return factor.to(precision)
    raise torch.linalg.LinAlgError(
        "The preconditioner's Gram matrix is not positive definite."
    )


def _solve_diagonal(stacked: Tensor, inverse: Tensor) -> Tensor:
    return stacked * inverse


def _solve_centered(
    stacked: Tensor, inverse: Tensor, mean: Tensor, intercept_inverse: Tensor
) -> Tensor:
    """``L^{-1} diag^{-1} L^{-T}`` applied to (K, D, c), the intercept last,
    with ``L`` the centering of :func:`_diagonal`."""
    features, offset = stacked[:, :-1], stacked[:, -1:]
    # Written into one result: each (K, D, c) temporary of a conjugate-
    # gradient iteration is one more block for the allocator to hold.
    result = torch.empty_like(stacked)
    solved = result[:, :-1]
    torch.addcmul(features, mean, offset, value=-1.0, out=solved)
    solved.mul_(inverse)
    result[:, -1:] = offset * intercept_inverse - (solved * mean).sum(1, keepdim=True)
    return result


def _diagonal(point: _Point) -> Callable[[Tensor], Tensor]:
    """The Hessian's diagonal, one entry per feature and output, inverted,
    for a sparse design too wide for Gram matrices (its column norms are
    one sparse product).

    Without an intercept, ``(sum_i (B_i)_aa x_ij^2 + 2 penalty_j) / n_k``.
    With one, the diagonal in the centered coordinates: with ``s_a`` the
    total curvature ``sum_i (B_i)_aa`` and ``m_a`` the curvature-weighted
    mean row, the scores are ``(x_i - m_a) w_a + (m_a^T w_a + b_a)``, whose
    Hessian's diagonal is ``sum_i (B_i)_aa x_ij^2 - s_a m_aj^2`` for the
    features and ``s_a`` for the shifted intercept. Non-negative features
    (TF-IDF, counts, one-hot) couple every coefficient to the intercept:
    this preconditioner inverts that coupling exactly and took 91 Hessian
    products where the plain diagonal took 220 (the 20,000 x 50,000
    benchmark's search).
    """
    weights = point.score.diagonal
    design = point.design
    squares = design.squared_transposed_matmul(weights)
    extra = torch.zeros_like(point.n_train)
    if point.damping is not None:
        extra = point.damping * point.n_train
    extra = extra[:, None, None]
    if not design.intercept:
        diagonal = squares + point.column_penalty[..., None] + extra
        # A feature no training sample of a fold uses, unpenalized, is flat.
        jitter = 1e-10 * diagonal.mean((1, 2)).clamp_min(1.0)
        inverse = point.n_train[:, None, None] / (diagonal + jitter[:, None, None])
        return partial(_solve_diagonal, inverse=inverse)
    total = weights.sum(1, keepdim=True)  # (K, 1, c)
    tiny = torch.finfo(total.dtype).tiny
    # From the single-precision design: a preconditioner needs no more.
    single = design.float().transposed_matmul(weights.float())[:, :-1]
    mean = single / total.clamp_min(tiny)
    # Rounding (single-precision squares) may leave a centered entry below 0.
    centered = (squares[:, :-1] - total * mean**2).clamp_min(0.0)
    diagonal = centered + point.column_penalty[:, :-1, None] + extra
    jitter = 1e-10 * diagonal.mean((1, 2)).clamp_min(1.0)[:, None, None]
    n_train = point.n_train[:, None, None]
    # In single precision: a preconditioner needs no more.
    return partial(
        _solve_centered,
        inverse=(n_train / (diagonal + jitter)).float(),
        mean=mean.float(),
        intercept_inverse=n_train / (total + extra + jitter),
    )


def _dense_grams(design: Tensor, weights: Tensor) -> Tensor:
    """``design^T diag(w_k) design`` per fold, (K, D, D).

    Cross-validation weights are one vector ``s`` with each fold's held-out
    rows zeroed: then ``G_k`` is the Gram matrix of all rows less that of
    fold k's held-out rows, two passes over the data in all instead of K - 1.
    """
    n_folds = weights.shape[0]
    common = weights.amax(0)
    split = design.dim() == 2 and n_folds > 2
    if not split or not bool(((weights == 0) | (weights == common)).all()):
        return design.transpose(-1, -2) @ (weights[..., None] * design)
    total = design.T @ (common[:, None] * design)
    grams = []
    for k in range(n_folds):
        out = (weights[k] == 0) & (common > 0)
        rows = design[out]
        grams.append(total - rows.T @ (common[out, None] * rows))
    return torch.stack(grams)


def weighted_gram(design: Tensor, weights: Tensor, folds, learned: bool) -> Tensor:
    """``design^T diag(w_k) design`` per fold (K, D, D), computed once per run
    unless the sample weights are learned: a squared loss's normal equations
    and its Hessian products."""
    cache = folds.cache
    if learned or cache.left is None:
        if isinstance(design, SparseDesign):
            left = design.grams(weights)
        else:
            left = _dense_grams(design, weights)
        if not learned:
            cache.left = left
        return left
    return cache.left


def mean_gram(design: Tensor, weights: Tensor, folds, learned: bool) -> Tensor:
    """The folds' mean Gram matrix ``design^T diag(mean_k w_k) design``,
    (1, D, D): from the per-fold ones where a squared loss's normal equations
    have cached them, else one Gram matrix, computed once per run unless the
    sample weights are learned."""
    cache = folds.cache
    if not learned and cache.left is not None:
        return cache.left.mean(0, keepdim=True)
    if learned or cache.mean_left is None:
        mean = weights.mean(0, keepdim=True)
        if isinstance(design, SparseDesign):
            left = design.grams(mean)
        else:
            left = design.transpose(-1, -2) @ (mean[..., None] * design)
        if learned:
            return left
        cache.mean_left = left
    return cache.mean_left


def _gram_hessian_vector(
    v: Params, gram: Tensor, point: _Point, scale: float, fit_intercept: bool
) -> Params:
    """``H v`` of a squared loss (``B_i = scale w_i I``) from its Gram matrices:
    ``(scale G v + 2 diag(penalty) v) / n_k``, in O(D^2) per fold instead of
    two products with the data."""
    stacked = _stack(v)
    product = scale * (gram @ stacked) + point.column_penalty[..., None] * stacked
    product = product / point.n_train[:, None, None]
    if point.damping is not None:
        product = product + per_fold(point.damping, product) * stacked
    return _unstack(product, v["coef"].shape[1], fit_intercept)


def _stack(v: Params) -> Tensor:
    """The coefficients and intercepts as one (K, D, c) tensor."""
    if "intercept" in v:
        return torch.cat([v["coef"], v["intercept"][:, None, :]], dim=1)
    return v["coef"]


def _unstack(stacked: Tensor, n_features: int, fit_intercept: bool) -> Params:
    out = {"coef": stacked[:, :n_features]}
    if fit_intercept:
        out["intercept"] = stacked[:, n_features]
    return out


def _preconditioned(v: Params, precondition, n_features, fit_intercept) -> Params:
    return _unstack(precondition(_stack(v)), n_features, fit_intercept)


def _shifted(
    v: Params, precondition, shift_inverse, n_features, fit_intercept
) -> Params:
    stacked = _stack(v)
    mean = stacked.mean(-1, keepdim=True)
    solved = precondition(stacked - mean)
    solved = solved - solved.mean(-1, keepdim=True)
    return _unstack(solved + shift_inverse * mean, n_features, fit_intercept)


def _exact_shift(
    precondition, point: _Point, loss: LinearLoss, n_features: int
) -> Callable[[Params], Params]:
    """``precondition`` on dicts of parameters. A softmax's Hessian splits
    exactly between the common shift of every output (``w (x) 1``, curved by
    the penalty and the damping alone: inverted exactly) and the rest
    (``precondition``, projected off the shift)."""
    layout = {"n_features": n_features, "fit_intercept": loss.fit_intercept}
    if not loss.softmax:
        return partial(_preconditioned, precondition=precondition, **layout)
    shift = point.column_penalty / point.n_train[:, None]
    if point.damping is not None:
        shift = shift + point.damping[:, None]
    shift_inverse = torch.where(shift > 0, 1.0 / shift, 0.0)[..., None]
    return partial(
        _shifted, precondition=precondition, shift_inverse=shift_inverse, **layout
    )


def curvature(
    loss: LinearLoss,
    folds: LinearFolds,
    params: Params,
    hparams: Params,
    damping: Tensor | None = None,
    refresh: bool = False,
    scores: Tensor | None = None,
) -> Curvature:
    """Exact Hessian products at ``params`` and a preconditioner.

    ``damping`` (K,), if given, is added to each fold's Hessian
    (Levenberg-Marquardt), for the Newton steps; ``refresh`` recomputes the
    block-Jacobi Gram matrices of a damped call (:func:`_block_jacobi`);
    ``scores``, if given, are those of ``params`` (``X W + b``). On
    large problems (``folds.single_products``), ``fast_hessian_vector`` takes
    the matrix products in single precision.
    """
    hparams = {name: value.detach() for name, value in hparams.items()}
    params = {name: value.detach() for name, value in params.items()}
    X = folds.X
    weights = loss.weights(hparams)
    penalty = loss.penalty(hparams)
    if scores is None:
        scores = decision(X, params)
    if loss.score_curvature is not None:
        # Closed form: products in O(n c), not O(n c^2).
        score = loss.score_curvature(scores, weights)
    else:
        score = _score_curvature(loss.sample_loss, scores, weights)
    # The penalty on the design's columns (none on the intercept's).
    column_penalty = 2.0 * penalty
    if loss.fit_intercept:
        column_penalty = torch.cat(
            [column_penalty, torch.zeros_like(column_penalty[:, :1])], 1
        )
    point = _Point(
        with_intercept(X, loss.fit_intercept),
        weights,
        penalty,
        column_penalty,
        folds.n_train,
        score,
        damping,
    )
    if not folds.grams:
        blocks = _diagonal(point)
    elif folds.blocks:
        blocks = _block_jacobi(point, folds, refresh)
    else:
        blocks = _kronecker(point, folds, loss.n_outputs, "sample_weight" in hparams)
    precondition = _exact_shift(blocks, point, loss, X.shape[-1])
    if loss.ridge_targets is not None and folds.grams and not folds.blocks:
        # A squared loss's Hessian is its Gram matrices (computed once):
        # products in O(D^2) per fold, no single-precision pass needed.
        gram = weighted_gram(point.design, weights, folds, "sample_weight" in hparams)
        product = partial(
            _gram_hessian_vector,
            gram=gram,
            point=point,
            scale=2.0 * loss.ridge_scale,
            fit_intercept=loss.fit_intercept,
        )
        return Curvature(product, precondition, None)
    fast = None
    if folds.single_products:
        if folds.cache.single is None:
            folds.cache.single = X.float()
        fast = partial(_hessian_vector, point=point, features=folds.cache.single)
    return Curvature(
        partial(_hessian_vector, point=point, features=X), precondition, fast
    )


def _refined_pcg(curvature: Curvature, b: Params, tol, max_iter: int, x0=None):
    """The batched conjugate gradient on ``curvature``: first with its
    single-precision products, if it has them, then in double precision from
    that solution, so that the residual ``tol`` is reached with exact products.
    Returns the solution, whether every fold converged and the number of
    products."""
    products = 0
    solve = partial(
        conjugate_gradient,
        b=b,
        tol=tol,
        max_iter=max_iter,
        precondition=curvature.precondition,
        batched=True,
    )
    if curvature.fast_hessian_vector is not None:
        x0, _, products = solve(curvature.fast_hessian_vector, x0=x0)
    x, converged, more = solve(curvature.hessian_vector, x0=x0)
    return x, converged, products + more
