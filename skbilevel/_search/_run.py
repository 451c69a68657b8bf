"""One hypergradient run: the outer optimizers, stopping, and the run itself.

Box-constrained spaces are optimized by L-BFGS-B on the unconstrained
variables (few outer steps, each an inner solve warm-started from the previous
one); a sample-weight budget needs its own projection, so it is optimized by
projected Adam. Both return the best finite iterate they evaluated, never
merely the last: a step whose validation loss or hypergradient is not finite
is undone and shrunk with a warning, and a run that cannot take a first step
is reported as failed.
"""

import warnings
from dataclasses import dataclass, replace

import numpy as np
import scipy.optimize
import torch
from sklearn.exceptions import ConvergenceWarning

from ..problems import lookup, make_problem
from ..problems._data import final_estimator, fit_prefixes, fold_data
from ..utils import to_numpy
from ..utils._threads import one_torch_thread
from ._objective import NonFinite, Objective

# Most times a non-finite outer step is undone and shrunk before a run stops.
MAX_SHRINKS = 5


class RunFailed(Exception):
    """The run could not evaluate its starting point (or recover from a
    non-finite step): its rows follow ``error_score``."""


@dataclass
class Outcome:
    """What a run hands back to the search.

    ``learned`` is the best setting (user keys); ``history`` one entry per
    outer step; ``solutions``, with an exact fit, per entry the fitted
    attributes of each fold's solution, and ``prefixes`` the fitted earlier
    steps of a Pipeline per fold; ``failure`` says why a run failed.
    """

    learned: dict
    history: list
    solutions: list | None = None
    prefixes: list | None = None
    failure: str | None = None
    interrupted: bool = False


def _flatten(u, tied=(), total=False):
    """The optimizer's variables: ``u``, each ``tied`` entry as its mean (its
    sum if ``total``)."""
    values = [
        (v.sum() if total else v.mean()) if name in tied else v for name, v in u.items()
    ]
    return np.concatenate([to_numpy(v).ravel() for v in values]).astype(np.float64)


def _unflatten(x, like, tied=()):
    """``u`` shaped like ``like`` from the variables ``x`` (a ``tied`` entry
    is one value for all its entries)."""
    u, start = {}, 0
    for name, value in like.items():
        size = 1 if name in tied else value.numel()
        piece = torch.as_tensor(x[start : start + size], dtype=value.dtype)
        shape = value.shape
        u[name] = (piece.expand(shape) if name in tied else piece.reshape(shape)).to(
            value.device
        )
        start += size
    return u


def _warn_undone(objective, error, what):
    warnings.warn(
        f"Outer step {len(objective.history)} of a hypergradient run gave a "
        f"non-finite result ({error}); the step was undone and {what}.",
        RuntimeWarning,
        stacklevel=4,
    )


class _Stalled(Exception):
    """The outer line search backtracked to the best point it had evaluated."""


