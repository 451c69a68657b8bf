"""Numerical oracles for the hypergradient engine (all in float64).

Ridge regression has a closed-form hypergradient; everything else is checked
against central finite differences of the T-step validation loss and against
the other methods.
"""

import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning

from skbilevel.hypergrad import (
    METHODS,
    adam,
    forward,
    gradient_descent,
    heavy_ball,
    implicit_cg,
    implicit_fixed_point,
    implicit_forward,
    reverse,
    truncated_reverse,
    unroll,
)

DTYPE = torch.float64


def _ridge_data(n_train=40, n_val=30, n_features=5, seed=0):
    rng = np.random.default_rng(seed)
    coef = rng.normal(size=n_features)
    X = rng.normal(size=(n_train + n_val, n_features))
    y = X @ coef + rng.normal(scale=0.5, size=n_train + n_val)
    to = lambda a: torch.as_tensor(a, dtype=DTYPE)  # noqa: E731
    return to(X[:n_train]), to(y[:n_train]), to(X[n_train:]), to(y[n_train:])


def _ridge_losses(X, y, X_val, y_val):
    def inner(w, h):
        residual = X @ w["coef"] - y
        fit = 0.5 * (h["weights"] * residual**2).mean()
        return fit + 0.5 * (h["log_alpha"].exp() * w["coef"] ** 2).sum()

    def outer(w, h):
        return 0.5 * ((X_val @ w["coef"] - y_val) ** 2).mean()

    return inner, outer


@pytest.fixture(scope="module")
def ridge():
    """Ridge with one L2 penalty per feature and one weight per example.

    Inner: 1/(2n) sum_i s_i (x_i w - y_i)^2 + 1/2 sum_j exp(a_j) w_j^2.
    Outer: 1/(2m) ||X_val w - y_val||^2.
    """
    X, y, X_val, y_val = _ridge_data()
    inner, outer = _ridge_losses(X, y, X_val, y_val)
    rng = np.random.default_rng(1)
    hparams = {
        "log_alpha": torch.as_tensor(rng.uniform(-2, 0, X.shape[1]), dtype=DTYPE),
        "weights": torch.as_tensor(rng.uniform(0.5, 1.0, X.shape[0]), dtype=DTYPE),
    }
    return X, y, X_val, y_val, inner, outer, hparams


def _ridge_closed_form(X, y, X_val, y_val, hparams):
    """Exact hypergradient of the ridge validation loss at the inner optimum."""
    X, y, X_val, y_val = (t.numpy() for t in (X, y, X_val, y_val))
    alpha = np.exp(hparams["log_alpha"].numpy())
    s = hparams["weights"].numpy()
    n, m = X.shape[0], X_val.shape[0]
    A = X.T @ (s[:, None] * X) / n + np.diag(alpha)
    w = np.linalg.solve(A, X.T @ (s * y) / n)
    v = np.linalg.solve(A, X_val.T @ (X_val @ w - y_val) / m)
    # dw/dalpha_j = -A^{-1} e_j w_j ; dw/ds_i = -A^{-1} x_i r_i / (2n) * 2
    grad_log_alpha = -v * w * alpha
    grad_weights = -(X @ v) * (X @ w - y) / n
    return {"log_alpha": grad_log_alpha, "weights": grad_weights}


def _lipschitz(X):
    return float(torch.linalg.eigvalsh(X.T @ X / X.shape[0]).max()) + 1.0


def _relative_error(result, reference):
    num = sum(np.sum((result[k].numpy() - reference[k]) ** 2) for k in reference)
    den = sum(np.sum(reference[k] ** 2) for k in reference)
    return float(np.sqrt(num / den))


@pytest.mark.parametrize(
    "method", [implicit_cg, implicit_fixed_point, implicit_forward]
)
def test_implicit_matches_ridge_closed_form(ridge, method):
    X, y, X_val, y_val, inner, outer, hparams = ridge
    dynamics = gradient_descent(inner, learning_rate=1.0 / _lipschitz(X))
    w0 = {"coef": torch.zeros(X.shape[1], dtype=DTYPE)}
    result = method(w0, hparams, 5000, dynamics, outer, tol=1e-12, max_iter=2000)
    exact = _ridge_closed_form(X, y, X_val, y_val, hparams)
    assert _relative_error(result.grad, exact) < 1e-6


