"""One hypergradient run: fold data, the outer loop and its history.

The outer variable is the unconstrained tensor ``u`` of each hyperparameter
spec (:mod:`skbilevel._space`); the engine differentiates with respect to it,
and the losses see ``spec.transform(u)``. Box-constrained spaces are optimized
by L-BFGS-B on ``u`` (few outer steps, each an inner solve warm-started from
the previous one); a sample-weight budget needs its own projection, so it is
optimized by projected Adam.
"""

import time
import warnings

import numpy as np
import scipy.optimize
import scipy.sparse as sp
import torch
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.kernel_ridge import KernelRidge
from sklearn.linear_model import LogisticRegression, Ridge, RidgeClassifier
from sklearn.pipeline import Pipeline
from sklearn.utils import _safe_indexing, assert_all_finite, check_array

from ..hypergrad import METHODS, Hypergradient, gradient_descent
from ..hypergrad._methods import _check_finite
from ..utils import to_numpy, to_tensor
from ..utils._threads import one_torch_thread
from . import make_problem
from ._base import FoldData
from ._linear import _refined_pcg

_IMPLICIT = ("implicit_cg", "implicit_fixed_point")
EXACT_FITS = (Ridge, RidgeClassifier, LogisticRegression, KernelRidge)


def _dense(X):
    """Validated float64 features; the inner problems are dense tensors."""
    X = check_array(X, accept_sparse="csr", dtype=np.float64)
    return X.toarray() if sp.issparse(X) else X


def fit_prefixes(estimator, X, y, splits):
    """The earlier steps of a Pipeline fitted on each fold's training part
    (None for a plain estimator)."""
    if not isinstance(estimator, Pipeline):
        return None
    return [
        clone(estimator[:-1]).fit(_safe_indexing(X, train), _safe_indexing(y, train))
        for train, _ in splits
    ]


def fold_data(estimator, X, y, splits, sample_weight, device, dtype, prefixes=None):
    """The final estimator and the :class:`FoldData` of the K folds.

    The earlier steps of a Pipeline are fitted on each fold's training part
    (or given, fitted, as ``prefixes``) and transform all samples, giving one
    feature matrix per fold.
    """
    y = np.array(y)
    if y.dtype.kind in "fc":
        assert_all_finite(y, input_name="y")
    n = len(y)
    if isinstance(estimator, Pipeline):
        final = estimator.steps[-1][1]
        if prefixes is None:
            prefixes = fit_prefixes(estimator, X, y, splits)
        features = np.stack([_dense(prefix.transform(X)) for prefix in prefixes])
    else:
        final = estimator
        features = _dense(X)
    train = np.zeros((len(splits), n))
    test = np.zeros((len(splits), n))
    for k, (train_idx, test_idx) in enumerate(splits):
        train[k, train_idx] = 1.0
        test[k, test_idx] = 1.0
    weights = np.ones(n) if sample_weight is None else np.array(sample_weight, float)
    # torch warns on read-only arrays (memory maps); it never writes, but copy.
    features = np.require(features, requirements="W")
    data = FoldData(
        to_tensor(features, device=device, dtype=dtype),
        y,
        to_tensor(train, device=device, dtype=dtype),
        to_tensor(test, device=device, dtype=dtype),
        to_tensor(weights, device=device, dtype=dtype),
    )
    return final, data


def _kind(spec):
    name = type(spec).__name__
    return {
        "PerFeature": "per_feature",
        "PerStep": "per_step",
        "PerLayer": "per_layer",
        "SampleWeight": "sample_weight",
    }.get(name, "real")


def _shape(kind, spec, data, problem):
    if kind in ("per_step", "per_layer"):
        # Sized by the unrolled problem: its number of steps or of layers.
        return spec.shape(problem)
    return {
        "real": (),
        "per_feature": (data.X.shape[-1],),
        "sample_weight": (data.train.shape[1],),
    }[kind]


