"""L1 and elastic-net linear models: Lasso, ElasticNet, sparse LogisticRegression.

Each fold's objective is the estimator's own, as scikit-learn defines it:

- ``Lasso`` / ``ElasticNet``: ``1 / (2 sum_i s_i) sum_i s_i (y_i - x_i w - b)^2
  + alpha r ||w||_1 + alpha (1 - r) ||w||^2 / 2``, with ``r = l1_ratio`` (1
  for the Lasso) and one such problem per target column;
- ``LogisticRegression`` with an L1 or elastic-net penalty (binary):
  ``sum_i s_i logloss_i + r ||w||_1 / C + (1 - r) ||w||^2 / (2 C)`` (its
  ``C sum_i s_i logloss_i + r ||w||_1 + ...`` divided by ``C``), with
  ``r = l1_ratio`` (1 for ``penalty="l1"``), spelled either way: scikit-learn
  1.8 deprecates ``penalty`` in favour of ``l1_ratio`` alone;

with ``s_i`` the product of the fitted, class and learned sample weights and
the intercept never penalized. A per-feature ``alpha_j`` (``C_j``) is the
weighted Lasso, one L1 weight per feature, with ``r = 1``.

**The hypergradient on the support** (Bertrand et al., 2020). At the solution
``w*`` the penalty is smooth on the active set ``S`` with its signs ``sigma``
fixed, and the optimality condition there, ``grad_S f(w*) + alpha r sigma +
alpha (1 - r) w*_S = 0``, holds on a neighbourhood of the hyperparameters
where the support does not change; off it ``w* = 0``. The inner loss of the
:class:`Problem` is that restricted objective, with the support and signs read
from the point it is evaluated at, plus ``||w_off||^2 / 2`` off the support,
which the data term does not see: its Hessian is the restricted Hessian on
``S`` and the identity off it, so the package's implicit methods
(``hypergrad.METHODS``) give the hypergradient of sparse-ho, exact wherever
the support is locally constant.

**The inner solve.** Each fold is fitted by scikit-learn's own solver, warm
started (coordinate descent for the Lasso family, to the search's
``inner_tol``, and ``saga`` for the logistic model: the solvers ``fit``
would run), then polished in torch, all folds at once: for the squared loss
by semismooth Newton steps (:func:`active_set_polish`), which solve the
problem restricted to a support and signs exactly and correct the few
features and signs the solver got wrong; for the log loss by Newton steps on
the solver's support. The restricted solves use the exact inverse of the
support's Gram matrices, or conjugate gradient on products with ``X`` where
they are too large to gather, so the restricted optimality holds to
rounding. The result is checked against the KKT conditions: a fold whose
signs flip or whose off-support gradient exceeds its L1 weight is refitted
at a 1000 times smaller tolerance. Coordinate descent in compiled code is
the fastest Lasso solver on a CPU (``LassoCV`` runs it); the data only ever
meets ``X @ W``, ``X.T @ R`` and column norms.

References
----------
Q. Bertrand, Q. Klopfenstein, M. Blondel, S. Vaiter, A. Gramfort and
J. Salmon, "Implicit differentiation of Lasso-type models for hyperparameter
optimization", ICML 2020.
"""

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import ElasticNet, Lasso, LogisticRegression
from sklearn.preprocessing import LabelEncoder
from torch import Tensor

from ..hypergrad._cg import conjugate_gradient, per_fold
from ..utils import to_numpy, to_tensor
from ._base import (
    Curvature,
    FoldData,
    Params,
    Problem,
    check_classes_in_folds,
    class_weights,
    fold_weights,
    hyperparameter,
    validation_mean,
)
from ._l1_fit import fit_folds, fold_fitter
from ._linear_loss import decision, linear_attributes
from ._sparse import SparseDesign, matmul, transposed_matmul

