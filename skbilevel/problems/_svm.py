"""SVC and SVR (libsvm) with a linear, RBF or polynomial kernel.

Each fold's problem is solved by scikit-learn's own libsvm fit (with
``probability=False``: the dual solution, hence the decision function, is the
same with or without Platt scaling), one binary dual per pair of classes
(one-vs-one, as libsvm) and one dual for SVR. Written with the signed dual
coefficients ``beta`` of a binary problem (``dual_coef_``) and its intercept
``b``, the decision function is ``f = K beta + b``; the box is
``|beta_i| <= C_i`` (``C`` times the class weight and the sample weight) and
``sum_i beta_i = 0``. Where the free set ``F = {0 < |beta_i| < C_i}`` is
locally constant, the solution is the root of the linear residual

- ``f_i - t_i`` on ``F`` (``t_i`` the label +1 / -1 of SVC, ``y_i - epsilon
  sign(beta_i)`` for SVR: a free vector lies on the margin),
- ``beta_i - sign(beta_i) C_i`` on the bounded vectors and ``beta_i`` on the
  others (a bounded vector moves with ``C``),
- ``sum_i beta_i`` (``b - b_0`` where no vector is free: libsvm then takes
  the middle of an interval, which does not move to first order),

and the inner loss is half its squared norm. Its Hessian ``J^T J`` (``J`` the
residual's Jacobian) is applied exactly, and its inverse through the small
system ``[[K_FF, 1], [1^T, 0]]`` of each fold and pair, LU-factored once per
outer step (with a ridge far below the kernel's scale: a linear kernel's
``K_FF`` can be singular, while the decision function is unique), so the
implicit hypergradient's conjugate gradient takes one iteration. libsvm's
solution is polished by one exact step of that system where the polished
free coefficients stay inside the box (libsvm caches the kernel in single
precision, so its own solution is exact to about 1e-6).

The validation loss is the squared hinge ``max(0, 1 - y f)^2`` of every
binary decision value a sample enters, averaged over its ``n_classes - 1``
pairs (the squared error for SVR); see the user guide for why.
"""

from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import numpy as np
import torch
from sklearn.base import clone, is_classifier
from sklearn.utils.class_weight import compute_class_weight
from torch import Tensor

from ..utils import to_numpy, to_tensor
from ._base import (
    Curvature,
    FoldData,
    Params,
    Problem,
    check_classes_in_folds,
    hyperparameter,
    validation_mean,
)

KERNELS = ("linear", "rbf", "poly")
# Relative distance to the bound under which a coefficient counts as bounded
# (libsvm clips to the bound exactly).
_AT_BOUND = 1e-10


@dataclass(frozen=True, eq=False)
class _DualFolds:
    """The fold data of an SVC or SVR problem, laid out per binary problem.

    P binary problems (pairs of classes; one for SVR) over ``m`` positions:
    ``index`` (P, m) the sample at each position, ``valid`` (P, m) 0/1 for
    padding; ``label`` (P, m) +1 / -1 (SVC) or the targets (SVR); ``train``
    and ``test`` (K, P, m) the folds' masks there; ``bound`` (K, P, m) the
    factor of ``C`` (class and sample weights); ``base`` the squared
    distances (RBF) or inner products between positions, (P, m, m) or
    (K, P, m, m) after a Pipeline's per-fold steps; ``position`` (P, n) the
    position of each sample (-1 if absent).
    """

    data: FoldData
    estimator: object
    features: np.ndarray
    codes: np.ndarray
    index: Tensor
    valid: Tensor
    label: Tensor
    train: Tensor
    test: Tensor
    bound: Tensor
    base: Tensor
    position: np.ndarray
    gamma: Tensor
    regression: bool
    pairs_per_sample: int
    cache: dict


