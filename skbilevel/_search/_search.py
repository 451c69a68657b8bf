"""BilevelSearchCV: GridSearchCV's interface, continuous hyperparameters learned by
hypergradient descent on the cross-validation loss.

One straight path for a space with continuous entries: ``fit`` validates the
inputs and the settings once, parses ``param_space`` once
(:mod:`._parse`), computes the splits once, runs the hypergradient runs
(:mod:`._run`, outside any ``Parallel`` context of scikit-learn's), and hands
every setting they visited to :class:`._evaluate.Evaluation`, scikit-learn's
own search machinery over fixed splits, which scores, ranks and refits.
A space of discrete entries only is GridSearchCV's own ``fit``.
"""

import numbers
import warnings

import numpy as np
import torch
from joblib import Parallel, delayed, effective_n_jobs
from sklearn import get_config
from sklearn.base import clone, is_classifier
from sklearn.exceptions import DataConversionWarning
from sklearn.model_selection import ParameterGrid, check_cv
from sklearn.utils import check_array, check_random_state, get_tags
from sklearn.utils.validation import check_consistent_length

from ..hypergrad import METHODS
from ..problems._data import final_estimator
from ..utils._sklearn import (
    BaseSearchCV,
    Interval,
    StrOptions,
    _check_sample_weight,
    _fit_context,
    _yields_constant_splits,
    callbacks_of,
    routed_fit_params,
)
from ..utils._threads import limited, one_native_thread, task_threads, thread_limit
from ._evaluate import (
    Evaluation,
    FoldSolutions,
    LearnedSettings,
    evaluation_backend,
    search_candidates,
)
from ._parse import parse_space
from ._progress import SearchProgress
from ._run import run
from ._settings import check_bounds, run_settings


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

    Read more in the :ref:`User Guide <bilevel_search>`.

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
          ``(low, high)`` tuple its bounds (log scale), and a
          ``scipy.stats.loguniform`` or ``uniform`` distribution (as written
          for RandomizedSearchCV) its bounds on a log or linear scale;
        - :class:`~skbilevel.PerFeature`, one L2 penalty per feature;
        - :class:`~skbilevel.PerStep`, a learning-rate schedule, and
          :class:`~skbilevel.PerLayer`, one ``alpha`` per layer, of the torch
          MLPs (their values are arrays that the estimator takes as is);
        - under the key ``"sample_weight"``, :class:`~skbilevel.SampleWeight`
          (an example in no training fold keeps weight 1, whatever the
          spec's ``init`` and ``budget``: a warning says how many).

    param_grid : dict or list of dicts, default=None
        GridSearchCV's name for ``param_space``, so that drop-in code passing
        ``param_grid=`` keeps working; give one of the two.

    scoring : str, callable, list, tuple or dict, default=None
        Strategy to evaluate the learned settings on the validation folds, as
        in GridSearchCV. The hypergradients descend the estimator's own
        validation loss (see the User Guide).

    n_jobs : int, default=None
        Number of jobs for the independent hypergradient runs and for the
        evaluation of the candidates. ``None`` means 1 unless in a
        :obj:`joblib.parallel_backend` context; ``-1`` uses all processors.
        The runs take joblib's threading backend unless a backend is
        selected (``joblib.parallel_config``, e.g. loky, Dask or Ray): their
        work is torch's, which releases the GIL, and threads start at once.

    refit : bool, str, or callable, default=True
        Refit the best setting on the whole dataset, as in GridSearchCV.
        ``best_estimator_`` is a plain scikit-learn estimator.

    cv : int, cross-validation generator or an iterable, default=None
        Splitting strategy, as in GridSearchCV (5-fold by default). With
        continuous entries the splits are computed once and must be the same
        at every ``split`` call (as in HalvingGridSearchCV): a shuffling
        splitter needs an int ``random_state``.

    verbose : int, default=0
        Verbosity: 0 is silent; 1 shows one progress bar (``tqdm.auto``) of
        the hypergradient runs completed, with the best validation loss and
        the current outer step; 2 also prints one line per outer step (its
        validation loss and scalar hyperparameters; arrays by size and
        range). The bar and the lines are written by the main process, also
        with ``n_jobs`` workers (a worker's run is reported as it completes).
        With discrete entries only, as in GridSearchCV.

    pre_dispatch : int or str, default='2*n_jobs'
        Number of jobs dispatched during the evaluation of the candidates.

    error_score : 'raise' or numeric, default=np.nan
        Score assigned to a failed fit during evaluation, as in GridSearchCV.

    return_train_score : bool, default=False
        Whether ``cv_results_`` includes training scores.

    method : {"auto", "implicit_cg", "implicit_forward", \
            "implicit_fixed_point", "reverse", "truncated_reverse", \
            "forward"}, default="auto"
        The hypergradient method of :mod:`skbilevel.hypergrad`. The implicit
        methods differentiate the exact inner solution (computed by a
        warm-started solver); the others differentiate ``inner_steps`` steps
        of gradient descent from the previous solution, or, for the torch
        MLPs, the estimator's own ``max_iter`` training steps (the implicit
        methods are refused for those). ``"auto"`` is ``"implicit_forward"``
        for one or two scalar hyperparameters of the scikit-learn estimators,
        ``"implicit_cg"`` for more, and ``"reverse"`` for the torch MLPs.

    method_params : dict, default=None
        Options of the method, checked against its signature (e.g.
        ``{"K": 10}`` for truncated reverse mode, ``{"max_iter": 500}`` for
        conjugate gradient); an option the method does not have is an error
        naming the valid ones. Without a ``cg_tol``, ``"implicit_forward"``
        solves its linear systems to a relative residual of 1% of the last
        hypergradient's norm relative to the first, between 1e-4 and 1e-2
        (loose far from the optimum, as in HOAG [2]_); a given ``cg_tol``
        holds at every outer step.

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
        largest change of the unconstrained hyperparameters for Adam. The
        validation loss is only as precise as the inner solutions
        (``inner_tol``): a much smaller ``tol`` spends outer steps on that
        noise. A run that ends at a bound of a ``Real`` with the
        hypergradient pointing beyond it, or at ``max_iter`` with the loss
        still falling, warns (``ConvergenceWarning``). Either optimizer
        returns the best setting it evaluated; a step with a non-finite
        result is undone and shrunk, with a warning, and a run that cannot
        evaluate its starting point fails (its row follows
        ``error_score``).

    outer_optimizer : {"auto", "lbfgs", "adam"}, default="auto"
        The outer optimizer: L-BFGS-B on the box of the unconstrained
        hyperparameters, or projected Adam. ``"auto"`` is projected Adam when
        the space has a :class:`~skbilevel.SampleWeight` entry (thousands of
        weights in [0, 1]: Adam moves each by at most about
        ``outer_learning_rate`` per step, whatever the scale of its
        hypergradient) and L-BFGS-B otherwise. A sample-weight budget always
        uses projected Adam.

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

    n_refine : int, default=0
        For a classifier whose one continuous entry is a
        :class:`~skbilevel.Real` (with any discrete ones) and whose
        ``scoring`` is not ``"neg_log_loss"``: how many settings are scored
        after the runs, by scikit-learn's fit on each fold as in
        GridSearchCV (the same fits, from scikit-learn's own start), to
        bisect the score itself.
        The runs descend a smooth surrogate (log-loss, squared hinge) of a
        score such as accuracy, whose best setting can lie elsewhere; each
        setting is the midpoint (on the Real's scale) between the
        best-scored setting so far and the better-scored of its two nearest
        scored neighbours. Each costs one ``cross_validate`` of the
        estimator, as a grid point does. 0 scores the visited settings only.
        Regressors are not refined: their default scores (R^2, D^2) and the
        squared-error scorers follow the descended loss.

    Attributes
    ----------
    cv_results_ : dict of numpy (masked) ndarrays
        As in GridSearchCV, one row per evaluated setting: every outer step
        of the implicit runs, the learned setting of the others, then the
        ``n_refine`` settings of the score's bisection, if any (those have
        no row in ``history_``).
    best_estimator_ : estimator
        The refitted plain scikit-learn estimator; a learned per-feature
        penalty is a rescaling step in front of it. A LogisticRegression,
        Lasso or ElasticNet refit starts from the mean of the best setting's
        fold solutions (``warm_start``, off again after the fit).
    best_score_ : float
        Mean cross-validated score of the best setting.
    best_params_ : dict
        The best setting; arrays for PerFeature, PerStep, PerLayer and
        SampleWeight.
    best_index_ : int
        Index of the best setting in ``cv_results_``; among settings tied in
        the refit score, the one with the lowest validation loss descended
        (so the learned value, not the start, when both score the same).
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
        that row (0 for settings of discrete values only); a setting of the
        score's bisection (``n_refine``) takes the entry of the visited
        setting it was bisected from.
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

    Notes
    -----
    A ``KeyboardInterrupt`` during the hypergradient runs stops them; the
    settings evaluated so far are scored and the best one refitted, with a
    warning (with ``n_jobs`` other than 1, only the runs finished before the
    interrupt are kept). An interrupt before any setting was evaluated
    propagates.

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
        "param_space": [dict, list, None],
        "param_grid": [dict, list, None],
        "method": [StrOptions({"auto", *METHODS})],
        "method_params": [dict, None],
        "inner_steps": [Interval(numbers.Integral, 1, None, closed="left")],
        "inner_tol": [Interval(numbers.Real, 0, None, closed="neither")],
        "max_iter": [Interval(numbers.Integral, 1, None, closed="left")],
        "tol": [Interval(numbers.Real, 0, None, closed="left")],
        "outer_optimizer": [StrOptions({"auto", "lbfgs", "adam"})],
        "outer_learning_rate": [Interval(numbers.Real, 0, None, closed="neither")],
        "n_restarts": [Interval(numbers.Integral, 1, None, closed="left")],
        "device": [str, torch.device],
        "dtype": [StrOptions({"auto", "float32", "float64"})],
        "random_state": ["random_state"],
        "n_refine": [Interval(numbers.Integral, 0, None, closed="left")],
    }

    def __init__(
        self,
        estimator,
        param_space=None,
        *,
        param_grid=None,
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
        outer_optimizer="auto",
        outer_learning_rate=0.1,
        n_restarts=1,
        device="auto",
        dtype="auto",
        random_state=None,
        n_refine=0,
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
        self.param_grid = param_grid
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
        self.n_refine = n_refine

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = get_tags(
            self.estimator
        ).target_tags.multi_output
        return tags

    def _space(self):
        if (self.param_space is None) == (self.param_grid is None):
            raise TypeError(
                "BilevelSearchCV needs exactly one of param_space and param_grid "
                "(GridSearchCV's name for it)."
            )
        return self.param_space if self.param_grid is None else self.param_grid

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
            splitter, routed as in GridSearchCV (``groups``,
            ``sample_weight``; with metadata routing enabled, as requested).
            With continuous entries and routing disabled, only ``groups`` and
            ``sample_weight`` (for a Pipeline, also given as its final step's
            ``<step>__sample_weight``, as to GridSearchCV).

        Returns
        -------
        self : object
            The fitted search.
        """
        space = parse_space(self._space())
        if not space.continuous:
            return super().fit(X, y, **params)
        params = self._fit_params(params)
        X, y, routed = self._validated(X, y, params)
        splits = self._splits(X, y, routed.splitter.split)
        fixed_weight = routed.estimator.fit.get("sample_weight")
        if fixed_weight is not None:
            fixed_weight = _validated_weights(fixed_weight, X)
        space = _hold_unweighted_examples(space, splits, len(y))
        # Runs side by side share the cores, in workers and in this process.
        threads = task_threads(effective_n_jobs(self.n_jobs))
        with thread_limit(threads):
            outcomes = self._learn(space, (X, y, splits, fixed_weight), threads)
        candidates, losses, store = self._candidates(outcomes, splits)
        self._evaluate(X, y, params, space, candidates, losses, store, splits)
        return self

    def _fit_params(self, params):
        """``fit``'s parameters, a Pipeline's ``last__sample_weight`` (as given
        to GridSearchCV) read as the final step's ``sample_weight``."""
        if get_config()["enable_metadata_routing"]:
            return params
        params = dict(params)
        if hasattr(self.estimator, "steps"):
            key = f"{self.estimator.steps[-1][0]}__sample_weight"
            if key in params:
                if "sample_weight" in params:
                    raise ValueError(f"Give sample_weight or {key}, not both.")
                params["sample_weight"] = params.pop(key)
        unsupported = set(params) - {"groups", "sample_weight"}
        if unsupported:
            raise ValueError(
                "With continuous entries in param_space, fit accepts only the "
                "parameters groups and sample_weight (for a Pipeline, also its "
                "final step's sample_weight); got "
                f"{sorted(unsupported)}."
            )
        return params

    def _validated(self, X, y, params):
        """X and y checked as the estimator would; the routed fit parameters."""
        if y is None:
            raise ValueError("y is required to learn continuous hyperparameters.")
        if not hasattr(self.estimator, "steps"):
            # A Pipeline's first step validates what it takes (text, frames).
            check_array(X, accept_sparse="csr", dtype="numeric", input_name="X")
        y = check_array(y, ensure_2d=False, dtype=None, input_name="y")
        if y.ndim == 2 and y.shape[1] == 1 and is_classifier(self.estimator):
            warnings.warn(
                "A column-vector y was passed when a 1d array was expected. "
                "Please change the shape of y to (n_samples,), for example "
                "using ravel().",
                DataConversionWarning,
                stacklevel=3,
            )
            y = y.ravel()
        check_consistent_length(X, y)
        return X, y, routed_fit_params(self, params)

    def _splits(self, X, y, split_params):
        """The cross-validation splits, computed once; they must be constant."""
        cv = check_cv(self.cv, y, classifier=is_classifier(self.estimator))
        if not _yields_constant_splits(cv):
            raise ValueError(
                "The cv parameter must yield consistent folds across calls to "
                "split() to learn continuous hyperparameters. Set its "
                "random_state to an int, or set shuffle=False."
            )
        return [
            (np.asarray(train, dtype=np.intp), np.asarray(test, dtype=np.intp))
            for train, test in cv.split(X, y, **split_params)
        ]

    def _learn(self, space, data_args, threads=None):
        """Run every hypergradient run; settings of discrete values only pass.

        A KeyboardInterrupt keeps the runs finished (and the current one's
        steps, when sequential) and stops the others, with a warning.
        """
        runs = space.runs(self.n_restarts, check_random_state(self.random_state))
        progress = SearchProgress(self.verbose, sum(bool(i.specs) for i in runs))
        tasks = []
        for item in runs:
            if item.specs:
                estimator = clone(self.estimator).set_params(**item.combo)
                check_bounds(estimator, item.specs)
                settings = run_settings(self, final_estimator(estimator), item.specs)
                tasks.append(
                    delayed(limited(run, threads))(
                        estimator,
                        item.specs,
                        *data_args,
                        settings,
                        item.restart,
                        item.seed,
                        progress.hook(len(tasks)),
                    )
                )
        # The progress bar replaces joblib's "Done" lines.
        parallel = _parallel(self.n_jobs)
        outcomes = []
        progress.start()
        try:
            for outcome in parallel(tasks):
                progress.done(len(outcomes), outcome.history)
                outcomes.append(outcome)
                if outcome.interrupted:
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            if not outcomes:
                raise
            warnings.warn(
                f"Interrupted: {len(outcomes)} of {len(tasks)} hypergradient runs "
                "kept (the last one up to its interrupted step); the search is "
                "fitted on the best setting they found.",
                UserWarning,
                stacklevel=3,
            )
        finally:
            progress.close()
        outcomes = iter(outcomes)
        return [(item, next(outcomes, None) if item.specs else None) for item in runs]

    def _candidates(self, outcomes, splits):
        """The rows of cv_results_: every setting the runs evaluated, with the
        validation loss descended there; fills ``history_`` and ``n_iter_``."""
        store = FoldSolutions(splits)
        candidates, losses, self.history_, n_iter = [], [], [], []
        for item, outcome in outcomes:
            if item.specs and outcome is None:
                continue  # not run: interrupted before
            if outcome is None or outcome.failure is not None or not outcome.solutions:
                row = len(candidates)
                if outcome is not None and outcome.failure is not None:
                    store.fail(row, outcome.failure)
                learned = {} if outcome is None else outcome.learned
                candidates.append({**item.combo, **learned})
                history = [] if outcome is None else outcome.history
                best = min((e["outer_loss"] for e in history), default=np.nan)
                losses.append(best)
                n_iter.append(len(history))
                self.history_.extend({"candidate": row, **e} for e in history)
                continue
            for entry, folds in zip(outcome.history, outcome.solutions):
                row = len(candidates)
                candidates.append({**item.combo, **entry["params"]})
                losses.append(entry["outer_loss"])
                n_iter.append(entry["step"] + 1)
                store.add(row, folds, outcome.prefixes)
                self.history_.append({"candidate": row, **entry})
        self.n_iter_ = np.asarray(n_iter, dtype=int)
        return candidates, losses, store

    def _evaluate(self, X, y, params, space, candidates, losses, store, splits):
        """Score, rank and refit the candidates with scikit-learn's search."""
        evaluation = Evaluation(
            LearnedSettings(self.estimator, specs=space.specs, fold_solutions=store),
            [{**c, "candidate": row} for row, c in enumerate(candidates)],
            losses,
            cv=splits,
            scoring=self.scoring,
            n_jobs=self.n_jobs,
            refit=self.refit,
            # Its fits only assemble the runs' solutions: scikit-learn's lines
            # would count them as fits and print every learned array.
            verbose=0,
            pre_dispatch=self.pre_dispatch,
            error_score=self.error_score,
            return_train_score=self.return_train_score,
            refine=self._refinement(space),
        )
        fit_params = {k: v for k, v in params.items() if k != "groups"}
        callbacks = callbacks_of(self)
        if callbacks:
            evaluation.set_callbacks(*callbacks)
        with one_native_thread(X), evaluation_backend(evaluation, self.n_jobs):
            evaluation.fit(X, y, sample_index=np.arange(len(y)), **fit_params)
        self._take_results(evaluation)

    def _refinement(self, space):
        """``(key, spec, n_refine)`` for the evaluation's bisection of the
        score (see ``n_refine``), or None where it does not apply."""
        specs = space.specs
        if (
            self.n_refine == 0
            or len(specs) != 1
            or not is_classifier(self.estimator)
            or callable(self.refit)
            or self.refit is False
            or self.scoring == "neg_log_loss"
            or (not isinstance(self.refit, str) and not _single_metric(self.scoring))
        ):
            return None
        ((key, spec),) = specs.items()
        if spec.kind != "real":
            return None
        return key, spec, self.n_refine

    def _take_results(self, evaluation):
        """The evaluation's fitted attributes, without the candidate numbers."""
        results = evaluation.cv_results_
        # A row of the score's bisection counts the outer steps of the run
        # behind the visited row it was bisected from.
        steps = self.n_iter_
        sources = getattr(evaluation, "refined_from_", {})
        refined = [
            steps[sources[row]] for row in range(len(steps), len(results["params"]))
        ]
        self.n_iter_ = np.concatenate([steps, np.asarray(refined, dtype=int)])
        results.pop("param_candidate", None)
        for params in results["params"]:
            params.pop("candidate", None)
        for name in (
            "cv_results_",
            "best_index_",
            "best_score_",
            "best_params_",
            "scorer_",
            "n_splits_",
            "refit_time_",
            "multimetric_",
        ):
            if hasattr(evaluation, name):
                setattr(self, name, getattr(evaluation, name))
        if hasattr(evaluation, "best_estimator_"):
            self.best_estimator_ = evaluation.best_estimator_.estimator_
            names = getattr(self.best_estimator_, "feature_names_in_", None)
            if names is not None:
                self.feature_names_in_ = names

    def _run_search(self, evaluate_candidates, *, callback_ctx=None):
        # A space of discrete entries only: GridSearchCV's own search.
        grid = ParameterGrid(self._space())
        self.history_ = []
        self.n_iter_ = np.zeros(len(grid), dtype=int)
        search_candidates(self, evaluate_candidates, grid, callback_ctx)


def _parallel(n_jobs):
    """joblib's Parallel yielding each run's outcome as it completes, or the
    list of them on a backend that cannot yield (Ray's).

    Threads unless a backend is selected (``parallel_config``): a run's work
    is torch's, which releases the GIL, and a thread starts at once where a
    worker process first imports torch and scikit-learn (about 3 s here).
    """
    try:
        return Parallel(n_jobs=n_jobs, return_as="generator", prefer="threads")
    except ValueError:
        return Parallel(n_jobs=n_jobs, prefer="threads")


def _single_metric(scoring):
    """Whether ``scoring`` is one metric (None, a string or a callable that
    returns a number), as far as can be told before scoring."""
    return scoring is None or isinstance(scoring, str) or callable(scoring)


def _validated_weights(sample_weight, X):
    """``sample_weight`` checked as scikit-learn's estimators check it."""
    sample_weight = _check_sample_weight(
        sample_weight, X, dtype=np.float64, ensure_non_negative=True
    )
    if not sample_weight.any():
        raise ValueError("Sample weights must contain at least one non-zero number.")
    return sample_weight


def _hold_unweighted_examples(space, splits, n_samples):
    """``space`` with the examples in no training fold held at sample weight 1
    (:meth:`~skbilevel.SampleWeight.holding`), with a warning saying how many."""
    if not any(spec.kind == "sample_weight" for spec in space.specs.values()):
        return space
    covered = np.zeros(n_samples, dtype=bool)
    for train, _ in splits:
        covered[train] = True
    missing = int((~covered).sum())
    if not missing:
        return space
    warnings.warn(
        f"{missing} of {n_samples} examples are in no training fold: their "
        "sample weights are not learned and stay 1 (the refit trains on them "
        "unweighted). Use a splitter whose training parts cover every example "
        "(e.g. KFold) to learn them.",
        UserWarning,
        stacklevel=3,
    )
    return space.mapped(
        lambda spec: spec.holding(~covered) if spec.kind == "sample_weight" else spec
    )
