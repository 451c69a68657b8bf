"""Differentiable inner dynamics: the one-step maps Phi_t of the paper.

Inner parameters and hyperparameters are dicts of tensors. A :class:`Dynamics`
bundles the inner loss ``L(params, hparams)`` with an optimizer written as pure
functions, so that reverse mode (autograd through the unrolled steps), forward
mode (:func:`torch.func.jvp`) and implicit differentiation all see the same
map. Learning rates and momenta are tensors that may depend on the
hyperparameters; they are given as numbers, tensors, dicts of those (one per
parameter group) or callables ``(hparams, t) -> value`` (anything learnable, for
instance one learning rate per step).
"""

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

Params = dict[str, Tensor]
State = tuple[Params, ...]
Rate = float | Tensor | dict | Callable


class Dynamics(NamedTuple):
    """An inner optimizer as pure functions over a state of tensor dicts.

    Parameters
    ----------
    inner_loss : callable
        ``inner_loss(params, hparams) -> Tensor``, the scalar training
        objective L minimized by the dynamics.
    init : callable
        ``init(params) -> state``; ``state[0]`` is always the parameter dict,
        the rest is optimizer memory (velocity, moments).
    step : callable
        ``step(state, hparams, t) -> state``, the map Phi_t of step ``t``
        (counted from 0).

    See Also
    --------
    gradient_descent, heavy_ball, adam : constructors of the usual dynamics.

    Examples
    --------
    >>> import torch
    >>> from skbilevel.hypergrad import gradient_descent, unroll
    >>> loss = lambda w, h: 0.5 * ((w["x"] - h["target"]) ** 2).sum()
    >>> dyn = gradient_descent(loss, learning_rate=1.0)
    >>> state = unroll(dyn, {"x": torch.zeros(2)}, {"target": torch.ones(2)}, T=20)
    >>> state[0]["x"]
    tensor([1., 1.])
    """

    inner_loss: Callable[[Params, Params], Tensor]
    init: Callable[[Params], State]
    step: Callable[[State, Params, int], State]


def _rate(rate: Rate, hparams: Params, t: int, name: str) -> Tensor | float:
    """The value of a learning rate or momentum for parameter ``name`` at ``t``."""
    value = rate(hparams, t) if callable(rate) else rate
    if isinstance(value, dict):
        value = value[name]
    return value


def _gradient(inner_loss, params: Params, hparams: Params) -> Params:
    # torch.func.grad, unlike torch.autograd.grad, composes with jvp and vmap
    # (forward mode) and still records a graph for reverse mode.
    grads = torch.func.grad(inner_loss)(params, hparams)
    # Forward-mode AD promotes tangents to float64 where a Python float meets
    # a 0-dim tensor (pytorch/pytorch#90065); a forced copy (cheap: one per
    # parameter and step) casts the tangent back to the parameter's dtype.
    return {name: g.to(params[name].dtype, copy=True) for name, g in grads.items()}


def gradient_descent(inner_loss, learning_rate):
    """Plain gradient descent, ``w <- w - eta_t * grad L(w, lambda)``.

    Parameters
    ----------
    inner_loss : callable
        ``inner_loss(params, hparams) -> Tensor``, the training objective.
    learning_rate : float, Tensor, dict or callable
        The step size eta_t: a number or tensor (broadcast against each
        parameter), a dict giving one per parameter name, or a callable
        ``(hparams, t) -> value`` returning any of these, which is how a learned
        learning rate or a per-step schedule enters the dynamics.

    Returns
    -------
    dynamics : Dynamics
        The dynamics; its state is ``(params,)``.

    Examples
    --------
    >>> import torch
    >>> from skbilevel.hypergrad import gradient_descent, unroll
    >>> loss = lambda w, h: 0.5 * (w["x"] ** 2).sum()
    >>> schedule = lambda h, t: h["lr"][t]        # one learning rate per step
    >>> dyn = gradient_descent(loss, learning_rate=schedule)
    >>> w = unroll(dyn, {"x": torch.ones(1)}, {"lr": torch.tensor([0.5, 1.0])}, T=2)
    >>> w[0]["x"]
    tensor([0.])
    """

    def init(params: Params) -> State:
        return (params,)

    def step(state: State, hparams: Params, t: int) -> State:
        (params,) = state
        grads = _gradient(inner_loss, params, hparams)
        return (
            {
                name: value - _rate(learning_rate, hparams, t, name) * grads[name]
                for name, value in params.items()
            },
        )

    return Dynamics(inner_loss, init, step)


def heavy_ball(inner_loss, learning_rate, momentum=0.9):
    """Heavy-ball momentum, ``v <- mu v + grad L``, ``w <- w - eta v``.

    This is the convention of :class:`torch.optim.SGD` and of Franceschi et al.
    (2017, 2018).

    Parameters
    ----------
    inner_loss : callable
        ``inner_loss(params, hparams) -> Tensor``, the training objective.
    learning_rate : float, Tensor, dict or callable
        The step size eta_t, in any form accepted by :func:`gradient_descent`.
    momentum : float, Tensor, dict or callable, default=0.9
        The momentum mu_t, in the same forms.

    Returns
    -------
    dynamics : Dynamics
        The dynamics; its state is ``(params, velocity)``, velocity starting
        at zero.

    Examples
    --------
    >>> import torch
    >>> from skbilevel.hypergrad import heavy_ball, unroll
    >>> loss = lambda w, h: 0.5 * (w["x"] ** 2).sum()
    >>> dyn = heavy_ball(loss, learning_rate=0.1, momentum=0.5)
    >>> params, velocity = unroll(dyn, {"x": torch.ones(1)}, {}, T=2)
    >>> params["x"]
    tensor([0.7600])
    """

    def init(params: Params) -> State:
        return params, {name: torch.zeros_like(value) for name, value in params.items()}

    def step(state: State, hparams: Params, t: int) -> State:
        params, velocity = state
        grads = _gradient(inner_loss, params, hparams)
        velocity = {
            name: _rate(momentum, hparams, t, name) * velocity[name] + grads[name]
            for name in params
        }
        params = {
            name: value - _rate(learning_rate, hparams, t, name) * velocity[name]
            for name, value in params.items()
        }
        return params, velocity

    return Dynamics(inner_loss, init, step)