def _resolved(settings, problem):
    """``settings`` with method "auto" resolved and the method's default options.

    "auto" differentiates through the training steps of an unrolled problem
    (reverse mode) and implicitly at the optimum of an argmin problem.
    """
    method = settings["method"]
    if method == "auto":
        method = "reverse" if hasattr(problem, "dynamics") else "implicit_cg"
    # Conjugate gradient to a relative residual of 1e-4 gives hypergradients
    # accurate enough for the outer optimizer (whose tolerance is relative
    # too) at a fraction of the cost of the engine's default 1e-8.
    defaults = {"cg_tol": 1e-4, "max_iter": 500} if method == "implicit_cg" else {}
    options = {**defaults, **settings["method_params"]}
    return {**settings, "method": method, "method_params": options}


def _bounds(spec, u):
    """Lower and upper bounds of ``u`` (the projection of -inf and +inf)."""
    infinite = torch.tensor([-np.inf, np.inf], dtype=u.dtype)
    low, high = spec.project(infinite).tolist()
    return low, high


def _initial(spec, shape, data, restart, rng):
    u = spec.initial(shape, dtype=data.X.dtype, device=data.X.device)
    if restart == 0:
        return u
    if _kind(spec) == "sample_weight":
        draw = rng.uniform(0.0, 1.0, size=shape)
    else:
        draw = rng.uniform(*_bounds(spec, u), size=shape)
    return spec.project(torch.as_tensor(draw, dtype=u.dtype).to(u.device))


def _largest_curvature(inner_loss, params, hparams, n_iter=20):
    """Largest eigenvalue of the inner Hessian at ``params`` (power iteration)."""
    vector = {k: torch.ones_like(v) for k, v in params.items()}
    value = torch.ones(())
    for _ in range(n_iter):
        product = torch.func.jvp(
            lambda w: torch.func.grad(inner_loss)(w, hparams), (params,), (vector,)
        )[1]
        value = torch.sqrt(sum((p**2).sum() for p in product.values()))
        vector = {k: p / value for k, p in product.items()}
    return float(value)


