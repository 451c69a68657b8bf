"""Differentiable inner problems of the scikit-learn estimators BilevelSearchCV learns.

One adapter per supported estimator builds a :class:`Problem` over the K
cross-validation folds from the estimator's own settings, and one
:class:`Record` per estimator in :data:`REGISTRY` says everything else the
search needs (what it can learn, whether its fit lands on the inner solution,
whether it is unrolled); :func:`make_problem` looks the record up and refuses,
with the list of supported estimators, anything it cannot differentiate.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from sklearn.kernel_ridge import KernelRidge
from sklearn.linear_model import (
    ElasticNet,
    GammaRegressor,
    HuberRegressor,
    Lasso,
    LogisticRegression,
    PoissonRegressor,
    Ridge,
    RidgeClassifier,
    SGDClassifier,
    SGDRegressor,
    TweedieRegressor,
)
from sklearn.svm import SVC, SVR, LinearSVC, LinearSVR

from .._space import SPEC_NAMES, feature_scale
from ..neural_network import TorchMLPClassifier, TorchMLPRegressor
from ..neural_network._base import _LEARNABLE as MLP_LEARNABLE
from ._base import FoldData, Problem
from ._data import fold_data
from ._glm import generalized_linear, huber
from ._kernel import KERNELS, kernel_ridge
from ._l1 import (
    elastic_net,
    feature_penalty_power,
    l1_penalized,
    sparse_logistic_regression,
)
from ._linear import (
    SGD_CLASSIFIER_LOSSES,
    SGD_REGRESSOR_LOSSES,
    logistic_regression,
    ridge,
    ridge_classifier,
    sgd,
)
from ._linear_svm import build_linear_svm
from ._mlp import scikit_learn_mlp
from ._svm import build_svm


def _refusals(estimator, learned):
    """Settings under which an argmin adapter's loss is not the estimator's."""
    params = estimator.get_params(deep=False)
    is_sgd = isinstance(estimator, SGDClassifier | SGDRegressor)
    return {
        "positive=True": params.get("positive", False),
        "solver='liblinear'": params.get("solver") == "liblinear",
        "dual=True": params.get("dual", False),
        "a penalty other than L2": (
            params.get("penalty", "l2") not in ("deprecated", "l2")
            or params.get("l1_ratio") not in (None, 0, 0.0)
            and not is_sgd
        )
        and not l1_penalized(estimator, learned),
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


def _check_argmin_settings(estimator, learned):
    """Refuse settings under which the adapter's loss is not the estimator's."""
    name = type(estimator).__name__
    for setting, present in _refusals(estimator, learned).items():
        if present:
            raise ValueError(
                f"Continuous hyperparameters of {name} are not supported with "
                f"{setting}: the differentiable problem would not be the one "
                "scikit-learn solves."
            )
    loss = estimator.get_params(deep=False).get("loss")
    if isinstance(estimator, SGDClassifier) and loss not in SGD_CLASSIFIER_LOSSES:
        raise ValueError(
            f"SGDClassifier with loss={loss!r} is not supported; use "
            f"one of {SGD_CLASSIFIER_LOSSES}."
        )


def _argmin(adapter):
    """An adapter of (estimator, data, options), called as a record's build."""

    def build(estimator, data, learned, options):
        _check_argmin_settings(estimator, learned)
        return adapter(estimator, data, options)

    return build


def _argmin_learned(adapter):
    """An adapter of (estimator, data, learned, options), called as a build."""

    def build(estimator, data, learned, options):
        _check_argmin_settings(estimator, learned)
        return adapter(estimator, data, learned, options)

    return build


def _logistic(estimator, data, learned, options):
    # An L1 or elastic-net penalty (or a learned l1_ratio) is differentiated
    # on the support of the solution, an L2 one everywhere.
    if l1_penalized(estimator, learned):
        build = _argmin_learned(sparse_logistic_regression)
        return build(estimator, data, learned, options)
    return _argmin(logistic_regression)(estimator, data, learned, options)


def _squares(estimator):
    return 2


def _unrolled(estimator, data, learned, options):
    # The torch MLPs describe their own problem: the very steps fit runs.
    return estimator._bilevel_problem(data, learned, options)