def adam(inner_loss, learning_rate=1e-3, betas=(0.9, 0.999), eps=1e-8):
    """Adam (Kingma and Ba, 2015) with bias correction, differentiable everywhere.

    The denominator is ``sqrt(v_hat + eps**2)`` instead of ``sqrt(v_hat) + eps``:
    it differs from :class:`torch.optim.Adam` by less than ``eps`` but has a
    finite derivative where a gradient entry is exactly zero (for instance the
    weights of an always-black MNIST pixel), where the usual form gives NaN
    hypergradients.

    Parameters
    ----------
    inner_loss : callable
        ``inner_loss(params, hparams) -> Tensor``, the training objective.
    learning_rate : float, Tensor, dict or callable, default=1e-3
        The step size, in any form accepted by :func:`gradient_descent`.
    betas : tuple of (float, Tensor, dict or callable), default=(0.9, 0.999)
        Decay rates of the first and second moment estimates, in the same forms.
    eps : float, default=1e-8
        Regularizer of the denominator.

    Returns
    -------
    dynamics : Dynamics
        The dynamics; its state is ``(params, first_moment, second_moment)``.

    Examples
    --------
    >>> import torch
    >>> from skbilevel.hypergrad import adam, unroll
    >>> loss = lambda w, h: 0.5 * (w["x"] ** 2).sum()
    >>> params = unroll(adam(loss, learning_rate=0.1), {"x": torch.ones(1)}, {}, T=1)[0]
    >>> params["x"]
    tensor([0.9000])
    """
    beta1, beta2 = betas

    def init(params: Params) -> State:
        zeros = {name: torch.zeros_like(value) for name, value in params.items()}
        return params, zeros, dict(zeros)

    def step(state: State, hparams: Params, t: int) -> State:
        params, first, second = state
        grads = _gradient(inner_loss, params, hparams)
        new_params, new_first, new_second = {}, {}, {}
        for name, value in params.items():
            b1 = _rate(beta1, hparams, t, name)
            b2 = _rate(beta2, hparams, t, name)
            new_first[name] = b1 * first[name] + (1 - b1) * grads[name]
            new_second[name] = b2 * second[name] + (1 - b2) * grads[name] ** 2
            first_hat = new_first[name] / (1 - b1 ** (t + 1))
            second_hat = new_second[name] / (1 - b2 ** (t + 1))
            new_params[name] = value - _rate(
                learning_rate, hparams, t, name
            ) * first_hat / torch.sqrt(second_hat + eps**2)
        return new_params, new_first, new_second

    return Dynamics(inner_loss, init, step)


def gradient_norm(inner_loss, params: Params, hparams: Params) -> float:
    """Euclidean norm of ``grad_w L(params, hparams)`` over all parameters."""
    grads = _gradient(inner_loss, params, hparams)
    return float(torch.sqrt(sum((g.detach() ** 2).sum() for g in grads.values())))


def unroll(dynamics, params, hparams, T, *, tol=None, check_every=10):
    """Run ``T`` steps of ``dynamics`` and return the final state.

    This is plain training: the steps are recorded by autograd only if the
    caller asks for it (no ``torch.no_grad`` is applied here), so the same
    function serves training and the unrolled forward pass of reverse mode.

    Parameters
    ----------
    dynamics : Dynamics
        The inner optimizer.
    params : dict of str to Tensor
        The initial inner parameters w_0.
    hparams : dict of str to Tensor
        The hyperparameters lambda.
    T : int
        Number of steps.
    tol : float, default=None
        If given, stop early once the norm of the inner gradient is at most
        ``tol``; it is measured every ``check_every`` steps.
    check_every : int, default=10
        How often (in steps) the gradient norm is measured when ``tol`` is set.

    Returns
    -------
    state : tuple of dict
        The final state; ``state[0]`` holds the parameters w_T.

    Examples
    --------
    >>> import torch
    >>> from skbilevel.hypergrad import gradient_descent, unroll
    >>> loss = lambda w, h: 0.5 * ((w["x"] - 3.0) ** 2).sum()
    >>> dyn = gradient_descent(loss, learning_rate=0.5)
    >>> state = unroll(dyn, {"x": torch.zeros(1)}, {}, T=1000, tol=1e-6)
    >>> round(float(state[0]["x"]), 4)
    3.0
    """
    state = dynamics.init(params)
    for t in range(T):
        if (
            tol is not None
            and t % check_every == 0
            and gradient_norm(dynamics.inner_loss, state[0], hparams) <= tol
        ):
            break
        state = dynamics.step(state, hparams, t)
    return state
