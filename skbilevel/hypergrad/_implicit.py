"""Implicit hypergradients at the inner optimum: conjugate gradient and fixed point.

Both share the signature of :func:`~skbilevel.hypergrad.reverse`. The ``T``
steps of ``dynamics`` are only a solver here: they run without a graph, stop
early at ``tol`` and may be skipped altogether (``T=0``) when ``params`` is
already the inner solution, for instance one computed by a faster solver or
warm-started from the previous outer step. Memory is independent of ``T``.
"""

import warnings

import torch
from sklearn.exceptions import ConvergenceWarning
from torch import Tensor

from ._cg import conjugate_gradient
from ._dynamics import gradient_norm, unroll
from ._methods import Hypergradient, _check_finite, _detached, _grad, _leaves


def _norm(a: list[Tensor]) -> float:
    return float(torch.sqrt(sum((x * x).sum() for x in a)))


def _default_tol(params: dict, tol: float | None) -> float:
    """``tol``, or the square root of the machine epsilon of the parameters."""
    if tol is not None:
        return tol
    return torch.finfo(next(iter(params.values())).dtype).eps ** 0.5


def _solve_inner(params, hparams, T, dynamics, tol):
    """Run the dynamics as a plain solver, warning if ``tol`` was not reached."""
    tol = _default_tol(params, tol)
    with torch.no_grad():
        state = unroll(dynamics, _detached(params), _detached(hparams), T, tol=tol)
    if T > 0 and gradient_norm(dynamics.inner_loss, state[0], hparams) > tol:
        warnings.warn(
            f"The inner problem was not solved to tol={tol} in T={T} steps; the "
            "implicit hypergradient is only as accurate as the inner solution. "
            "Increase T or the learning rate of the dynamics.",
            ConvergenceWarning,
            stacklevel=3,
        )
    return state


def _warn_linear_system(name, max_iter, tol):
    warnings.warn(
        f"The {name} for the implicit hypergradient did not reach tol={tol} in "
        f"{max_iter} iterations; increase max_iter.",
        ConvergenceWarning,
        stacklevel=3,
    )


def implicit_cg(
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
    init=None,
):
    """Implicit hypergradient by conjugate gradient on the inner Hessian (HOAG).

    At the inner solution w*, ``dw*/dlambda = -H^{-1} d^2 L / dw dlambda`` with
    ``H`` the Hessian of the inner loss in w, so the hypergradient is
    ``dE/dlambda - (d^2 L / dlambda dw)^T v`` where ``H v = dE/dw``. The system is
    solved by conjugate gradient with Hessian-vector products (double
    back-propagation through one gradient evaluation). ``H`` must be positive
    definite at w* (strongly convex inner problems: ridge, L2-regularized
    logistic regression).

    Parameters
    ----------
    params, hparams, T, dynamics, outer_loss
        As in :func:`~skbilevel.hypergrad.reverse`; the ``T`` steps of
        ``dynamics`` are only used to solve the inner problem.
    tol : float, default=None
        Gradient-norm tolerance of the inner solve; ``None`` means the square
        root of the machine epsilon of the parameters' dtype (about 1.5e-8 in
        float64, 3.5e-4 in float32).
    max_iter : int, default=100
        Maximum number of conjugate-gradient iterations.
    cg_tol : float, default=None
        Relative residual tolerance of conjugate gradient; ``None`` means the
        square root of the machine epsilon, as for ``tol``.
    hessian_vector : callable, default=None
        ``hessian_vector(v) -> H v`` for a dict ``v`` shaped like ``params``:
        the inner Hessian at the solution, for problems with a cheaper exact
        product than the default double back-propagation.
    preconditioner : callable, default=None
        ``preconditioner(v)``: a symmetric positive-definite approximation of
        ``H^{-1} v`` (same dicts), which turns conjugate gradient into
        preconditioned conjugate gradient.
    init : dict of str to Tensor, default=None
        Initial guess of the adjoint ``v`` (shaped like ``params``), for
        instance the ``adjoint`` of the previous call at nearby
        hyperparameters.

    Returns
    -------
    result : Hypergradient
        E(w*, lambda), the implicit hypergradient, and w*.

    References
    ----------
    .. [1] F. Pedregosa, "Hyperparameter optimization with approximate
       gradient", ICML 2016.

    Examples
    --------
    >>> import torch
    >>> from skbilevel.hypergrad import gradient_descent, implicit_cg
    >>> inner = lambda w, h: 0.5 * ((w["x"] - h["c"]) ** 2).sum()
    >>> outer = lambda w, h: 0.5 * ((w["x"] - 2.0) ** 2).sum()
    >>> dyn = gradient_descent(inner, learning_rate=0.5)
    >>> res = implicit_cg({"x": torch.zeros(1)}, {"c": torch.ones(1)}, 100, dyn, outer)
    >>> round(float(res.grad["c"]), 4)
    -1.0
    """
    hparams = _leaves(hparams)
    w = _leaves(_solve_inner(params, hparams, T, dynamics, tol)[0])
    value = _check_finite(outer_loss(w, hparams), T)
    direct_w = _grad(value, w, retain_graph=True)
    direct_h = _grad(value, hparams)
    inner_grad = list(
        _grad(dynamics.inner_loss(w, hparams), w, create_graph=True).values()
    )
    if hessian_vector is None:

        def hessian_vector(v):
            return _grad(
                inner_grad, w, grad_outputs=list(v.values()), retain_graph=True
            )

    cg_tol = _default_tol(w, cg_tol)
    x0 = None if init is None else {name: init[name].detach() for name in w}
    v, converged, _ = conjugate_gradient(
        hessian_vector,
        direct_w,
        tol=cg_tol,
        max_iter=max_iter,
        precondition=preconditioner,
        x0=x0,
    )
    if not converged:
        _warn_linear_system("conjugate gradient", max_iter, cg_tol)
    mixed = _grad(inner_grad, hparams, grad_outputs=list(v.values()))
    grad = {name: direct_h[name] - mixed[name] for name in hparams}
    adjoint = {name: vi.detach() for name, vi in v.items()}
    return Hypergradient(value.detach(), grad, _detached(w), adjoint)


