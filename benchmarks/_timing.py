"""Wall-clock timing shared by the benchmark scripts: medians of repeats."""

import time

import numpy as np
from sklearn.base import clone
from sklearn.model_selection import cross_validate


def timed_fit(make, X, y, repeats):
    """``make().fit(X, y)`` ``repeats`` times: the last fitted object and the
    median wall time."""
    times, fitted = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        fitted = make().fit(X, y)
        times.append(time.perf_counter() - start)
    return fitted, float(np.median(times))


def limit_time(estimator, params, X, y, cv, repeats, scoring=None):
    """Median time of one cross-validation at ``params`` plus the refit: the
    least any search must pay to check what it returns."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model = clone(estimator).set_params(**params)
        cross_validate(model, X, y, cv=cv, scoring=scoring)
        clone(model).fit(X, y)
        times.append(time.perf_counter() - start)
    return float(np.median(times))
