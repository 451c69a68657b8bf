"""scikit-learn's coordinate descent on each fold, for the Lasso family of
:mod:`._l1`: warm-started, on a working set of features grown by the
violators of the KKT conditions where the design has many more features than
samples, on the fold's numpy or scipy CSR rows."""

import warnings

import numpy as np
import scipy.sparse as sp
from sklearn import config_context
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from torch import Tensor

from ..utils import to_numpy, to_tensor
from ._base import FoldData
from ._sparse import SparseDesign

# Coordinate descent on a working set of features (WORKING_SET per sample,
# grown by the KKT violators, at most WORKING_SET_ROUNDS times) on designs
# with many more features than samples, to WORKING_SET_TOL while it grows.
WORKING_SET = 2
WORKING_SET_ROUNDS = 20
WORKING_SET_TOL = 1e-5


def fit_folds(fold_fit, model, params, hparams, folds, tol):
    """scikit-learn's fits (``fold_fit``) of ``folds``, warm-started from
    ``params``."""
    weights = to_numpy(model.weights(hparams))
    params = {name: value.clone() for name, value in params.items()}
    with warnings.catch_warnings():
        # The KKT check, not the solver's stopping rule, decides.
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", FutureWarning)
        for k in folds:
            warm = {name: to_numpy(value[k]) for name, value in params.items()}
            coef, intercept = fold_fit(k, hparams, weights[k], warm, tol)
            like = params["coef"]
            params["coef"][k] = to_tensor(coef, device=like.device, dtype=like.dtype)
            if model.fit_intercept:
                params["intercept"][k] = to_tensor(
                    intercept, device=like.device, dtype=like.dtype
                )
    return params


def _numpy_designs(X, n_folds):
    """Each fold's features for scikit-learn's solvers: numpy arrays, or
    scipy CSR matrices from a :class:`~._sparse.SparseDesign`."""
    if isinstance(X, SparseDesign):
        matrices = [_scipy_csr(M) for M in X.matrices]
    elif X.dim() == 3:
        matrices = [to_numpy(X[k]) for k in range(X.shape[0])]
    else:
        matrices = [to_numpy(X)]
    return matrices * n_folds if len(matrices) == 1 else matrices


def _scipy_csr(X: Tensor):
    """A torch sparse CSR tensor as a scipy CSR matrix."""
    return sp.csr_matrix(
        (
            to_numpy(X.values()),
            to_numpy(X.col_indices()),
            to_numpy(X.crow_indices()),
        ),
        shape=tuple(X.shape),
    )


def _column_major(X):
    """``X`` as coordinate descent reads it without its input checks: a
    Fortran-ordered float64 array, or a CSC matrix (its CSR arrays would be
    read as columns)."""
    if sp.issparse(X):
        return sp.csc_matrix(X, dtype=np.float64)
    return np.asfortranarray(X, dtype=np.float64)


def _columns(X, working):
    """The ``working`` columns of a column-major ``X``, column-major (one
    copy: indexing the rows of the transpose keeps its order)."""
    if sp.issparse(X):
        return _column_major(X[:, working])
    return X.T[working].T


def _rescaled(X, scale):
    if scale is None:
        return X
    return _column_major(X @ sp.diags(scale) if sp.issparse(X) else X * scale)


