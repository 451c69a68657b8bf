"""The inner problem: one linear head per episode on fixed features.

The heads of a meta-batch are stacked along a leading episode dimension and
their losses summed, so the episode problems stay independent while the whole
meta-batch is one tensor computation. The representation is evaluated once
per episode; the engine treats the features (and the log learning rate) as
the hyperparameters, and the chain rule ``features.backward(grad)`` carries
the hypergradient into the network.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from ..hypergrad import gradient_descent, implicit_cg, reverse


def _logits(head: dict[str, Tensor], features: Tensor) -> Tensor:
    return (
        torch.einsum("end,edk->enk", features, head["coef"])
        + head["intercept"][:, None]
    )


def _episode_loss(head, features, labels):
    """Sum over episodes of the mean cross-entropy within each episode."""
    logits = _logits(head, features)
    total = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="sum"
    )
    return total / labels.shape[1]


def zero_heads(n_episodes, n_features, n_classes, like):
    """Heads initialized at zero, as in the paper's code."""
    return {
        "coef": like.new_zeros(n_episodes, n_features, n_classes),
        "intercept": like.new_zeros(n_episodes, n_classes),
    }


def inner_dynamics(y_support, alpha):
    """Gradient descent on the support loss with the learned rate exp(log_lr).

    ``hparams["features"]`` holds support then query features, ``(E, N, D)``;
    only the first ``y_support.shape[1]`` rows enter the inner loss.
    """
    n_support = y_support.shape[1]

    def inner_loss(head, hparams):
        features = hparams["features"][:, :n_support]
        penalty = 0.5 * alpha * (head["coef"] ** 2).sum()
        return _episode_loss(head, features, y_support) + penalty

    return gradient_descent(inner_loss, lambda h, t: h["log_lr"].exp())


def episode_hypergradient(features, log_lr, y_support, y_query, T, alpha, method, tol):
    """Query loss of the meta-batch and its gradient in features and log_lr.

    Parameters
    ----------
    features : Tensor of shape (E, N_support + N_query, D)
        The representation of each episode's support then query examples.
    log_lr : Tensor of shape ()
        Logarithm of the inner learning rate.
    y_support, y_query : Tensor of shape (E, N_support) and (E, N_query)
        Episode labels in ``0..n_way-1``.
    T : int
        Number of inner steps.
    alpha : Tensor of shape ()
        L2 penalty of the head coefficients.
    method : {"reverse", "implicit"}
        Hypergradient method of the engine.
    tol : float
        Inner gradient-norm tolerance of the implicit method.

    Returns
    -------
    outer_loss : Tensor
        Mean query cross-entropy over the episodes, detached.
    grad : dict of str to Tensor
        Its gradient in ``"features"`` and ``"log_lr"``.
    """
    n_support = y_support.shape[1]
    n_classes = int(y_support.max()) + 1
    n_episodes = features.shape[0]

    def outer_loss(head, hparams):
        query = hparams["features"][:, n_support:]
        return _episode_loss(head, query, y_query) / n_episodes

    head = zero_heads(n_episodes, features.shape[2], n_classes, features)
    hparams = {"features": features.detach(), "log_lr": log_lr.detach()}
    dynamics = inner_dynamics(y_support, alpha)
    if method == "implicit":
        result = implicit_cg(head, hparams, T, dynamics, outer_loss, tol=tol)
    else:
        result = reverse(head, hparams, T, dynamics, outer_loss)
    return result.outer_loss, result.grad


@torch.no_grad()
def train_heads(features, labels, n_classes, T, learning_rate, alpha, chunk_size):
    """T gradient steps of the inner problem from zero, without a graph.

    The same map as :func:`inner_dynamics` with a closed-form gradient
    computed over chunks of samples, so that a head on a large training set
    (thousands of classes) fits in memory.

    Parameters
    ----------
    features : Tensor of shape (E, N, D)
    labels : Tensor of shape (E, N), values in ``0..n_classes-1``
    n_classes, T : int
    learning_rate, alpha : float
    chunk_size : int
        Number of samples per chunk in the gradient.

    Returns
    -------
    head : dict of str to Tensor
        ``"coef"`` of shape (E, D, n_classes), ``"intercept"`` (E, n_classes).
    """
    n_episodes, n_samples, n_features = features.shape
    head = zero_heads(n_episodes, n_features, n_classes, features)
    for _ in range(T):
        grad_coef = alpha * head["coef"]
        grad_intercept = torch.zeros_like(head["intercept"])
        for start in range(0, n_samples, chunk_size):
            chunk = features[:, start : start + chunk_size]
            residual = _logits(head, chunk).softmax(-1)
            target = labels[:, start : start + chunk_size]
            residual.scatter_add_(
                2, target[..., None], residual.new_full((*target.shape, 1), -1.0)
            )
            residual /= n_samples
            grad_coef += torch.einsum("end,enk->edk", chunk, residual)
            grad_intercept += residual.sum(1)
        head["coef"] -= learning_rate * grad_coef
        head["intercept"] -= learning_rate * grad_intercept
    return head


def head_logits(head, features):
    """Logits ``(E, N, n_classes)`` of stacked heads on ``(E, N, D)`` features."""
    return _logits(head, features)