def _kernel(folds: _DualFolds, gamma) -> tuple[Tensor, Tensor | None]:
    """The kernel matrices at ``gamma`` and their derivative in it, computed
    once per value (each outer step needs them five times)."""
    key = None if gamma is None else float(gamma.detach())
    cached = folds.cache.get("kernel")
    if cached is not None and cached[0] == key:
        return cached[1]
    estimator, base = folds.estimator, folds.base
    # A fresh scalar: the cached matrices must not hold a tensor of a torch.func
    # transform the caller may be inside.
    gamma = folds.gamma if key is None else torch.tensor(key, dtype=base.dtype)
    if estimator.kernel == "linear":
        value = (base, None)
    elif estimator.kernel == "rbf":
        kernel = torch.exp(-gamma * base)
        value = (kernel, -base * kernel)
    else:
        inner = gamma * base + estimator.coef0
        degree = estimator.degree
        value = (inner**degree, degree * inner ** (degree - 1) * base)
    folds.cache["kernel"] = (key, value)
    return value


def _kernel_times(folds: _DualFolds, hparams: Params, vector: Tensor) -> Tensor:
    """``K(gamma) vector`` per fold and problem, exact in value and first
    derivative in ``gamma`` (all a hypergradient at the optimum needs): the
    kernel's derivative enters as a product, never as a (P, m, m) graph."""
    gamma = hparams.get("gamma")
    kernel, derivative = _kernel(folds, gamma)
    product = _times(kernel, vector)
    if gamma is not None and derivative is not None:
        product = product + (gamma - gamma.detach()) * _times(derivative, vector)
    return product


def _times(gram: Tensor, vector: Tensor) -> Tensor:
    """``gram @ vector`` per fold and problem, for a (P, m, m) or (K, P, m, m)
    ``gram`` and a (K, P, m) ``vector`` (a shared gram is not copied K times)."""
    if gram.dim() == vector.dim():
        return torch.matmul(gram, vector.permute(1, 2, 0)).permute(2, 0, 1)
    return (gram @ vector[..., None])[..., 0]


def _decision(folds: _DualFolds, params: Params, hparams: Params) -> Tensor:
    """Decision values (K, P, m) of each fold's binary problems at every position."""
    beta = params["beta"] * folds.train
    return _kernel_times(folds, hparams, beta) + params["b"][..., None]


def _masks(folds: _DualFolds, params: Params, C: Tensor):
    """Free and bounded positions (K, P, m) and the systems without a free one."""
    beta = params["beta"].detach().abs()
    upper = (C.detach() * folds.bound) * (1 - _AT_BOUND)
    inside = (beta > 0) & (folds.train > 0)
    free = (inside & (beta < upper)).to(beta.dtype)
    bounded = (inside & (beta >= upper)).to(beta.dtype)
    anchored = (free.sum(-1) == 0).to(beta.dtype)
    return free, bounded, anchored


def _targets(folds: _DualFolds, params: Params, hparams: Params) -> Tensor:
    if not folds.regression:
        return folds.label
    epsilon = hyperparameter(hparams, "epsilon", folds.estimator.epsilon, folds.label)
    return folds.label - epsilon * torch.sign(params["beta"].detach())


def _residual(folds: _DualFolds, params: Params, hparams: Params):
    """The residual whose root is the dual solution for the current free set."""
    C = hyperparameter(hparams, "C", folds.estimator.C, folds.label)
    free, bounded, anchored = _masks(folds, params, C)
    beta = params["beta"]
    decision = _decision(folds, params, hparams)
    on_margin = free * (decision - _targets(folds, params, hparams))
    at_bound = (1 - free) * (
        beta - bounded * torch.sign(beta.detach()) * C * folds.bound
    )
    balance = (1 - anchored) * (folds.train * beta).sum(-1) + anchored * (
        params["b"] - params["b"].detach()
    )
    return on_margin + at_bound, balance


def _inner_loss(folds: _DualFolds, params: Params, hparams: Params) -> Tensor:
    if not (params["beta"].detach().any() or params["b"].detach().any()):
        # The zero start is no libsvm solution (libsvm's intercept is never
        # exactly 0 with no support vector): only steps of gradient descent
        # start there, and the residual's free set would be empty throughout.
        raise ValueError(
            f"{type(folds.estimator).__name__} is differentiated at libsvm's "
            "solution of each fold, not through steps of gradient descent; use "
            "method='auto', 'implicit_forward' or 'implicit_cg'."
        )
    rows, balance = _residual(folds, params, hparams)
    return 0.5 * ((rows**2).sum() + (balance**2).sum())