@pytest.mark.parametrize("method", [reverse, forward])
def test_unrolled_hypergradient_converges_to_closed_form(ridge, method):
    X, y, X_val, y_val, inner, outer, hparams = ridge
    dynamics = gradient_descent(inner, learning_rate=0.1 / _lipschitz(X))
    w0 = {"coef": torch.zeros(X.shape[1], dtype=DTYPE)}
    exact = _ridge_closed_form(X, y, X_val, y_val, hparams)
    errors = [
        _relative_error(method(w0, hparams, T, dynamics, outer).grad, exact)
        for T in (10, 40, 160, 640)
    ]
    assert all(later < earlier for earlier, later in zip(errors, errors[1:])), errors
    assert errors[0] > 0.5  # short horizons really are biased ...
    assert errors[-1] < 1e-8  # ... and the bias vanishes as T grows


def _finite_differences(objective, hparams, eps=1e-6):
    """Central differences of objective(hparams) in every hyperparameter entry."""
    grads = {}
    for name, value in hparams.items():
        flat = value.detach().reshape(-1).clone()
        grad = torch.empty_like(flat)
        for i in range(flat.numel()):
            shifted = []
            for sign in (1, -1):
                probe = flat.clone()
                probe[i] += sign * eps
                shifted.append(objective({**hparams, name: probe.reshape(value.shape)}))
            grad[i] = (shifted[0] - shifted[1]) / (2 * eps)
        grads[name] = grad.reshape(value.shape)
    return grads


def _t_step_objective(w0, T, dynamics, outer):
    def objective(hparams):
        with torch.no_grad():
            return float(outer(unroll(dynamics, w0, hparams, T)[0], hparams))

    return objective


def _assert_close(grad, reference, rtol):
    for name in reference:
        np.testing.assert_allclose(
            grad[name].numpy(), reference[name].numpy(), rtol=rtol, atol=rtol * 1e-3
        )


def test_reverse_forward_and_finite_differences_agree_on_ridge(ridge):
    X, y, X_val, y_val, inner, outer, hparams = ridge
    dynamics = gradient_descent(inner, learning_rate=0.5 / _lipschitz(X))
    w0 = {"coef": torch.zeros(X.shape[1], dtype=DTYPE)}
    rev = reverse(w0, hparams, 30, dynamics, outer)
    fwd = forward(w0, hparams, 30, dynamics, outer)
    _assert_close(fwd.grad, rev.grad, rtol=1e-8)
    fd = _finite_differences(_t_step_objective(w0, 30, dynamics, outer), hparams)
    _assert_close(rev.grad, fd, rtol=1e-6)
    assert torch.allclose(rev.outer_loss, fwd.outer_loss, rtol=1e-12)


@pytest.fixture(scope="module")
def softmax():
    """Weighted softmax regression: every hyperparameter kind of the engine.

    Per-example weights through a sigmoid, per-feature L2 in log space, and
    the learning rate (log) and momentum (logit) of the inner dynamics.
    """
    rng = np.random.default_rng(0)
    n, d, k = 30, 4, 3
    X = torch.as_tensor(rng.normal(size=(n, d)), dtype=DTYPE)
    y = torch.as_tensor(rng.integers(0, k, n))
    X_val = torch.as_tensor(rng.normal(size=(20, d)), dtype=DTYPE)
    y_val = torch.as_tensor(rng.integers(0, k, 20))
    cross_entropy = torch.nn.functional.cross_entropy

    def inner(w, h):
        losses = cross_entropy(X @ w["W"] + w["b"], y, reduction="none")
        penalty = (h["log_alpha"].exp()[:, None] * w["W"] ** 2).sum()
        return (h["logit_weights"].sigmoid() * losses).mean() + penalty / 2

    def outer(w, h):
        return cross_entropy(X_val @ w["W"] + w["b"], y_val)

    hparams = {
        "logit_weights": torch.as_tensor(rng.normal(size=n), dtype=DTYPE),
        "log_alpha": torch.as_tensor(rng.normal(-2, 0.5, size=d), dtype=DTYPE),
        "log_lr": torch.tensor(np.log(0.3), dtype=DTYPE),
        "logit_momentum": torch.tensor(0.0, dtype=DTYPE),
    }
    w0 = {
        "W": torch.as_tensor(rng.normal(scale=0.1, size=(d, k)), dtype=DTYPE),
        "b": torch.zeros(k, dtype=DTYPE),
    }
    return inner, outer, hparams, w0


