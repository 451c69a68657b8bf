"""The evaluation of the learned settings by scikit-learn's own search machinery.

Learned arrays (per-feature penalties, sample weights) are not parameters of
the estimator, so the candidates are evaluated on :class:`LearnedSettings`, a
wrapper that expresses every learned value on a plain scikit-learn estimator
through its spec (:meth:`~skbilevel.Real.express`). A run's fold solutions
are exactly what scikit-learn would fit there for the linear models and
kernel ridge, so they are stored in :class:`FoldSolutions`, keyed by
candidate number and split number, and scored without refitting.

scikit-learn hands an estimator only its training rows; the wrapper is told
its rows by the ``sample_index`` fit parameter (sliced by the search like any
per-sample array), and the split number is the one whose training indices
those are: the splits are computed once, by a splitter required to yield
constant splits, and passed to the evaluation as a list.
"""

import contextlib
import copy

import numpy as np
from joblib import effective_n_jobs, parallel_config
from sklearn import get_config
from sklearn.base import BaseEstimator, MetaEstimatorMixin, clone, is_classifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.utils import get_tags, metadata_routing
from sklearn.utils.metadata_routing import (
    MetadataRouter,
    MethodMapping,
    process_routing,
)
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted

from ..problems import REGISTRY
from ..problems._data import final_estimator
from ..utils._sklearn import BaseSearchCV, _get_feature_names


class FoldSolutions:
    """Per candidate and split, the fitted attributes of a run's fold solution.

    Clones share one store (read-only while candidates are evaluated, but for
    a cache of the features' shapes): ``copy.deepcopy`` returns it as is.
    """

    def __init__(self, splits):
        self.splits = {train.tobytes(): k for k, (train, _) in enumerate(splits)}
        self.entries = {}
        self.failures = {}
        self.shapes = {}

    def __deepcopy__(self, memo):
        return self

    def __getstate__(self):
        # The feature shapes are keyed by the identity of this process's
        # prefix objects.
        return {**vars(self), "shapes": {}}

    def add(self, candidate, folds, prefixes):
        """Record the per-fold fitted attributes of row ``candidate``."""
        self.entries[candidate] = (folds, prefixes)

    def fail(self, candidate, message):
        """Record that row ``candidate``'s run failed, and why."""
        self.failures[candidate] = message

    def split(self, sample_index):
        """The split number whose training part is ``sample_index``, or None."""
        return self.splits.get(np.asarray(sample_index, dtype=np.intp).tobytes())

    def only(self, candidate):
        """A store of row ``candidate``'s entry and failure alone."""
        part = copy.copy(self)
        part.entries = {k: v for k, v in self.entries.items() if k == candidate}
        part.failures = {k: v for k, v in self.failures.items() if k == candidate}
        return part

    def features(self, prefix, X_train):
        """The number and the names (or None) of the features that ``prefix``,
        a fold's fitted earlier steps, gives its training rows ``X_train``:
        computed once per fold, not once per row (every row of a run shares
        its fitted prefixes; a digits Pipeline's StandardScaler transform was
        a sixth of an assembled fit and score)."""
        key = id(prefix)
        if key not in self.shapes:
            self.shapes[key] = features_shape(prefix.transform(X_train))
        return self.shapes[key]


def features_shape(features):
    """The number of columns of ``features`` and their names (None for an
    array), as scikit-learn's ``fit`` records them."""
    return np.shape(features)[1], _get_feature_names(features)


def fitted_estimator(estimator, attributes, n_features, names, y_train):
    """``estimator``, an unfitted clone, given the fitted ``attributes`` of a
    fold in place (the wrapper's fit clones once: a clone of Lasso took
    0.15 ms here, of about 2 ms per assembled fit and score on diabetes).

    ``n_features`` and ``names`` (of the features the estimator sees, None
    for an array) and ``y_train`` give what scikit-learn's ``fit`` would
    also set: the number and names of the features, the classes.
    """
    for name, value in attributes.items():
        setattr(estimator, name, value)
    estimator.n_features_in_ = n_features
    if names is not None:
        estimator.feature_names_in_ = names
    if is_classifier(estimator):
        estimator.classes_ = np.unique(y_train)
    if isinstance(estimator, LogisticRegression):
        estimator.n_iter_ = np.zeros(1, dtype=np.int32)
    return estimator