def _pair_losses(folds: _DualFolds, decision: Tensor) -> Tensor:
    if folds.regression:
        return (folds.label - decision) ** 2
    return torch.clamp(1 - folds.label * decision, min=0) ** 2


def _outer_loss(folds: _DualFolds, params: Params, hparams: Params) -> Tensor:
    losses = _pair_losses(folds, _decision(folds, params, hparams))
    n_folds, n = folds.data.test.shape
    index = folds.index.expand(n_folds, -1, -1).reshape(n_folds, -1)
    weighted = (losses * folds.valid).reshape(n_folds, -1)
    per_sample = torch.zeros((n_folds, n), dtype=losses.dtype, device=losses.device)
    per_sample = per_sample.scatter_add(1, index, weighted)
    # Each sample enters the binary problems of its class: n_classes - 1
    # pairs for SVC (one problem for SVR).
    return validation_mean(per_sample / folds.pairs_per_sample, folds.data)


class _System(NamedTuple):
    """The residual's Jacobian at a solution, and its reduced inverse.

    ``order`` (K, P, s) lists each system's free positions first, ``chosen``
    marks the real ones among the ``s``; ``factors`` are the LU factors of
    ``[[K_FF, 1], [1^T, anchored]]`` (K, P, s + 1, s + 1).
    """

    gram: Tensor
    train: Tensor
    free: Tensor
    anchored: Tensor
    order: Tensor
    chosen: Tensor
    factors: tuple


def _system(folds: _DualFolds, params: Params, hparams: Params) -> _System:
    with torch.no_grad():
        hparams = {name: value.detach() for name, value in hparams.items()}
        C = hyperparameter(hparams, "C", folds.estimator.C, folds.label)
        free, _, anchored = _masks(folds, params, C)
        gamma = hparams.get("gamma")
        # The polished solution's system is the one just factored for it.
        key = (float(C), None if gamma is None else float(gamma.detach()))
        key = key + (to_numpy(free).tobytes(),)
        cached = folds.cache.get("system")
        if cached is not None and cached[0] == key:
            return cached[1]
        gram = _kernel(folds, gamma)[0]
        size = int(free.sum(-1).max())
        order = torch.argsort(1 - free, dim=-1, stable=True)[..., :size]
        chosen = torch.gather(free, -1, order)
        shape = (*free.shape[:2], size, size)
        rows = gram.expand(*free.shape, free.shape[-1]).gather(
            -2, order[..., None].expand(*order.shape, free.shape[-1])
        )
        reduced = rows.gather(-1, order[..., None, :].expand(shape))
        matrix = torch.zeros((*shape[:2], size + 1, size + 1), dtype=gram.dtype)
        pair = chosen[..., :, None] * chosen[..., None, :]
        identity = torch.diag_embed(1 - chosen)
        matrix[..., :size, :size] = reduced * pair + identity
        matrix[..., :size, size] = chosen
        matrix[..., size, :size] = chosen
        matrix[..., size, size] = anchored
        # A linear kernel's K_FF is singular past d + 1 free vectors (the
        # decision function stays unique): a ridge far below the kernel's
        # scale makes the reduced system solvable without moving it.
        ridge = 1e-12 * torch.diagonal(gram, dim1=-2, dim2=-1).abs().amax(-1)
        matrix[..., :size, :size] += torch.diag_embed(ridge[..., None] * chosen)
        factors = torch.linalg.lu_factor(matrix)
    system = _System(gram, folds.train, free, anchored, order, chosen, factors)
    folds.cache["system"] = (key, system)
    return system


def _system_times(system: _System, vector: Tensor) -> Tensor:
    return _times(system.gram, system.train * vector)


def _reduced_solve(system: _System, rows: Tensor, last: Tensor):
    """The reduced system's solution: free entries at their positions, last."""
    rhs = torch.cat(
        [torch.gather(rows, -1, system.order) * system.chosen, last[..., None]], -1
    )
    solution = torch.linalg.lu_solve(*system.factors, rhs[..., None])[..., 0]
    free_part = torch.zeros_like(rows).scatter_add(
        -1, system.order, solution[..., :-1] * system.chosen
    )
    return free_part, solution[..., -1]