# Refits of a fold whose solution fails the KKT check, each at a 1000 times
# smaller tolerance of scikit-learn's solver.
KKT_REFITS = 3
NEWTON_STEPS = 20
ACTIVE_SET_STEPS = 10
# Relative residual of each Newton step's conjugate gradient: from the
# solver's approximate solution, a step cuts the restricted gradient by 1e8.
POLISH_TOL = 1e-8
# Most entries of the support's gathered columns (folds x samples x outputs
# x support size) or, for a sparse X, of the 0/1 matrix that gathers them
# (folds x features x outputs x support size), and of the Gram matrices
# (folds x outputs x support size^2), 64 MiB in float64; past it, conjugate
# gradient with a diagonal preconditioner serves.
GATHER_SIZE = 2**23


def l1_ratio_of(estimator):
    """The ``l1_ratio`` scikit-learn's ``fit`` uses, from either spelling
    (``penalty="l1"`` / ``"elasticnet"``, or ``l1_ratio`` alone since 1.8)."""
    if isinstance(estimator, Lasso):
        return 1.0
    params = estimator.get_params(deep=False)
    penalty = params.get("penalty", "elasticnet")
    if penalty == "l1":
        return 1.0
    if penalty in ("elasticnet", "deprecated"):
        return float(params.get("l1_ratio") or 0.0)
    return 0.0


def l1_penalized(estimator, learned=()):
    """Whether ``estimator``'s penalty has an L1 part (or its ratio is learned)."""
    if isinstance(estimator, ElasticNet):
        return True
    if isinstance(estimator, LogisticRegression):
        return "l1_ratio" in learned or l1_ratio_of(estimator) > 0
    return False


def feature_penalty_power(estimator):
    """The power of ``|w_j|`` that a per-feature penalty of ``estimator``
    weighs: 1 for a pure L1 penalty, 2 for L2 (:func:`feature_scale`)."""
    return 1 if l1_penalized(estimator) and l1_ratio_of(estimator) == 1 else 2


@dataclass(frozen=True, eq=False)
class SparseLinear:
    """A linear model with a smooth data term and an L1 (+ L2) penalty.

    Each fold's objective is ``sum_i weights_i h(z_i) / normalizer
    + sum_j l1_j |w_j| + sum_j l2_j w_j^2 / 2`` with scores ``z = X w + b``.

    Attributes
    ----------
    data : FoldData
        The folds.
    squared : bool
        ``h(z) = (y - z)^2 / 2`` (Lasso family), else the binomial log loss.
    targets : Tensor
        (n, c) targets, or (n, 1) signs in {-1, 1} for the log loss.
    fit_intercept : bool
        Whether the model has an (unpenalized) intercept.
    weights : callable
        ``weights(hparams) -> (K, n)``, the training weights of each fold.
    penalties : callable
        ``penalties(hparams) -> (l1, l2)``, two (K, d) tensors.
    fit : callable
        ``fit(model, params, hparams, folds, tol) -> params``: the solver
        that finds the support, warm-started from ``params``.
    tol : float
        Tolerance of that solver in the first fit.
    one_dimensional : bool
        Whether the fitted estimator holds one-dimensional ``coef_``.
    solution : dict
        ``{"coef": Tensor}``, the last solution :func:`solve` returned: the
        only point at which the inner loss is defined.
    """

    data: FoldData
    squared: bool
    targets: Tensor
    fit_intercept: bool
    weights: Callable[[Params], Tensor]
    penalties: Callable[[Params], tuple]
    fit: Callable
    tol: float
    one_dimensional: bool
    solution: dict = field(default_factory=dict)


def _normalizer(model: SparseLinear, weights: Tensor) -> Tensor:
    """Per fold (K,): the fitted weights' sum (squared) or the training size."""
    return weights.sum(1) if model.squared else model.data.train.sum(1)


def _sample_losses(model: SparseLinear, Z: Tensor) -> Tensor:
    if model.squared:
        return 0.5 * (model.targets - Z) ** 2
    return F.softplus(-model.targets * Z)


def _derivatives(model: SparseLinear, params: Params, hparams: Params):
    """First and second derivatives (K, n, c) of the data term in the scores."""
    weights = model.weights(hparams)
    scale = (weights / _normalizer(model, weights)[:, None])[..., None]
    Z = decision(model.data.X, params)
    if model.squared:
        return scale * (Z - model.targets), scale.expand_as(Z)
    margin = torch.sigmoid(-model.targets * Z)
    return -scale * model.targets * margin, scale * margin * (1.0 - margin)