def _delegate_has(method):
    return lambda self: hasattr(self.estimator, method)


def _fit(estimator, X, y, fit_params):
    """``estimator.fit`` with the sample weights reaching its final step."""
    if "sample_weight" in fit_params and isinstance(estimator, Pipeline):
        last, final = estimator.steps[-1]
        if get_config()["enable_metadata_routing"]:
            final.set_fit_request(sample_weight=True)
        else:
            fit_params = dict(fit_params)
            fit_params[f"{last}__sample_weight"] = fit_params.pop("sample_weight")
    return estimator.fit(X, y, **fit_params)


class LearnedSettings(MetaEstimatorMixin, BaseEstimator):
    """An estimator fitted with learned hyperparameters, of any kind.

    Parameters
    ----------
    estimator : estimator instance
        The scikit-learn estimator (or Pipeline).
    specs : dict of str to spec, default=None
        The learned keys and their specs; values set on this object under
        these keys are expressed by their spec, the others go to
        ``estimator``.
    learned : dict, default=None
        Values of the learned keys; sample weights cover all the samples of
        the search, indexed at fit time by ``sample_index``.
    candidate : int, default=None
        The row of ``cv_results_`` this setting is, for the fold solutions.
    fold_solutions : FoldSolutions, default=None
        The runs' fold solutions and failures; a fitted estimator is
        assembled from a fold's solution where the estimator's registry
        record allows it, else scikit-learn's ``fit`` of the same setting
        scores the row.
    """

    __metadata_request__fit = {"sample_index": True}
    # Scorers get their metadata from the search; score passes on what the
    # wrapped estimator requested.
    __metadata_request__score = {"sample_weight": metadata_routing.UNUSED}

    def __init__(
        self,
        estimator,
        specs=None,
        learned=None,
        candidate=None,
        fold_solutions=None,
    ):
        self.estimator = estimator
        self.specs = specs
        self.learned = learned
        self.candidate = candidate
        self.fold_solutions = fold_solutions

    def __getstate__(self):
        # A task sent to a worker process (loky, Dask, Ray) carries its own
        # row's fold solutions, not every row's: with 33 rows of 5 folds on
        # digits, every task carried the solutions of all 165.
        state = dict(super().__getstate__())
        store = state.get("fold_solutions")
        if store is not None and self.candidate is not None:
            state["fold_solutions"] = store.only(self.candidate)
        return state

    def set_params(self, **params):
        # Its own parameters are set as they are: BaseEstimator.set_params
        # first lists every nested parameter of the estimator, a third of
        # this method's time on a digits Pipeline.
        for name in self._get_param_names():
            if name in params:
                setattr(self, name, params.pop(name))
        learned = {k: params.pop(k) for k in list(params) if k in (self.specs or {})}
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

    def get_metadata_routing(self):
        router = MetadataRouter(owner=self.__class__.__name__)
        router.add_self_request(self)
        return router.add(
            estimator=self.estimator,
            method_mapping=MethodMapping()
            .add(caller="fit", callee="fit")
            .add(caller="score", callee="score"),
        )

    def _expressed(self, fit_params, sample_index):
        """The plain estimator and fit parameters expressing the learned values."""
        estimator = self.estimator
        for key, value in (self.learned or {}).items():
            spec = self.specs[key]
            if spec.kind == "sample_weight" and sample_index is not None:
                value = np.asarray(value)[sample_index]
            estimator, fit_params = spec.express(key, value, estimator, fit_params)
        # A spec's express clones the estimator it changes (sample weights
        # change only the fit parameters): one clone per assembled fit.
        if estimator is self.estimator:
            estimator = clone(estimator)
        return estimator, fit_params

    def _from_solution(self, X, y, found):
        """The fitted estimator assembled from a fold's inner solution."""
        attributes, prefix = dict(found[0]), found[1]
        steps = list(prefix.steps) if prefix is not None else []
        final = self._final_expressed()
        if final is None:
            # Per-feature penalties: the rescaling step in front of the final
            # one, fitted on the features; a weight w_j on feature s_j x_j is
            # w_j / s_j.
            expressed, _ = self._expressed({}, None)
            features = prefix.transform(X) if prefix is not None else X
            rescale = clone(expressed.steps[-2][1]).fit(features)
            steps.append((expressed.steps[-2][0], rescale))
            features = rescale.transform(features)
            attributes["coef_"] = (
                np.asarray(attributes["coef_"]) / rescale.kw_args["scale"]
            )
            final = expressed.steps[-1]
            shape = features_shape(features)
        elif prefix is not None:
            shape = self.fold_solutions.features(prefix, X)
        else:
            shape = features_shape(X)
        name, estimator = final
        fitted = fitted_estimator(estimator, attributes, *shape, y)
        return Pipeline(steps + [(name, fitted)]) if steps else fitted

    def _final_expressed(self):
        """The final step's name and a clone of it with the learned values
        set, where every learned key is one of its parameters (or sample
        weights, which an assembled estimator does not read); None where not
        (per-feature penalties add a step).

        A clone of the final step alone: a clone of the whole Pipeline and a
        nested ``set_params`` were a sixth of an assembled fit and score on
        digits.
        """
        estimator = self.estimator
        if isinstance(estimator, Pipeline):
            name, final = estimator.steps[-1]
            start = f"{name}__"
        else:
            name, final, start = type(estimator).__name__.lower(), estimator, ""
        values = {}
        for key, value in (self.learned or {}).items():
            kind = self.specs[key].kind
            if kind == "sample_weight":
                continue
            if kind != "real" or not key.startswith(start):
                return None
            values[key[len(start) :]] = value
        return name, clone(final).set_params(**values)

    def _fold_solution(self, sample_index):
        """The stored solution of this candidate on the fold of ``sample_index``."""
        store = self.fold_solutions
        if store is None or self.candidate is None or sample_index is None:
            return None
        if self.candidate in store.failures:
            raise FloatingPointError(store.failures[self.candidate])
        split = store.split(sample_index)
        if split is None or self.candidate not in store.entries:
            return None
        folds, prefixes = store.entries[self.candidate]
        return folds[split], None if prefixes is None else prefixes[split]

    def fit(self, X, y=None, sample_index=None, **fit_params):
        """Fit the plain scikit-learn estimator that expresses the learned values."""
        if get_config()["enable_metadata_routing"]:
            fit_params = process_routing(self, "fit", **fit_params).estimator.fit
        found = self._fold_solution(sample_index)
        record = REGISTRY.get(type(final_estimator(self.estimator)))
        if found is not None and record is not None and record.assemble:
            self.estimator_ = self._from_solution(X, y, found)
            return self
        estimator, fit_params = self._expressed(fit_params, sample_index)
        final = self._warm_started(estimator, record)
        self.estimator_ = _fit(estimator, X, y, fit_params)
        if final is not None:
            final.set_params(warm_start=False)
        return self

    def _warm_started(self, estimator, record):
        """The final step of ``estimator``, about to be fitted on all the data,
        started from the mean of this candidate's fold solutions where its
        record allows (then ``warm_start`` is on until the fit ends); None
        where not.

        scikit-learn's solver goes to the same optimum, to its tolerance,
        from a point much closer to it than its own zero start.
        """
        store = self.fold_solutions
        if (
            record is None
            or not record.warm_refit
            or store is None
            or self.candidate not in store.entries
            or any(spec.kind == "per_feature" for spec in (self.specs or {}).values())
        ):
            return None
        folds = store.entries[self.candidate][0]
        final = final_estimator(estimator)
        final.set_params(warm_start=True)
        for name in ("coef_", "intercept_"):
            setattr(final, name, np.mean([fold[name] for fold in folds], axis=0))
        return final

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


