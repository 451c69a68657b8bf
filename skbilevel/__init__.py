"""skbilevel: gradient-based hyperparameter optimization for scikit-learn.

An implementation of "Bilevel Programming for Hyperparameter Optimization and
Meta-Learning" (Franceschi et al., ICML 2018).
"""

from . import plotting
from ._search import BilevelSearchCV
from ._space import PerFeature, PerLayer, PerStep, Real, SampleWeight
from .meta import HyperRepresentationClassifier, few_shot_score
from .neural_network import TorchMLPClassifier, TorchMLPRegressor

__version__ = "0.1.0.dev0"

__all__ = [
    "BilevelSearchCV",
    "HyperRepresentationClassifier",
    "PerFeature",
    "PerLayer",
    "PerStep",
    "Real",
    "SampleWeight",
    "TorchMLPClassifier",
    "TorchMLPRegressor",
    "__version__",
    "few_shot_score",
    "plotting",
]
