"""The multilayer perceptron as pure torch functions over a dict of weights.

The weights carry a leading fold dimension K: ``coef_l`` is (K, fan_in,
fan_out) and ``intercept_l`` is (K, fan_out), so the K cross-validation folds
of a bilevel problem train side by side, and a plain ``fit`` is the case K=1.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor

Params = dict[str, Tensor]

ACTIVATIONS = {
    "identity": lambda z: z,
    "logistic": torch.sigmoid,
    "relu": torch.relu,
    "tanh": torch.tanh,
}


def n_weight_layers(params: Params) -> int:
    """Number of weight matrices (hidden layers + 1)."""
    return len(params) // 2


def init_params(sizes, activation, n_folds, seed, *, dtype, device) -> Params:
    """Glorot-uniform weights and intercepts, the same in every fold.

    As in :class:`~sklearn.neural_network.MLPClassifier`, layer l draws both
    from U(-b, b) with ``b = sqrt(f / (fan_in + fan_out))``, f = 2 for the
    logistic activation and 6 otherwise. The draw happens in float64 on the
    CPU from a generator seeded by ``seed``, so it does not depend on the
    device, the dtype or the number of samples.
    """
    generator = torch.Generator().manual_seed(seed)
    factor = 2.0 if activation == "logistic" else 6.0
    params = {}
    for layer, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        bound = math.sqrt(factor / (fan_in + fan_out))
        for name, shape in (("coef", (fan_in, fan_out)), ("intercept", (fan_out,))):
            draw = torch.rand(shape, generator=generator, dtype=torch.float64)
            value = (2.0 * draw - 1.0) * bound
            params[f"{name}_{layer}"] = (
                value.expand(n_folds, *shape).to(device=device, dtype=dtype).clone()
            )
    return params


def forward(params: Params, X: Tensor, activation: str) -> Tensor:
    """Raw output scores (before the output activation), shape (K, n, n_outputs).

    ``X`` is (n, d), shared by the folds, or (K, n, d).
    """
    hidden = ACTIVATIONS[activation]
    n_layers = n_weight_layers(params)
    Z = X
    for layer in range(n_layers):
        Z = torch.matmul(Z, params[f"coef_{layer}"])
        Z = Z + params[f"intercept_{layer}"].unsqueeze(-2)
        if layer < n_layers - 1:
            Z = hidden(Z)
    return Z


def sample_losses(scores: Tensor, targets: Tensor, kind: str) -> Tensor:
    """Per-sample training losses, shape (K, n), as scikit-learn's MLP defines them.

    ``kind`` is ``"binary"`` (one logit, log-loss), ``"multiclass"``
    (softmax cross-entropy; ``targets`` are class codes) or ``"regression"``
    (half the squared error, averaged over the outputs).
    """
    if kind == "binary":
        logits = scores[..., 0]
        return F.binary_cross_entropy_with_logits(
            logits, targets.expand_as(logits), reduction="none"
        )
    if kind == "multiclass":
        log_proba = torch.log_softmax(scores, dim=-1)
        codes = targets.expand(log_proba.shape[:-1]).unsqueeze(-1)
        return -log_proba.gather(-1, codes).squeeze(-1)
    return 0.5 * ((scores - targets) ** 2).mean(-1)


def validation_losses(scores: Tensor, targets: Tensor, kind: str) -> Tensor:
    """Per-sample validation losses (K, n): log-loss, or squared error."""
    if kind == "regression":
        return ((scores - targets) ** 2).mean(-1)
    return sample_losses(scores, targets, kind)


def predict_scores(coefs, intercepts, X: Tensor, activation: str) -> Tensor:
    """Scores (n, n_outputs) of one fitted network given as lists of tensors."""
    params = {}
    for layer, (coef, intercept) in enumerate(zip(coefs, intercepts)):
        params[f"coef_{layer}"] = coef[None]
        params[f"intercept_{layer}"] = intercept[None]
    return forward(params, X, activation)[0]
