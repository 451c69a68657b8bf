"""The training dynamics of the MLP: T optimizer steps as a pure function.

Training is a :class:`~skbilevel.hypergrad.Dynamics` whose step ``t``
applies the engine's heavy-ball or Adam update to the loss of batch ``t``.
Everything a step reads is either a constant (data, fold masks, the seeded
batch order) or a hyperparameter, taken from ``hparams`` when learned and
from the estimator otherwise; so ``fit`` and the bilevel problem run the very
same map, and reverse and forward mode differentiate it exactly.

The objective of fold k on batch B_t (every training sample when full batch)
is, with s_i the sample weights, S_k their sum over the fold's training part,
n_k its number of samples and W_l the weight matrices::

    L_t = [(n_k / |B_t|) sum_{i in B_t} s_i loss_i + sum_l alpha_l ||W_l||^2 / 2] / S_k

In full batch this is exactly the objective of scikit-learn's MLP (weighted
mean loss plus ``alpha / 2 ||W||^2`` divided by the total sample weight).
"""

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..hypergrad import Dynamics, adam, heavy_ball
from ._network import forward, n_weight_layers, sample_losses

Params = dict[str, Tensor]


class BatchSchedule(NamedTuple):
    """A seeded mini-batch order for each fold, as tensors on the device.

    ``order[k, e, p]`` is the sample at position p of epoch e of fold k;
    step t reads batch ``t % n_batches[k]`` of epoch ``t // n_batches[k]``;
    ``width`` is the largest batch size.
    """

    order: Tensor
    n_train: Tensor
    batch_size: Tensor
    n_batches: Tensor
    width: int

    def batch(self, t: int):
        """Sample indices (K, b), their validity mask and the factor n_k / |B_t|."""
        folds = torch.arange(self.order.shape[0], device=self.order.device)
        epoch = torch.div(t, self.n_batches, rounding_mode="floor")
        position = self.batch_size * (t - epoch * self.n_batches)
        offset = torch.arange(self.width, device=self.order.device)
        positions = position[:, None] + offset[None]
        valid = (offset[None] < self.batch_size[:, None]) & (
            positions < self.n_train[:, None]
        )
        rows = self.order[folds, epoch]
        index = rows.gather(1, positions.clamp(max=rows.shape[1] - 1))
        scale = self.n_train / valid.sum(1)
        return index, valid, scale


def batch_schedule(train, batch_size, T, shuffle, seed, device):
    """The :class:`BatchSchedule` of the training masks ``train`` (K, n).

    Each fold shuffles its training samples (in their order in the data) with
    ``numpy.random.RandomState(seed)`` at every epoch, as ``fit`` on that
    fold's training data alone does. Returns None when every fold fits in one
    batch (full batch).
    """
    if batch_size is None:
        return None
    train = np.asarray(train, dtype=bool)
    n_train = train.sum(1)
    sizes = np.minimum(batch_size, n_train)
    n_batches = -(-n_train // sizes)
    if np.all(n_batches == 1):
        return None
    n_epochs = int(-(-T // n_batches.min()))
    order = np.zeros((train.shape[0], n_epochs, n_train.max()), dtype=np.int64)
    for k, mask in enumerate(train):
        index = np.flatnonzero(mask)
        rng = np.random.RandomState(seed)
        for epoch in range(-(-T // n_batches[k])):
            permutation = rng.permutation(index.size) if shuffle else slice(None)
            order[k, epoch, : index.size] = index[permutation]

    def tensor(array):
        return torch.as_tensor(array, dtype=torch.int64, device=device)

    return BatchSchedule(
        tensor(order),
        tensor(n_train),
        tensor(sizes),
        tensor(n_batches),
        int(sizes.max()),
    )


def _rows(tensor: Tensor, index: Tensor) -> Tensor:
    """Rows ``index`` (K, b) of a shared (n, ...) or per-fold (K, n, ...) tensor."""
    if tensor.dim() >= 3:
        folds = torch.arange(index.shape[0], device=index.device)
        return tensor[folds[:, None], index]
    return tensor[index]


def make_objective(X, targets, kind, activation, weights, value, schedule):
    """The training objective ``loss(params, hparams, t=None)`` summed over folds.

    ``weights(hparams)`` gives the (K, n) sample weights (zero outside each
    fold's training part), ``value(hparams, name)`` a hyperparameter and
    ``schedule`` the mini-batches (None: full batch, as with ``t=None``).
    """

    def loss(params: Params, hparams: Params, t: int | None = None) -> Tensor:
        sample_weight = weights(hparams)
        if t is None or schedule is None:
            scores = forward(params, X, activation)
            data = (sample_weight * sample_losses(scores, targets, kind)).sum(1)
        else:
            index, valid, scale = schedule.batch(t)
            scores = forward(params, _rows(X, index), activation)
            batch_weight = sample_weight.gather(1, index) * valid
            losses = sample_losses(scores, _rows(targets, index), kind)
            data = scale * (batch_weight * losses).sum(1)
        alpha = value(hparams, "alpha")
        norms = torch.stack(
            [
                (params[f"coef_{layer}"] ** 2).sum((-2, -1))
                for layer in range(n_weight_layers(params))
            ],
            dim=-1,
        )
        penalty = 0.5 * (norms * alpha).sum(-1)
        return ((data + penalty) / sample_weight.sum(1)).sum()

    return loss


def scheduled(rate: Tensor, t: int, T: int) -> Tensor:
    """Entry ``floor(t * B / T)`` of a schedule of B values (a scalar as it is)."""
    if rate.dim() == 0:
        return rate
    return rate[t * rate.shape[0] // T]


def make_dynamics(
    objective: Callable,
    value: Callable,
    *,
    solver: str,
    T: int,
    betas: tuple,
    epsilon: float,
) -> Dynamics:
    """The T-step training dynamics over ``objective`` (see :func:`make_objective`).

    Step t is the engine's :func:`~skbilevel.hypergrad.heavy_ball` or
    :func:`~skbilevel.hypergrad.adam` step on the loss of batch t.
    """

    def learning_rate(hparams, t):
        return scheduled(value(hparams, "learning_rate"), t, T)

    def optimizer(loss):
        if solver == "sgd":
            return heavy_ball(
                loss, learning_rate, lambda hparams, t: value(hparams, "momentum")
            )
        return adam(loss, learning_rate, betas, epsilon)

    full = optimizer(objective)

    def step(state, hparams, t):
        return optimizer(lambda p, h: objective(p, h, t)).step(state, hparams, t)

    return Dynamics(objective, full.init, step)
