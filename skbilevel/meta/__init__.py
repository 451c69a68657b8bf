"""Meta-learning: hyper-representations for few-shot classification."""

from ._estimator import HyperRepresentationClassifier
from ._few_shot import few_shot_score
from ._representations import conv4, mlp

__all__ = ["HyperRepresentationClassifier", "conv4", "few_shot_score", "mlp"]
