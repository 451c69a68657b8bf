"""Hypergradient methods, all with one signature.

Every method is a pure function::

    method(params, hparams, T, dynamics, outer_loss, **options) -> Hypergradient

where ``params`` is the initial inner state w_0, ``hparams`` the
hyperparameters lambda (a dict of tensors), ``T`` the number of inner steps of
``dynamics`` and ``outer_loss(params, hparams)`` the validation objective E.
The result holds E(w_T, lambda), its total derivative with respect to lambda
and w_T itself (detached, ready to warm-start the next inner solve).

Reverse and forward mode differentiate the T-step approximation f_T exactly
(Franceschi et al., 2017, 2018); the implicit methods differentiate the limit
T -> infinity at the point the T steps reached (Pedregosa, 2016).
"""

from typing import NamedTuple

import torch
from torch import Tensor

from ..utils._torch import quiet_forward_ad
from ._dynamics import Params, unroll


class Hypergradient(NamedTuple):
    """The result of a hypergradient method.

    Parameters
    ----------
    outer_loss : Tensor
        The outer objective E(w_T, lambda), detached.
    grad : dict of str to Tensor
        dE(w_T(lambda), lambda) / dlambda, one entry per hyperparameter.
    params : dict of str to Tensor
        The inner parameters w_T the dynamics reached, detached.
    adjoint : dict of str to Tensor or None, default=None
        :func:`~skbilevel.hypergrad.implicit_cg` only: the solution ``v`` of
        ``H v = dE/dw``, a warm start (``init``) for a nearby next call.
    tangent : dict of str to list or None, default=None
        :func:`~skbilevel.hypergrad.implicit_forward` only: per
        hyperparameter, the columns ``dw*/dlambda_j``, a warm start (``init``)
        for a nearby next call and a prediction of its solution.

    Examples
    --------
    >>> import torch
    >>> from skbilevel.hypergrad import Hypergradient
    >>> result = Hypergradient(torch.tensor(0.0), {}, {})
    >>> result.outer_loss
    tensor(0.)
    """

    outer_loss: Tensor
    grad: Params
    params: Params
    adjoint: Params | None = None
    tangent: dict | None = None


def _detached(tensors: Params) -> Params:
    return {name: value.detach() for name, value in tensors.items()}


def _leaves(tensors: Params) -> Params:
    return {name: value.detach().requires_grad_() for name, value in tensors.items()}


def _grad(output: Tensor | list[Tensor], inputs: Params, **kwargs) -> Params:
    """torch.autograd.grad over a dict, zeros where ``output`` does not depend."""
    grads = torch.autograd.grad(
        output, list(inputs.values()), allow_unused=True, **kwargs
    )
    return {
        name: torch.zeros_like(value) if g is None else g
        for (name, value), g in zip(inputs.items(), grads)
    }


def _check_finite(value: Tensor, T: int) -> Tensor:
    """Refuse a NaN or infinite outer loss: the inner dynamics diverged."""
    if not torch.isfinite(value):
        raise FloatingPointError(
            f"The outer loss is {float(value.detach())} after {T} inner steps: "
            "the inner dynamics diverged. Lower the learning rate or the number "
            "of steps."
        )
    return value


def _differentiate_unrolled(state, hparams, T, t0, dynamics, outer_loss):
    """Steps t0..T-1 recorded by autograd, then E and its gradient in lambda."""
    for t in range(t0, T):
        state = dynamics.step(state, hparams, t)
    value = _check_finite(outer_loss(state[0], hparams), T)
    return Hypergradient(value.detach(), _grad(value, hparams), _detached(state[0]))


def reverse(params, hparams, T, dynamics, outer_loss):
    """Reverse-mode hypergradient through ``T`` unrolled steps (Reverse-HG).

    Back-propagation through the whole trajectory w_0 -> w_T. It is exact for
    the T-step problem and costs about twice the training it differentiates,
    but keeps the T intermediate states in memory: memory grows as
    T x (number of inner parameters). Use :func:`truncated_reverse`,
    :func:`forward` or an implicit method where that bites.

    Parameters
    ----------
    params : dict of str to Tensor
        Initial inner parameters w_0.
    hparams : dict of str to Tensor
        Hyperparameters lambda.
    T : int
        Number of inner steps.
    dynamics : Dynamics
        The inner optimizer (see :func:`gradient_descent`).
    outer_loss : callable
        ``outer_loss(params, hparams) -> Tensor``, the validation objective E.

    Returns
    -------
    result : Hypergradient
        E(w_T, lambda), its gradient in lambda, and w_T.

    References
    ----------
    .. [1] L. Franceschi, P. Frasconi, S. Salzo, R. Grazzi and M. Pontil,
       "Bilevel Programming for Hyperparameter Optimization and
       Meta-Learning", ICML 2018.

    Examples
    --------
    >>> import torch
    >>> from skbilevel.hypergrad import gradient_descent, reverse
    >>> inner = lambda w, h: 0.5 * ((w["x"] - h["c"]) ** 2).sum()
    >>> outer = lambda w, h: 0.5 * ((w["x"] - 2.0) ** 2).sum()
    >>> dyn = gradient_descent(inner, learning_rate=1.0)   # one step: w_1 = c
    >>> result = reverse({"x": torch.zeros(1)}, {"c": torch.ones(1)}, 1, dyn, outer)
    >>> result.grad["c"]
    tensor([-1.])
    """
    hparams = _leaves(hparams)
    state = dynamics.init(_detached(params))
    return _differentiate_unrolled(state, hparams, T, 0, dynamics, outer_loss)