def search_candidates(search, evaluate_candidates, candidates, callback_ctx):
    """``evaluate_candidates(candidates)`` inside a "search" task of
    scikit-learn's callback API, as GridSearchCV does, where the installed
    scikit-learn has it (``callback_ctx`` is then given)."""
    if callback_ctx is None:
        evaluate_candidates(candidates)
        return
    search_ctx = callback_ctx.subcontext(
        task_name="search",
        max_subtasks=len(candidates) * search.n_splits_,
        sequential_subtasks=False,
    ).call_on_fit_task_begin(estimator=search)
    evaluate_candidates(candidates, callback_ctx=search_ctx)
    search_ctx.call_on_fit_task_end(estimator=search)


def _scores_only(evaluation):
    """Whether every row's fold estimators are assembled from stored solutions."""
    wrapper = evaluation.estimator
    store = wrapper.fold_solutions
    if store.failures or len(store.entries) < len(evaluation.candidates):
        return False
    for params in evaluation.candidates:
        final = final_estimator(clone(wrapper).set_params(**params).estimator)
        record = REGISTRY.get(type(final))
        if record is None or not record.assemble:
            return False
    return True


def evaluation_backend(evaluation, n_jobs):
    """The joblib context the evaluation runs in.

    Where it only scores (every fold estimator assembled from the runs'
    solutions), in this process: on digits, 165 assembled fits and scores
    took 2 to 3 s here and 8 to 10 s on two loky workers (each task a
    fraction of joblib's dispatch cost). Else the backend in effect (loky,
    Dask, Ray) with ``n_jobs``, as in GridSearchCV.
    """
    if effective_n_jobs(n_jobs) > 1 and _scores_only(evaluation):
        return parallel_config(backend="sequential")
    return contextlib.nullcontext()