@dataclass(frozen=True)
class Record:
    """Everything the search knows about one supported estimator.

    Parameters
    ----------
    build : callable
        ``build(estimator, data, learned, options) -> Problem``: the adapter,
        which refuses settings it cannot differentiate exactly.
    learnable : dict of str to tuple of str
        Spec kind (``"real"``, ``"per_feature"``, ...) to the parameters that
        can be learned as that kind (``"sample_weight"`` for SampleWeight).
    exact_fit : bool
        Whether scikit-learn's ``fit`` lands on the inner solution itself, so
        that every setting an outer step visits is a row of ``cv_results_``.
    assemble : bool, default=True
        With ``exact_fit``: whether a fitted estimator can be assembled from
        a fold's solution through public attributes (``coef_``,
        ``intercept_``, ``dual_coef_``) and scored without refitting;
        otherwise each row is scored by scikit-learn's own fit.
    unrolled : bool, default=False
        Whether ``fit`` is T differentiable training steps (the hypergradient
        goes through them) rather than an argmin.
    feature_power : callable, default=2
        ``feature_power(estimator) -> p``: a per-feature penalty weighs
        ``|w_j|^p`` (2 for L2, 1 for L1), which sets the rescaling step that
        expresses it (:func:`feature_scale`).
    implicit_only : bool, default=False
        Whether the inner problem is only defined at the solution ``solve``
        returns (an SVM's dual, differentiated on its free set), so that only
        the implicit methods apply, not steps of gradient descent on
        ``inner_loss``.
    sparse_input : bool, default=False
        Whether the adapter takes sparse features as they come (a
        :class:`~skbilevel.problems._sparse.SparseDesign`: only products
        with X and its column norms); the others get them densified.
    warm_refit : bool, default=False
        Whether scikit-learn's solver, under ``warm_start=True``, starts from
        the ``coef_`` and ``intercept_`` set on the estimator and converges to
        the same optimum: the refit then starts from the mean of the best
        setting's fold solutions.
    """

    build: Callable
    learnable: dict = field(default_factory=dict)
    exact_fit: bool = True
    assemble: bool = True
    unrolled: bool = False
    feature_power: Callable = _squares
    implicit_only: bool = False
    sparse_input: bool = False
    warm_refit: bool = False


_WEIGHT = ("sample_weight",)


def _linear_record(real, **record):
    learnable = {"real": real, "per_feature": real, "sample_weight": _WEIGHT}
    return {"learnable": learnable, **record}


# The MLPs check what they learn themselves (momentum needs SGD); their table,
# turned by kind, lists it among the supported estimators.
_MLP = Record(
    _unrolled,
    {
        kind: tuple(param for param, kinds in MLP_LEARNABLE.items() if kind in kinds)
        for kind in ("real", "per_step", "per_layer", "sample_weight")
    },
    exact_fit=False,
    assemble=False,
    unrolled=True,
)

