"""LinearSVC and LinearSVR (liblinear) with their squared losses.

liblinear minimizes, per binary problem (one-vs-rest for several classes),
``||w||^2 / 2 + C sum_i s_i loss_i`` over the augmented samples ``[x_i, c]``
(``c`` the ``intercept_scaling``, so the intercept ``c w_d`` is penalized like
the coefficients), with the squared hinge ``max(0, 1 - y_i w.x_i)^2``
(LinearSVC) or ``max(0, |y_i - w.x_i| - epsilon)^2`` (LinearSVR). Both are
once differentiable with a Hessian ``I + 2 C sum_{i active} s_i x_i x_i^T``
that is constant while the active set is, so implicit differentiation applies
where the active set is locally constant. Each fold is fitted by
scikit-learn's own liblinear, then polished by exact Newton steps (the loss
is piecewise quadratic: a step from the right active set lands on the
minimizer).
"""

from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from sklearn.base import clone, is_classifier
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

# Most augmented features for the exact (Cholesky) Newton system; past this a
# diagonal preconditioner serves the hypergradient and liblinear's solution
# is kept as it is.
EXACT_FEATURES = 2048


@dataclass(frozen=True, eq=False)
class _LinearSVMFolds:
    """``X`` (n, d + 1) or (K, n, d + 1) augmented samples; ``label`` (P, n) the
    targets of each binary problem (+1 / -1) or the regression targets;
    ``weights`` (K, n) the fit's sample weights on each training part."""

    data: FoldData
    estimator: object
    features: np.ndarray
    labels: np.ndarray
    X: Tensor
    label: Tensor
    weights: Tensor
    n_train: Tensor
    regression: bool
    scaling: float


def _margins(folds: _LinearSVMFolds, w: Tensor) -> Tensor:
    """``x_i . w`` of each fold and problem, (K, P, n)."""
    X = folds.X
    if X.dim() == 2:
        return torch.einsum("nd,kpd->kpn", X, w)
    return torch.einsum("knd,kpd->kpn", X, w)


def _excess(folds: _LinearSVMFolds, margins: Tensor, hparams: Params) -> Tensor:
    """The argument of the squared loss, positive where a sample is active."""
    if not folds.regression:
        return 1 - folds.label * margins
    epsilon = hyperparameter(hparams, "epsilon", folds.estimator.epsilon, margins)
    return (folds.label - margins).abs() - epsilon


def _inner_loss(folds: _LinearSVMFolds, params: Params, hparams: Params) -> Tensor:
    w = params["w"]
    C = hyperparameter(hparams, "C", folds.estimator.C, w)
    excess = _excess(folds, _margins(folds, w), hparams).clamp_min(0)
    data_term = (folds.weights[:, None, :] * excess**2).sum(-1)
    objective = 0.5 * (w**2).sum(-1) + C * data_term
    return (objective.sum(-1) / folds.n_train).sum()


def _outer_loss(folds: _LinearSVMFolds, params: Params, hparams: Params) -> Tensor:
    margins = _margins(folds, params["w"])
    if folds.regression:
        losses = (folds.label - margins) ** 2
    else:
        losses = (1 - folds.label * margins).clamp_min(0) ** 2
    return validation_mean(losses.mean(1), folds.data)


def _active(folds: _LinearSVMFolds, params: Params, hparams: Params) -> Tensor:
    """``2 C s_i`` on the active samples, (K, P, n)."""
    w = params["w"].detach()
    C = hyperparameter(hparams, "C", folds.estimator.C, w).detach()
    excess = _excess(folds, _margins(folds, w), hparams)
    return 2 * C * folds.weights[:, None, :] * (excess > 0)


def _hessian(folds: _LinearSVMFolds, active: Tensor) -> Tensor:
    X = folds.X
    if X.dim() == 2:
        products = torch.einsum("kpn,nd,ne->kpde", active, X, X)
    else:
        products = torch.einsum("kpn,knd,kne->kpde", active, X, X)
    identity = torch.eye(X.shape[-1], dtype=X.dtype, device=X.device)
    return (identity + products) / folds.n_train[:, None, None, None]


def _hessian_vector(folds, active, v: Params) -> Params:
    margins = _margins(folds, v["w"])
    X = folds.X
    spread = active * margins
    if X.dim() == 2:
        back = torch.einsum("kpn,nd->kpd", spread, X)
    else:
        back = torch.einsum("kpn,knd->kpd", spread, X)
    return {"w": (v["w"] + back) / folds.n_train[:, None, None]}


def _curvature(folds: _LinearSVMFolds, params: Params, hparams: Params) -> Curvature:
    active = _active(folds, params, hparams)
    if folds.X.shape[-1] > EXACT_FEATURES:
        squares = folds.X**2
        pattern = "kpn,nd->kpd" if squares.dim() == 2 else "kpn,knd->kpd"
        diagonal = 1 + torch.einsum(pattern, active, squares)
        diagonal = diagonal / folds.n_train[:, None, None]

        def precondition(v):
            return {"w": v["w"] / diagonal}

    else:
        factor = torch.linalg.cholesky(_hessian(folds, active))

        def precondition(v):
            return {"w": torch.cholesky_solve(v["w"][..., None], factor)[..., 0]}

    return Curvature(partial(_hessian_vector, folds, active), precondition)


