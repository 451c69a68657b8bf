"""The package's one preconditioned conjugate gradient.

It serves the linear systems of :func:`~skbilevel.hypergrad.implicit_cg` and,
batched over the leading fold dimension, the Newton steps and hypergradient
solves of the inner problems in :mod:`skbilevel.problems`.
"""

from collections.abc import Callable

import torch
from torch import Tensor

Params = dict[str, Tensor]


def fold_dot(a: Params, b: Params) -> Tensor:
    """Per-fold inner products (K,) of two dicts of (K, ...) tensors."""
    return sum((a[name] * b[name]).flatten(1).sum(1) for name in a)


def per_fold(scalars: Tensor, tensor: Tensor) -> Tensor:
    """One scalar per fold (K,), shaped to broadcast against a (K, ...) tensor."""
    return scalars.reshape(-1, *([1] * (tensor.dim() - 1)))


def _dot(a: Params, b: Params, batched: bool) -> Tensor:
    if batched:
        return fold_dot(a, b)
    return sum((a[name] * b[name]).sum() for name in a)


def conjugate_gradient(
    matvec: Callable[[Params], Params],
    b: Params,
    *,
    tol: float | Tensor,
    max_iter: int,
    precondition: Callable[[Params], Params] | None = None,
    x0: Params | None = None,
    batched: bool = False,
) -> tuple[Params, bool, int]:
    """Solve ``A x = b`` for a symmetric positive-definite ``A`` given by products.

    ``b``, ``x0`` and what ``matvec`` and ``precondition`` take and return are
    dicts of tensors shaped alike. With ``batched``, their leading dimension
    holds K independent systems ``A_k x_k = b_k`` (the folds), each solved to
    its own relative residual ``tol`` (a float, or a (K,) tensor); a system
    that has converged stops moving while the others go on.

    Parameters
    ----------
    matvec : callable
        ``matvec(v) -> A v``.
    b : dict of str to Tensor
        The right-hand side.
    tol : float or Tensor
        Relative residual tolerance: stop when ``||A x - b|| <= tol * ||b||``.
    max_iter : int
        Maximum number of products with ``A``.
    precondition : callable, default=None
        ``precondition(r)``: a symmetric positive-definite approximation of
        ``A^{-1} r``; none by default.
    x0 : dict of str to Tensor, default=None
        Initial guess (zero by default).
    batched : bool, default=False
        Whether the leading dimension holds independent systems.

    Returns
    -------
    x : dict of str to Tensor
        The solution.
    converged : bool
        Whether every system reached ``tol``.
    n_products : int
        The number of products with ``A`` after the initial residual.

    Examples
    --------
    >>> import torch
    >>> from skbilevel.hypergrad._cg import conjugate_gradient
    >>> A = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    >>> b = {"x": torch.tensor([1.0, 2.0], dtype=torch.float64)}
    >>> x, converged, n = conjugate_gradient(
    ...     lambda v: {"x": A @ v["x"]}, b, tol=1e-12, max_iter=10)
    >>> converged, n, torch.allclose(A @ x["x"], b["x"])
    (True, 2, True)
    """
    if precondition is None:

        def precondition(r):
            return r

    threshold = tol * torch.sqrt(_dot(b, b, batched))
    if x0 is None:
        x = {name: torch.zeros_like(value) for name, value in b.items()}
        residual = dict(b)
    else:
        # The best multiple of the guess (in the energy norm, so never worse
        # than zero), unless the guess already solves its system: a previous
        # outer step's tangent is right in direction more than in scale
        # (digits, LogisticRegression C: 11 to 12 products per tangent from
        # the guess itself, 9 from zero, 10 to 11 from its best multiple).
        product = matvec(x0)
        curvature = _dot(x0, product, batched)
        scale = torch.where(curvature > 0, _dot(x0, b, batched) / curvature, 0.0)
        start = {name: b[name] - product[name] for name in b}
        solved = torch.sqrt(_dot(start, start, batched)) <= threshold
        scale = torch.where(solved, 1.0, scale)
        x, residual = {}, {}
        for name in b:
            factor = per_fold(scale, x0[name]) if batched else scale
            x[name] = factor * x0[name]
            residual[name] = b[name] - factor * product[name]
    preconditioned = precondition(residual)
    direction = dict(preconditioned)
    rz = _dot(residual, preconditioned, batched)
    iterations = 0
    for iterations in range(max_iter + 1):
        active = torch.sqrt(_dot(residual, residual, batched)) > threshold
        if not bool(active.any()) or iterations == max_iter:
            break
        product = matvec(direction)
        curvature = _dot(direction, product, batched)
        # A converged system (or one without curvature left) takes no step.
        alpha = torch.where(active & (curvature > 0), rz / curvature, 0.0)
        for name in x:
            step = per_fold(alpha, x[name]) if batched else alpha
            x[name] = x[name] + step * direction[name]
            residual[name] = residual[name] - step * product[name]
        preconditioned = precondition(residual)
        rz_new = _dot(residual, preconditioned, batched)
        beta = torch.where(rz > 0, rz_new / rz, 0.0)
        for name in x:
            factor = per_fold(beta, x[name]) if batched else beta
            direction[name] = preconditioned[name] + factor * direction[name]
        rz = rz_new
    converged = torch.sqrt(_dot(residual, residual, batched)) <= threshold
    return x, bool(converged.all()), iterations
