"""The one door to scikit-learn's private API.

Every private scikit-learn name skbilevel uses is imported here and nowhere
else, so that a scikit-learn release that moves one breaks one module. The
test suite ran on scikit-learn 1.9.1 (CI) and 1.6.1 (``MIN_VERSION`` to
``MAX_TESTED_VERSION``). On 1.6.1 (with scipy's deprecation warnings of its
lbfgs options ignored) four tests fail, none in BilevelSearchCV's own
behaviour: one parity test whose oracle, 1.6's multinomial lbfgs fit, stops
3e-7 short of the optimum, and three of 1.6's own ``test_search.py`` (an HTML
repr that 1.6 draws differently, two whose lbfgs fits fail on those warnings).

- ``BaseSearchCV``: the template of every search (``_run_search``).
- ``_fit_context``: parameter validation of ``fit``, as scikit-learn's own
  estimators use it.
- ``Interval``, ``StrOptions``, ``HasMethods``, ``validate_params``: the
  parameter constraints of ``_parameter_constraints``.
- ``_check_sample_weight``: scikit-learn's validation of ``sample_weight``.
- ``_yields_constant_splits``: whether a splitter gives the same folds at each
  ``split`` call (HalvingGridSearchCV's check).
- ``_safe_indexing``: rows of arrays, DataFrames and lists alike.
- ``_get_feature_names``: the feature names of X, as ``fit`` records them.
- ``callbacks_of``: the callbacks of scikit-learn's callback API set on an
  estimator, to pass on.
- ``routed_fit_params``: ``BaseSearchCV._get_routed_params_for_fit``, the
  split of ``fit``'s parameters between estimator, splitter and scorer, with
  or without metadata routing.
- ``validate_estimator_params``: ``BaseEstimator._validate_params``, for a
  problem built outside ``fit``.
"""

from sklearn.base import _fit_context
from sklearn.model_selection._search import BaseSearchCV
from sklearn.model_selection._split import _yields_constant_splits
from sklearn.utils import _safe_indexing
from sklearn.utils._param_validation import (
    HasMethods,
    Interval,
    StrOptions,
    validate_params,
)
from sklearn.utils.validation import (
    _check_sample_weight,
    _get_feature_names,
)

MIN_VERSION = "1.6.1"
MAX_TESTED_VERSION = "1.9.1"


def callbacks_of(estimator):
    """The callbacks set on ``estimator`` by scikit-learn's ``set_callbacks``
    (none where the installed scikit-learn has no callback API)."""
    return list(getattr(estimator, "_skl_callbacks", None) or [])


def routed_fit_params(search, params):
    """``fit``'s parameters of a BaseSearchCV, routed as its own ``fit`` does."""
    return search._get_routed_params_for_fit(params)


def validate_estimator_params(estimator):
    """Check ``estimator``'s parameters against its ``_parameter_constraints``."""
    estimator._validate_params()


__all__ = [
    "BaseSearchCV",
    "HasMethods",
    "Interval",
    "StrOptions",
    "_check_sample_weight",
    "_fit_context",
    "_get_feature_names",
    "_safe_indexing",
    "_yields_constant_splits",
    "callbacks_of",
    "routed_fit_params",
    "validate_estimator_params",
    "validate_params",
]