class Evaluation(BaseSearchCV):
    """scikit-learn's search over given candidates of :class:`LearnedSettings`.

    It scores the candidates on ``cv``, the search's splits as a list of
    (train, test) pairs, and refits the best one; ties in
    the refit metric go to the candidate with the lowest validation loss its
    run descended (``outer_losses``, NaN for settings not learned).

    With ``refine`` (the key of the one :class:`~skbilevel.Real` learned,
    its spec and a number of settings), that many more settings are scored
    after the candidates, by scikit-learn's fit on each fold as in
    GridSearchCV, one per round of :func:`refinements`: a bisection of the
    score itself around the best candidate.
    """

    def __init__(
        self,
        estimator,
        candidates,
        outer_losses,
        *,
        cv,
        scoring=None,
        n_jobs=None,
        refit=True,
        verbose=0,
        pre_dispatch="2*n_jobs",
        error_score=np.nan,
        return_train_score=False,
        refine=None,
    ):
        super().__init__(
            estimator=estimator,
            scoring=scoring,
            n_jobs=n_jobs,
            refit=refit,
            cv=cv,
            verbose=verbose,
            pre_dispatch=pre_dispatch,
            error_score=error_score,
            return_train_score=return_train_score,
        )
        self.candidates = candidates
        self.outer_losses = outer_losses
        self.refine = refine

    def _run_search(self, evaluate_candidates, *, callback_ctx=None):
        if not self.refine:
            search_candidates(self, evaluate_candidates, self.candidates, callback_ctx)
            return
        key, spec, budget = self.refine
        search_ctx = None
        if callback_ctx is not None:
            # The rounds are known only as they go; each is a task of its own
            # (as HalvingGridSearchCV's iterations are).
            search_ctx = callback_ctx.subcontext(
                task_name="search", max_subtasks=None
            ).call_on_fit_task_begin(estimator=self)

        def evaluate(candidates):
            if search_ctx is None:
                return evaluate_candidates(candidates)
            round_ctx = search_ctx.subcontext(
                task_name="round",
                max_subtasks=len(candidates) * self.n_splits_,
                sequential_subtasks=False,
            ).call_on_fit_task_begin(estimator=self)
            results = evaluate_candidates(candidates, callback_ctx=round_ctx)
            round_ctx.call_on_fit_task_end(estimator=self)
            return results

        results = evaluate(self.candidates)
        metric = self.refit if isinstance(self.refit, str) else "score"
        scores = f"mean_test_{metric}"
        # Each refined row, and the visited row it was bisected from.
        self.refined_from_ = {}
        for _ in range(budget):
            if scores not in results:
                break
            found = refinements(results["params"], results[scores], key, spec)
            if found is None:
                break
            setting, (best, _) = found
            row = len(results["params"])
            self.refined_from_[row] = self.refined_from_.get(best, best)
            results = evaluate([{**setting, "candidate": row}])
        if search_ctx is not None:
            search_ctx.call_on_fit_task_end(estimator=self)

    def _select_best_index(self, refit, refit_metric, results):
        best = super()._select_best_index(refit, refit_metric, results)
        if callable(refit):
            return best
        scores = np.asarray(results[f"mean_test_{refit_metric}"], dtype=float)
        tied = np.flatnonzero(scores == scores[best])
        # The refinement's settings (rows past the candidates) descended none.
        losses = np.full(len(scores), np.nan)
        losses[: len(self.outer_losses)] = self.outer_losses
        losses = losses[tied]
        if np.isfinite(losses).any():
            return int(tied[np.nanargmin(losses)])
        return best


