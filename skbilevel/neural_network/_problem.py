"""The unrolled bilevel problem of an estimator whose fit is T optimizer steps."""

from collections.abc import Callable
from typing import NamedTuple

from torch import Tensor

from ..hypergrad import Dynamics

Params = dict[str, Tensor]


class UnrolledProblem(NamedTuple):
    """A differentiable K-fold problem whose inner solution is T training steps.

    Unlike a problem with an argmin inner solution, the hyperparameters here
    may act on the training procedure itself (learning rate, momentum), so
    the hypergradient is taken through the very steps ``fit`` runs: always
    from ``init_params()`` (never warm-started), for exactly ``T`` steps of
    ``dynamics``. The hypergradient of the K-fold validation loss is::

        METHODS["reverse"](problem.init_params(), hparams, problem.T,
                           problem.dynamics, problem.outer_loss)

    and the same call with ``"truncated_reverse"`` (``K=``) or ``"forward"``.
    ``hparams`` holds the constrained values of the learned hyperparameters,
    keyed by parameter name (``"sample_weight"`` for per-example weights);
    names not given take the estimator's own value.

    Parameters
    ----------
    init_params : callable
        ``init_params() -> params``, the seeded initial weights w_0, with a
        leading fold dimension (the same in every fold).
    inner_loss : callable
        ``inner_loss(params, hparams) -> Tensor``, the sum over folds of the
        full-batch training objective.
    outer_loss : callable
        ``outer_loss(params, hparams) -> Tensor``, the mean over folds of the
        mean validation loss (log-loss for classifiers, squared error for
        regressors), each validation sample weighted by its ``fit`` weight.
    dynamics : Dynamics
        The training steps; step t reads the learned hyperparameters from
        ``hparams``.
    T : int
        The number of steps ``fit`` runs (``max_iter``).
    fitted_attributes : callable
        ``fitted_attributes(params) -> list of dict``, per fold the
        ``coefs_`` and ``intercepts_`` the estimator fitted on that fold's
        training part would hold.
    n_layers : int
        The number of weight matrices (``len(hidden_layer_sizes) + 1``), the
        length of a per-layer ``alpha``.

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> from skbilevel.hypergrad import reverse
    >>> from skbilevel.neural_network import TorchMLPRegressor
    >>> from skbilevel.problems import FoldData
    >>> X = np.linspace(-1, 1, 8)[:, None]
    >>> train = torch.tensor([[1.0] * 4 + [0.0] * 4, [0.0] * 4 + [1.0] * 4])
    >>> data = FoldData(torch.as_tensor(X), X.ravel() ** 2, train, 1 - train,
    ...                 torch.ones(8, dtype=torch.float64))
    >>> est = TorchMLPRegressor(hidden_layer_sizes=(4,), solver="sgd",
    ...                         learning_rate=0.1, max_iter=10, random_state=0)
    >>> problem = est._bilevel_problem(data, {"learning_rate": "real"}, {})
    >>> hparams = {"learning_rate": torch.tensor(0.1, dtype=torch.float64)}
    >>> result = reverse(problem.init_params(), hparams, problem.T,
    ...                  problem.dynamics, problem.outer_loss)
    >>> result.grad["learning_rate"].shape
    torch.Size([])
    """

    init_params: Callable[[], Params]
    inner_loss: Callable[[Params, Params], Tensor]
    outer_loss: Callable[[Params, Params], Tensor]
    dynamics: Dynamics
    T: int
    fitted_attributes: Callable[[Params], list]
    n_layers: int

    def transformed(self, transform):
        """The same problem over variables ``u`` with ``hparams = transform(u)``.

        The outer optimizer of a search moves unconstrained variables; this
        composes every function that reads hyperparameters with
        ``transform``, so that the hypergradient methods differentiate with
        respect to ``u`` directly.

        Parameters
        ----------
        transform : callable
            ``transform(u) -> hparams``, differentiable.

        Returns
        -------
        problem : UnrolledProblem
            The composed problem.
        """
        dynamics = Dynamics(
            lambda params, u: self.dynamics.inner_loss(params, transform(u)),
            self.dynamics.init,
            lambda state, u, t: self.dynamics.step(state, transform(u), t),
        )
        return self._replace(
            inner_loss=lambda params, u: self.inner_loss(params, transform(u)),
            outer_loss=lambda params, u: self.outer_loss(params, transform(u)),
            dynamics=dynamics,
        )