def _support(coef: Tensor):
    coef = coef.detach()
    return (coef != 0).to(coef.dtype), torch.sign(coef)


def inner_loss(model: SparseLinear, params: Params, hparams: Params) -> Tensor:
    """The restricted smooth objective at the support and signs of ``params``,
    which must be the solution :func:`solve` returned."""
    coef = params["coef"]
    last = model.solution.get("coef")
    if last is None or last.shape != coef.shape or not torch.equal(last, coef.detach()):
        # Steps of gradient descent from the zero start would keep every
        # coefficient at zero: the support is the solution's.
        raise ValueError(
            "The L1 penalty is differentiated on the support of the inner "
            "solution, not through steps of gradient descent; use "
            "method='auto', 'implicit_forward' or 'implicit_cg'."
        )
    mask, signs = _support(coef)
    on = {**params, "coef": coef * mask}
    weights = model.weights(hparams)
    losses = _sample_losses(model, decision(model.data.X, on)).sum(-1)
    fit = (weights * losses).sum(1) / _normalizer(model, weights)
    l1, l2 = model.penalties(hparams)
    penalty = (l1[..., None] * signs * on["coef"]).sum((1, 2))
    penalty = penalty + 0.5 * (l2[..., None] * on["coef"] ** 2).sum((1, 2))
    off = 0.5 * ((coef * (1.0 - mask)) ** 2).sum((1, 2))
    return (fit + penalty + off).sum()


def outer_loss(model: SparseLinear, params: Params, hparams: Params) -> Tensor:
    """Mean validation MSE (per target) or log loss, averaged over folds."""
    Z = decision(model.data.X, params)
    losses = _sample_losses(model, Z).mean(-1)
    return validation_mean(2.0 * losses if model.squared else losses, model.data)


def _gradient(model: SparseLinear, params: Params, hparams: Params):
    """The data term's gradient (coef and intercept) and its curvature."""
    first, second = _derivatives(model, params, hparams)
    grad = {"coef": transposed_matmul(model.data.X, first)}
    if model.fit_intercept:
        grad["intercept"] = first.sum(1)
    return grad, second


def _support_columns(X, mask: Tensor, index: Tensor, valid: Tensor) -> Tensor:
    """The support's columns of each fold's ``X``, (K, c, n, size), zero past
    the support's size: indexed from a dense ``X``; from a sparse one, by one
    product with a 0/1 selection matrix (on the 200 x 5000 design, the product
    with a dense ``X`` took 0.1 s a step, the indexing 1 ms)."""
    n_folds, n_features, n_outputs = mask.shape
    size = index.shape[1]
    columns = index.permute(0, 2, 1)
    on = valid.permute(0, 2, 1)[:, :, None, :]
    if not isinstance(X, SparseDesign):
        if X.dim() == 2:
            return X[:, columns].permute(1, 2, 0, 3) * on
        folds = torch.arange(n_folds, device=X.device)[:, None, None]
        return X[folds, :, columns].transpose(2, 3) * on
    selection = mask.new_zeros(n_folds, n_features, n_outputs, size)
    places = torch.arange(size).expand(n_folds, n_outputs, size).transpose(1, 2)
    selection[
        torch.arange(n_folds)[:, None, None],
        index,
        torch.arange(n_outputs)[None, None, :],
        places,
    ] = valid
    gathered = matmul(X, selection.reshape(n_folds, n_features, -1))
    return gathered.reshape(n_folds, -1, n_outputs, size).permute(0, 2, 1, 3)


def _support_inverse(model: SparseLinear, mask: Tensor, second: Tensor, l2: Tensor):
    """``v -> H^{-1} v`` for the restricted Hessian ``H`` (identity off the
    support), exact: the support's columns of ``X`` are gathered
    (:func:`_support_columns`) and each fold's small Gram matrix (support size
    plus the intercept) is inverted. None when the gathered columns would
    exceed ``GATHER_SIZE`` entries.

    The last inverse is kept: the Newton polish and the hypergradient ask for
    it at the same support, curvature and L2 weights (the squared loss's
    curvature is its weights alone)."""
    last = model.solution.get("support_inverse")
    if last is not None and all(
        a.shape == b.shape and torch.equal(a, b)
        for a, b in zip(last[0], (mask, second, l2))
    ):
        return last[1]
    solve = _new_support_inverse(model, mask, second, l2)
    model.solution["support_inverse"] = ((mask, second, l2), solve)
    return solve