class _Objective:
    """The outer objective of one run, with warm-started inner parameters."""

    def __init__(self, problem, specs, settings, exact_fit=True):
        self.problem = problem
        self.specs = specs
        self.settings = settings
        self.params = problem.init_params()
        self.history = []
        self.adjoint = None
        self.tangents = None
        self.solutions = []
        self.keeps_solutions = (
            exact_fit
            and not hasattr(problem, "dynamics")
            and settings["method"] in _IMPLICIT
        )
        self.start = time.perf_counter()

    def constrained(self, u):
        return {name: spec.transform(u[name]) for name, spec in self.specs.items()}

    def inner_loss(self, params, u):
        return self.problem.inner_loss(params, self.constrained(u))

    def outer_loss(self, params, u):
        return self.problem.outer_loss(params, self.constrained(u))

    def __call__(self, u):
        """Outer loss and hypergradient at ``u``; records one history entry."""
        method = self.settings["method"]
        options = dict(self.settings["method_params"])
        if hasattr(self.problem, "dynamics"):
            result = self._unrolled_hypergradient(u, method, options)
        else:
            result = self._argmin_hypergradient(u, method, options)
        self.params = result.params
        self.adjoint = result.adjoint
        if self.keeps_solutions:
            # The exact fold solutions: the search scores them without refitting.
            self.solutions.append(self.problem.fitted_attributes(result.params))
        norm = float(torch.sqrt(sum((g**2).sum() for g in result.grad.values())))
        entry = {
            "step": len(self.history),
            "params": to_numpy(self.constrained(u)),
            "outer_loss": float(result.outer_loss),
            "hypergradient_norm": norm,
            "time": time.perf_counter() - self.start,
        }
        self.history.append(entry)
        if self.settings["verbose"] > 1:
            print(
                f"[BilevelSearchCV] step {entry['step']}: outer loss "
                f"{entry['outer_loss']:.6g}, hypergradient norm {norm:.3g}, "
                f"{entry['time']:.1f}s"
            )
        return result

    def _unrolled_hypergradient(self, u, method, options):
        """Through the very T steps the estimator's fit runs, from its w_0."""
        if method in _IMPLICIT:
            raise ValueError(
                f"method={method!r} differentiates an inner optimum, but this "
                "estimator's fit is a fixed number of training steps (whose "
                "learning rate or momentum an optimum would not depend on); use "
                "method='reverse', 'truncated_reverse' or 'forward'."
            )
        problem = self.problem.transformed(self.constrained)
        return METHODS[method](
            problem.init_params(),
            u,
            problem.T,
            problem.dynamics,
            problem.outer_loss,
            **options,
        )

    def _tangent_hypergradient(self, u, curvature, options):
        """Forward implicit differentiation, for a few hyperparameters.

        Each column ``z_j = dw*/du_j`` solves ``H z_j = -d(grad_w L)/du_j`` by
        the problem's preconditioned conjugate gradient; the hypergradient is
        ``dE/dw . z_j + dE/du_j``. As many solves as hyperparameters (the
        adjoint needs one), but the columns also predict the next outer
        step's solution, ``w* + sum_j z_j du_j``, which warm-starts it.
        """
        u = {name: value.detach() for name, value in u.items()}
        params = {name: value.detach() for name, value in self.params.items()}
        at = curvature(params, self.constrained(u))

        leaves = {k: p.clone().requires_grad_() for k, p in params.items()}
        hleaves = {k: v.clone().requires_grad_() for k, v in u.items()}
        with torch.enable_grad():
            value = _check_finite(self.outer_loss(leaves, hleaves), 0)
            direct_w = torch.autograd.grad(
                value, list(leaves.values()), retain_graph=True
            )
            direct_u = torch.autograd.grad(
                value, list(hleaves.values()), allow_unused=True
            )
            # d(grad_w L)/du_j = grad_w (dL/du_j): mixed partials commute.
            inner_u = torch.autograd.grad(
                self.inner_loss(leaves, hleaves),
                list(hleaves.values()),
                create_graph=True,
            )
        direct_w = dict(zip(leaves, direct_w))
        # The previous step's columns start the conjugate gradient.
        previous = self.tangents[1] if self.tangents is not None else {}
        grad, tangents = {}, {}
        for (name, value_u), direct, partial in zip(u.items(), direct_u, inner_u):
            columns, entries = [], []
            for j, entry in enumerate(partial.reshape(-1)):
                with torch.enable_grad():
                    mixed = torch.autograd.grad(
                        entry,
                        list(leaves.values()),
                        retain_graph=True,
                        allow_unused=True,
                    )
                mixed = {
                    k: torch.zeros_like(p) if m is None else -m.detach()
                    for (k, p), m in zip(params.items(), mixed)
                }
                column, converged, _ = _refined_pcg(
                    at,
                    mixed,
                    options["cg_tol"],
                    options["max_iter"],
                    x0=previous[name][j] if name in previous else None,
                )
                if not converged:
                    warnings.warn(
                        "The conjugate gradient for the implicit hypergradient "
                        f"did not reach tol={options['cg_tol']} in "
                        f"{options['max_iter']} iterations; increase max_iter.",
                        ConvergenceWarning,
                        stacklevel=4,
                    )
                columns.append(column)
                own = 0.0 if direct is None else direct.reshape(-1)[j]
                entries.append(
                    sum((direct_w[k] * column[k]).sum() for k in column) + own
                )
            grad[name] = torch.stack(entries).reshape(value_u.shape).detach()
            tangents[name] = columns
        self.tangents = (u, tangents)
        return Hypergradient(value.detach(), grad, params)

    def _predicted(self, u):
        """The previous solution moved along its tangents to ``u``."""
        previous, tangents = self.tangents
        params = dict(self.params)
        for name, columns in tangents.items():
            change = (u[name] - previous[name]).reshape(-1)
            for j, column in enumerate(columns):
                params = {k: params[k] + change[j] * column[k] for k in params}
        return params

    def _argmin_hypergradient(self, u, method, options):
        """At the inner optimum (implicit) or through steps from a warm start."""
        curvature = getattr(self.problem, "curvature", None)
        few = sum(value.numel() for value in u.values()) <= 2
        if method == "implicit_cg" and curvature is not None and few:
            start = self.params
            if self.tangents is not None:
                start = self._predicted(u)
            self.params = self.problem.solve(start, self.constrained(u))
            return self._tangent_hypergradient(u, curvature, options)
        if method in _IMPLICIT:
            self.params = self.problem.solve(self.params, self.constrained(u))
            steps = 0
        else:
            steps = self.settings["inner_steps"]
        rate = 1.0
        if method == "implicit_cg" and curvature is not None:
            at = curvature(self.params, self.constrained(u))
            options.setdefault("hessian_vector", at.hessian_vector)
            options.setdefault("preconditioner", at.precondition)
        if method == "implicit_cg" and self.adjoint is not None:
            # The adjoint moves little between nearby outer steps.
            options.setdefault("init", self.adjoint)
        if method != "implicit_cg":
            # Gradient descent converges for steps below 2 / L.
            rate = 1.0 / _largest_curvature(self.inner_loss, self.params, u)
        dynamics = gradient_descent(self.inner_loss, rate)
        return METHODS[method](
            self.params, u, steps, dynamics, self.outer_loss, **options
        )


