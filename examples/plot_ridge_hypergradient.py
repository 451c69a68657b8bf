"""
=====================================================
Exact hypergradients of a ridge validation loss
=====================================================

The hypergradient of the validation loss of ridge regression with respect to
its (log) penalty has a closed form. This example computes it with every
method of :mod:`skbilevel.hypergrad` on the diabetes dataset:

* reverse and forward mode differentiate T steps of gradient descent exactly,
  so they converge to the closed form as T grows;
* the implicit methods differentiate the inner optimum directly.

It then learns the penalty with L-BFGS on the hypergradient and compares the
result with the best penalty of a fine grid.
"""

import matplotlib.pyplot as plt
import numpy as np
import torch
from scipy.optimize import minimize
from sklearn.datasets import load_diabetes
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from skbilevel.hypergrad import METHODS, gradient_descent, heavy_ball
from skbilevel.plotting import SearchTrajectoryDisplay

X, y = load_diabetes(return_X_y=True)
X_train, X_val, y_train, y_val = train_test_split(X, y, test_size=0.5, random_state=0)
scaler = StandardScaler().fit(X_train)
X_train, X_val = scaler.transform(X_train), scaler.transform(X_val)
y_mean = y_train.mean()
X, y, Xv, yv = (
    torch.as_tensor(a, dtype=torch.float64)
    for a in (X_train, y_train - y_mean, X_val, y_val - y_mean)
)


def inner_loss(w, h):
    """Ridge: 1/(2n) ||X w - y||^2 + alpha/2 ||w||^2, alpha = exp(log_alpha)."""
    return (
        0.5 * ((X @ w["coef"] - y) ** 2).mean()
        + 0.5 * h["log_alpha"].exp() * (w["coef"] ** 2).sum()
    )


def outer_loss(w, h):
    return 0.5 * ((Xv @ w["coef"] - yv) ** 2).mean()


def closed_form(log_alpha):
    alpha = np.exp(log_alpha)
    A = X.T @ X / len(X) + alpha * torch.eye(X.shape[1], dtype=X.dtype)
    w = torch.linalg.solve(A, X.T @ y / len(X))
    v = torch.linalg.solve(A, Xv.T @ (Xv @ w - yv) / len(Xv))
    return float(-alpha * v @ w), float(outer_loss({"coef": w}, None))


# %%
# Every method against the closed form
# ------------------------------------
hparams = {"log_alpha": torch.tensor(-2.0, dtype=torch.float64)}
w0 = {"coef": torch.zeros(X.shape[1], dtype=torch.float64)}
lipschitz = float(torch.linalg.eigvalsh(X.T @ X / len(X)).max())
dynamics = gradient_descent(inner_loss, learning_rate=1.0 / lipschitz)
exact, _ = closed_form(-2.0)

horizons = [10, 30, 100, 300, 1000]
errors = {name: [] for name in ("reverse", "forward")}
for T in horizons:
    for name in errors:
        grad = METHODS[name](w0, hparams, T, dynamics, outer_loss).grad["log_alpha"]
        errors[name].append(abs(float(grad) - exact) / abs(exact))
implicit = METHODS["implicit_cg"](w0, hparams, 20000, dynamics, outer_loss, tol=1e-10)
implicit_error = abs(float(implicit.grad["log_alpha"]) - exact) / abs(exact)
print(f"closed form: {exact:.8f}")
implicit_value = float(implicit.grad["log_alpha"])
print(f"implicit CG: {implicit_value:.8f} (rel. error {implicit_error:.1e})")
for name, values in errors.items():
    print(f"{name:>8}: relative error at T={horizons[-1]}: {values[-1]:.1e}")

fig, ax = plt.subplots(figsize=(5, 3.5))
for name, values in errors.items():
    ax.loglog(horizons, values, marker="o", label=f"{name} mode, T steps")
ax.axhline(implicit_error, color="k", ls="--", label="implicit (CG)")
ax.set_xlabel("inner steps T")
ax.set_ylabel("relative error of the hypergradient")
ax.legend()
fig.tight_layout()

# %%
# Learning the penalty
# --------------------
# The hypergradient drives a standard optimizer: here scipy's L-BFGS-B on
# log(alpha), each evaluation an implicit hypergradient whose inner solve
# (heavy ball) is warm-started from the previous solution. It lands on the
# minimizer of the validation loss found by a fine grid.
solver = heavy_ball(inner_loss, learning_rate=1.0 / lipschitz, momentum=0.9)
warm_start = {"params": w0}
evaluations = []  # (alpha, validation loss) at each hypergradient


def validation_loss_and_hypergradient(x):
    hparams = {"log_alpha": torch.tensor(x[0], dtype=torch.float64)}
    result = METHODS["implicit_cg"](
        warm_start["params"], hparams, 5000, solver, outer_loss, tol=1e-10
    )
    warm_start["params"] = result.params
    evaluations.append((np.exp(x[0]), float(result.outer_loss)))
    return float(result.outer_loss), result.grad["log_alpha"].numpy().reshape(1)


found = minimize(
    validation_loss_and_hypergradient, x0=[-4.0], jac=True, method="L-BFGS-B"
)
grid = np.linspace(-8, 2, 4001)
best = grid[np.argmin([closed_form(a)[1] for a in grid])]
print(
    f"learned alpha: {np.exp(found.x[0]):.4f} in {found.nfev} hypergradients; "
    f"best of a 4001-point grid: {np.exp(best):.4f}"
)

# %%
# The evaluations of L-BFGS-B, drawn by
# :class:`~skbilevel.plotting.SearchTrajectoryDisplay` from the recorded
# values (the display takes any trajectory, not only a fitted search's):
# the validation loss and alpha at each hypergradient, with the grid's
# minimizer as a dotted line.
alpha_steps, loss_steps = np.array(evaluations).T
display = SearchTrajectoryDisplay(
    steps=[np.arange(len(evaluations))],
    outer_losses=[loss_steps],
    params={"alpha": [alpha_steps]},
    run_names=["L-BFGS-B, implicit_cg"],
    log_params=["alpha"],
).plot()
display.ax_[1].axhline(np.exp(best), color="k", ls=":", label="grid minimizer")
display.ax_[1].legend()
plt.show()