def _inverse(matrices: Tensor) -> Callable[[Tensor], Tensor]:
    """``b -> M^{-1} b`` for a batch of positive semi-definite ``M``: by
    Cholesky factors where every one is definite (1.7 ms against the
    pseudo-inverse's 29 ms for five Gram matrices of 151 features, one
    thread), else by the pseudo-inverse."""
    factors, info = torch.linalg.cholesky_ex(matrices)
    if bool((info == 0).all()):
        return lambda b: torch.cholesky_solve(b, factors)
    inverse = torch.linalg.pinv(matrices, hermitian=True)
    return lambda b: inverse @ b


def _new_support_inverse(model, mask, second, l2):
    n_folds, n_features, n_outputs = mask.shape
    size = max(int(mask.sum(1).max()), 1)
    X = model.data.X
    extent = n_features if isinstance(X, SparseDesign) else X.shape[-2]
    # The Gram matrices too: an elastic net's support of 5000 features made
    # their pseudo-inverses take 2 s a step on the 200 x 5000 design.
    if n_folds * n_outputs * size * max(extent, size) > GATHER_SIZE:
        return None
    # The support's features first, in order, then padding (the first
    # zero-valued entries past the support's size).
    index = torch.argsort(mask, dim=1, descending=True, stable=True)[:, :size]
    valid = (torch.arange(size)[None, :, None] < mask.sum(1, keepdim=True)).to(
        mask.dtype
    )
    design = _support_columns(X, mask, index, valid)
    if model.fit_intercept:
        design = torch.cat([design, torch.ones_like(design[..., :1])], dim=-1)
    weighted = second.permute(0, 2, 1)[..., None] * design
    hessian = design.transpose(-1, -2) @ weighted
    l2_on = torch.gather(l2[..., None].expand_as(mask), 1, index).transpose(1, 2)
    diagonal = valid.transpose(1, 2) * l2_on + (1.0 - valid.transpose(1, 2))
    if model.fit_intercept:
        diagonal = torch.cat([diagonal, torch.zeros_like(diagonal[..., :1])], -1)
    inverse = _inverse(hessian + torch.diag_embed(diagonal))

    def solve(v):
        on = torch.gather(v["coef"], 1, index).transpose(1, 2)
        if model.fit_intercept:
            on = torch.cat([on, v["intercept"][..., None]], dim=-1)
        solved = inverse(on[..., None])[..., 0]
        coef = (1.0 - mask) * v["coef"]
        coef = coef.scatter_add(
            1, index, (solved[..., :size] * valid.transpose(1, 2)).transpose(1, 2)
        )
        result = {"coef": coef}
        if model.fit_intercept:
            result["intercept"] = solved[..., size]
        return result

    return solve


def curvature(model: SparseLinear, params: Params, hparams: Params) -> Curvature:
    """The restricted Hessian (identity off the support) as products, and its
    exact inverse as the preconditioner (its diagonal's where the support's
    columns are too many to gather)."""
    X = model.data.X
    mask, _ = _support(params["coef"])
    _, l2 = model.penalties(hparams)
    _, second = _gradient(model, params, hparams)

    def hessian_vector(v):
        on = {**v, "coef": v["coef"] * mask}
        scores = second * decision(X, on)
        product = {
            "coef": mask * transposed_matmul(X, scores) + l2[..., None] * on["coef"]
        }
        product["coef"] = product["coef"] + (1.0 - mask) * v["coef"]
        if model.fit_intercept:
            product["intercept"] = scores.sum(1)
        return product

    precondition = _support_inverse(model, mask, second, l2)
    if precondition is None:
        diagonal = {"coef": mask * _diagonal(model, second, l2) + (1.0 - mask)}
        if model.fit_intercept:
            diagonal["intercept"] = second.sum(1)

        def precondition(v):
            return {name: v[name] / diagonal[name].clamp_min(1e-300) for name in v}

    return Curvature(hessian_vector, precondition)