def _flatten(u):
    return np.concatenate([to_numpy(v).ravel() for v in u.values()])


def _unflatten(x, like):
    u, start = {}, 0
    for name, value in like.items():
        size = value.numel()
        piece = torch.as_tensor(x[start : start + size], dtype=value.dtype)
        u[name] = piece.reshape(value.shape).to(value.device)
        start += size
    return u


class _Stalled(Exception):
    """The outer line search backtracked to the best point it had evaluated."""


def _lbfgs(objective, u0, settings):
    """Outer L-BFGS-B on the box of the unconstrained variables."""
    bounds = []
    for name, value in u0.items():
        bounds.extend([_bounds(objective.specs[name], value)] * value.numel())

    scale = []
    evaluated = []

    def fun(x):
        if evaluated:
            losses = [entry["outer_loss"] for entry in objective.history]
            best = evaluated[int(np.argmin(losses))]
            if np.abs(x - best).max() <= 100 * settings["tol"]:
                # The line search backtracks to within the step tolerance of
                # the best point: the hypergradient no longer agrees with the
                # loss at the inner solutions' precision.
                raise _Stalled
        evaluated.append(x.copy())
        result = objective(_unflatten(x, u0))
        grad = _flatten(result.grad).astype(np.float64)
        if not scale:
            # Scaled so that the first hypergradient's largest entry is 1: the
            # first step then moves u by up to 1 (a factor e of a log-scale
            # hyperparameter) whatever the scale of the validation loss.
            scale.append(max(float(np.abs(grad).max()), np.finfo(float).tiny))
        return float(result.outer_loss) / scale[0], grad / scale[0]

    previous = [_flatten(u0).astype(np.float64)]

    def small_step(intermediate_result):
        # Moves of the unconstrained values below 100 tol (1% of a log-scale
        # hyperparameter by default) change no score: further steps only
        # chase the inner solutions' rounding.
        change = np.abs(intermediate_result.x - previous[0]).max()
        previous[0] = intermediate_result.x.copy()
        if change <= 100 * settings["tol"]:
            raise StopIteration

    try:
        solution = scipy.optimize.minimize(
            fun,
            _flatten(u0).astype(np.float64),
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            callback=small_step,
            options={
                "maxiter": settings["max_iter"],
                "maxfun": settings["max_iter"],
                "ftol": settings["tol"],
                "gtol": settings["tol"],
            },
        )
    except _Stalled:
        losses = [entry["outer_loss"] for entry in objective.history]
        return _unflatten(evaluated[int(np.argmin(losses))], u0)
    return _unflatten(solution.x, u0)


def _adam(objective, u0, settings, betas=(0.9, 0.999), eps=1e-8):
    """Outer projected Adam: a step in u, then each spec's projection."""
    u = dict(u0)
    first = {k: torch.zeros_like(v) for k, v in u.items()}
    second = {k: torch.zeros_like(v) for k, v in u.items()}
    rate = settings["outer_learning_rate"]
    for t in range(1, settings["max_iter"] + 1):
        grad = objective(u).grad
        change = 0.0
        for name, value in u.items():
            first[name] = betas[0] * first[name] + (1 - betas[0]) * grad[name]
            second[name] = betas[1] * second[name] + (1 - betas[1]) * grad[name] ** 2
            step = (first[name] / (1 - betas[0] ** t)) / (
                torch.sqrt(second[name] / (1 - betas[1] ** t)) + eps
            )
            new = objective.specs[name].project(value - rate * step)
            change = max(change, float((new - value).abs().max()))
            u[name] = new
        if change <= settings["tol"]:
            break
    return u