def _jacobian(system: _System, v: Params):
    """``J v``: residual rows (K, P, m) and balances (K, P)."""
    beta, b = v["beta"], v["b"]
    rows = system.free * (_system_times(system, beta) + b[..., None])
    rows = rows + (1 - system.free) * beta
    balance = (1 - system.anchored) * (system.train * beta).sum(-1)
    return rows, balance + system.anchored * b


def _jacobian_t(system: _System, rows: Tensor, balance: Tensor) -> Params:
    """``J^T (rows, balance)``."""
    on_margin = system.free * rows
    beta = system.train * _system_times(system, on_margin)
    beta = beta + (1 - system.free) * rows
    beta = beta + ((1 - system.anchored) * balance)[..., None] * system.train
    return {"beta": beta, "b": on_margin.sum(-1) + system.anchored * balance}


def _solve_jacobian(system: _System, rows: Tensor, balance: Tensor) -> Params:
    """``J^{-1} (rows, balance)``: the bounded entries first, then the free."""
    fixed = (1 - system.free) * rows
    rest = rows - _system_times(system, fixed)
    last = balance - (1 - system.anchored) * (system.train * fixed).sum(-1)
    free_part, b = _reduced_solve(system, rest, last)
    return {"beta": fixed + free_part, "b": b}


def _solve_jacobian_t(system: _System, v: Params):
    """``J^{-T} v``: the free entries and the balance first, then the others."""
    free_part, last = _reduced_solve(system, v["beta"], v["b"])
    rest = v["beta"] - system.train * _system_times(system, free_part)
    rest = rest - ((1 - system.anchored) * last)[..., None] * system.train
    return free_part + (1 - system.free) * rest, last


def _hessian_vector(system: _System, v: Params) -> Params:
    return _jacobian_t(system, *_jacobian(system, v))


def _precondition(system: _System, v: Params) -> Params:
    return _solve_jacobian(system, *_solve_jacobian_t(system, v))


def _curvature(folds: _DualFolds, params: Params, hparams: Params) -> Curvature:
    system = _system(folds, params, hparams)
    return Curvature(partial(_hessian_vector, system), partial(_precondition, system))


def _polish(folds: _DualFolds, params: Params, hparams: Params) -> Params:
    """One exact step onto the root of the residual, per system where the
    free coefficients stay inside their box (libsvm's solution elsewhere)."""
    system = _system(folds, params, hparams)
    with torch.no_grad():
        rows, balance = _residual(folds, params, hparams)
        step = _solve_jacobian(system, rows, balance)
        beta = params["beta"] - step["beta"]
        C = hyperparameter(hparams, "C", folds.estimator.C, folds.label)
        old = params["beta"]
        inside = (torch.sign(beta) == torch.sign(old)) & (beta.abs() < C * folds.bound)
        keep = ((system.free > 0) & ~inside).any(-1)
        beta = torch.where(keep[..., None], old, beta)
        b = torch.where(keep, params["b"], params["b"] - step["b"])
    return {"beta": beta, "b": b}


def _fold_fit(folds: _DualFolds, k: int, values: dict):
    """scikit-learn's fit on fold ``k`` with the hyperparameters ``values``."""
    estimator = clone(folds.estimator).set_params(**values)
    if is_classifier(estimator):
        # The default (False, or "deprecated" since scikit-learn 1.9, which
        # warns about any other value): Platt scaling's internal fits are
        # not needed for the dual solution.
        default = type(estimator)().get_params()["probability"]
        estimator.set_params(probability=default)
    train = np.flatnonzero(to_numpy(folds.data.train[k]))
    features = folds.features[k] if folds.features.ndim == 3 else folds.features
    weights = to_numpy(folds.data.sample_weight)[train]
    estimator.fit(features[train], folds.codes[train], sample_weight=weights)
    return estimator, train


def _place(folds: _DualFolds, beta: np.ndarray, k: int, p: int, samples, values):
    positions = folds.position[p, samples]
    beta[k, p, positions] = values


