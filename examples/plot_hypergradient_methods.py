"""
==================================================
Hypergradient methods compared: cost and accuracy
==================================================

:class:`~skbilevel.BilevelSearchCV` computes the hypergradient of the
cross-validation loss with any method of :mod:`skbilevel.hypergrad`
(``method=``). This example learns the penalty of a
:class:`~sklearn.linear_model.Ridge` on the diabetes dataset with each of them
and compares:

* the accuracy of the first hypergradient, against a central finite
  difference of the cross-validation loss of scikit-learn's own ``Ridge``
  (an oracle independent of this package);
* the time of the search (one thread for every library) and its outer steps;
* where each search lands: the learned ``alpha`` and its validation loss.

The implicit methods differentiate the exact inner solution; reverse and
forward mode differentiate ``inner_steps`` steps of gradient descent from the
previous solution, so their hypergradient is that of the truncated problem,
and ``truncated_reverse`` back-propagates through only the last ``K`` of them.
Their cost in memory is measured in the Benchmarks page.
"""

import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import load_diabetes
from sklearn.linear_model import Ridge
from sklearn.model_selection import KFold
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from skbilevel import BilevelSearchCV, Real
from skbilevel.hypergrad import METHODS
from skbilevel.plotting import SearchTrajectoryDisplay

X, y = load_diabetes(return_X_y=True)
X = StandardScaler().fit_transform(X)
cv = KFold(3)
start_alpha = 100.0

# %%
# The oracle: finite differences of scikit-learn's cross-validation loss
# ----------------------------------------------------------------------
# The outer loss of the search is the mean over the folds of the validation
# mean squared error, and its hyperparameter is ``log(alpha)``.


def cv_loss(alpha):
    errors = []
    for train, test in cv.split(X):
        prediction = Ridge(alpha=alpha).fit(X[train], y[train]).predict(X[test])
        errors.append(np.mean((prediction - y[test]) ** 2))
    return np.mean(errors)


eps = 1e-4
oracle = (cv_loss(start_alpha * np.exp(eps)) - cv_loss(start_alpha * np.exp(-eps))) / (
    2 * eps
)
print(f"d CV loss / d log(alpha) at alpha={start_alpha:g}: {oracle:.6g}")

# %%
# One search per method
# ---------------------
# ``implicit_fixed_point`` iterates the inner step's Jacobian, which contracts
# slowly on this problem: it gets more iterations than its default 100.
options = {"truncated_reverse": {"K": 10}, "implicit_fixed_point": {"max_iter": 2000}}
searches, rows = {}, []
default_threads = torch.get_num_threads()
torch.set_num_threads(1)
with threadpool_limits(limits=1):
    for method in METHODS:
        search = BilevelSearchCV(
            Ridge(),
            {"alpha": Real(1e-3, 1e3, init=start_alpha)},
            cv=cv,
            method=method,
            method_params=options.get(method),
        )
        start = time.perf_counter()
        search.fit(X, y)
        elapsed = time.perf_counter() - start
        first = search.history_[0]["hypergradient_norm"]
        best = min(search.history_, key=lambda entry: entry["outer_loss"])
        searches[method] = search
        rows.append(
            (
                method,
                abs(first - abs(oracle)) / abs(oracle),
                elapsed,
                len(search.history_),
                best["params"]["alpha"],
                best["outer_loss"],
            )
        )
torch.set_num_threads(default_threads)

print(
    f"{'method':22}{'hypergrad. error':>17}{'time (s)':>10}{'steps':>7}"
    f"{'alpha':>8}{'CV loss':>10}"
)
for method, error, elapsed, steps, alpha, loss in rows:
    print(
        f"{method:22}{error:>17.1e}{elapsed:>10.2f}{steps:>7}{alpha:>8.3g}{loss:>10.2f}"
    )

# %%
# The trajectories, one line per method
# -------------------------------------
# :class:`~skbilevel.plotting.SearchTrajectoryDisplay` takes the histories of
# several searches as its runs. The lines lie on top of each other: every
# method reaches the same ``alpha`` in a few steps, except
# ``truncated_reverse``, whose hypergradient, a percent or so off, lands it a
# little lower. On this problem the methods differ in cost (note the log
# scale of the last panel), not in the answer.
display = SearchTrajectoryDisplay(
    steps=[np.array([e["step"] for e in s.history_]) for s in searches.values()],
    outer_losses=[
        np.array([e["outer_loss"] for e in s.history_]) for s in searches.values()
    ],
    params={
        "alpha": [
            np.array([e["params"]["alpha"] for e in s.history_])
            for s in searches.values()
        ]
    },
    run_names=list(searches),
    log_params=["alpha"],
)
fig, axes = plt.subplots(1, 3, figsize=(12, 3.8), layout="constrained")
display.plot(ax=axes[:2])
names = [row[0] for row in rows]
axes[2].barh(names, [row[2] for row in rows])
axes[2].invert_yaxis()
axes[2].set_xscale("log")
axes[2].set_xlabel("search time, one thread (s)")
axes[2].set_title("Cost")
plt.show()