def _newton(folds: _LinearSVMFolds, params: Params, hparams: Params, steps=5):
    """Exact Newton steps from liblinear's solution, each kept where it lowers
    its fold's objective."""
    w = params["w"]
    for _ in range(steps):
        with torch.enable_grad():
            leaf = w.detach().requires_grad_(True)
            loss = _inner_loss(folds, {"w": leaf}, hparams)
            (grad,) = torch.autograd.grad(loss, leaf)
        hessian = _hessian(folds, _active(folds, {"w": w}, hparams))
        candidate = w - torch.linalg.solve(hessian, grad)
        before = _per_problem(folds, w, hparams)
        after = _per_problem(folds, candidate, hparams)
        # Near the minimizer the objectives agree to rounding: a step that
        # does not raise them past it is kept (it lands on the minimizer).
        better = after <= before + 1e-12 * before.abs()
        if not bool(better.any()):
            break
        w = torch.where(better[..., None], candidate, w)
    return {"w": w}


def _per_problem(folds: _LinearSVMFolds, w: Tensor, hparams: Params) -> Tensor:
    C = hyperparameter(hparams, "C", folds.estimator.C, w)
    excess = _excess(folds, _margins(folds, w), hparams).clamp_min(0)
    return 0.5 * (w**2).sum(-1) + C * (folds.weights[:, None, :] * excess**2).sum(-1)


def _solve(folds: _LinearSVMFolds, params: Params, hparams: Params) -> Params:
    values = {name: float(value) for name, value in hparams.items()}
    n_folds, n_problems = folds.weights.shape[0], folds.label.shape[0]
    w = np.zeros((n_folds, n_problems, folds.X.shape[-1]))
    for k in range(n_folds):
        train = np.flatnonzero(to_numpy(folds.data.train[k]))
        features = folds.features[k] if folds.features.ndim == 3 else folds.features
        estimator = clone(folds.estimator).set_params(**values)
        weights = to_numpy(folds.data.sample_weight)[train]
        estimator.fit(features[train], folds.labels[train], sample_weight=weights)
        coef = np.atleast_2d(estimator.coef_)
        w[k, :, : coef.shape[1]] = coef
        if estimator.fit_intercept:
            w[k, :, -1] = np.atleast_1d(estimator.intercept_) / folds.scaling
    like = folds.X
    solution = {"w": to_tensor(w, device=like.device, dtype=like.dtype)}
    if like.shape[-1] > EXACT_FEATURES:
        return solution
    with torch.no_grad():
        return _newton(folds, solution, {k: v.detach() for k, v in hparams.items()})


def _fitted_attributes(folds: _LinearSVMFolds, params: Params) -> list:
    w = to_numpy(params["w"])
    attributes = []
    fit_intercept = folds.estimator.fit_intercept
    for k in range(w.shape[0]):
        coef = w[k, :, :-1] if fit_intercept else w[k]
        intercept = (
            folds.scaling * w[k, :, -1] if fit_intercept else np.zeros(len(w[k]))
        )
        if folds.regression:
            coef, intercept = coef[0], intercept
        attributes.append({"coef_": coef, "intercept_": intercept})
    return attributes


def _init_params(folds: _LinearSVMFolds) -> Params:
    shape = (folds.weights.shape[0], folds.label.shape[0], folds.X.shape[-1])
    return {"w": torch.zeros(shape, dtype=folds.X.dtype, device=folds.X.device)}


def _refusals(estimator, learned):
    params = estimator.get_params(deep=False)
    squared = (
        "squared_hinge" if is_classifier(estimator) else "squared_epsilon_insensitive"
    )
    return {
        f"loss={params['loss']!r} (not differentiable; use loss={squared!r}, or "
        "SVC / SVR with kernel='linear')": params["loss"] != squared,
        f"penalty={params.get('penalty')!r}": params.get("penalty", "l2") != "l2",
        "multi_class='crammer_singer'": params.get("multi_class") == "crammer_singer",
        "class_weight (not modelled)": params.get("class_weight") is not None,
    }


def build_linear_svm(estimator, data: FoldData, learned, options) -> Problem:
    """Inner problem of :class:`~sklearn.svm.LinearSVC` or
    :class:`~sklearn.svm.LinearSVR`, refusing what it cannot differentiate."""
    for setting, present in _refusals(estimator, learned).items():
        if present:
            raise ValueError(
                f"Continuous hyperparameters of {type(estimator).__name__} are not "
                f"supported with {setting}."
            )
    regression = not is_classifier(estimator)
    X = data.X
    if regression:
        labels = np.asarray(data.y, dtype=float)
        label = labels[None]
    else:
        classes, labels = np.unique(data.y, return_inverse=True)
        check_classes_in_folds(labels, len(classes), data)
        positives = [1] if len(classes) == 2 else range(len(classes))
        label = np.stack([np.where(labels == c, 1.0, -1.0) for c in positives])
    scaling = float(estimator.intercept_scaling) if estimator.fit_intercept else 1.0
    if estimator.fit_intercept:
        column = torch.full((*X.shape[:-1], 1), scaling, dtype=X.dtype, device=X.device)
        X = torch.cat([X, column], -1)
    weights = data.train * data.sample_weight
    folds = _LinearSVMFolds(
        data,
        estimator,
        to_numpy(data.X),
        labels,
        X,
        to_tensor(label, device=X.device, dtype=X.dtype),
        weights,
        data.train.sum(1),
        regression,
        scaling,
    )
    return Problem(
        partial(_init_params, folds),
        partial(_inner_loss, folds),
        partial(_outer_loss, folds),
        partial(_solve, folds),
        partial(_fitted_attributes, folds),
        partial(_curvature, folds),
    )