def lbfgs(objective, u0, settings, report=None):
    """Outer L-BFGS-B on the box of the unconstrained variables; ``report()``
    after each outer step.

    With per-feature penalties (:class:`~skbilevel.PerFeature`) starting
    equal, the run first descends their common value alone from where a
    scalar search starts (every penalty equal, where their prior is zero:
    the scalar search), in about a third of ``max_iter`` steps, then every
    penalty from ``u0`` in the remaining steps; the best point of both is
    the run's, on one objective. On diabetes (10 features) the common
    descent is what a run needs when every penalty should move together:
    from ``u0`` the prior's curvature keeps every step small (seed 2 of
    benchmarks/bench_per_feature.py stopped after 3 evaluations, 3.6% below
    the scalar grid).
    """
    # Not from a random restart's start, whose penalties differ.
    tied = tuple(
        name
        for name, spec in objective.specs.items()
        if spec.kind == "per_feature" and bool((u0[name] == u0[name].max()).all())
    )
    if tied and settings.max_iter >= 3:
        common = replace(settings, max_iter=settings.max_iter // 3)
        start = {
            name: objective.specs[name].initial(
                value.shape, dtype=value.dtype, device=value.device
            )
            if name in tied
            else value
            for name, value in u0.items()
        }
        _lbfgs_stage(objective, start, common, report, tied)
        settings = replace(
            settings, max_iter=settings.max_iter - len(objective.history)
        )
    if settings.max_iter > 0:
        _lbfgs_stage(objective, u0, settings, report)


def _lbfgs_stage(objective, u0, settings, report, tied=()):
    """One L-BFGS-B descent from ``u0``, ``tied`` entries as one value each."""
    bounds = []
    for name, value in u0.items():
        size = 1 if name in tied else value.numel()
        bounds.extend([objective.specs[name].bounds()] * size)
    first = len(objective.history)
    fun = _scaled_objective(objective, u0, settings, report, tied, first)
    previous = [_flatten(u0, tied)]

    def small_step(intermediate_result):
        # Moves of the unconstrained values below 100 tol (1% of a log-scale
        # hyperparameter by default) change no score: further steps only
        # chase the inner solutions' rounding.
        change = np.abs(intermediate_result.x - previous[0]).max()
        previous[0] = intermediate_result.x.copy()
        if change <= 100 * settings.tol:
            raise StopIteration

    try:
        scipy.optimize.minimize(
            fun,
            _flatten(u0, tied),
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            callback=small_step,
            options={
                "maxiter": settings.max_iter,
                "maxfun": settings.max_iter,
                "ftol": settings.tol,
                "gtol": settings.tol,
            },
        )
    except _Stalled:
        pass


def _first_step_length(objective, u0, tied):
    """How far L-BFGS-B's first step moves ``u``, from the first evaluation:
    1 (a factor e of a log-scale hyperparameter), or, where the problem
    allows it (:attr:`~skbilevel.problems.Problem.newton_first_step`) for one
    scalar, the move to the minimizer of the validation loss's Gauss-Newton
    model along the solution's tangent, in the hyperparameter's own scale,
    where that is shorter.

    On diabetes (Lasso alpha, cv=5) the model's minimizer from the start,
    alpha 0.0679, is 0.0379 (the optimum 0.0362); from the unit step, 0.025,
    the run took 5 outer steps.

    Where the model's minimizer lies at or past a bound (on a log scale, a
    minimizer at or below 0 is past the lower one) and the Newton step in
    ``u`` itself (the same curvature, the solution linearized in ``u``)
    passes the same bound, both models say that the validation loss falls
    all the way to it: the first step goes there, however far. On diabetes
    (ElasticNet alpha at ``l1_ratio=0.5``, whose optimum is its lower bound)
    the run takes 2 outer steps instead of 4. Where only one model passes
    the bound, the unit step is kept: on a 200 x 5,000 Lasso the Newton step
    in ``u`` lands at alpha 0.32 from 3.3 (the optimum 0.71), whose larger
    supports cost twice the time of the unit step's run.
    """
    name = next(iter(u0))
    spec = objective.specs[name]
    u, result = objective.previous
    if (
        tied
        or len(u0) != 1
        or spec.kind != "real"
        or u[name].numel() != 1
        or result.tangent is None
        # (an unrolled problem, which has no tangent, has no such field)
        or not objective.problem.newton_first_step
    ):
        return 1.0
    column = result.tangent[name][0]
    with torch.no_grad():
        # The squared validation loss is quadratic along the tangent.
        losses = [
            float(
                objective.outer_loss(
                    {k: p + t * column[k] for k, p in result.params.items()}, u
                )
            )
            for t in (-1.0, 0.0, 1.0)
        ]
    curvature = losses[0] + losses[2] - 2.0 * losses[1]
    if curvature <= 0:
        return 1.0
    value, current = float(u[name]), float(spec.transform(u[name]))
    newton = -float(result.grad[name]) / curvature
    if spec.log:
        # The solution linearized in the hyperparameter, not in its log.
        target = current * (1.0 + newton)
        model = float(np.log(target)) if target > 0 else -np.inf
    else:
        model = value + newton
    low, high = spec.bounds()
    for bound, past in ((low, np.less_equal), (high, np.greater_equal)):
        if past(model, bound) and past(value + newton, bound):
            distance = abs(bound - value)
            return distance if distance > 1e-12 else 1.0
    if not np.isfinite(model):
        return 1.0
    return min(1.0, abs(model - value))


def _scaled_objective(objective, u0, settings, report, tied, first):
    """``fun(x) -> (loss, gradient)`` of the variables of a stage whose first
    evaluation is ``objective.history[first]``, scaled by its first gradient."""
    state = {"scale": None, "grad": None}

    def fun(x):
        if len(objective.history) > first:
            losses = [e["outer_loss"] for e in objective.history[first:]]
            best = _flatten(objective.points[first + int(np.argmin(losses))], tied)
            if np.abs(x - best).max() <= 100 * settings.tol:
                # The line search backtracks to within the step tolerance of
                # the best point: the hypergradient no longer agrees with the
                # loss at the inner solutions' precision.
                raise _Stalled
        try:
            result = objective(_unflatten(x, u0, tied))
        except NonFinite as error:
            if state["scale"] is None:
                raise RunFailed(str(error)) from error
            _warn_undone(objective, error, "the line search shrinks it")
            # A loss above every one seen makes the line search backtrack.
            worst = max(entry["outer_loss"] for entry in objective.history)
            return (worst + abs(worst) + 1.0) / state["scale"], state["grad"]
        if report is not None:
            report()
        # A tied entry's slope is the sum of its entries' slopes.
        grad = _flatten(
            {k: g * g.numel() if k in tied else g for k, g in result.grad.items()}, tied
        )
        if state["scale"] is None:
            # Scaled so that the first hypergradient's largest entry is 1: the
            # first step (L-BFGS-B's first direction, unit step length on a
            # box) then moves u by up to 1 (a factor e of a log-scale
            # hyperparameter) whatever the scale of the validation loss. A
            # start where the hypergradient vanishes (a flat region) is left
            # unscaled: L-BFGS-B stops there, and a tiny scale would overflow.
            largest = float(np.abs(grad).max())
            if largest > np.sqrt(np.finfo(float).tiny):
                # Or the first step's length (_first_step_length).
                state["scale"] = largest / _first_step_length(objective, u0, tied)
            else:
                state["scale"] = 1.0
        state["grad"] = grad / state["scale"]
        return float(result.outer_loss) / state["scale"], state["grad"]

    return fun


def _adam_step(moments, grad, t, betas=(0.9, 0.999), eps=1e-8):
    """Adam's direction at step ``t``, updating the moment estimates."""
    first, second = moments
    step = {}
    for name, g in grad.items():
        first[name] = betas[0] * first[name] + (1 - betas[0]) * g
        second[name] = betas[1] * second[name] + (1 - betas[1]) * g**2
        step[name] = (first[name] / (1 - betas[0] ** t)) / (
            torch.sqrt(second[name] / (1 - betas[1] ** t)) + eps
        )
    return step


def adam(objective, u0, settings, report=None):
    """Outer projected Adam: a step in u, then each spec's projection;
    ``report()`` after each outer step."""
    u, last = dict(u0), None
    moments = tuple({k: torch.zeros_like(v) for k, v in u.items()} for _ in range(2))
    rate, shrinks = settings.outer_learning_rate, 0
    for t in range(1, settings.max_iter + 1):
        try:
            grad = objective(u).grad
        except NonFinite as error:
            if last is None:
                raise RunFailed(str(error)) from error
            shrinks += 1
            if shrinks > MAX_SHRINKS:
                _warn_undone(objective, error, "the run stopped at its best step")
                return
            rate *= 0.5
            _warn_undone(objective, error, f"the step size halved to {rate:.3g}")
            u = _moved(objective, last[0], last[1], rate)
            continue
        if report is not None:
            report()
        step = _adam_step(moments, grad, t)
        new = _moved(objective, u, step, rate)
        change = max(float((new[k] - u[k]).abs().max()) for k in u)
        last, u = (u, step), new
        if change <= settings.tol:
            return


def _moved(objective, u, step, rate):
    return {
        name: objective.specs[name].project(value - rate * step[name])
        for name, value in u.items()
    }


def _warn_at_bounds(objective, names):
    """Warn when the best point of a scalar lies on a bound that the
    hypergradient says to cross."""
    best = objective.best
    u, grad = objective.points[best], objective.grads[best]
    for name, spec in objective.specs.items():
        if spec.kind != "real":
            continue
        low, high = spec.bounds()
        value, slope = float(u[name]), float(grad[name])
        side = None
        if value >= high and slope < 0:
            side = "upper"
        elif value <= low and slope > 0:
            side = "lower"
        if side is not None:
            bound = spec.high if side == "upper" else spec.low
            warnings.warn(
                f"The hypergradient run ended at the {side} bound of "
                f"{names[name]!r} ({bound:g}) with the hypergradient pointing "
                "beyond it; widen the bounds of its Real.",
                ConvergenceWarning,
                stacklevel=3,
            )


def _warn_at_max_iter(objective, settings):
    """Warn when the run used its max_iter steps while still improving."""
    losses = [entry["outer_loss"] for entry in objective.history]
    if len(losses) < max(settings.max_iter, 2) or objective.best != len(losses) - 1:
        return
    decrease = (min(losses[:-1]) - losses[-1]) / max(abs(losses[-1]), 1e-300)
    if decrease > settings.tol:
        warnings.warn(
            f"The hypergradient run stopped at max_iter={settings.max_iter} outer "
            f"steps while the validation loss was still falling (by "
            f"{100 * decrease:.2g}% at the last step); increase max_iter.",
            ConvergenceWarning,
            stacklevel=3,
        )


def _problem(estimator, specs, data_args, settings):
    """The final estimator's record, the fold data and the inner problem."""
    X, y, splits, sample_weight = data_args
    prefixes = fit_prefixes(estimator, X, y, splits)
    final = final_estimator(estimator)
    record = lookup(final)
    final, data = fold_data(
        estimator,
        X,
        y,
        splits,
        sample_weight,
        settings.device,
        settings.dtype,
        prefixes=prefixes,
    )
    kinds = {name: spec.kind for name, spec in specs.items()}
    options = {"tol": settings.inner_tol, "max_iter": settings.inner_steps}
    return record, data, make_problem(final, data, kinds, options), prefixes


def _starting_point(specs, data, problem, restart, seed):
    rng = np.random.RandomState(seed)
    n_samples, n_features = data.train.shape[1], data.X.shape[-1]
    u0 = {}
    for name, spec in specs.items():
        shape = spec.shape(n_features, n_samples, problem)
        like = {"dtype": data.X.dtype, "device": data.X.device}
        if restart != 0:
            u0[name] = spec.random_initial(shape, rng, **like)
        elif spec.kind == "per_feature" and problem.penalty_balance is not None:
            # Where each penalty shrinks its feature by half, the validation
            # loss responds most to it (benchmarks/bench_per_feature.py, seeds
            # 0-2: median held-out R^2 0.857 against 0.821 from the bounds'
            # midpoint with 800 examples, 0.811 against 0.751 with 200).
            balance = problem.penalty_balance(name, problem.init_params())
            u0[name] = spec.initial(shape, balance=balance, **like)
        else:
            u0[name] = spec.initial(shape, **like)
    return u0


def _optimize(objective, u0, settings, names, entries, device, report=None):
    budget = any(
        getattr(spec, "budget", None) is not None for spec in objective.specs.values()
    )
    with one_torch_thread(entries, device):
        if settings.outer_optimizer == "adam" or budget:
            adam(objective, u0, settings, report)
        else:
            lbfgs(objective, u0, settings, report)
    _warn_at_bounds(objective, names)
    _warn_at_max_iter(objective, settings)


def run(estimator, space, X, y, splits, sample_weight, settings, restart, seed, hook):
    """One hypergradient run over the continuous entries of ``space``.

    The data are arguments of their own, not one tuple: a backend that ships
    each large argument once (Dask scatters it to the workers) then sends
    ``X`` once per search, not once per run.

    Parameters
    ----------
    estimator : estimator instance
        The estimator (or Pipeline) with the discrete settings of this run.
    space : dict of str to spec
        Continuous entries: user key (``"step__param"`` or ``"sample_weight"``)
        to its spec.
    X, y, splits, sample_weight
        The validated training data, the cross-validation folds (a list of
        (train, test) index arrays) and the fixed weights given to ``fit``
        (or None).
    settings : RunSettings
        The bilevel settings of the search, resolved for this estimator.
    restart : int
        Restart number; 0 starts from each spec's initial value, the others
        from a random point drawn with ``seed``.
    seed : int
        Seed of this run.
    hook : callable or None
        Called after each outer step with its history entry (hyperparameters
        by user key): the search's progress report.

    Returns
    -------
    outcome : Outcome
        The best setting, the history and the exact fold solutions.
    """
    names = {key.rsplit("__", 1)[-1]: key for key in space}
    specs = {name: space[key] for name, key in names.items()}
    data_args = (X, y, splits, sample_weight)
    record, data, problem, prefixes = _problem(estimator, specs, data_args, settings)
    objective = Objective(
        problem,
        specs,
        settings,
        unrolled=record.unrolled,
        keeps_solutions=record.exact_fit,
        n_validated=len(np.unique(np.concatenate([test for _, test in splits]))),
    )
    u0 = _starting_point(specs, data, problem, restart, seed)
    folds = data.train.shape[0] if data.X.dim() == 2 else 1
    interrupted = False
    try:
        _optimize(
            objective,
            u0,
            settings,
            names,
            data.X.numel() * folds,
            data.X.device,
            _reporter(objective, names, hook),
        )
    except RunFailed as error:
        start = to_numpy(objective.constrained(u0))
        return Outcome(_by_key(start, names, specs), [], failure=str(error))
    except KeyboardInterrupt:
        if not objective.history:
            raise
        interrupted = True
    return _outcome(objective, names, prefixes, interrupted)


def _reporter(objective, names, step_hook):
    """``report()``: the last outer step, by user key, to ``step_hook``."""
    if step_hook is None:
        return None

    def report():
        entry = objective.history[-1]
        step_hook({**entry, "params": _by_key(entry["params"], names, objective.specs)})

    return report


def _by_key(values, names, specs):
    """The values by user key, in float64 within their bounds."""
    values = {name: spec.clip(values[name]) for name, spec in specs.items()}
    return {
        names[name]: float(values[name]) if spec.kind == "real" else values[name]
        for name, spec in specs.items()
    }


def _outcome(objective, names, prefixes, interrupted):
    for entry in objective.history:
        entry["params"] = _by_key(entry["params"], names, objective.specs)
    best = objective.history[objective.best]["params"]
    solutions = objective.solutions if objective.keeps_solutions else None
    return Outcome(
        dict(best),
        objective.history,
        solutions,
        prefixes if solutions is not None else None,
        interrupted=interrupted,
    )