def _diagonal(model: SparseLinear, second: Tensor, l2: Tensor) -> Tensor:
    """The diagonal (K, d, c) of the smooth part's Hessian in the coefficients."""
    X = model.data.X
    squares = (
        X.squared_transposed_matmul(second)
        if isinstance(X, SparseDesign)
        else transposed_matmul(X * X, second)
    )
    return squares + l2[..., None]


def _restricted_gradient(model, params, hparams):
    """Gradient of the restricted objective and the data term's alone."""
    mask, signs = _support(params["coef"])
    l1, l2 = model.penalties(hparams)
    data_grad, _ = _gradient(model, params, hparams)
    grad = dict(data_grad)
    grad["coef"] = mask * (data_grad["coef"] + l1[..., None] * signs)
    grad["coef"] = grad["coef"] + l2[..., None] * params["coef"]
    return grad, data_grad


def polish(model: SparseLinear, params: Params, hparams: Params) -> Params:
    """Newton steps on the support of ``params``, all folds at once."""
    eps = torch.finfo(params["coef"].dtype).eps
    for _ in range(NEWTON_STEPS):
        grad, _ = _restricted_gradient(model, params, hparams)
        size = max(float(g.abs().max()) for g in grad.values())
        if size <= 10 * eps * max(1.0, float(params["coef"].abs().max())):
            break
        step = _newton_step(model, params, hparams, grad)
        params = {name: params[name] - step[name] for name in params}
        if model.squared:
            break
    return params


def _newton_step(model: SparseLinear, params: Params, hparams: Params, grad):
    """``H^{-1} grad`` on the support by preconditioned conjugate gradient."""
    at = curvature(model, params, hparams)
    step, _, _ = conjugate_gradient(
        at.hessian_vector,
        grad,
        tol=POLISH_TOL,
        max_iter=max(100, 2 * model.data.train.shape[1]),
        precondition=at.precondition,
        batched=True,
    )
    return step


def active_set_polish(model: SparseLinear, params: Params, hparams: Params):
    """The squared loss's solution from near ``params`` by semismooth Newton
    steps (the primal-dual active set method), all folds at once: ``(params,
    signs)``, the signs those of the last restricted problem, for :func:`kkt`;
    None where the support's columns are too many to gather.

    Each step solves the objective restricted to a support and its signs
    exactly (one application of the support's inverse: the Hessian is
    constant), then takes the support and signs of a proximal coordinate step
    from there, ``h_j w_j - g_j`` against the L1 weight (``g`` the gradient of
    the smooth part, ``h`` its diagonal), until they repeat: at the solution
    (Hintermuller, Ito and Kunisch, 2002). It corrects the few signs and
    features that coordinate descent at a loose tolerance gets wrong on an
    ill-conditioned support, where that solver's last digits took thousands
    of epochs.
    """
    l1, l2 = model.penalties(hparams)
    _, second = _derivatives(model, params, hparams)
    diagonal = _diagonal(model, second, l2)
    # Below the KKT check's slack, so that the features it passes settle.
    threshold = l1[..., None] * (1.0 + 1e-9)
    mask, signs = _support(params["coef"])
    # Without an L2 part, a support of as many features as training samples
    # has a singular restricted problem, whose pseudo-inverse solution the
    # steps can settle on without it being optimal: such a fold keeps its
    # support (the KKT check then sends it back to the solver).
    largest = model.data.train.sum(1) - float(model.fit_intercept)
    largest = torch.where(l2.amax(1) > 0, torch.inf, largest)[:, None]
    frozen = (mask.sum(1) > largest).any(1)
    # The smooth part's gradient at zero: each restricted solution is one
    # solve from there (its Hessian is constant), one gradient a step.
    at_zero, _ = _gradient(
        model, {k: torch.zeros_like(v) for k, v in params.items()}, hparams
    )
    solved = None
    for _ in range(ACTIVE_SET_STEPS):
        inverse = _support_inverse(model, mask, second, l2)
        if inverse is None:
            break
        linear = {**at_zero, "coef": mask * (at_zero["coef"] + l1[..., None] * signs)}
        params = {name: -value for name, value in inverse(linear).items()}
        grad, _ = _gradient(model, params, hparams)
        solved = params, mask, signs, inverse, grad
        moved = (diagonal - l2[..., None]) * params["coef"] - grad["coef"]
        now = (moved.abs() > threshold).to(mask.dtype)
        frozen = frozen | (now.sum(1) > largest).any(1)
        keep = per_fold(frozen, now)
        now = torch.where(keep, mask, now)
        now_signs = torch.where(keep, signs, torch.sign(moved) * now)
        if torch.equal(now, mask) and torch.equal(now_signs, signs):
            break
        mask, signs = now, now_signs
    if solved is None:
        return None
    # One Newton step from the last solve's result refines it to rounding.
    params, mask, signs, inverse, grad = solved
    smooth = grad["coef"] + l2[..., None] * params["coef"]
    step = inverse({**grad, "coef": mask * (smooth + l1[..., None] * signs)})
    return {name: params[name] - step[name] for name in params}, signs


