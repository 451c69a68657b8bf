"""Fixtures shared by several test modules."""

import numpy as np
import pytest
from sklearn.datasets import make_classification

from skbilevel.datasets import flip_labels


@pytest.fixture(scope="session")
def noisy_split():
    """Data hyper-cleaning's setting: a training part (the first 140 of 200
    examples) with 30% of its labels flipped, a clean validation part.

    Returns ``X``, the noisy labels, the training mask and which training
    labels were flipped.
    """
    X, y = make_classification(
        n_samples=200,
        n_features=5,
        n_informative=4,
        n_redundant=0,
        class_sep=1.5,
        random_state=0,
    )
    train = np.arange(len(y)) < 140
    y_noisy = y.copy()
    y_noisy[train], flipped = flip_labels(y[train], 0.3, random_state=0)
    return X, y_noisy, train, flipped