def refinements(params, scores, key, spec):
    """The next setting of the score's bisection, with the two rows it lies
    between (the best first), or None: midway, on ``spec``'s scale, between
    the best-scored setting and its nearest scored neighbour in ``key`` on
    the side of the better-scored of its two neighbours (the other
    parameters those of the best); None where that gap is already below
    1e-3 on that scale (0.1% of a log-scale value) or nothing is scored.

    The runs descend a smooth validation loss, a surrogate of a classifier's
    score (accuracy): its best setting and the score's need not agree (on
    the sparse benchmark, log-loss best near C = 11, accuracy near C = 4).
    For a score with one peak, the peak lies between the best setting and
    its better neighbour; each round halves that bracket.

    Examples
    --------
    >>> from skbilevel import Real
    >>> params = [{"C": 1.0}, {"C": 100.0}, {"C": 10.0}]
    >>> refinements(params, [0.5, 0.6, 0.7], "C", Real(1e-2, 1e3))
    ({'C': 31.6...}, (2, 1))
    """
    scores = np.asarray(scores, dtype=float)
    finite = np.flatnonzero(np.isfinite(scores))
    if finite.size == 0:
        return None
    best = int(finite[np.argmax(scores[finite])])

    def setting(row):
        # The other parameters of a row, not the evaluation's bookkeeping.
        skip = (key, "candidate")
        return {k: v for k, v in params[row].items() if k not in skip}

    others = setting(best)
    same = np.asarray([row for row in finite if _same_setting(setting(row), others)])
    scale = np.log if spec.log else np.asarray
    positions = scale(np.array([float(params[row][key]) for row in same]))
    at = float(scale(float(params[best][key])))
    neighbours = []
    for side in (positions < at, positions > at):
        if side.any():
            nearest = int(np.argmin(np.where(side, np.abs(positions - at), np.inf)))
            neighbours.append(nearest)
    if not neighbours:
        return None
    # The better-scored neighbour; on a tie, the wider gap.
    nearest = max(
        neighbours,
        key=lambda n: (scores[same[n]], abs(positions[n] - at)),
    )
    if abs(positions[nearest] - at) < 1e-3:
        return None
    middle = 0.5 * (positions[nearest] + at)
    value = float(np.exp(middle)) if spec.log else float(middle)
    return {**others, key: float(spec.clip(value))}, (best, int(same[nearest]))


def _same_setting(a, b):
    """Whether two dicts of parameters hold the same values (arrays and
    estimators compared by their representation)."""
    if a.keys() != b.keys():
        return False
    for name in a:
        x, y = a[name], b[name]
        if x is y:
            continue
        try:
            if bool(x == y):
                continue
        except (TypeError, ValueError):
            pass
        if repr(x) != repr(y):
            return False
    return True