def _polished(model: SparseLinear, params: Params, hparams: Params):
    """``params`` polished, and the signs it was polished at."""
    if model.squared:
        found = active_set_polish(model, params, hparams)
        if found is not None:
            return found
    return polish(model, params, hparams), torch.sign(params["coef"])


def kkt(model: SparseLinear, params: Params, signs: Tensor, hparams: Params):
    """Per fold (K,): whether ``params`` keeps ``signs`` on its support and no
    off-support gradient exceeds its L1 weight."""
    grad, data_grad = _restricted_gradient(model, params, hparams)
    l1, _ = model.penalties(hparams)
    mask, now = _support(params["coef"])
    scale = 1.0 + float(l1.abs().max())
    stationary = (grad["coef"].abs() <= 1e-8 * scale).flatten(1).all(1)
    same = ((now == signs) | (mask == 0)).flatten(1).all(1)
    bound = l1[..., None] * (1.0 + 1e-7) + 1e-12 * scale
    off = (((1.0 - mask) * data_grad["coef"]).abs() <= bound).flatten(1).all(1)
    return stationary & same & off


def solve(model: SparseLinear, params: Params, hparams: Params) -> Params:
    """Each fold fitted by scikit-learn, polished on its support, KKT-checked."""
    params = _solve(model, params, hparams)
    model.solution["coef"] = params["coef"]
    return params


def _solve(model: SparseLinear, params: Params, hparams: Params) -> Params:
    hparams = {name: value.detach() for name, value in hparams.items()}
    params = {name: value.detach() for name, value in params.items()}
    n_folds = params["coef"].shape[0]
    folds, tol = list(range(n_folds)), model.tol
    with torch.no_grad():
        for _ in range(KKT_REFITS + 1):
            params = model.fit(model, params, hparams, folds, tol)
            polished, signs = _polished(model, params, hparams)
            passed = kkt(model, polished, signs, hparams)
            params = {
                name: torch.where(per_fold(passed, value), polished[name], value)
                for name, value in params.items()
            }
            folds = [k for k in range(n_folds) if not bool(passed[k])]
            if not folds:
                return params
            tol = tol * 1e-3
    warnings.warn(
        f"The solutions of folds {folds} failed the optimality (KKT) check after "
        f"{KKT_REFITS} refits at smaller tolerances; their hypergradient is only "
        "approximate. Increase the estimator's max_iter.",
        ConvergenceWarning,
        stacklevel=4,
    )
    return params


def _lipschitz(model, params, hparams, n_iter=30):
    """Per fold (K,): a bound on the data term's curvature (power iteration
    on its Hessian at the largest second derivative of the loss)."""
    weights = model.weights(hparams)
    second = (weights / _normalizer(model, weights)[:, None])[..., None]
    # The log loss's second derivative is at most 1/4.
    second = second if model.squared else 0.25 * second
    vector = {name: torch.ones_like(value) for name, value in params.items()}
    value = torch.ones(params["coef"].shape[0], dtype=params["coef"].dtype)
    for _ in range(n_iter):
        scores = second * decision(model.data.X, vector)
        product = {"coef": transposed_matmul(model.data.X, scores)}
        if model.fit_intercept:
            product["intercept"] = scores.sum(1)
        value = torch.sqrt(sum((p**2).flatten(1).sum(1) for p in product.values()))
        vector = {
            name: p / per_fold(value.clamp_min(1e-300), p)
            for name, p in product.items()
        }
    return 1.1 * value


