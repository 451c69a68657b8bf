"""skbilevel: gradient-based hyperparameter optimization for scikit-learn.

An implementation of "Bilevel Programming for Hyperparameter Optimization and
Meta-Learning" (Franceschi et al., ICML 2018).
"""

import importlib

from ._search import BilevelSearchCV
from ._space import PerFeature, PerLayer, PerStep, Real, SampleWeight
from .neural_network import TorchMLPClassifier, TorchMLPRegressor

__version__ = "0.1.0.dev0"

# Imported on first use: a joblib worker running a search's task imports the
# package, and these are no part of a search (about 50 ms of the 0.25 s that
# skbilevel's own modules add to torch's and scikit-learn's imports).
_LAZY = {
    "plotting": (".plotting", None),
    "HyperRepresentationClassifier": (".meta", "HyperRepresentationClassifier"),
    "few_shot_score": (".meta", "few_shot_score"),
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attribute = _LAZY[name]
    module = importlib.import_module(module, __name__)
    return module if attribute is None else getattr(module, attribute)


def __dir__():
    return sorted([*globals(), *_LAZY])


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