def learn(estimator, space, X, y, splits, sample_weight, settings, restart, seed):
    """One hypergradient run over the continuous entries of ``space``.

    Parameters
    ----------
    estimator : estimator instance
        The estimator (or Pipeline) with the discrete settings of this run.
    space : dict of str to spec
        Continuous entries: user key (``"step__param"`` or ``"sample_weight"``)
        to a :class:`~skbilevel.Real`, :class:`~skbilevel.PerFeature`,
        :class:`~skbilevel.PerStep`, :class:`~skbilevel.PerLayer` or
        :class:`~skbilevel.SampleWeight`.
    X, y : array-like
        All the training data.
    splits : list of (train, test) index arrays
        The cross-validation folds.
    sample_weight : array-like or None
        Fixed weights given to ``fit``.
    settings : dict
        The bilevel settings of the search.
    restart : int
        Restart number; 0 starts from each spec's initial value, the others
        from a random point drawn with ``seed``.
    seed : int
        Seed of this run.

    Returns
    -------
    learned : dict
        User key to learned value (float, or ndarray for PerFeature,
        PerStep, PerLayer and SampleWeight).
    history : list of dict
        One entry per outer step (the last one at ``learned``).
    solutions : dict or None
        With an implicit method on a scikit-learn estimator: ``"folds"``, per
        history entry the fitted attributes of each fold's exact inner
        solution, and ``"prefixes"``, the fitted earlier steps of a Pipeline
        per fold (or None).
    """
    prefixes = fit_prefixes(estimator, X, y, splits)
    dtype = settings["dtype"]
    if dtype == "auto":
        # The torch MLPs are differentiated in their own precision.
        last = estimator.steps[-1][1] if isinstance(estimator, Pipeline) else estimator
        dtype = "float64"
        if hasattr(last, "_bilevel_problem"):
            dtype = getattr(last, "dtype", "float64")
    final, data = fold_data(
        estimator,
        X,
        y,
        splits,
        sample_weight,
        settings["device"],
        dtype,
        prefixes=prefixes,
    )
    names = {key: key.rsplit("__", 1)[-1] for key in space}
    specs = {names[key]: spec for key, spec in space.items()}
    kinds = {name: _kind(spec) for name, spec in specs.items()}
    problem = make_problem(final, data, kinds, settings["inner_options"])
    settings = _resolved(settings, problem)
    rng = np.random.RandomState(seed)
    u0 = {
        name: _initial(
            spec, _shape(kinds[name], spec, data, problem), data, restart, rng
        )
        for name, spec in specs.items()
    }
    # scikit-learn's fit of these lands on the inner solution itself; SGD's
    # is a stochastic approximation of it, so its settings are refitted.
    objective = _Objective(
        problem, specs, settings, exact_fit=type(final) in EXACT_FITS
    )
    budget = any(getattr(spec, "budget", None) is not None for spec in specs.values())
    folds = data.train.shape[0] if data.X.dim() == 2 else 1
    entries = data.X.numel() * folds
    with one_torch_thread(entries, data.X.device):
        if settings["outer_optimizer"] == "adam" or budget:
            u = _adam(objective, u0, settings)
        else:
            u = _lbfgs(objective, u0, settings)

    def by_key(values):
        return {
            key: float(values[names[key]])
            if kinds[names[key]] == "real"
            else values[names[key]]
            for key in space
        }

    final_values = to_numpy(objective.constrained(u))
    if not _same_values(final_values, objective.history[-1]["params"]):
        # Adam's last update, or L-BFGS-B's best point before a failed line
        # search: the history ends at the learned values.
        with one_torch_thread(entries, data.X.device):
            objective(u)
    for entry in objective.history:
        entry["params"] = by_key(entry["params"])
    solutions = None
    if objective.keeps_solutions:
        solutions = {"folds": objective.solutions, "prefixes": prefixes}
    return by_key(final_values), objective.history, solutions


def _same_values(a, b):
    return all(np.array_equal(a[name], b[name]) for name in a)
