"""BilevelSearchCV: GridSearchCV's interface, continuous hyperparameters learned by
hypergradient descent on the cross-validation loss."""

import copy
import numbers
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from joblib import Parallel, delayed
from sklearn.base import _fit_context, clone
from sklearn.model_selection import ParameterGrid
from sklearn.model_selection._search import BaseSearchCV
from sklearn.utils import assert_all_finite, check_random_state, get_tags
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import _num_samples

from ._space import PerFeature, PerLayer, PerStep, Real, SampleWeight
from .hypergrad import METHODS
from .problems._bilevel import learn
from .problems._refit import FoldSolutions, LearnedSettings, _same
from .utils._threads import one_blas_thread

_SPECS = (Real, PerFeature, PerStep, PerLayer, SampleWeight)


def _entry(key, value):
    """The spec of a continuous entry, or None for a list of discrete values."""
    if not isinstance(key, str):
        raise TypeError(f"Parameter names must be strings; got {key!r}.")
    if isinstance(value, _SPECS):
        spec = value
    elif isinstance(value, tuple):
        if len(value) != 2:
            raise ValueError(
                f"A tuple for {key!r} gives the bounds (low, high) of a continuous "
                f"hyperparameter; got {value!r}. Use a list for discrete values."
            )
        spec = Real(*value)
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        if not value > 0:
            raise ValueError(
                f"A float for {key!r} is the initial value of a positive continuous "
                f"hyperparameter; got {value!r}."
            )
        spec = Real(value * 1e-4, value * 1e4, init=value)
    elif isinstance(value, Sequence | np.ndarray) and not isinstance(value, str):
        spec = None
    else:
        raise TypeError(
            f"Parameter space value for {key!r} must be a list of values, a "
            "(low, high) tuple, a float, Real, PerFeature, PerStep, PerLayer or "
            f"SampleWeight; got {value!r}."
        )
    if (key == "sample_weight") != isinstance(spec, SampleWeight):
        raise ValueError(
            'SampleWeight goes, and only goes, under the key "sample_weight"; '
            f"got {key!r}: {value!r}."
        )
    return spec


def _parse_space(param_space):
    """The subspaces as (discrete grid, continuous specs) pairs."""
    spaces = [param_space] if isinstance(param_space, Mapping) else param_space
    if not isinstance(spaces, Sequence) or not spaces:
        raise TypeError(
            "param_space must be a dict or a non-empty list of dicts; got "
            f"{param_space!r}."
        )
    parsed = []
    for space in spaces:
        if not isinstance(space, Mapping):
            raise TypeError(f"param_space entries must be dicts; got {space!r}.")
        specs = {key: _entry(key, value) for key, value in space.items()}
        grid = {key: value for key, value in space.items() if specs[key] is None}
        continuous = {key: spec for key, spec in specs.items() if spec is not None}
        if sum(isinstance(spec, PerFeature) for spec in continuous.values()) > 1:
            raise ValueError("At most one PerFeature entry per parameter space.")
        parsed.append((grid, continuous))
    return parsed


def _array_keys(parsed):
    """Keys whose learned values are arrays (PerFeature and SampleWeight)."""
    return tuple(
        sorted(
            {
                key
                for _, continuous in parsed
                for key, spec in continuous.items()
                if isinstance(spec, PerFeature | SampleWeight)
            }
        )
    )