def _prox(model, params, step, l1, l2):
    """The proximal map of ``step`` times the penalty (intercept untouched)."""
    coef = params["coef"]
    threshold = per_fold(step, coef) * l1[..., None]
    shrunk = torch.sign(coef) * (coef.abs() - threshold).clamp_min(0.0)
    return {**params, "coef": shrunk / (1.0 + per_fold(step, coef) * l2[..., None])}


def proximal_gradient(model, params, hparams, folds, tol):
    """FISTA with restarts, all folds at once, until the gradient mapping of
    every fold is below ``tol`` (the support then settles; the polish does
    the rest)."""
    l1, l2 = model.penalties(hparams)
    step = 1.0 / (_lipschitz(model, params, hparams) + l2.max(1).values)
    current, extrapolated, momentum = params, params, 1.0
    for _ in range(100_000):
        grad, _ = _gradient(model, extrapolated, hparams)
        moved = {k: v - per_fold(step, v) * grad[k] for k, v in extrapolated.items()}
        new = _prox(model, moved, step, l1, l2)
        residual = max(
            float(((extrapolated[k] - new[k]) / per_fold(step, new[k])).abs().max())
            for k in new
        )
        if residual <= tol:
            return new
        uphill = sum(
            ((extrapolated[k] - new[k]) * (new[k] - current[k])).sum() for k in new
        )
        if float(uphill) > 0:
            # Restart the momentum (O'Donoghue and Candes, 2015).
            current, extrapolated, momentum = new, new, 1.0
            continue
        following = (1.0 + (1.0 + 4.0 * momentum**2) ** 0.5) / 2.0
        ratio = (momentum - 1.0) / following
        extrapolated = {k: new[k] + ratio * (new[k] - current[k]) for k in new}
        current, momentum = new, following
    return current


def init_params(model: SparseLinear) -> Params:
    X = model.data.X
    shape = (model.data.train.shape[0], X.shape[-1], model.targets.shape[1])
    params = {"coef": torch.zeros(shape, dtype=X.dtype, device=X.device)}
    if model.fit_intercept:
        params["intercept"] = torch.zeros(
            shape[0], shape[2], dtype=X.dtype, device=X.device
        )
    return params


def fitted_attributes(model: SparseLinear, params: Params) -> list:
    """Per fold, the ``coef_`` and ``intercept_`` of the fitted estimator."""
    return linear_attributes(params, model.one_dimensional)


def _problem(model: SparseLinear) -> Problem:
    def bind(function):
        return lambda *args: function(model, *args)

    return Problem(
        bind(init_params),
        bind(inner_loss),
        bind(outer_loss),
        bind(solve),
        bind(fitted_attributes),
        bind(curvature),
        newton_first_step=model.squared,
    )


def _values(hparams, name, default, like):
    value = hyperparameter(hparams, name, default, like)
    return value, to_numpy(value)


def _check_per_feature(estimator, learned, name):
    if learned.get(name) == "per_feature" and (
        "l1_ratio" in learned or l1_ratio_of(estimator) != 1
    ):
        raise ValueError(
            f"A PerFeature {name!r} of {type(estimator).__name__} is the weighted "
            "Lasso: it needs a pure L1 penalty (l1_ratio=1, not learned), which "
            "a feature rescaling expresses exactly."
        )


