"""The episodic evaluation protocol of few-shot learning."""

from numbers import Integral

import numpy as np
from sklearn.base import clone

from ..datasets import sample_episodes
from ..utils._sklearn import HasMethods, Interval, validate_params
from ._estimator import HyperRepresentationClassifier


@validate_params(
    {
        "estimator": [HasMethods(["fit", "score"])],
        "X": ["array-like"],
        "y": ["array-like"],
        "n_way": [Interval(Integral, 2, None, closed="left")],
        "n_shot": [Interval(Integral, 1, None, closed="left")],
        "n_query": [Interval(Integral, 1, None, closed="left")],
        "n_episodes": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
    },
    prefer_skip_nested_validation=True,
)
def few_shot_score(
    estimator,
    X,
    y,
    *,
    n_way=5,
    n_shot=1,
    n_query=15,
    n_episodes=600,
    random_state=None,
):
    """Mean accuracy over N-way K-shot episodes and its 95% confidence interval.

    Each episode draws ``n_way`` classes of ``y`` and ``n_shot + n_query``
    examples of each (see :func:`~skbilevel.datasets.sample_episodes`). An
    estimator with an ``adapt`` method is adapted to the support set (a
    fitted :class:`HyperRepresentationClassifier` computes the representation
    of ``X`` once and trains the heads of many episodes together); any other
    estimator is cloned and fitted on it, so plain scikit-learn classifiers
    run under the same protocol. The score is the accuracy on the query set.

    Parameters
    ----------
    estimator : estimator object
        A fitted estimator with ``adapt``, or any classifier to clone.
    X : array-like of shape (n_samples, ...)
        Samples of the evaluation classes, shaped as the estimator expects.
    y : array-like of shape (n_samples,)
        Their labels.
    n_way : int, default=5
        Classes per episode.
    n_shot : int, default=1
        Support examples per class.
    n_query : int, default=15
        Query examples per class.
    n_episodes : int, default=600
        Number of episodes.
    random_state : int, RandomState instance or None, default=None
        Controls the episodes. Pass an int for reproducible output across
        multiple function calls.

    Returns
    -------
    mean : float
        Mean query accuracy over the episodes.
    ci95 : float
        Half-width of the 95% confidence interval of the mean,
        ``1.96 * std / sqrt(n_episodes)`` (standard deviation with ``ddof=1``).

    References
    ----------
    .. [1] L. Franceschi, P. Frasconi, S. Salzo, R. Grazzi and M. Pontil,
       "Bilevel Programming for Hyperparameter Optimization and
       Meta-Learning", ICML 2018.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from sklearn.neighbors import KNeighborsClassifier
    >>> from skbilevel.meta import few_shot_score
    >>> X, y = load_digits(return_X_y=True)
    >>> mean, ci95 = few_shot_score(KNeighborsClassifier(n_neighbors=1), X, y,
    ...                             n_way=5, n_shot=1, n_episodes=20,
    ...                             random_state=0)
    >>> 0.5 < mean <= 1.0
    True
    """
    X, y = np.asarray(X), np.asarray(y)
    if X.shape[0] != y.shape[0]:
        raise ValueError(
            "Found input variables with inconsistent numbers of samples: "
            f"[{X.shape[0]}, {y.shape[0]}]"
        )
    support, query = sample_episodes(
        y, n_way, n_shot, n_query, n_episodes, random_state=random_state
    )
    if isinstance(estimator, HyperRepresentationClassifier):
        scores = estimator._episode_accuracies(X, support, query, n_way)
    else:
        scores = np.array(
            [
                _episode_score(estimator, X, y, s, q)
                for s, q in zip(support, query, strict=True)
            ]
        )
    ci95 = 1.96 * scores.std(ddof=1) / np.sqrt(n_episodes) if n_episodes > 1 else 0.0
    return float(scores.mean()), float(ci95)


def _episode_score(estimator, X, y, support, query):
    if hasattr(estimator, "adapt"):
        model = estimator.adapt(X[support], y[support])
    else:
        model = clone(estimator).fit(X[support], y[support])
    return model.score(X[query], y[query])
