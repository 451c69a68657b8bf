"""Forward implicit differentiation: the tangents dw*/dlambda, column by column.

For a few hyperparameters, each column ``z_j = dw*/dlambda_j`` of the
Jacobian of the inner solution solves ``H z_j = -d(grad_w L)/dlambda_j`` by
preconditioned conjugate gradient, and the hypergradient is
``dE/dw . z_j + dE/dlambda_j``. It takes as many solves as hyperparameters
(the adjoint method of :func:`~skbilevel.hypergrad.implicit_cg` takes one),
but its columns also predict the solution at a nearby next point,
``w* + sum_j z_j dlambda_j``, which warm-starts the next inner solve.
"""

from functools import partial

import torch

from ._cg import conjugate_gradient
from ._implicit import _default_tol, _solve_inner, _warn_linear_system
from ._methods import Hypergradient, _check_finite, _detached, _grad, _leaves


def _solve(matvec, b, precondition, tol, max_iter, x0, batched):
    """``matvec(x) = b`` by the package's preconditioned conjugate gradient."""
    x, converged, _ = conjugate_gradient(
        matvec,
        b,
        tol=tol,
        max_iter=max_iter,
        precondition=precondition,
        x0=x0,
        batched=batched,
    )
    return x, converged


def implicit_forward(
    params,
    hparams,
    T,
    dynamics,
    outer_loss,
    *,
    tol=None,
    max_iter=100,
    cg_tol=None,
    hessian_vector=None,
    preconditioner=None,
    fast_hessian_vector=None,
    init=None,
    batched=False,
):
    """Implicit hypergradient by forward differentiation of the inner optimum.

    Parameters
    ----------
    params, hparams, T, dynamics, outer_loss
        As in :func:`~skbilevel.hypergrad.reverse`; the ``T`` steps of
        ``dynamics`` only solve the inner problem (``T=0``: ``params`` is the
        solution already).
    tol : float, default=None
        Gradient-norm tolerance of the inner solve; ``None`` means the square
        root of the machine epsilon of the parameters' dtype.
    max_iter : int, default=100
        Maximum conjugate-gradient iterations per column.
    cg_tol : float, default=None
        Relative residual of each column's solve; ``None`` means the square
        root of the machine epsilon.
    hessian_vector : callable, default=None
        ``hessian_vector(v) -> H v`` at the solution; by default double
        back-propagation through ``dynamics.inner_loss``.
    preconditioner : callable, default=None
        A positive-definite approximation of ``v -> H^{-1} v``.
    fast_hessian_vector : callable, default=None
        ``H v`` in a lower precision, for a first pass of each solve, which
        is then finished with ``hessian_vector``.
    init : dict of str to list of dict, default=None
        The ``tangent`` of a nearby previous call, whose columns start the
        solves.
    batched : bool, default=False
        Whether the leading dimension of every inner parameter indexes
        independent problems (cross-validation folds), each solved to its own
        ``cg_tol``.

    Returns
    -------
    result : Hypergradient
        E(w*, lambda), the hypergradient, w*, and ``tangent``: per
        hyperparameter, the list of columns ``dw*/dlambda_j`` (dicts shaped
        like ``params``), one per entry of that hyperparameter.

    References
    ----------
    .. [1] F. Pedregosa, "Hyperparameter optimization with approximate
       gradient", ICML 2016.

    Examples
    --------
    >>> import torch
    >>> from skbilevel.hypergrad import gradient_descent, implicit_forward
    >>> inner = lambda w, h: 0.5 * ((w["x"] - h["c"]) ** 2).sum()
    >>> outer = lambda w, h: 0.5 * ((w["x"] - 2.0) ** 2).sum()
    >>> dyn = gradient_descent(inner, learning_rate=0.5)
    >>> res = implicit_forward({"x": torch.zeros(1)}, {"c": torch.ones(1)}, 100,
    ...                        dyn, outer)
    >>> round(float(res.grad["c"]), 3)
    -1.0
    """
    w = _leaves(_solve_inner(params, hparams, T, dynamics, tol)[0])
    h = _leaves(hparams)
    with torch.enable_grad():
        value = _check_finite(outer_loss(w, h), T)
        direct_w = _grad(value, w, retain_graph=True)
        direct_h = _grad(value, h, retain_graph=True)
        # d(grad_w L)/dlambda_j = grad_w (dL/dlambda_j): mixed partials commute.
        inner_h = _grad(dynamics.inner_loss(w, h), h, create_graph=True)
        inner_w = None
        if hessian_vector is None:
            inner_w = _grad(dynamics.inner_loss(w, h), w, create_graph=True)
    if hessian_vector is None:

        def hessian_vector(v):
            return _grad(
                list(inner_w.values()),
                w,
                grad_outputs=list(v.values()),
                retain_graph=True,
            )

    cg_tol = _default_tol(w, cg_tol)
    solve = partial(
        _column,
        hessian_vector,
        fast_hessian_vector,
        precondition=preconditioner or (lambda v: v),
        tol=cg_tol,
        max_iter=max_iter,
        batched=batched,
    )
    grad, tangent = {}, {}
    for name, partial_h in inner_h.items():
        starts = None if init is None else init.get(name)
        tangent[name] = _columns(partial_h, w, solve, starts)
        entries = [
            sum((direct_w[k].detach() * column[k]).sum() for k in column) + own
            for column, own in zip(tangent[name], direct_h[name].reshape(-1))
        ]
        grad[name] = torch.stack(entries).reshape(partial_h.shape).detach()
    return Hypergradient(value.detach(), grad, _detached(w), tangent=tangent)


def _columns(partial_h, w, solve, starts):
    """The columns ``dw*/dlambda_j`` of one hyperparameter, whose inner
    gradient ``dL/dlambda`` is ``partial_h`` (with a graph to ``w``)."""
    columns = []
    for j, entry in enumerate(partial_h.reshape(-1)):
        with torch.enable_grad():
            mixed = _grad(entry, w, retain_graph=True)
        rhs = {k: -m.detach() for k, m in mixed.items()}
        columns.append(solve(rhs, start=None if starts is None else starts[j]))
    return columns


def _column(hessian_vector, fast, rhs, *, start, precondition, tol, max_iter, batched):
    """One tangent column: a first pass with ``fast`` products, if given, then
    the exact products from its solution."""
    if fast is not None:
        start, _ = _solve(fast, rhs, precondition, tol, max_iter, start, batched)
    column, converged = _solve(
        hessian_vector, rhs, precondition, tol, max_iter, start, batched
    )
    if not converged:
        _warn_linear_system("conjugate gradient", max_iter, tol)
    return column