def _extract(folds: _DualFolds, beta, b, k, fitted, train):
    """The signed dual coefficients and intercepts of each binary problem."""
    support = train[fitted.support_]
    coef, intercept = fitted.dual_coef_, fitted.intercept_
    if folds.regression or folds.index.shape[0] == 1:
        # scikit-learn flips a binary SVC's signs so that f > 0 means
        # classes_[1]; libsvm's f > 0 (kept here) means classes_[0].
        sign = 1.0 if folds.regression else -1.0
        _place(folds, beta, k, 0, support, sign * coef[0])
        b[k, 0] = sign * intercept[0]
        return
    starts = np.concatenate([[0], np.cumsum(fitted.n_support_)])
    n_classes = len(fitted.n_support_)
    pairs = [(i, j) for i in range(n_classes) for j in range(i + 1, n_classes)]
    for p, (i, j) in enumerate(pairs):
        of_i, of_j = slice(starts[i], starts[i + 1]), slice(starts[j], starts[j + 1])
        _place(folds, beta, k, p, support[of_i], coef[j - 1, of_i])
        _place(folds, beta, k, p, support[of_j], coef[i, of_j])
        b[k, p] = intercept[p]


def _solve(folds: _DualFolds, params: Params, hparams: Params) -> Params:
    values = {name: float(value) for name, value in hparams.items()}
    beta = np.zeros(tuple(folds.train.shape))
    b = np.zeros(tuple(folds.train.shape[:2]))
    for k in range(folds.train.shape[0]):
        fitted, train = _fold_fit(folds, k, values)
        _extract(folds, beta, b, k, fitted, train)
    like = folds.label
    solution = {
        "beta": to_tensor(beta, device=like.device, dtype=like.dtype),
        "b": to_tensor(b, device=like.device, dtype=like.dtype),
    }
    return _polish(folds, solution, {k: v.detach() for k, v in hparams.items()})


def _init_params(folds: _DualFolds) -> Params:
    like = folds.train
    return {
        "beta": torch.zeros_like(like),
        "b": torch.zeros(like.shape[:2], dtype=like.dtype, device=like.device),
    }


def _fitted_attributes(folds: _DualFolds, params: Params) -> list:
    """Per fold, each binary problem's signed dual coefficients over the
    training samples and its intercept (libsvm's signs); a fitted SVC or SVR
    keeps them in private attributes, so its rows are scored by its fit."""
    beta, b = to_numpy(params["beta"] * folds.train), to_numpy(params["b"])
    index = to_numpy(folds.index)
    attributes = []
    for k in range(beta.shape[0]):
        coefficients = np.zeros((beta.shape[1], folds.data.train.shape[1]))
        for p in range(beta.shape[1]):
            np.add.at(coefficients[p], index[p], beta[k, p])
        train = to_numpy(folds.data.train[k]).astype(bool)
        attributes.append(
            {"pair_dual_coef": coefficients[:, train], "pair_intercept": b[k]}
        )
    return attributes


def _layout(codes: np.ndarray, n_classes: int, regression: bool):
    """Samples of each binary problem: (P, m) indices and validity, positions."""
    n = len(codes)
    if regression:
        members = [np.arange(n)]
    else:
        members = [
            np.flatnonzero((codes == i) | (codes == j))
            for i in range(n_classes)
            for j in range(i + 1, n_classes)
        ]
    m = max(len(rows) for rows in members)
    index = np.zeros((len(members), m), dtype=np.int64)
    valid = np.zeros((len(members), m))
    position = np.full((len(members), n), -1)
    for p, rows in enumerate(members):
        index[p, : len(rows)], valid[p, : len(rows)] = rows, 1.0
        position[p, rows] = np.arange(len(rows))
    return index, valid, position


def _fixed_gamma(estimator, features: np.ndarray, train: np.ndarray):
    """The estimator's own gamma, per fold (``"scale"`` uses the fold's data)."""
    gamma = estimator.gamma
    n_folds = train.shape[0]
    if gamma == "auto":
        return np.full(n_folds, 1.0 / features.shape[-1])
    if gamma != "scale":
        return np.full(n_folds, float(gamma))
    values = []
    for k in range(n_folds):
        X = features[k] if features.ndim == 3 else features
        variance = X[train[k]].var()
        values.append(1.0 / (X.shape[1] * variance) if variance != 0 else 1.0)
    return np.asarray(values)