REGISTRY = {
    Ridge: Record(_argmin(ridge), **_linear_record(("alpha",)), sparse_input=True),
    # RidgeClassifier's classes live in a private label binarizer that only its
    # own fit sets: its rows are scored by refitting (a direct solve).
    RidgeClassifier: Record(
        _argmin(ridge_classifier),
        **_linear_record(("alpha",), assemble=False),
        sparse_input=True,
    ),
    LogisticRegression: Record(
        _logistic,
        {"real": ("C", "l1_ratio"), "per_feature": ("C",), "sample_weight": _WEIGHT},
        feature_power=feature_penalty_power,
        sparse_input=True,
        warm_refit=True,
    ),
    # The L1 family's inner loss is its objective restricted to the support
    # of the point it is evaluated at: defined at the solution only.
    Lasso: Record(
        _argmin_learned(elastic_net),
        **_linear_record(("alpha",)),
        feature_power=feature_penalty_power,
        implicit_only=True,
        sparse_input=True,
        warm_refit=True,
    ),
    ElasticNet: Record(
        _argmin_learned(elastic_net),
        {
            "real": ("alpha", "l1_ratio"),
            "per_feature": ("alpha",),
            "sample_weight": _WEIGHT,
        },
        feature_power=feature_penalty_power,
        implicit_only=True,
        sparse_input=True,
        warm_refit=True,
    ),
    KernelRidge: Record(
        _argmin(kernel_ridge), {"real": ("alpha", "gamma")}, exact_fit=True
    ),
    # SGD's fit is a stochastic approximation of the minimizer: refitted.
    SGDClassifier: Record(
        _argmin(sgd), **_linear_record(("alpha",), exact_fit=False), sparse_input=True
    ),
    SGDRegressor: Record(
        _argmin(sgd), **_linear_record(("alpha",), exact_fit=False), sparse_input=True
    ),
    TorchMLPClassifier: _MLP,
    TorchMLPRegressor: _MLP,
    # libsvm's fit is the inner solve (to its tol); a fitted SVC or SVR keeps
    # its dual in private attributes, so its rows are scored by its own fit.
    SVC: Record(
        build_svm, {"real": ("C", "gamma")}, assemble=False, implicit_only=True
    ),
    SVR: Record(
        build_svm,
        {"real": ("C", "gamma", "epsilon")},
        assemble=False,
        implicit_only=True,
    ),
    LinearSVC: Record(build_linear_svm, {"real": ("C",)}),
    LinearSVR: Record(build_linear_svm, {"real": ("C", "epsilon")}),
    # The GLMs' predict reads a private loss object that only their fit
    # sets: their rows are scored by refitting (L-BFGS, cheap).
    PoissonRegressor: Record(
        _argmin(generalized_linear), **_linear_record(("alpha",), assemble=False)
    ),
    GammaRegressor: Record(
        _argmin(generalized_linear), **_linear_record(("alpha",), assemble=False)
    ),
    TweedieRegressor: Record(
        _argmin(generalized_linear), **_linear_record(("alpha",), assemble=False)
    ),
    # HuberRegressor's scale tends to 0 as epsilon tends to 1, where its
    # inner problem degenerates (least absolute deviation): its rows are
    # scored by its own fit, never by a solution short of convergence.
    HuberRegressor: Record(
        _argmin(huber),
        {
            "real": ("alpha", "epsilon"),
            "per_feature": ("alpha",),
            "sample_weight": ("sample_weight",),
        },
        assemble=False,
    ),
}

SUPPORTED_ESTIMATORS = ", ".join(
    f"{cls.__name__} ({', '.join(record.learnable['real'])})"
    for cls, record in REGISTRY.items()
)


def lookup(estimator) -> Record:
    """The registry record of ``estimator``, or a TypeError naming the
    supported estimators."""
    mlp = scikit_learn_mlp(estimator)
    if mlp is not None:
        raise mlp
    if type(estimator) not in REGISTRY:
        raise TypeError(
            f"{type(estimator).__name__} cannot be differentiated, so its "
            "hyperparameters can only be given as lists of values. Continuous "
            f"hyperparameters are supported for: {SUPPORTED_ESTIMATORS}; as an "
            "estimator or as the final step of a Pipeline."
        )
    return REGISTRY[type(estimator)]


def _check_learnable(estimator, record, learned):
    name = type(estimator).__name__
    for param, kind in learned.items():
        allowed = record.learnable.get(kind, ())
        if param not in allowed:
            raise ValueError(
                f"{param!r} cannot be learned as a {SPEC_NAMES.get(kind, kind)} "
                f"hyperparameter of {name}; supported: {', '.join(allowed) or 'none'}"
                f". Continuous hyperparameters are supported for: "
                f"{SUPPORTED_ESTIMATORS}."
            )


def make_problem(estimator, data: FoldData, learned, options) -> Problem:
    """The differentiable inner problem of ``estimator`` on the K folds of ``data``.

    Parameters
    ----------
    estimator : estimator instance
        A supported estimator, with its fixed settings.
    data : FoldData
        The data and fold masks.
    learned : dict of str to str
        The learned hyperparameters: parameter name (or ``"sample_weight"``) to
        the ``kind`` of its spec (``"real"``, ``"per_feature"``,
        ``"sample_weight"``, ``"per_step"``, ``"per_layer"``).
    options : dict
        ``tol`` and ``max_iter`` of the inner solver.

    Returns
    -------
    problem : Problem or UnrolledProblem
        The adapter's problem.

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> from sklearn.linear_model import Ridge
    >>> from skbilevel.problems import fold_data, make_problem
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
    record = lookup(estimator)
    if not record.unrolled:
        # An unrolled estimator checks its own (its momentum needs SGD).
        _check_learnable(estimator, record, learned)
    return record.build(estimator, data, learned, options)


__all__ = [
    "REGISTRY",
    "SUPPORTED_ESTIMATORS",
    "FoldData",
    "Problem",
    "Record",
    "feature_scale",
    "fold_data",
    "lookup",
    "make_problem",
]
