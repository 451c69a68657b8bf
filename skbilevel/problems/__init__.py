"""Differentiable inner problems of the scikit-learn estimators BilevelSearchCV learns.

One adapter per supported estimator builds a :class:`Problem` over the K
cross-validation folds from the estimator's own settings; :func:`make_problem`
looks the adapter up and refuses, with the list of supported estimators,
anything it cannot differentiate.
"""

import math

import numpy as np
from sklearn.kernel_ridge import KernelRidge
from sklearn.linear_model import (
    LogisticRegression,
    Ridge,
    RidgeClassifier,
    SGDClassifier,
    SGDRegressor,
)

from ._base import FoldData, Problem
from ._kernel import KERNELS, kernel_ridge
from ._linear import (
    SGD_CLASSIFIER_LOSSES,
    SGD_REGRESSOR_LOSSES,
    logistic_regression,
    ridge,
    ridge_classifier,
    sgd,
)

# estimator class -> (adapter, learnable scalars, per-feature penalties,
# whether sample weights can be learned)
_REGISTRY = {
    Ridge: (ridge, ("alpha",), ("alpha",), True),
    RidgeClassifier: (ridge_classifier, ("alpha",), ("alpha",), True),
    LogisticRegression: (logistic_regression, ("C",), ("C",), True),
    KernelRidge: (kernel_ridge, ("alpha", "gamma"), (), False),
    SGDClassifier: (sgd, ("alpha",), ("alpha",), True),
    SGDRegressor: (sgd, ("alpha",), ("alpha",), True),
}

SUPPORTED_ESTIMATORS = ", ".join(
    f"{cls.__name__} ({', '.join(entry[1])})" for cls, entry in _REGISTRY.items()
)


def _lookup(estimator):
    if type(estimator) not in _REGISTRY:
        raise TypeError(
            f"{type(estimator).__name__} cannot be differentiated, so its "
            "hyperparameters can only be given as lists of values. Continuous "
            f"hyperparameters are supported for: {SUPPORTED_ESTIMATORS}; as an "
            "estimator or as the final step of a Pipeline."
        )
    return _REGISTRY[type(estimator)]


def _check_settings(estimator, learned):
    """Refuse settings under which the adapter's loss is not the estimator's."""
    name = type(estimator).__name__
    params = estimator.get_params(deep=False)
    is_sgd = isinstance(estimator, SGDClassifier | SGDRegressor)
    problems = {
        "positive=True": params.get("positive", False),
        "solver='liblinear'": params.get("solver") == "liblinear",
        "dual=True": params.get("dual", False),
        "a penalty other than L2": params.get("penalty", "l2")
        not in ("deprecated", "l2")
        or params.get("l1_ratio") not in (None, 0, 0.0)
        and not is_sgd,
        f"loss={params.get('loss')!r} (not smooth)": is_sgd
        and params["loss"] not in SGD_CLASSIFIER_LOSSES + SGD_REGRESSOR_LOSSES,
        f"kernel={params.get('kernel')!r}": isinstance(estimator, KernelRidge)
        and params["kernel"] not in KERNELS,
        "a linear kernel and a learned gamma": "gamma" in learned
        and params.get("kernel") == "linear",
        "class_weight='balanced' and learned sample weights": "sample_weight" in learned
        and params.get("class_weight") == "balanced",
        "C=inf": not math.isfinite(params.get("C", 1.0)),
    }
    for setting, present in problems.items():
        if present:
            raise ValueError(
                f"Continuous hyperparameters of {name} are not supported with "
                f"{setting}: the differentiable problem would not be the one "
                "scikit-learn solves."
            )
    if isinstance(estimator, SGDClassifier) and params["loss"] not in (
        SGD_CLASSIFIER_LOSSES
    ):
        raise ValueError(
            f"SGDClassifier with loss={params['loss']!r} is not supported; use "
            f"one of {SGD_CLASSIFIER_LOSSES}."
        )


def make_problem(estimator, data: FoldData, learned, options) -> Problem:
    """The differentiable inner problem of ``estimator`` on the K folds of ``data``.

    Parameters
    ----------
    estimator : estimator instance
        A supported scikit-learn estimator, with its fixed settings.
    data : FoldData
        The data and fold masks.
    learned : dict of str to str
        The learned hyperparameters: parameter name (or ``"sample_weight"``) to
        its kind, ``"real"``, ``"per_feature"`` or ``"sample_weight"``.
    options : dict
        ``tol`` and ``max_iter`` of the inner solver.

    Returns
    -------
    problem : Problem
        The adapter's problem.

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> from sklearn.linear_model import Ridge
    >>> from skbilevel.problems import make_problem
    >>> from skbilevel.problems._bilevel import fold_data
    >>> X, y = np.eye(4), np.array([1.0, 2.0, 3.0, 4.0])
    >>> splits = [(np.array([0, 1, 2]), np.array([3]))]
    >>> estimator, data = fold_data(Ridge(), X, y, splits, None, "cpu", "float64")
    >>> options = {"tol": 1e-8, "max_iter": 100}
    >>> problem = make_problem(estimator, data, {"alpha": "real"}, options)
    >>> hparams = {"alpha": torch.tensor(1.0, dtype=torch.float64)}
    >>> params = problem.solve(problem.init_params(), hparams)
    >>> problem.fitted_attributes(params)[0]["coef_"].shape
    (4,)
    """
    if hasattr(estimator, "_bilevel_problem"):
        # Estimators whose fit is T differentiable steps describe their own
        # (unrolled) problem and validate what can be learned.
        return estimator._bilevel_problem(data, learned, options)
    adapter, scalars, per_feature, weights = _lookup(estimator)
    name = type(estimator).__name__
    for param, kind in learned.items():
        # PerStep and PerLayer belong to the torch MLPs: nothing here takes them.
        allowed = {
            "real": scalars,
            "per_feature": per_feature,
            "sample_weight": ("sample_weight",) if weights else (),
        }.get(kind, ())
        if param not in allowed:
            what = {
                "real": "a continuous",
                "per_feature": "a PerFeature",
                "per_step": "a PerStep",
                "per_layer": "a PerLayer",
            }.get(kind, "a SampleWeight")
            raise ValueError(
                f"{param!r} cannot be learned as {what} hyperparameter of {name}; "
                f"supported: {', '.join(allowed) or 'none'}. Continuous "
                f"hyperparameters are supported for: {SUPPORTED_ESTIMATORS}."
            )
    _check_settings(estimator, learned)
    return adapter(estimator, data, options)


def feature_scale(name, values):
    """The feature rescaling under which a scalar penalty of 1 equals ``values``.

    A weight ``w_j`` on feature ``s_j x_j`` costs ``w_j^2 / s_j^2`` in terms of
    the original weight, so per-feature ``alpha_j`` is ``s_j = alpha_j^{-1/2}``
    and per-feature ``C_j`` (an inverse penalty) is ``s_j = C_j^{1/2}``.

    Examples
    --------
    >>> from skbilevel.problems import feature_scale
    >>> feature_scale("alpha", [4.0, 0.25])
    array([0.5, 2. ])
    """
    values = np.asarray(values, dtype=float)
    return np.sqrt(values) if name == "C" else 1.0 / np.sqrt(values)


__all__ = [
    "SUPPORTED_ESTIMATORS",
    "FoldData",
    "Problem",
    "feature_scale",
    "make_problem",
]