class BilevelSearchCV(BaseSearchCV):
    """Hyperparameter search by bilevel optimization, a drop-in for GridSearchCV.

    Continuous hyperparameters (an L2 penalty, one penalty per feature, one
    weight per training example, a kernel width) are learned by hypergradient
    descent on the mean validation loss over the cross-validation folds; lists
    of values are searched exhaustively, exactly as
    :class:`~sklearn.model_selection.GridSearchCV` does. Every combination of
    discrete values gets its own hypergradient run (``n_restarts`` of them),
    and every setting a run evaluates is a row of ``cv_results_``, scored and
    ranked by scikit-learn's own search machinery (from the run's exact fold
    solutions, without refitting, where the inner problem is an argmin), so
    ``cv_results_``, ``refit``, ``scoring`` and the ``best_*`` attributes mean
    what they mean in GridSearchCV.

    Read more in the :ref:`User Guide <search>`.

    Parameters
    ----------
    estimator : estimator object
        The estimator, or a Pipeline whose final step is the estimator. With
        continuous entries it must be one of Ridge, RidgeClassifier,
        LogisticRegression (L2), KernelRidge, SGDClassifier/SGDRegressor
        (L2, smooth loss), or TorchMLPClassifier/TorchMLPRegressor (whose
        training steps are differentiated: ``method="auto"`` or a
        non-implicit ``method``).

    param_space : dict or list of dicts
        Parameter names (``step__param`` inside a Pipeline) to:

        - a list of values, searched exhaustively;
        - :class:`~skbilevel.Real`, a continuous hyperparameter; a float is
          its initial value (bounds four decades either side), a
          ``(low, high)`` tuple its bounds (log scale);
        - :class:`~skbilevel.PerFeature`, one L2 penalty per feature;
        - :class:`~skbilevel.PerStep`, a learning-rate schedule, and
          :class:`~skbilevel.PerLayer`, one ``alpha`` per layer, of the torch
          MLPs (their values are arrays that the estimator takes as is);
        - under the key ``"sample_weight"``, :class:`~skbilevel.SampleWeight`.

    scoring : str, callable, list, tuple or dict, default=None
        Strategy to evaluate the learned settings on the validation folds, as
        in GridSearchCV. The hypergradients descend the estimator's own
        validation loss (see the User Guide).

    n_jobs : int, default=None
        Number of jobs for the independent hypergradient runs and for the
        evaluation of the candidates. ``None`` means 1 unless in a
        :obj:`joblib.parallel_backend` context; ``-1`` uses all processors.

    refit : bool, str, or callable, default=True
        Refit the best setting on the whole dataset, as in GridSearchCV.
        ``best_estimator_`` is a plain scikit-learn estimator.

    cv : int, cross-validation generator or an iterable, default=None
        Splitting strategy, as in GridSearchCV (5-fold by default).

    verbose : int, default=0
        Verbosity: above 0, progress of the runs and the evaluation; above 1,
        one line per outer step.

    pre_dispatch : int or str, default='2*n_jobs'
        Number of jobs dispatched during the evaluation of the candidates.

    error_score : 'raise' or numeric, default=np.nan
        Score assigned to a failed fit during evaluation, as in GridSearchCV.

    return_train_score : bool, default=False
        Whether ``cv_results_`` includes training scores.

    method : {"auto", "implicit_cg", "implicit_fixed_point", "reverse", \
            "truncated_reverse", "forward"}, default="auto"
        The hypergradient method of :mod:`skbilevel.hypergrad`. The implicit
        methods differentiate the exact inner solution (computed by a
        warm-started solver); the others differentiate ``inner_steps`` steps
        of gradient descent from the previous solution, or, for the torch
        MLPs, the estimator's own ``max_iter`` training steps (the implicit
        methods are refused for those). ``"auto"`` is ``"implicit_cg"`` for
        the scikit-learn estimators and ``"reverse"`` for the torch MLPs.

    method_params : dict, default=None
        Extra options of the method (e.g. ``{"K": 10}`` for truncated
        reverse mode, ``{"max_iter": 500}`` for conjugate gradient).

    inner_steps : int, default=100
        Maximum iterations of the inner solver (implicit methods), or the
        number of unrolled steps ``T`` (the others).

    inner_tol : float, default=1e-5
        Gradient tolerance of the inner solver (largest entry of the gradient
        of the training loss, which scikit-learn's objectives average over
        the samples). Newton's method, converging quadratically, usually
        overshoots it.

    max_iter : int, default=30
        Maximum number of outer steps (hypergradient evaluations) per run.

    tol : float, default=1e-4
        Outer tolerance: relative decrease of the validation loss, largest
        projected hypergradient entry relative to the first one, or (times
        100) largest move of the unconstrained hyperparameters, for L-BFGS-B;
        largest change of the
        unconstrained hyperparameters for Adam. The validation loss is only as
        precise as the inner solutions (``inner_tol``): a much smaller ``tol``
        spends outer steps on that noise.

    outer_optimizer : {"lbfgs", "adam"}, default="lbfgs"
        The outer optimizer: L-BFGS-B on the box of the unconstrained
        hyperparameters, or projected Adam. A sample-weight budget always uses
        projected Adam.

    outer_learning_rate : float, default=0.1
        Step size of projected Adam.

    n_restarts : int, default=1
        Hypergradient runs per combination of discrete values; the first
        starts from each spec's initial value, the others from random points.

    device : str, default="auto"
        Torch device of the inner problems; "auto" picks a GPU when present.

    dtype : {"auto", "float64", "float32"}, default="auto"
        Precision of the inner problems. "auto" is float64 for the
        scikit-learn estimators (which fit in float64) and the estimator's own
        ``dtype`` for the torch MLPs, so that refitting with the learned values
        reproduces the differentiated model.

    random_state : int, RandomState instance or None, default=None
        Seeds the random restarts.

    Attributes
    ----------
    cv_results_ : dict of numpy (masked) ndarrays
        As in GridSearchCV, one row per evaluated setting: every outer step
        of the implicit runs, the learned setting of the others.
    best_estimator_ : estimator
        The refitted plain scikit-learn estimator; a learned per-feature
        penalty is a rescaling step in front of it.
    best_score_ : float
        Mean cross-validated score of the best setting.
    best_params_ : dict
        The best setting; arrays for PerFeature, PerStep, PerLayer and
        SampleWeight.
    best_index_ : int
        Index of the best setting in ``cv_results_``.
    scorer_ : function or a dict
        Scorer(s) used on the validation folds.
    n_splits_ : int
        Number of cross-validation splits.
    refit_time_ : float
        Seconds used to refit the best setting.
    multimetric_ : bool
        Whether the scorers compute several metrics.
    history_ : list of dict
        One entry per outer step: ``candidate`` (row of ``cv_results_``),
        ``step``, ``params`` (hyperparameter values), ``outer_loss``,
        ``hypergradient_norm`` and ``time`` (seconds since the run started).
    n_iter_ : ndarray of shape (n_candidates,)
        Outer steps the run behind each row of ``cv_results_`` had taken at
        that row (0 for settings of discrete values only).
    classes_ : ndarray of shape (n_classes,)
        Class labels, for classifiers.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Names of features seen during fit, when X has them.

    See Also
    --------
    sklearn.model_selection.GridSearchCV : exhaustive search over lists.

    References
    ----------
    .. [1] L. Franceschi, P. Frasconi, S. Salzo, R. Grazzi and M. Pontil,
       "Bilevel Programming for Hyperparameter Optimization and
       Meta-Learning", ICML 2018.
    .. [2] F. Pedregosa, "Hyperparameter optimization with approximate
       gradient", ICML 2016.

    Examples
    --------
    >>> from sklearn.datasets import load_diabetes
    >>> from sklearn.linear_model import Ridge
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> from skbilevel import BilevelSearchCV, Real
    >>> X, y = load_diabetes(return_X_y=True)
    >>> model = make_pipeline(StandardScaler(), Ridge())
    >>> search = BilevelSearchCV(model, {"ridge__alpha": Real(1e-3, 1e3)}, cv=3)
    >>> alpha = search.fit(X, y).best_params_["ridge__alpha"]
    >>> 0.1 < alpha < 100
    True
    >>> search.best_estimator_.predict(X[:2]).shape
    (2,)
    """

    _parameter_constraints: dict = {
        **BaseSearchCV._parameter_constraints,
        "param_space": [dict, list],
        "method": [StrOptions({"auto", *METHODS})],
        "method_params": [dict, None],
        "inner_steps": [Interval(numbers.Integral, 1, None, closed="left")],
        "inner_tol": [Interval(numbers.Real, 0, None, closed="neither")],
        "max_iter": [Interval(numbers.Integral, 1, None, closed="left")],
        "tol": [Interval(numbers.Real, 0, None, closed="left")],
        "outer_optimizer": [StrOptions({"lbfgs", "adam"})],
        "outer_learning_rate": [Interval(numbers.Real, 0, None, closed="neither")],
        "n_restarts": [Interval(numbers.Integral, 1, None, closed="left")],
        "device": [str, torch.device],
        "dtype": [StrOptions({"auto", "float32", "float64"})],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        estimator,
        param_space,
        *,
        scoring=None,
        n_jobs=None,
        refit=True,
        cv=None,
        verbose=0,
        pre_dispatch="2*n_jobs",
        error_score=np.nan,
        return_train_score=False,
        method="auto",
        method_params=None,
        inner_steps=100,
        inner_tol=1e-5,
        max_iter=30,
        tol=1e-4,
        outer_optimizer="lbfgs",
        outer_learning_rate=0.1,
        n_restarts=1,
        device="auto",
        dtype="auto",
        random_state=None,
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
        self.param_space = param_space
        self.method = method
        self.method_params = method_params
        self.inner_steps = inner_steps
        self.inner_tol = inner_tol
        self.max_iter = max_iter
        self.tol = tol
        self.outer_optimizer = outer_optimizer
        self.outer_learning_rate = outer_learning_rate
        self.n_restarts = n_restarts
        self.device = device
        self.dtype = dtype
        self.random_state = random_state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = get_tags(
            self.estimator
        ).target_tags.multi_output
        return tags

    @_fit_context(
        # BilevelSearchCV.estimator is not validated yet
        prefer_skip_nested_validation=False
    )
    def fit(self, X, y=None, **params):
        """Learn the continuous hyperparameters, evaluate every setting, refit.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training vectors.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Target values; required with continuous entries.
        **params : dict of str -> object
            Parameters of the estimator's ``fit``, the scorer and the
            splitter, as in GridSearchCV (``groups``, ``sample_weight``).
            With continuous entries, only ``groups`` and ``sample_weight``.

        Returns
        -------
        self : object
            The fitted search.
        """
        parsed = _parse_space(self.param_space)
        continuous = any(spec for _, spec in parsed)
        if continuous:
            unsupported = set(params) - {"groups", "sample_weight"}
            if unsupported:
                raise ValueError(
                    "With continuous entries in param_space, fit accepts only the "
                    f"parameters groups and sample_weight; got {sorted(unsupported)}."
                )
            if y is None:
                raise ValueError("y is required to learn continuous hyperparameters.")
            if np.asarray(y).dtype.kind in "fc":
                assert_all_finite(np.asarray(y), input_name="y")
        self._fit_inputs = {"estimator": self.estimator, "X": X, "y": y, **params}
        try:
            if not continuous:
                return super().fit(X, y, **params)
            return self._fit_delegated(X, y, _array_keys(parsed), params)
        finally:
            del self._fit_inputs

    def _fit_delegated(self, X, y, array_keys, params):
        """Run scikit-learn's search on LearnedSettings, then unwrap the refit.

        Learned arrays are not parameters of the estimator, and the inner
        solutions of the hypergradient runs are scored without refitting
        (:class:`~skbilevel.problems._refit.FoldSolutions`), so the search
        that evaluates and refits runs on a copy of this object whose
        estimator is wrapped; its fitted attributes are then taken over.
        """
        delegate = copy.copy(self)
        delegate.estimator = LearnedSettings(
            self.estimator, learned_keys=array_keys, fold_solutions=FoldSolutions()
        )
        index = np.arange(_num_samples(X))
        with one_blas_thread(X):
            BaseSearchCV.fit(delegate, X, y, sample_index=index, **params)
        for name, value in vars(delegate).items():
            if name.endswith("_") and not name.startswith("__"):
                setattr(self, name, value)
        if hasattr(self, "best_estimator_"):
            self.best_estimator_ = delegate.best_estimator_.estimator_
        return self

    def _settings(self):
        return {
            "method": self.method,
            "method_params": dict(self.method_params or {}),
            "inner_steps": self.inner_steps,
            "inner_options": {"tol": self.inner_tol, "max_iter": self.inner_steps},
            "max_iter": self.max_iter,
            "tol": self.tol,
            "outer_optimizer": self.outer_optimizer,
            "outer_learning_rate": self.outer_learning_rate,
            "device": self.device,
            "dtype": self.dtype,
            "verbose": self.verbose,
        }

    def _run_search(self, evaluate_candidates):
        parsed = _parse_space(self.param_space)
        if not any(continuous for _, continuous in parsed):
            self.history_ = []
            self.n_iter_ = np.zeros(len(ParameterGrid(self.param_space)), dtype=int)
            evaluate_candidates(ParameterGrid(self.param_space))
            return
        inputs = self._fit_inputs
        X, y = inputs["X"], inputs["y"]
        splits = list(self._checked_cv_orig.split(X, y, inputs.get("groups")))
        runs = [
            (combo, continuous, restart)
            for grid, continuous in parsed
            for combo in (ParameterGrid(grid) if grid else [{}])
            for restart in (range(self.n_restarts) if continuous else [0])
        ]
        seeds = check_random_state(self.random_state).randint(
            np.iinfo(np.int32).max, size=len(runs)
        )
        store = getattr(self.estimator, "fold_solutions", None)
        if store is not None:
            store.splits = splits
        settings = self._settings()
        outcomes = Parallel(n_jobs=self.n_jobs, verbose=self.verbose)(
            delayed(learn)(
                clone(inputs["estimator"]).set_params(**combo),
                continuous,
                X,
                y,
                splits,
                inputs.get("sample_weight"),
                settings,
                restart,
                seed,
            )
            for (combo, continuous, restart), seed in zip(runs, seeds)
            if continuous
        )
        outcomes = iter(outcomes)
        candidates, self.history_, n_iter = [], [], []
        for combo, continuous, _ in runs:
            if not continuous:
                candidates.append(combo)
                n_iter.append(0)
                continue
            learned, history, solutions = next(outcomes)
            if solutions is None or store is None:
                # Settings only evaluated by refitting: the learned one.
                self.history_.extend(
                    {"candidate": len(candidates), **entry} for entry in history
                )
                candidates.append({**combo, **learned})
                n_iter.append(len(history))
                continue
            # Every setting the run evaluated is a row, scored from its exact
            # fold solutions.
            first = len(candidates)
            for entry, folds in zip(history, solutions["folds"]):
                setting = {**combo, **entry["params"]}
                row = next(
                    (
                        r
                        for r in range(first, len(candidates))
                        if all(_same(candidates[r][k], v) for k, v in setting.items())
                    ),
                    None,
                )
                if row is None:
                    row = len(candidates)
                    candidates.append(setting)
                    n_iter.append(entry["step"] + 1)
                    store.add(setting, folds, solutions["prefixes"])
                self.history_.append({"candidate": row, **entry})
        self.n_iter_ = np.asarray(n_iter)
        evaluate_candidates(candidates)