def fold_fitter(estimator, data: FoldData, targets, settings):
    """``fold_fit`` of :func:`fit_folds`: a clone of ``estimator`` set to the
    fold's hyperparameters (``settings(hparams) -> (params, per-feature
    values or None)``) and fitted on the fold's training rows."""
    X = data.X
    rows = [np.flatnonzero(train) for train in to_numpy(data.train)]
    # Each fold's training rows once, column-major (Fortran-ordered, or CSC)
    # as coordinate descent reads them, so that its input checks are skipped.
    designs = [design[rows[k]] for k, design in enumerate(_numpy_designs(X, len(rows)))]
    designs = [_column_major(d) for d in designs]
    fold_targets = [np.asfortranarray(targets[r], dtype=np.float64) for r in rows]
    # One estimator refitted for every fold and step, its parameters set by
    # set_params: a clone and scikit-learn's checks of X and of the
    # parameters cost 1.7 ms a fit on diabetes, three times the solve itself
    # (0.5 ms with them skipped). copy_X=True: its fit centers the design it
    # is given, which must be a copy then.
    fold = clone(estimator).set_params(
        max_iter=max(estimator.max_iter, 10_000), warm_start=True, copy_X=True
    )

    def fold_fit(k, hparams, weights, warm, tol):
        params, per_feature = settings(hparams)
        fold.set_params(**params)
        # A per-feature L1 weight is the scalar penalty 1 on the features
        # divided by their weights.
        scale = per_feature
        coef = warm["coef"] if scale is None else warm["coef"] / scale[:, None]
        design = _rescaled(designs[k], scale)
        weights = np.asarray(weights[rows[k]], dtype=np.float64)
        weights = None if np.all(weights == 1) else weights
        threshold = params["alpha"] * params.get("l1_ratio", 1.0)
        intercept = warm.get("intercept", np.zeros(coef.shape[1]))
        working = _working_set(design, fold_targets[k], weights, coef, intercept)
        coef, intercept = _working_set_fit(
            fold, design, fold_targets[k], weights, coef, working, threshold, tol
        )
        if scale is not None:
            coef = coef * scale[:, None]
        return coef, intercept

    return fold_fit


def _working_set_fit(fold, design, targets, weights, coef, working, threshold, tol):
    """``fold`` fitted on the ``working`` features of ``design``, warm-started
    from ``coef``, the features outside that violate their KKT condition
    joining it (strong-rule screening, checked) up to ``WORKING_SET_ROUNDS``
    times; ``(coef, intercept)``.

    While features still join, the fits stop at ``WORKING_SET_TOL`` (the
    working set needs only their support): on the 200 x 5000 design each
    fold's two rounds at ``tol`` took most of the search's time.
    """
    every = len(working) == design.shape[1]
    fold_tol = tol if every else max(tol, WORKING_SET_TOL)
    for _ in range(WORKING_SET_ROUNDS):
        fold.coef_ = coef[working].T
        fold.tol = fold_tol
        with config_context(skip_parameter_validation=True):
            fold.fit(
                design if every else _columns(design, working),
                targets,
                sample_weight=weights,
                check_input=False,
            )
        coef = np.zeros_like(coef)
        coef[working] = np.reshape(fold.coef_, (coef.shape[1], -1)).T
        intercept = np.atleast_1d(fold.intercept_)
        if every:
            break
        gradient = _data_gradient(design, targets, weights, coef, intercept)
        violating = (np.abs(gradient) > threshold * (1 + 1e-9)).any(axis=1)
        violating[working] = False
        if violating.any():
            working = np.union1d(working, np.flatnonzero(violating))
        elif fold_tol == tol:
            break
        else:
            fold_tol = tol
    return coef, intercept


def _data_gradient(design, targets, weights, coef, intercept):
    """The squared loss's gradient ``X^T s r / sum(s)`` (d, c), numpy."""
    residual = targets.reshape(len(targets), -1) - design @ coef - intercept
    if weights is None:
        return design.T @ residual / len(targets)
    return design.T @ (weights[:, None] * residual) / weights.sum()


def _working_set(design, targets, weights, coef, intercept):
    """The features coordinate descent starts on: the warm start's support
    and the features with the largest gradients, ``WORKING_SET`` per sample
    (all of them on a design with few features)."""
    n_samples, n_features = design.shape
    size = WORKING_SET * n_samples
    if n_features <= 2 * size:
        return np.arange(n_features)
    gradient = np.abs(_data_gradient(design, targets, weights, coef, intercept))
    largest = np.argsort(-gradient.max(axis=1))[:size]
    return np.union1d(largest, np.flatnonzero(np.abs(coef).sum(axis=1)))
