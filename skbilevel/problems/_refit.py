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
from sklearn.base import BaseEstimator, MetaEstimatorMixin, clone, is_classifier
from sklearn.linear_model import LogisticRegression, RidgeClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, LabelBinarizer
from sklearn.utils import get_tags
from sklearn.utils._available_if import available_if
from sklearn.utils.validation import _get_feature_names, check_is_fitted

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


def _same(a, b):
    """Whether two parameter values are equal (arrays elementwise)."""
    if a is b:
        return True
    try:
        if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
            return np.shape(a) == np.shape(b) and bool(np.array_equal(a, b))
        return bool(a == b) and type(a) is type(b)
    except (TypeError, ValueError):
        return False


class FoldSolutions:
    """The inner solutions of the hypergradient runs, per evaluated setting and fold.

    A linear model's (or kernel ridge's) inner solution on a fold is exactly
    the estimator scikit-learn would fit there, so the search scores it
    without refitting. Clones share one store (it is read-only once the runs
    are over): ``copy.deepcopy`` returns it as is.
    """

    def __init__(self):
        self.splits = []
        self.entries = []

    def __deepcopy__(self, memo):
        return self

    def add(self, params, folds, prefixes):
        """Record the per-fold fitted attributes of the setting ``params``."""
        self.entries.append((params, folds, prefixes))

    def find(self, current, sample_index):
        """(attributes, fitted prefix) of the fold trained on ``sample_index``
        under the setting ``current(key)``, or None."""
        sample_index = np.asarray(sample_index)
        fold = next(
            (
                k
                for k, (train, _) in enumerate(self.splits)
                if train.shape == sample_index.shape
                and np.array_equal(train, sample_index)
            ),
            None,
        )
        if fold is None:
            return None
        for params, folds, prefixes in self.entries:
            if all(_same(current(key), value) for key, value in params.items()):
                return folds[fold], None if prefixes is None else prefixes[fold]
        return None


def fitted_estimator(estimator, attributes, X_train, y_train):
    """A clone of ``estimator`` holding the fitted ``attributes`` of a fold.

    ``X_train`` (the features the estimator sees) and ``y_train`` give what
    scikit-learn's ``fit`` would also set: classes, the number and names of
    the features.
    """
    estimator = clone(estimator)
    for name, value in attributes.items():
        setattr(estimator, name, value)
    estimator.n_features_in_ = np.shape(X_train)[1]
    names = _get_feature_names(X_train)
    if names is not None:
        estimator.feature_names_in_ = names
    if is_classifier(estimator):
        estimator.classes_ = np.unique(y_train)
    if isinstance(estimator, RidgeClassifier):
        estimator._label_binarizer = LabelBinarizer(pos_label=1, neg_label=-1).fit(
            y_train
        )
    if isinstance(estimator, LogisticRegression):
        estimator.n_iter_ = np.zeros(1, dtype=np.int32)
    return estimator


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
    fold_solutions : FoldSolutions, default=None
        Inner solutions of the hypergradient runs: fitting on a fold's
        training part under a setting found there assembles the fitted
        estimator from the solution instead of refitting.
    """

    def __init__(self, estimator, learned_keys=(), learned=None, fold_solutions=None):
        self.estimator = estimator
        self.learned_keys = learned_keys
        self.learned = learned
        self.fold_solutions = fold_solutions

    def set_params(self, **params):
        own = ("estimator", "learned_keys", "learned", "fold_solutions")
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

    def _current(self):
        """``value(key)``: the current value of a setting of the search."""
        params = self.estimator.get_params()
        learned = self.learned or {}

        def value(key):
            return learned.get(key) if key in self.learned_keys else params[key]

        return value

    def _expressed(self):
        """The estimator with the learned penalties as a rescaling step, and
        the learned sample weights (or None)."""
        learned = dict(self.learned or {})
        weights = learned.pop("sample_weight", None)
        estimator = self.estimator
        for key, values in learned.items():
            estimator = with_learned_penalty(estimator, key, values)
        return estimator, weights

    def _from_solution(self, X, y, found):
        """The fitted estimator assembled from a fold's inner solution."""
        attributes, prefix = dict(found[0]), found[1]
        expressed, _ = self._expressed()
        steps = list(prefix.steps) if prefix is not None else []
        features = prefix.transform(X) if prefix is not None else X
        if set(self.learned or {}) - {"sample_weight"}:
            # The rescaling step in front of the final one: a weight w_j on
            # feature s_j x_j is w_j / s_j.
            rescale = clone(expressed.steps[-2][1]).fit(features)
            steps.append((expressed.steps[-2][0], rescale))
            features = rescale.transform(features)
            scale = rescale.kw_args["scale"]
            attributes["coef_"] = np.asarray(attributes["coef_"]) / scale
        if isinstance(expressed, Pipeline):
            name, final = expressed.steps[-1]
        else:
            name, final = type(expressed).__name__.lower(), expressed
        fitted = fitted_estimator(final, attributes, features, y)
        return Pipeline(steps + [(name, fitted)]) if steps else fitted

    def fit(self, X, y=None, sample_index=None, **fit_params):
        """Fit the plain scikit-learn estimator that expresses the learned values."""
        if self.fold_solutions is not None and sample_index is not None:
            found = self.fold_solutions.find(self._current(), sample_index)
            if found is not None:
                self.estimator_ = self._from_solution(X, y, found)
                return self
        estimator, weights = self._expressed()
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
    def score(self, X, y, sample_weight=None):
        check_is_fitted(self)
        if sample_weight is None:
            return self.estimator_.score(X, y)
        return self.estimator_.score(X, y, sample_weight=sample_weight)
