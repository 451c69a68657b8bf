"""Datasets for the paper's experiments: loaders, episodes and label noise."""

from ._episodes import sample_episodes
from ._loaders import load_mnist, load_omniglot, omniglot_few_shot_splits
from ._noise import flip_labels

__all__ = [
    "flip_labels",
    "load_mnist",
    "load_omniglot",
    "omniglot_few_shot_splits",
    "sample_episodes",
]