def implicit_fixed_point(
    params, hparams, T, dynamics, outer_loss, *, tol=None, max_iter=100, fp_tol=None
):
    """Implicit hypergradient by fixed-point (Neumann series) iteration.

    The inner solution is a fixed point s* = Phi(s*, lambda) of the dynamics'
    own one-step map (state s: parameters and optimizer memory). The adjoint
    ``a = (dPhi/ds)^T a + dE/ds`` is solved by iterating it, which sums the
    Neumann series of ``(I - dPhi/ds)^{-T}``; the hypergradient is
    ``dE/dlambda + (dPhi/dlambda)^T a``. It needs no symmetry (unlike
    :func:`implicit_cg`), only a contractive map at s*, which gradient descent
    and heavy ball are wherever they converge; it does not apply to Adam, whose
    step changes with t.

    Parameters
    ----------
    params, hparams, T, dynamics, outer_loss
        As in :func:`~skbilevel.hypergrad.reverse`.
    tol : float, default=None
        Gradient-norm tolerance of the inner solve; ``None`` means the square
        root of the machine epsilon of the parameters' dtype.
    max_iter : int, default=100
        Maximum number of fixed-point iterations.
    fp_tol : float, default=None
        Relative change of the adjoint at which the iteration stops; ``None``
        means the square root of the machine epsilon.

    Returns
    -------
    result : Hypergradient
        E(w*, lambda), the implicit hypergradient, and w*.

    References
    ----------
    .. [1] R. Grazzi, L. Franceschi, M. Pontil and S. Salzo, "On the Iteration
       Complexity of Hypergradient Computation", ICML 2020.

    Examples
    --------
    >>> import torch
    >>> from skbilevel.hypergrad import gradient_descent, implicit_fixed_point
    >>> inner = lambda w, h: 0.5 * ((w["x"] - h["c"]) ** 2).sum()
    >>> outer = lambda w, h: 0.5 * ((w["x"] - 2.0) ** 2).sum()
    >>> dyn = gradient_descent(inner, learning_rate=0.5)
    >>> res = implicit_fixed_point({"x": torch.zeros(1)}, {"c": torch.ones(1)}, 100,
    ...                            dyn, outer)
    >>> round(float(res.grad["c"]), 3)
    -1.0
    """
    hparams = _leaves(hparams)
    state = tuple(
        _leaves(part) for part in _solve_inner(params, hparams, T, dynamics, tol)
    )
    flat_state = [tensor for part in state for tensor in part.values()]
    # A time-invariant map is evaluated at the last step index (some
    # schedules are only defined for t < T).
    mapped = dynamics.step(state, hparams, max(T - 1, 0))
    flat_mapped = [tensor for part in mapped for tensor in part.values()]
    value = _check_finite(outer_loss(state[0], hparams), T)
    direct_w = list(_grad(value, state[0], retain_graph=True).values())
    direct_s = direct_w + [torch.zeros_like(s) for s in flat_state[len(direct_w) :]]
    direct_h = _grad(value, hparams)
    inputs = dict(enumerate(flat_state))
    fp_tol = _default_tol(inputs, fp_tol)
    adjoint, converged = direct_s, False
    for _ in range(max_iter):
        pulled = _grad(flat_mapped, inputs, grad_outputs=adjoint, retain_graph=True)
        new = [p + d for p, d in zip(pulled.values(), direct_s)]
        change = _norm([n - a for n, a in zip(new, adjoint)])
        adjoint = new
        if change <= fp_tol * _norm(adjoint):
            converged = True
            break
    if not converged:
        _warn_linear_system("fixed-point iteration", max_iter, fp_tol)
    mixed = _grad(flat_mapped, hparams, grad_outputs=adjoint)
    grad = {name: direct_h[name] + mixed[name] for name in hparams}
    return Hypergradient(value.detach(), grad, _detached(state[0]))
