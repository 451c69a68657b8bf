"""Learned per-feature penalties and sample weights as plain scikit-learn objects.

A per-feature penalty becomes a fixed feature rescaling in front of the
estimator, whose own scalar penalty is set to 1 (see
:func:`~skbilevel.problems.feature_scale`); learned sample weights are passed
to ``fit``. :class:`LearnedSettings` lets scikit-learn's search machinery
evaluate and refit such settings: it takes the learned values as parameters
and finds each fold's sample weights through the ``sample_index`` fit
parameter, which cross-validation slices like any per-sample array.
"""

import numpy as np
from sklearn.base import BaseEstimator, MetaEstimatorMixin, clone
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils import get_tags
from sklearn.utils._available_if import available_if
from sklearn.utils.validation import check_is_fitted

from . import feature_scale


def _rescale(X, scale):
    return np.asarray(X, dtype=np.float64) * scale


def with_learned_penalty(estimator, key, values):
    """``estimator`` with per-feature penalties ``values`` for parameter ``key``.

    Returns a Pipeline whose rescaling step precedes the final estimator, whose
    penalty parameter is set to 1.
    """
    name = key.rsplit("__", 1)[-1]
    step = (
        "feature_scale",
        FunctionTransformer(_rescale, kw_args={"scale": feature_scale(name, values)}),
    )
    estimator = clone(estimator).set_params(**{key: 1.0})
    if isinstance(estimator, Pipeline):
        return estimator.set_params(
            steps=estimator.steps[:-1] + [step, estimator.steps[-1]]
        )
    return Pipeline([step, (type(estimator).__name__.lower(), estimator)])


def _delegate_has(method):
    return lambda self: hasattr(self.estimator, method)


class LearnedSettings(MetaEstimatorMixin, BaseEstimator):
    """An estimator fitted with learned per-feature penalties and sample weights.

    Parameters
    ----------
    estimator : estimator instance
        The scikit-learn estimator (or Pipeline).
    learned_keys : tuple of str, default=()
        The parameters taking learned arrays: a per-feature penalty key and/or
        ``"sample_weight"``. Other parameters set on this object go to
        ``estimator``.
    learned : dict, default=None
        Values of the ``learned_keys``; sample weights cover all the samples of
        the search, indexed at fit time by ``sample_index``.
    """

    def __init__(self, estimator, learned_keys=(), learned=None):
        self.estimator = estimator
        self.learned_keys = learned_keys
        self.learned = learned

    def set_params(self, **params):
        own = ("estimator", "learned_keys", "learned")
        super().set_params(**{k: params.pop(k) for k in own if k in params})
        learned = {k: params.pop(k) for k in list(params) if k in self.learned_keys}
        if learned:
            self.learned = {**(self.learned or {}), **learned}
        if params:
            self.estimator.set_params(**params)
        return self

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        inner = get_tags(self.estimator)
        tags.estimator_type = inner.estimator_type
        tags.classifier_tags = inner.classifier_tags
        tags.regressor_tags = inner.regressor_tags
        return tags

    def fit(self, X, y=None, sample_index=None, **fit_params):
        """Fit the plain scikit-learn estimator that expresses the learned values."""
        learned = dict(self.learned or {})
        weights = learned.pop("sample_weight", None)
        estimator = self.estimator
        for key, values in learned.items():
            estimator = with_learned_penalty(estimator, key, values)
        estimator = clone(estimator)
        if weights is not None:
            weights = np.asarray(weights)
            if sample_index is not None:
                weights = weights[np.asarray(sample_index)]
            fixed = fit_params.pop("sample_weight", None)
            fit_params["sample_weight"] = (
                weights if fixed is None else weights * np.asarray(fixed)
            )
        if "sample_weight" in fit_params and isinstance(estimator, Pipeline):
            last = estimator.steps[-1][0]
            fit_params[f"{last}__sample_weight"] = fit_params.pop("sample_weight")
        self.estimator_ = estimator.fit(X, y, **fit_params)
        return self

    @property
    def classes_(self):
        check_is_fitted(self)
        return self.estimator_.classes_

    @available_if(_delegate_has("predict"))
    def predict(self, X):
        check_is_fitted(self)
        return self.estimator_.predict(X)

    @available_if(_delegate_has("predict_proba"))
    def predict_proba(self, X):
        check_is_fitted(self)
        return self.estimator_.predict_proba(X)

    @available_if(_delegate_has("predict_log_proba"))
    def predict_log_proba(self, X):
        check_is_fitted(self)
        return self.estimator_.predict_log_proba(X)

    @available_if(_delegate_has("decision_function"))
    def decision_function(self, X):
        check_is_fitted(self)
        return self.estimator_.decision_function(X)

    @available_if(_delegate_has("score"))
    def score(self, X, y, **params):
        check_is_fitted(self)
        return self.estimator_.score(X, y, **params)
