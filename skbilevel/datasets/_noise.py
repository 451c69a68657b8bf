"""Label noise for the data hyper-cleaning experiments."""

from numbers import Real

import numpy as np
from sklearn.utils import check_random_state

from ..utils._sklearn import Interval, validate_params


@validate_params(
    {
        "y": ["array-like"],
        "fraction": [Interval(Real, 0, 1, closed="both")],
        "random_state": ["random_state"],
    },
    prefer_skip_nested_validation=True,
)
def flip_labels(y, fraction, *, random_state=None):
    """Corrupt a fraction of the labels, each to a different class.

    ``round(fraction * n_samples)`` samples are chosen uniformly at random
    without replacement; each gets a label drawn uniformly among the other
    classes present in ``y``. This is the label noise of the data
    hyper-cleaning experiment of Franceschi et al. (2017, 2018).

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        The clean labels, of any dtype (integers, strings, ...). At least two
        classes must be present if any label is to be flipped.
    fraction : float
        Fraction of the labels to flip, in [0, 1].
    random_state : int, RandomState instance or None, default=None
        Controls which labels are flipped and to what. Pass an int for
        reproducible output across multiple function calls.

    Returns
    -------
    y_noisy : ndarray of shape (n_samples,)
        The labels with the chosen ones flipped, of the same dtype as ``y``.
    flipped : ndarray of shape (n_samples,), dtype=bool
        True where the label was flipped (and therefore is now wrong).

    References
    ----------
    .. [1] L. Franceschi, P. Frasconi, S. Salzo, R. Grazzi and M. Pontil,
       "Bilevel Programming for Hyperparameter Optimization and
       Meta-Learning", ICML 2018.

    Examples
    --------
    >>> import numpy as np
    >>> from skbilevel.datasets import flip_labels
    >>> y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    >>> y_noisy, flipped = flip_labels(y, 0.3, random_state=0)
    >>> int(flipped.sum())
    3
    >>> bool(np.all(y_noisy[flipped] != y[flipped]))
    True
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y must be 1-dimensional; got an array of shape {y.shape}.")
    rng = check_random_state(random_state)
    n_flips = int(round(fraction * y.shape[0]))
    classes, y_index = np.unique(y, return_inverse=True)
    if n_flips > 0 and classes.shape[0] < 2:
        raise ValueError(
            "flip_labels needs at least two classes in y to flip a label; got "
            f"{classes.shape[0]}."
        )
    flipped = np.zeros(y.shape[0], dtype=bool)
    flipped[rng.choice(y.shape[0], size=n_flips, replace=False)] = True
    # An offset in 1..n_classes-1 added modulo n_classes is uniform over the
    # other classes and never gives back the original one.
    offset = rng.randint(1, max(classes.shape[0], 2), size=n_flips)
    y_noisy = y.copy()
    y_noisy[flipped] = classes[(y_index[flipped] + offset) % classes.shape[0]]
    return y_noisy, flipped