def _bounds(estimator, codes, n_classes, train, weights, index):
    """Per fold and position, the factor of C: class weight x sample weight."""
    per_class = np.ones((train.shape[0], max(n_classes, 1)))
    if is_classifier(estimator) and estimator.class_weight is not None:
        # SVC weighs "balanced" by counts alone (its fit passes no sample
        # weights to compute_class_weight).
        for k in range(train.shape[0]):
            per_class[k] = compute_class_weight(
                estimator.class_weight,
                classes=np.arange(n_classes),
                y=codes[train[k]],
            )
    codes_at = codes[index] if is_classifier(estimator) else np.zeros_like(index)
    return per_class[:, codes_at] * weights[index]


def _base_matrix(X: Tensor, kernel: str, index: np.ndarray) -> Tensor:
    """Squared distances (RBF) or inner products between each problem's samples."""
    if kernel == "rbf":
        squared = (X**2).sum(-1)
        full = squared[..., :, None] + squared[..., None, :]
        full = (full - 2 * X @ X.transpose(-1, -2)).clamp_min(0)
    else:
        full = X @ X.transpose(-1, -2)
    rows = torch.as_tensor(index, device=X.device)
    return full[..., rows[:, :, None], rows[:, None, :]]


def svm(estimator, data: FoldData, options) -> Problem:
    """Inner problem of :class:`~sklearn.svm.SVC` or :class:`~sklearn.svm.SVR`."""
    regression = not is_classifier(estimator)
    if regression:
        codes, n_classes = np.zeros(len(data.y), dtype=np.int64), 1
        targets = np.asarray(data.y, dtype=float)
    else:
        classes, codes = np.unique(data.y, return_inverse=True)
        n_classes = len(classes)
        check_classes_in_folds(codes, n_classes, data)
    index, valid, position = _layout(codes, n_classes, regression)
    train = to_numpy(data.train).astype(bool)
    features = to_numpy(data.X)
    X = data.X

    def tensor(array):
        return to_tensor(np.asarray(array, dtype=float), device=X.device, dtype=X.dtype)

    if regression:
        label = targets[index]
    else:
        # +1 for the first class of each pair, as libsvm.
        first = np.repeat(np.arange(n_classes), np.arange(n_classes - 1, -1, -1))
        label = np.where(codes[index] == first[:, None], 1.0, -1.0)
    gamma = _fixed_gamma(estimator, features, train)
    gamma = tensor(gamma[0]) if np.all(gamma == gamma[0]) else tensor(gamma)
    gamma = gamma.reshape(-1, 1, 1, 1) if gamma.dim() else gamma
    weights = to_numpy(data.sample_weight)
    folds = _DualFolds(
        data,
        estimator,
        features,
        targets if regression else codes,
        torch.as_tensor(index, device=X.device),
        tensor(valid),
        tensor(label),
        data.train[:, index] * tensor(valid),
        data.test[:, index] * tensor(valid),
        tensor(_bounds(estimator, codes, n_classes, train, weights, index)),
        _base_matrix(X, estimator.kernel, index),
        position,
        gamma,
        regression,
        max(n_classes - 1, 1),
        {},
    )
    return Problem(
        partial(_init_params, folds),
        partial(_inner_loss, folds),
        partial(_outer_loss, folds),
        partial(_solve, folds),
        partial(_fitted_attributes, folds),
        partial(_curvature, folds),
    )


def _refusals(estimator, learned):
    """Settings under which the dual problem above is not the one libsvm solves."""
    kernel = estimator.kernel
    return {
        f"kernel={kernel!r} (supported: {', '.join(KERNELS)})": kernel not in KERNELS,
        "kernel='linear' and a learned gamma (a linear kernel has none)": "gamma"
        in learned
        and kernel == "linear",
        f"max_iter={estimator.max_iter} (the fit may stop before the optimum)": (
            estimator.max_iter != -1
        ),
    }


def build_svm(estimator, data: FoldData, learned, options) -> Problem:
    """The inner problem of an SVC or SVR, refusing what it cannot differentiate."""
    for setting, present in _refusals(estimator, learned).items():
        if present:
            raise ValueError(
                f"Continuous hyperparameters of {type(estimator).__name__} are not "
                f"supported with {setting}."
            )
    return svm(estimator, data, options)