def truncated_reverse(params, hparams, T, dynamics, outer_loss, *, K):
    """Reverse mode through the last ``K`` of ``T`` steps only.

    The first ``T - K`` steps run without recording a graph, so memory is that
    of ``K`` steps; the result is the exact hypergradient of the T-step problem
    with the dependence of w_{T-K} on lambda neglected (Shaban et al., 2019).
    With ``K = T`` it equals :func:`reverse`.

    Parameters
    ----------
    params, hparams, T, dynamics, outer_loss
        As in :func:`reverse`.
    K : int
        Number of final steps back-propagated through, ``1 <= K <= T``.

    Returns
    -------
    result : Hypergradient
        E(w_T, lambda), the truncated hypergradient, and w_T.

    Examples
    --------
    >>> import torch
    >>> from skbilevel.hypergrad import gradient_descent, truncated_reverse
    >>> inner = lambda w, h: 0.5 * ((w["x"] - h["c"]) ** 2).sum()
    >>> outer = lambda w, h: 0.5 * ((w["x"] - 2.0) ** 2).sum()
    >>> dyn = gradient_descent(inner, learning_rate=0.5)
    >>> res = truncated_reverse({"x": torch.zeros(1)}, {"c": torch.ones(1)}, 50,
    ...                         dyn, outer, K=5)
    >>> round(float(res.grad["c"]), 4)       # 1 - 0.5**5 of the exact -1
    -0.9688
    """
    if not 1 <= K <= T:
        raise ValueError(f"K must be in [1, T={T}]; got K={K}.")
    hparams = _leaves(hparams)
    with torch.no_grad():
        state = unroll(dynamics, _detached(params), hparams, T - K)
    return _differentiate_unrolled(state, hparams, T, T - K, dynamics, outer_loss)


def forward(params, hparams, T, dynamics, outer_loss, *, chunk_size=None):
    """Forward-mode hypergradient (Forward-HG) by Jacobian-vector products.

    The tangents dw_t/dlambda are carried along the T steps together with w_t
    (:func:`torch.func.jvp`, vectorized over the hyperparameters by
    :func:`torch.func.vmap`), so memory does not grow with T; time grows with
    the number of hyperparameters (about ``1 + n_hparams`` trainings).
    It is the method of choice for a few hyperparameters and long horizons.

    Parameters
    ----------
    params, hparams, T, dynamics, outer_loss
        As in :func:`reverse`.
    chunk_size : int, default=None
        Number of hyperparameter directions propagated at once; ``None``
        propagates all of them together, smaller values bound memory.

    Returns
    -------
    result : Hypergradient
        E(w_T, lambda), its gradient in lambda, and w_T.

    References
    ----------
    .. [1] L. Franceschi, M. Donini, P. Frasconi and M. Pontil, "Forward and
       Reverse Gradient-Based Hyperparameter Optimization", ICML 2017.

    Examples
    --------
    >>> import torch
    >>> from skbilevel.hypergrad import gradient_descent, forward
    >>> inner = lambda w, h: 0.5 * ((w["x"] - h["c"]) ** 2).sum()
    >>> outer = lambda w, h: 0.5 * ((w["x"] - 2.0) ** 2).sum()
    >>> dyn = gradient_descent(inner, learning_rate=1.0)
    >>> result = forward({"x": torch.zeros(1)}, {"c": torch.ones(1)}, 1, dyn, outer)
    >>> result.grad["c"]
    tensor([-1.])
    """
    params = _detached(params)
    names = list(hparams)
    shapes = [hparams[name].shape for name in names]
    sizes = [hparams[name].numel() for name in names]
    flat = torch.cat([hparams[name].detach().reshape(-1) for name in names])

    def objective(flat_hparams):
        pieces = torch.split(flat_hparams, sizes)
        h = {n: p.reshape(s) for n, p, s in zip(names, pieces, shapes)}
        state = unroll(dynamics, params, h, T)
        return outer_loss(state[0], h), state[0]

    def directional(tangent):
        value, derivative, w_T = torch.func.jvp(
            objective, (flat,), (tangent,), has_aux=True
        )
        return value, derivative, w_T

    basis = torch.eye(flat.numel(), dtype=flat.dtype, device=flat.device)
    # Every direction returns the same primal value and w_T; out_dims=None
    # would drop the copies but breaks with chunk_size (torch 2.13).
    with quiet_forward_ad():
        values, derivatives, w_T = torch.func.vmap(directional, chunk_size=chunk_size)(
            basis
        )
    values = _check_finite(values[0], T)
    w_T = {name: value[0] for name, value in w_T.items()}
    # Tangents of Python-scalar constants come back in float64; keep lambda's dtype.
    pieces = torch.split(derivatives.detach().to(flat.dtype), sizes)
    grad = {n: p.reshape(s) for n, p, s in zip(names, pieces, shapes)}
    return Hypergradient(values.detach(), grad, _detached(w_T))
