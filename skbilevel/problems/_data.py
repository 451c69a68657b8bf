"""The K cross-validation folds of a run as tensors (:class:`FoldData`)."""

import numpy as np
import scipy.sparse as sp
from sklearn.base import clone
from sklearn.pipeline import Pipeline
from sklearn.utils import check_array

from ..utils import to_tensor
from ..utils._sklearn import _safe_indexing
from ._base import FoldData
from ._sparse import sparse_features


def _takes_sparse(final):
    """Whether the registry record of ``final`` takes sparse features as
    they come."""
    # The registry imports this module: look it up at call time.
    from . import REGISTRY

    record = REGISTRY.get(type(final))
    return record is not None and record.sparse_input


def _dense(X):
    """Validated float64 features, densified."""
    X = check_array(X, accept_sparse="csr", dtype=np.float64)
    return X.toarray() if sp.issparse(X) else X


def _features(estimator, X, prefixes, device, dtype):
    """The features of the final estimator: one tensor, or one per fold
    stacked, or a :class:`~._sparse.SparseDesign` of sparse ones it takes."""
    features = X if prefixes is None else [p.transform(X) for p in prefixes]
    if _takes_sparse(final_estimator(estimator)):
        design = sparse_features(features, device=device, dtype=dtype)
        if design is not None:
            return design
    if prefixes is None:
        features = _dense(X)
    else:
        features = np.stack([_dense(part) for part in features])
    # torch warns on read-only arrays (memory maps); it never writes, but copy.
    features = np.require(features, requirements="W")
    return to_tensor(features, device=device, dtype=dtype)


def fit_prefixes(estimator, X, y, splits):
    """The earlier steps of a Pipeline fitted on each fold's training part
    (None for a plain estimator)."""
    if not isinstance(estimator, Pipeline):
        return None
    return [
        clone(estimator[:-1]).fit(_safe_indexing(X, train), _safe_indexing(y, train))
        for train, _ in splits
    ]


def final_estimator(estimator):
    """The estimator itself, or the final step of a Pipeline."""
    return estimator.steps[-1][1] if isinstance(estimator, Pipeline) else estimator


def fold_data(estimator, X, y, splits, sample_weight, device, dtype, prefixes=None):
    """The final estimator and the :class:`FoldData` of the K folds.

    The earlier steps of a Pipeline are fitted on each fold's training part
    (or given, fitted, as ``prefixes``) and transform all samples, giving one
    feature matrix per fold. ``X``, ``y`` and ``sample_weight`` are validated
    by the search.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import Ridge
    >>> from skbilevel.problems import fold_data
    >>> splits = [(np.array([0, 1]), np.array([2, 3]))]
    >>> final, data = fold_data(Ridge(), np.eye(4), np.arange(4.0), splits, None,
    ...                         "cpu", "float64")
    >>> data.train
    tensor([[1., 1., 0., 0.]], dtype=torch.float64)
    """
    y = np.array(y)
    n = len(y)
    if not isinstance(estimator, Pipeline):
        prefixes = None
    elif prefixes is None:
        prefixes = fit_prefixes(estimator, X, y, splits)
    train = np.zeros((len(splits), n))
    test = np.zeros((len(splits), n))
    for k, (train_idx, test_idx) in enumerate(splits):
        train[k, train_idx] = 1.0
        test[k, test_idx] = 1.0
    weights = np.ones(n) if sample_weight is None else np.array(sample_weight, float)
    data = FoldData(
        _features(estimator, X, prefixes, device, dtype),
        y,
        to_tensor(train, device=device, dtype=dtype),
        to_tensor(test, device=device, dtype=dtype),
        to_tensor(weights, device=device, dtype=dtype),
    )
    return final_estimator(estimator), data