def _learned_rate(h, t):
    return h["log_lr"].exp()


def _learned_momentum(h, t):
    return h["logit_momentum"].sigmoid()


DYNAMICS = {
    "gd": lambda inner: gradient_descent(inner, _learned_rate),
    "heavy_ball": lambda inner: heavy_ball(inner, _learned_rate, _learned_momentum),
    "adam": lambda inner: adam(inner, lambda h, t: 0.05 * h["log_lr"].exp()),
}


@pytest.mark.parametrize("name", DYNAMICS)
def test_all_hyperparameter_kinds_against_finite_differences(softmax, name):
    inner, outer, hparams, w0 = softmax
    dynamics = DYNAMICS[name](inner)
    T = 25
    rev = reverse(w0, hparams, T, dynamics, outer)
    fwd = forward(w0, hparams, T, dynamics, outer, chunk_size=7)
    _assert_close(fwd.grad, rev.grad, rtol=1e-8)
    fd = _finite_differences(_t_step_objective(w0, T, dynamics, outer), hparams)
    _assert_close(rev.grad, fd, rtol=1e-5)
    for key in ("logit_weights", "log_alpha", "log_lr"):
        assert rev.grad[key].abs().max() > 1e-6  # each kind really is exercised
    if name == "heavy_ball":
        assert rev.grad["logit_momentum"].abs() > 1e-6


def test_per_step_and_per_group_learning_rates(softmax):
    inner, outer, hparams, w0 = softmax
    T = 12
    hparams = {
        "log_alpha": hparams["log_alpha"],
        "lr": torch.full((T,), 0.3, dtype=DTYPE),
    }
    hparams["lr_bias"] = torch.tensor(0.2, dtype=DTYPE)

    def inner_unweighted(w, h):
        losses = inner(w, {**h, "logit_weights": torch.full((30,), 10.0, dtype=DTYPE)})
        return losses

    dynamics = gradient_descent(
        inner_unweighted, lambda h, t: {"W": h["lr"][t], "b": h["lr_bias"]}
    )
    rev = reverse(w0, hparams, T, dynamics, outer)
    fwd = forward(w0, hparams, T, dynamics, outer)
    _assert_close(fwd.grad, rev.grad, rtol=1e-8)
    fd = _finite_differences(_t_step_objective(w0, T, dynamics, outer), hparams)
    _assert_close(rev.grad, fd, rtol=1e-5)
    # Every step's learning rate influences the result, so none is zero.
    assert (rev.grad["lr"].abs() > 1e-8).all()


def test_truncated_reverse_equals_reverse_with_full_horizon(softmax):
    inner, outer, hparams, w0 = softmax
    dynamics = DYNAMICS["heavy_ball"](inner)
    full = reverse(w0, hparams, 15, dynamics, outer)
    truncated = truncated_reverse(w0, hparams, 15, dynamics, outer, K=15)
    _assert_close(truncated.grad, full.grad, rtol=1e-12)
    short = truncated_reverse(w0, hparams, 15, dynamics, outer, K=3)
    # Same end point, different (biased) hypergradient.
    assert torch.allclose(short.params["W"], full.params["W"])
    assert not torch.allclose(short.grad["log_alpha"], full.grad["log_alpha"])
    with pytest.raises(ValueError, match="K must be in"):
        truncated_reverse(w0, hparams, 15, dynamics, outer, K=0)


