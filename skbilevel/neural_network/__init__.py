"""Torch-native estimators whose training dynamics are learnable hyperparameters.

:class:`TorchMLPClassifier` and :class:`TorchMLPRegressor` fit by exactly
``max_iter`` differentiable optimizer steps, so that the learning rate (one
value or a schedule), the momentum, the L2 penalty and per-sample weights can
be learned by hypergradient through the training itself. Their
``_bilevel_problem`` method returns an :class:`UnrolledProblem` for the
hypergradient methods of :mod:`skbilevel.hypergrad`.
"""

from ._multilayer_perceptron import TorchMLPClassifier, TorchMLPRegressor
from ._problem import UnrolledProblem

__all__ = ["TorchMLPClassifier", "TorchMLPRegressor", "UnrolledProblem"]
