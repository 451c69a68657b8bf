"""Episodes of N-way K-shot classification, drawn as index arrays."""

from numbers import Integral

import numpy as np
from sklearn.utils import check_random_state

from ..utils._sklearn import Interval, validate_params


@validate_params(
    {
        "y": ["array-like"],
        "n_way": [Interval(Integral, 1, None, closed="left")],
        "n_shot": [Interval(Integral, 1, None, closed="left")],
        "n_query": [Interval(Integral, 1, None, closed="left")],
        "n_episodes": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
    },
    prefer_skip_nested_validation=True,
)
def sample_episodes(y, n_way, n_shot, n_query=15, n_episodes=1, *, random_state=None):
    """Draw few-shot episodes from the classes of ``y``.

    Each episode picks ``n_way`` distinct classes at random and, within each,
    ``n_shot + n_query`` distinct examples: the first ``n_shot`` form the
    support set, the others the query set. Positions are class-major, so the
    episode label of support position ``i`` is ``i // n_shot`` and of query
    position ``i`` is ``i // n_query``.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        Class labels.
    n_way : int
        Number of classes per episode.
    n_shot : int
        Number of support examples per class.
    n_query : int, default=15
        Number of query examples per class.
    n_episodes : int, default=1
        Number of episodes.
    random_state : int, RandomState instance or None, default=None
        Controls the draw. Pass an int for reproducible output across
        multiple function calls.

    Returns
    -------
    support_index : ndarray of shape (n_episodes, n_way * n_shot)
        Indices into ``y`` of the support examples.
    query_index : ndarray of shape (n_episodes, n_way * n_query)
        Indices into ``y`` of the query examples.

    Raises
    ------
    ValueError
        If fewer than ``n_way`` classes have ``n_shot + n_query`` examples.

    Examples
    --------
    >>> import numpy as np
    >>> from skbilevel.datasets import sample_episodes
    >>> y = np.repeat(np.arange(10), 20)
    >>> support, query = sample_episodes(y, n_way=5, n_shot=1, n_episodes=4,
    ...                                  random_state=0)
    >>> support.shape, query.shape
    ((4, 5), (4, 75))
    >>> bool(np.all(y[query[:, :15]] == y[support[:, :1]]))
    True
    """
    y = np.asarray(y)
    rng = check_random_state(random_state)
    _, y_index = np.unique(y, return_inverse=True)
    members = episode_pools(y_index, n_shot + n_query)
    if members.shape[0] < n_way:
        raise ValueError(
            f"n_way={n_way} classes with at least n_shot + n_query = "
            f"{n_shot + n_query} examples each are needed; y has {members.shape[0]}."
        )
    return draw_episodes(members, n_way, n_shot, n_query, n_episodes, rng)


def episode_pools(y_index, min_count):
    """Indices of each class with at least ``min_count`` examples.

    Returns an array of shape (n_classes, largest class size), one row per
    kept class, padded with -1 after the class's indices.
    """
    order = np.argsort(y_index, kind="stable")
    counts = np.bincount(y_index)
    kept = np.flatnonzero(counts >= min_count)
    starts = np.cumsum(counts) - counts
    width = int(counts[kept].max()) if kept.shape[0] else 0
    position = np.arange(width)
    inside = position < counts[kept, None]
    pools = np.full((kept.shape[0], width), -1, dtype=np.intp)
    pools[inside] = order[(starts[kept, None] + position)[inside]]
    return pools


def draw_episodes(pools, n_way, n_shot, n_query, n_episodes, rng):
    """Episodes from precomputed class pools (see :func:`episode_pools`).

    Vectorized: random keys are sorted instead of calling ``rng.choice`` per
    class, which costs more than a GPU step on thousands of classes.
    """
    classes = _distinct_classes(pools.shape[0], n_way, n_episodes, rng)
    keys = rng.random_sample((n_episodes, n_way, pools.shape[1]))
    keys[pools[classes] < 0] = 2.0
    chosen = np.take_along_axis(
        pools[classes], np.argsort(keys, axis=2)[:, :, : n_shot + n_query], axis=2
    )
    support = chosen[:, :, :n_shot].reshape(n_episodes, -1)
    return support, chosen[:, :, n_shot:].reshape(n_episodes, -1)


def _distinct_classes(n_classes, n_way, n_episodes, rng):
    """``n_way`` distinct classes per episode, uniformly at random.

    Among many classes, rows with a repeated class are redrawn (rare when
    ``n_way ** 2 < n_classes``); otherwise the classes of the smallest random
    keys are taken.
    """
    if n_way * n_way >= n_classes:
        keys = rng.random_sample((n_episodes, n_classes))
        return np.argsort(keys, axis=1)[:, :n_way]
    classes = rng.randint(n_classes, size=(n_episodes, n_way))
    while True:
        ordered = np.sort(classes, axis=1)
        repeated = (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)
        if not repeated.any():
            return classes
        classes[repeated] = rng.randint(n_classes, size=(repeated.sum(), n_way))