def elastic_net(estimator, data: FoldData, learned, options) -> Problem:
    """Inner problem of :class:`~sklearn.linear_model.Lasso` and
    :class:`~sklearn.linear_model.ElasticNet`."""
    _check_per_feature(estimator, learned, "alpha")
    Y = np.asarray(data.y, dtype=float)
    targets = to_tensor(Y.reshape(Y.shape[0], -1), device=data.X.device)
    targets = targets.to(data.X.dtype)
    n_folds, n_features = data.train.shape[0], data.X.shape[-1]
    ratio_default = l1_ratio_of(estimator)

    def penalties(hparams):
        alpha = hyperparameter(hparams, "alpha", estimator.alpha, data.X)
        ratio = hyperparameter(hparams, "l1_ratio", ratio_default, data.X)
        alpha = alpha.expand(n_features)[None, :].expand(n_folds, -1)
        return alpha * ratio, alpha * (1.0 - ratio)

    def settings(hparams):
        alpha = _values(hparams, "alpha", estimator.alpha, data.X)[1]
        params = {"alpha": float(alpha) if alpha.ndim == 0 else 1.0}
        if isinstance(estimator, ElasticNet) and not isinstance(estimator, Lasso):
            ratio = _values(hparams, "l1_ratio", ratio_default, data.X)[1]
            params["l1_ratio"] = float(ratio)
        return params, None if alpha.ndim == 0 else 1.0 / alpha

    model = SparseLinear(
        data=data,
        squared=True,
        targets=targets,
        fit_intercept=estimator.fit_intercept,
        weights=lambda hparams: fold_weights(data, hparams),
        penalties=penalties,
        fit=partial(fit_folds, fold_fitter(estimator, data, Y, settings)),
        tol=options["tol"],
        one_dimensional=Y.ndim == 1,
    )
    return _problem(model)


def _check_logistic(estimator, learned, n_classes):
    params = estimator.get_params(deep=False)
    if params["solver"] != "saga":
        raise ValueError(
            f"Solver {params['solver']} supports only 'l2' or None penalties; the "
            "L1 and elastic-net penalties of LogisticRegression with continuous "
            "hyperparameters need solver='saga' (whose intercept is not "
            "penalized, unlike liblinear's)."
        )
    if "l1_ratio" in learned and params.get("penalty") not in (
        "elasticnet",
        "deprecated",
    ):
        raise ValueError(
            f"l1_ratio is only used when penalty is 'elasticnet'; got "
            f"penalty={params.get('penalty')!r}."
        )
    if n_classes > 2:
        raise ValueError(
            "Continuous hyperparameters of an L1 or elastic-net LogisticRegression "
            f"are supported for binary targets only; got {n_classes} classes."
        )


def sparse_logistic_regression(estimator, data: FoldData, learned, options):
    """Inner problem of an L1 / elastic-net binary
    :class:`~sklearn.linear_model.LogisticRegression` (``solver="saga"``)."""
    codes = LabelEncoder().fit_transform(data.y)
    n_classes = int(codes.max()) + 1
    _check_logistic(estimator, learned, n_classes)
    _check_per_feature(estimator, learned, "C")
    check_classes_in_folds(codes, n_classes, data)
    fixed = class_weights(estimator.class_weight, codes, n_classes, data)
    signs = 2.0 * codes[:, None] - 1.0
    n_train = data.train.sum(1)
    n_features = data.X.shape[-1]
    ratio_default = l1_ratio_of(estimator)

    def penalties(hparams):
        C = hyperparameter(hparams, "C", estimator.C, data.X)
        ratio = hyperparameter(hparams, "l1_ratio", ratio_default, data.X)
        inverse = 1.0 / (C.expand(n_features)[None, :] * n_train[:, None])
        return inverse * ratio, inverse * (1.0 - ratio)

    def settings(hparams):
        C = _values(hparams, "C", estimator.C, data.X)[1]
        params = {"C": float(C) if C.ndim == 0 else 1.0, "class_weight": None}
        if "l1_ratio" in learned:
            params["l1_ratio"] = float(_values(hparams, "l1_ratio", 0, data.X)[1])
        return params, None if C.ndim == 0 else C

    model = SparseLinear(
        data=data,
        squared=False,
        targets=to_tensor(signs, device=data.X.device).to(data.X.dtype),
        fit_intercept=estimator.fit_intercept,
        weights=lambda hparams: fold_weights(data, hparams, fixed=fixed),
        penalties=penalties,
        fit=proximal_gradient,
        tol=options["tol"],
        one_dimensional=False,
    )
    return _problem(model)