def test_methods_table_shares_one_signature(ridge):
    X, y, X_val, y_val, inner, outer, hparams = ridge
    dynamics = gradient_descent(inner, learning_rate=1.0 / _lipschitz(X))
    w0 = {"coef": torch.zeros(X.shape[1], dtype=DTYPE)}
    options = {"truncated_reverse": {"K": 400}}
    exact = _ridge_closed_form(X, y, X_val, y_val, hparams)
    for name, method in METHODS.items():
        result = method(w0, hparams, 400, dynamics, outer, **options.get(name, {}))
        assert _relative_error(result.grad, exact) < 1e-5, name
        assert set(result.grad) == set(hparams)


def test_implicit_warm_start_with_zero_steps(ridge):
    """``T=0`` treats ``params`` as the solution (e.g. from another solver)."""
    X, y, X_val, y_val, inner, outer, hparams = ridge
    dynamics = gradient_descent(inner, learning_rate=1.0 / _lipschitz(X))
    w0 = {"coef": torch.zeros(X.shape[1], dtype=DTYPE)}
    solved = implicit_cg(w0, hparams, 5000, dynamics, outer, tol=1e-12)
    again = implicit_cg(solved.params, hparams, 0, dynamics, outer)
    _assert_close(again.grad, solved.grad, rtol=1e-10)


def test_implicit_warns_when_inner_problem_is_not_solved(ridge):
    X, y, X_val, y_val, inner, outer, hparams = ridge
    dynamics = gradient_descent(inner, learning_rate=1e-3)
    w0 = {"coef": torch.zeros(X.shape[1], dtype=DTYPE)}
    with pytest.warns(ConvergenceWarning, match="not solved"):
        implicit_cg(w0, hparams, 5, dynamics, outer)


@pytest.mark.parametrize("method", [reverse, forward, implicit_cg, implicit_forward])
def test_divergence_is_reported_not_returned(ridge, method):
    X, y, X_val, y_val, inner, outer, hparams = ridge
    dynamics = gradient_descent(inner, learning_rate=100.0)
    w0 = {"coef": torch.zeros(X.shape[1], dtype=DTYPE)}
    with warnings.catch_warnings():
        # The implicit solver also warns that it did not converge.
        warnings.simplefilter("ignore", ConvergenceWarning)
        with pytest.raises(FloatingPointError, match="diverged"):
            method(w0, hparams, 300, dynamics, outer)


@pytest.mark.parametrize("name", DYNAMICS)
def test_gradcheck_of_one_step(softmax, name):
    inner, outer, hparams, w0 = softmax
    dynamics = DYNAMICS[name](inner)
    # Optimizer memory well away from zero (Adam's second moment is under a
    # square root, so a tiny one would make finite differences meaningless).
    generator = torch.Generator().manual_seed(0)
    state = (w0,) + tuple(
        {
            k: torch.rand(v.shape, generator=generator, dtype=DTYPE) + 0.5
            for k, v in part.items()
        }
        for part in dynamics.init(w0)[1:]
    )
    names = [(i, key) for i, part in enumerate(state) for key in part]

    def one_step(*tensors):
        flat = iter(tensors)
        parts = [{key: next(flat) for key in part} for part in state]
        h = {key: next(flat) for key in hparams}
        new = dynamics.step(tuple(parts), h, 20)
        return tuple(new[i][key] for i, key in names)

    inputs = [t.detach().requires_grad_() for part in state for t in part.values()]
    inputs += [t.detach().requires_grad_() for t in hparams.values()]
    assert torch.autograd.gradcheck(one_step, inputs)


