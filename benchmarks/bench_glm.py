"""BilevelSearchCV against GridSearchCV on PoissonRegressor and HuberRegressor.

Part 1, PoissonRegressor ``alpha`` on synthetic counts (2,000 x 30, log-linear
mean), cv=5, scoring neg. mean Poisson deviance: GridSearchCV over 20
log-spaced values against BilevelSearchCV(Real) on the same range.

Part 2, HuberRegressor ``alpha`` and ``epsilon`` on a regression with
Student-t (2 degrees of freedom) noise (1,000 x 10), cv=5, scoring neg. MSE:
GridSearchCV over 10 x 10 values against BilevelSearchCV over the same box.

Each part also times the limit of any search: one 5-fold ``cross_validate``
at BilevelSearchCV's answer plus the refit. Every tool runs under the same
thread settings, twice in this one process: one thread for all (torch, BLAS
and OpenMP pools) and the default threads for all. Times are medians over
``--repeats`` runs (GridSearchCV over ``--baseline-repeats``); the machine's
load (``uptime``) is recorded in the table's notes.

Usage: python benchmarks/bench_glm.py [--repeats 3] [--baseline-repeats 1]
       [--output FILE]
"""

import argparse
import contextlib
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from _timing import limit_time as _limit
from _timing import timed_fit as _timed
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import HuberRegressor, PoissonRegressor
from sklearn.model_selection import GridSearchCV, KFold
from threadpoolctl import threadpool_limits

from skbilevel import BilevelSearchCV, Real

ROOT = Path(__file__).resolve().parents[1]


def _load():
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def _poisson():
    rng = np.random.RandomState(0)
    X = rng.randn(2000, 30)
    coef = rng.randn(30) * (rng.rand(30) < 0.3) * 0.3
    y = rng.poisson(np.exp(X @ coef + 0.5)).astype(float)
    estimator = PoissonRegressor(max_iter=1000)
    grid = {"alpha": np.logspace(-4, 1, 20)}
    space = {"alpha": Real(1e-4, 1e1)}
    return "Poisson alpha", X, y, estimator, grid, space, "neg_mean_poisson_deviance"


def _huber():
    rng = np.random.RandomState(0)
    X = rng.randn(1000, 10)
    y = X @ rng.randn(10) + rng.standard_t(2, 1000)
    estimator = HuberRegressor(max_iter=1000)
    grid = {"alpha": np.logspace(-4, 1, 10), "epsilon": np.linspace(1.1, 3.0, 10)}
    space = {"alpha": Real(1e-4, 1e1), "epsilon": Real(1.1, 3.0, log=False)}
    return (
        "Huber alpha, epsilon",
        X,
        y,
        estimator,
        grid,
        space,
        "neg_mean_squared_error",
    )


def compare(part, repeats, baseline_repeats):
    """Rows (data, method, best mean CV score, time, time / grid)."""
    name, X, y, estimator, grid, space, scoring = part
    cv = KFold(5, shuffle=True, random_state=0)
    searched, grid_time = _timed(
        lambda: GridSearchCV(estimator, grid, cv=cv, scoring=scoring),
        X,
        y,
        baseline_repeats,
    )
    bilevel, bilevel_time = _timed(
        lambda: BilevelSearchCV(estimator, space, cv=cv, scoring=scoring),
        X,
        y,
        repeats,
    )
    answer = {k: float(v) for k, v in bilevel.best_params_.items()}
    limit = _limit(estimator, answer, X, y, cv, repeats, scoring)
    n_grid = len(searched.cv_results_["params"])
    n_rows = len(bilevel.cv_results_["params"])
    settings = ", ".join(f"{k}={v:.4g}" for k, v in answer.items())
    return [
        (name, f"GridSearchCV ({n_grid} settings)", searched.best_score_, grid_time),
        (
            name,
            f"BilevelSearchCV ({n_rows} settings; {settings})",
            bilevel.best_score_,
            bilevel_time,
        ),
        (name, "limit: cross_validate at the answer + refit", np.nan, limit),
    ], grid_time


@contextlib.contextmanager
def _threads(one):
    """One thread for torch and every BLAS/OpenMP pool, or their defaults."""
    if not one:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(previous)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline-repeats", type=int, default=1)
    parser.add_argument(
        "--output", default=str(ROOT / "benchmarks/results/bench_glm/glm.md")
    )
    args = parser.parse_args()
    warnings.simplefilter("ignore", ConvergenceWarning)
    lines = [
        f"torch {torch.__version__}, n_jobs=1, cv=5; BilevelSearchCV median of "
        f"{args.repeats} runs, GridSearchCV of {args.baseline_repeats}",
        "",
        "| threads | data | method | best mean CV score | time (s) | time / grid |",
        "|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    loads = [f"load average at start: {_load()}"]
    for one in (True, False):
        label = "1 for all" if one else "default for all"
        for part in (_poisson(), _huber()):
            with _threads(one):
                rows, grid_time = compare(part, args.repeats, args.baseline_repeats)
            for data, method, score, seconds in rows:
                line = (
                    f"| {label} | {data} | {method} | {score:.5f} | {seconds:.2f} "
                    f"| {seconds / grid_time:.2f} |"
                )
                lines.append(line)
                print(line, flush=True)
            loads.append(f"load average after {part[0]}, {label}: {_load()}")
    lines += ["", *(f"- {load}" for load in loads)]
    print("\n".join(lines[-len(loads) - 1 :]))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
