"""Datasets for the paper's experiments: loaders, episodes and label noise."""

from ._noise import flip_labels

__all__ = ["flip_labels"]