def test_float32_forward_mode_keeps_dtype():
    """pytorch#90065: Python floats must not promote float32 tangents."""
    X = torch.randn(20, 3)

    def inner(w, h):
        return (
            0.5 * ((X @ w["w"]) ** 2).mean()
            + 0.5 * h["log_alpha"].exp() * (w["w"] ** 2).sum()
        )

    def outer(w, h):
        return 0.5 * ((w["w"] - 1.0) ** 2).sum()

    dynamics = gradient_descent(inner, 0.1)
    h = {"log_alpha": torch.tensor(0.0)}
    w0 = {"w": torch.zeros(3)}
    fwd = forward(w0, h, 10, dynamics, outer)
    rev = reverse(w0, h, 10, dynamics, outer)
    assert fwd.grad["log_alpha"].dtype == torch.float32
    torch.testing.assert_close(fwd.grad["log_alpha"], rev.grad["log_alpha"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", [reverse, forward, implicit_cg])
def test_gpu_matches_cpu(ridge, method):
    X, y, X_val, y_val, inner, outer, hparams = ridge
    dynamics = gradient_descent(inner, learning_rate=1.0 / _lipschitz(X))
    w0 = {"coef": torch.zeros(X.shape[1], dtype=DTYPE)}
    on_cpu = method(w0, hparams, 200, dynamics, outer)

    cuda = torch.device("cuda")
    inner_gpu, outer_gpu = _ridge_losses(*(t.to(cuda) for t in (X, y, X_val, y_val)))
    dynamics = gradient_descent(inner_gpu, learning_rate=1.0 / _lipschitz(X))
    on_gpu = method(
        {"coef": w0["coef"].to(cuda)},
        {k: v.to(cuda) for k, v in hparams.items()},
        200,
        dynamics,
        outer_gpu,
    )
    for name in hparams:
        torch.testing.assert_close(on_gpu.grad[name].cpu(), on_cpu.grad[name])


def test_implicit_cg_with_custom_products_and_preconditioner():
    """A user-given Hessian product and an (exact-inverse) preconditioner give
    the same hypergradient as double back-propagation, in one CG iteration."""
    torch.manual_seed(0)
    A = torch.randn(6, 6, dtype=torch.float64)
    H = A @ A.T + torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, dtype=torch.float64)

    def inner(w, h):
        return 0.5 * w["x"] @ H @ w["x"] - (b * h["c"]) @ w["x"]

    def outer(w, h):
        return ((w["x"] - 1.0) ** 2).sum()

    dyn = gradient_descent(inner, 0.01)
    hparams = {"c": torch.ones(6, dtype=torch.float64)}
    solution = {"x": torch.linalg.solve(H, b)}
    default = implicit_cg(solution, hparams, 0, dyn, outer, max_iter=50)
    inverse = torch.linalg.inv(H)
    custom = implicit_cg(
        solution,
        hparams,
        0,
        dyn,
        outer,
        max_iter=1,
        hessian_vector=lambda v: {"x": H @ v["x"]},
        preconditioner=lambda v: {"x": inverse @ v["x"]},
    )
    torch.testing.assert_close(
        custom.grad["c"], default.grad["c"], rtol=1e-8, atol=1e-10
    )
    # Closed form: dE/dc = b * H^{-1} (2 (x* - 1)).
    expected = b * (inverse @ (2 * (solution["x"] - 1.0)))
    torch.testing.assert_close(custom.grad["c"], expected, rtol=1e-8, atol=1e-10)
    # Warm-started at its own adjoint, conjugate gradient has nothing to do.
    warm = implicit_cg(
        solution, hparams, 0, dyn, outer, max_iter=0, init=default.adjoint
    )
    torch.testing.assert_close(warm.grad["c"], expected, rtol=1e-8, atol=1e-10)


def _spd(n, generator, n_folds=None):
    shape = (n, n) if n_folds is None else (n_folds, n, n)
    A = torch.randn(shape, generator=generator, dtype=DTYPE)
    return A @ A.transpose(-1, -2) + 0.1 * torch.eye(n, dtype=DTYPE)


@pytest.mark.parametrize("preconditioned", [False, True])
@pytest.mark.parametrize("warm", [False, True])
def test_conjugate_gradient_matches_a_dense_solve(preconditioned, warm):
    """The package's one CG solves a dense SPD system split over two entries of
    a dict (unbatched), with or without a Jacobi preconditioner and a start
    ``x0``; an exact-inverse preconditioner takes one product."""
    from skbilevel.hypergrad._cg import conjugate_gradient

    generator = torch.Generator().manual_seed(0)
    A = _spd(7, generator)
    b = torch.randn(7, generator=generator, dtype=DTYPE)

    def split(x):
        return {"a": x[:3], "b": x[3:].reshape(2, 2)}

    def joined(v):
        return torch.cat([v["a"], v["b"].reshape(-1)])

    diagonal = torch.diagonal(A)
    x0 = split(torch.randn(7, generator=generator, dtype=DTYPE)) if warm else None
    x, converged, n_products = conjugate_gradient(
        lambda v: split(A @ joined(v)),
        split(b),
        tol=1e-12,
        max_iter=100,
        precondition=(lambda v: split(joined(v) / diagonal))
        if preconditioned
        else None,
        x0=x0,
    )
    assert converged and 0 < n_products <= 100
    expected = torch.linalg.solve(A, b)
    torch.testing.assert_close(joined(x), expected, rtol=1e-9, atol=1e-10)
    inverse = torch.linalg.inv(A)
    _, converged, n_products = conjugate_gradient(
        lambda v: split(A @ joined(v)),
        split(b),
        tol=1e-10,
        max_iter=10,
        precondition=lambda v: split(inverse @ joined(v)),
        x0=x0,
    )
    assert converged and n_products == 1


@pytest.mark.parametrize("preconditioned", [False, True])
@pytest.mark.parametrize("warm", [False, True])
def test_batched_conjugate_gradient_solves_each_fold_to_its_tol(preconditioned, warm):
    """Batched, the leading dimension holds independent systems, each solved
    to its own relative residual; a fold that has converged stops moving
    (here one with a zero right side and, warm, one solved by its start)."""
    from skbilevel.hypergrad._cg import conjugate_gradient

    generator = torch.Generator().manual_seed(1)
    n_folds, n = 4, 6
    A = _spd(n, generator, n_folds)
    b = torch.randn(n_folds, n, 2, generator=generator, dtype=DTYPE)
    b[3] = 0.0
    expected = torch.linalg.solve(A, b)

    def matvec(v):
        return {"w": A @ v["w"]}

    diagonal = torch.diagonal(A, dim1=-2, dim2=-1)[..., None]
    x0 = None
    if warm:
        x0 = {"w": torch.randn(n_folds, n, 2, generator=generator, dtype=DTYPE)}
        # (a zero right side is only solved to a relative tol from zero)
        x0["w"][1], x0["w"][3] = expected[1], 0.0
    tol = torch.tensor([1e-12, 1e-12, 1e-3, 1e-12], dtype=DTYPE)
    x, converged, n_products = conjugate_gradient(
        matvec,
        {"w": b},
        tol=tol,
        max_iter=200,
        precondition=(lambda v: {"w": v["w"] / diagonal}) if preconditioned else None,
        x0=x0,
        batched=True,
    )
    assert converged and n_products <= 200
    residual = torch.linalg.norm((A @ x["w"] - b).flatten(1), dim=1)
    assert bool((residual <= tol * torch.linalg.norm(b.flatten(1), dim=1)).all())
    for k in (0, 1, 3):
        torch.testing.assert_close(x["w"][k], expected[k], rtol=1e-9, atol=1e-10)
    if warm:
        assert torch.equal(x["w"][1], x0["w"][1])
    # A uniform float tolerance, and a cap on the products that is reached.
    _, converged, n_products = conjugate_gradient(
        matvec, {"w": b}, tol=1e-14, max_iter=2, batched=True
    )
    assert not converged and n_products == 2


def test_implicit_forward_tangents_are_the_solution_jacobian(ridge):
    """Each tangent column is dw*/dlambda_j: central differences of the
    closed-form inner solution."""
    X, y, X_val, y_val, inner, outer, hparams = ridge

    def solution(h):
        weights = h["weights"] / X.shape[0]
        gram = X.T @ (weights[:, None] * X) + torch.diag(h["log_alpha"].exp())
        return torch.linalg.solve(gram, X.T @ (weights * y))

    dynamics = gradient_descent(inner, learning_rate=1.0 / _lipschitz(X))
    w0 = {"coef": solution(hparams)}
    result = implicit_forward(w0, hparams, 0, dynamics, outer, cg_tol=1e-12)
    step = 1e-5
    for name, value in hparams.items():
        for j in range(value.numel()):
            up, down = ({k: v.clone() for k, v in hparams.items()} for _ in range(2))
            up[name].view(-1)[j] += step
            down[name].view(-1)[j] -= step
            difference = (solution(up) - solution(down)) / (2 * step)
            column = result.tangent[name][j]["coef"]
            torch.testing.assert_close(column, difference, rtol=1e-6, atol=1e-9)
