"""The search's bilevel settings, validated and resolved once per estimator."""

import inspect

from sklearn.base import clone

from ..hypergrad import METHODS
from ..problems import lookup
from ..problems._data import final_estimator
from ..utils._sklearn import validate_estimator_params
from ._objective import IMPLICIT, RunSettings

# Options the search passes itself: the problem's curvature and warm starts.
_SET_BY_SEARCH = {
    "hessian_vector",
    "preconditioner",
    "fast_hessian_vector",
    "init",
    "batched",
}
# Conjugate gradient to a relative residual of 1e-4 gives hypergradients
# accurate enough for the outer optimizer (whose tolerance is relative too)
# at a fraction of the cost of the engine's default 1e-8.
_DEFAULTS = {
    "implicit_cg": {"cg_tol": 1e-4, "max_iter": 500},
    "implicit_forward": {"cg_tol": 1e-4, "max_iter": 500},
}
# Unless given a cg_tol, the tangents' first outer steps solve to a looser
# relative residual, down to 1e-4 near a stationary point (Objective._cg_tol).
_LOOSE_CG_TOL = 1e-2


def method_options(method):
    """The options a user may give ``method`` in ``method_params``."""
    parameters = inspect.signature(METHODS[method]).parameters.values()
    keyword = {p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}
    return sorted(keyword - _SET_BY_SEARCH)


def resolve_method(method, record, specs):
    """``method`` with "auto" resolved for an estimator's record.

    "auto" differentiates through the training steps of an unrolled problem
    (reverse mode); at the optimum of an argmin problem, forward implicit
    differentiation for one or two scalars (its tangents also warm-start the
    next inner solve), the adjoint for more.
    """
    if method != "auto":
        return method
    if record.unrolled:
        return "reverse"
    few = len(specs) <= 2 and all(spec.kind == "real" for spec in specs.values())
    return "implicit_forward" if few else "implicit_cg"


def resolve_outer_optimizer(outer_optimizer, specs):
    """``outer_optimizer`` with "auto" resolved for the specs of a run.

    Sample weights get projected Adam: its step moves each of the thousands
    of weights by about ``outer_learning_rate`` of its [0, 1] box whatever
    the scale of its hypergradient. On 1,000 MNIST training examples with
    half of their labels flipped it reached the plateau of the validation
    loss in about 40 outer steps where L-BFGS-B took about 90 (at 5,000
    examples it was 0.3 points of test accuracy behind after 30 steps, and
    reached 89.72% after 60; doc/hyper_cleaning.rst). Other spaces get
    L-BFGS-B.
    """
    if outer_optimizer != "auto":
        return outer_optimizer
    weights = any(spec.kind == "sample_weight" for spec in specs.values())
    return "adam" if weights else "lbfgs"


def run_settings(search, final, specs):
    """The :class:`RunSettings` of ``search`` for its final estimator ``final``
    learning ``specs``; refuses unknown method options and implicit methods
    on unrolled problems."""
    record = lookup(final)
    method = resolve_method(search.method, record, specs)
    if record.unrolled and method in IMPLICIT:
        raise ValueError(
            f"method={method!r} differentiates an inner optimum, but the fit of "
            f"{type(final).__name__} is a fixed number of training steps (whose "
            "learning rate or momentum an optimum would not depend on); use "
            "method='reverse', 'truncated_reverse' or 'forward'."
        )
    if record.implicit_only and method not in ("implicit_cg", "implicit_forward"):
        raise ValueError(
            f"method={method!r} takes steps of gradient descent on the inner "
            f"loss, but the inner problem of {type(final).__name__} is defined "
            "only at its solution (differentiated on its support); use "
            "method='auto', 'implicit_forward' or 'implicit_cg'."
        )
    given = dict(search.method_params or {})
    valid = method_options(method)
    unknown = sorted(set(given) - set(valid))
    if unknown:
        resolved = ""
        if search.method == "auto":
            resolved = f" (method='auto' is {method!r} for {type(final).__name__})"
        raise ValueError(
            f"method_params {unknown} are not options of method={method!r}"
            f"{resolved}; its options are: {', '.join(valid) or 'none'}."
        )
    dtype = search.dtype
    if dtype == "auto":
        # The torch MLPs are differentiated in their own precision.
        dtype = getattr(final, "dtype", "float64") if record.unrolled else "float64"
    # A cg_tol the user gives is kept at every outer step; the adjoint of
    # many hyperparameters (sample weights, per-feature penalties) keeps its
    # own at every step too (not measured looser).
    adaptive = method == "implicit_forward" and "cg_tol" not in given
    return RunSettings(
        method=method,
        method_params={**_DEFAULTS.get(method, {}), **given},
        inner_steps=search.inner_steps,
        inner_tol=search.inner_tol,
        max_iter=search.max_iter,
        tol=search.tol,
        outer_optimizer=resolve_outer_optimizer(search.outer_optimizer, specs),
        outer_learning_rate=search.outer_learning_rate,
        device=search.device,
        dtype=dtype,
        loose_cg_tol=_LOOSE_CG_TOL if adaptive else None,
    )


def check_bounds(estimator, specs):
    """Refuse a ``Real`` whose bounds (or initial value) the estimator's own
    parameter constraints reject, before any run, in scikit-learn's words."""
    for key, spec in specs.items():
        if spec.kind != "real":
            continue
        for value in (spec.low, spec.high, spec.init):
            if value is None:
                continue
            candidate = clone(estimator).set_params(**{key: value})
            try:
                validate_estimator_params(final_estimator(candidate))
            except ValueError as error:
                raise ValueError(
                    f"The search space's {type(spec).__name__}({spec.low:g}, "
                    f"{spec.high:g}) for {key!r} reaches values the estimator "
                    f"refuses: {error}"
                ) from error
