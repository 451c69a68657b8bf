"""Display classes in scikit-learn's style for searches and meta-training.

Each class has a ``from_estimator`` class method that reads a fitted object and
draws it, and a ``plot`` method; matplotlib is imported only when drawing.
"""

from ._meta import MetaTrainingDisplay
from ._penalty import PerFeaturePenaltyDisplay
from ._sample_weight import SampleWeightDisplay
from ._schedule import LearningRateScheduleDisplay
from ._trajectory import SearchTrajectoryDisplay

__all__ = [
    "LearningRateScheduleDisplay",
    "MetaTrainingDisplay",
    "PerFeaturePenaltyDisplay",
    "SampleWeightDisplay",
    "SearchTrajectoryDisplay",
]
