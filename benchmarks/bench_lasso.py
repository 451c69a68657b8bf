"""BilevelSearchCV against LassoCV and ElasticNetCV.

Lasso ``alpha`` and ElasticNet ``alpha`` (at ``l1_ratio=0.5``, ElasticNetCV's
default) and ``alpha`` with ``l1_ratio`` (against ElasticNetCV over the
ratios its documentation suggests) on two designs, cv=5 (KFold, the same
folds for every tool); on the wide design also LassoCV at ``tol=1e-8``, the
accuracy of BilevelSearchCV's inner solves (the same BilevelSearchCV run):

- ``diabetes`` (442 x 10);
- ``wide``: ``make_regression(200, 5000, n_informative=20, noise=10)``, more
  features than samples.

LassoCV and ElasticNetCV fit 100 alphas from ``alpha_max`` down to
``1e-3 alpha_max`` with warm starts; BilevelSearchCV learns alpha on the same
range (``Real(1e-3 alpha_max, alpha_max)``, l1_ratio on ``[0.1, 1]``). The CV
MSE of each is the mean over the folds at its best setting: the minimum of
``mse_path_`` for the CV estimators, ``-best_score_`` for BilevelSearchCV
(scikit-learn's scorer on the exact fold solutions). Wall times are medians
over ``--repeats`` runs in this process (``--wide-repeats`` on the wide
design, one run for its two slowest rows, a minute per tool: the grid of
``l1_ratio`` and LassoCV at ``tol=1e-8``), each run of a tool followed by one
of the tool it is compared with, so that both see the same load; every tool
runs under the same thread settings.

Usage: python benchmarks/bench_lasso.py [--threads N] [--repeats 5]
       [--wide-repeats 3] [--output FILE]

``--threads N`` limits torch and the BLAS/OpenMP pools of numpy and
scikit-learn to N threads (default: their own defaults).
"""

import argparse
import os
import subprocess
import warnings
from pathlib import Path

import numpy as np
import torch
from _timing import timed_fit
from sklearn.datasets import load_diabetes, make_regression
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import ElasticNet, ElasticNetCV, Lasso, LassoCV
from sklearn.model_selection import KFold
from threadpoolctl import threadpool_limits

from skbilevel import BilevelSearchCV, Real

ROOT = Path(__file__).resolve().parents[1]
RATIOS = [0.1, 0.5, 0.7, 0.9, 0.95, 0.99, 1.0]


def _uptime():
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _alpha_max(X, y, l1_ratio=1.0):
    centered = X - X.mean(axis=0)
    return np.abs(centered.T @ (y - y.mean())).max() / (len(y) * l1_ratio)


def _path_mse(fitted):
    return float(fitted.mse_path_.mean(axis=-1).min())


def _bilevel(estimator, space, cv):
    return lambda: BilevelSearchCV(
        estimator, space, cv=cv, scoring="neg_mean_squared_error"
    )


def _paired(reference, bilevel, X, y, repeats):
    """Both tools fitted ``repeats`` times, alternately: the last fitted
    objects, the median times, and the median time of BilevelSearchCV's
    hypergradient runs within its fit (the rest is its input checks, the
    scoring of the visited settings and the refit)."""
    runs = [
        (timed_fit(reference, X, y, 1), timed_fit(bilevel, X, y, 1))
        for _ in range(repeats)
    ]
    (theirs, _), (ours, _) = runs[-1]
    their_time = float(np.median([r[0][1] for r in runs]))
    our_time = float(np.median([r[1][1] for r in runs]))
    learning = float(np.median([r[1][0].history_[-1]["time"] for r in runs]))
    return theirs, their_time, ours, (our_time, learning)


def _rows(name, X, y, repeats, tight=False):
    cv = KFold(5)
    amax = _alpha_max(X, y)
    half = _alpha_max(X, y, 0.5)
    lasso = _bilevel(Lasso(), {"alpha": Real(1e-3 * amax, amax)}, cv)
    cases = [
        ("Lasso alpha", lambda: LassoCV(cv=cv), lasso, repeats),
        (
            "ElasticNet alpha (l1_ratio=0.5)",
            lambda: ElasticNetCV(cv=cv),
            _bilevel(ElasticNet(), {"alpha": Real(1e-3 * half, half)}, cv),
            repeats,
        ),
        (
            "ElasticNet alpha, l1_ratio",
            lambda: ElasticNetCV(cv=cv, l1_ratio=RATIOS),
            _bilevel(
                ElasticNet(),
                {
                    "alpha": Real(1e-3 * amax, _alpha_max(X, y, 0.1)),
                    "l1_ratio": Real(0.1, 1.0, log=False),
                },
                cv,
            ),
            1 if tight else repeats,
        ),
    ]
    if tight:
        # LassoCV at the accuracy of BilevelSearchCV's inner solves, against
        # the times of the Lasso search above.
        cases.append(
            (
                "Lasso alpha, LassoCV tol=1e-8",
                lambda: LassoCV(cv=cv, tol=1e-8),
                lasso,
                1,
            )
        )
    rows, searches = [], {}
    for label, reference, bilevel, n_runs in cases:
        if bilevel in searches:
            theirs, their_time = timed_fit(reference, X, y, n_runs)
            ours, our_time = searches[bilevel]
        else:
            theirs, their_time, ours, our_time = _paired(
                reference, bilevel, X, y, n_runs
            )
            searches[bilevel] = ours, our_time
        (our_time, learning) = our_time
        their_mse, our_mse = _path_mse(theirs), -ours.best_score_
        best = ", ".join(f"{k}={v:.4g}" for k, v in ours.best_params_.items())
        rows.append(
            f"| {name} | {label} | {their_mse:.6g} | {our_mse:.6g} | "
            f"{100 * (our_mse / their_mse - 1):+.2f}% | {their_time:.3g} | "
            f"{our_time:.3g} | {learning:.3g} | {our_time / their_time:.2f} | "
            f"{len(ours.history_)} | {best} |"
        )
        print(rows[-1], flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--wide-repeats", type=int, default=3)
    parser.add_argument(
        "--output",
        default=str(ROOT / "benchmarks/results/bench_lasso/default.md"),
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)
    # LassoCV's fits at its default tol warn on the wide design.
    warnings.simplefilter("ignore", ConvergenceWarning)
    threads = "default" if args.threads is None else str(args.threads)
    header = [
        f"# bench_lasso (threads: {threads}, torch {torch.__version__}, "
        f"{os.cpu_count()} CPUs)",
        "",
        f"Load before: `{_uptime()}`",
        "",
        "| data | search | CV MSE (LassoCV / ElasticNetCV) | CV MSE (BilevelSearchCV)"
        " | difference | time CV (s) | time bilevel (s) | of which runs (s)"
        " | time ratio | outer steps | learned |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(header), flush=True)
    rows = _rows("diabetes", *load_diabetes(return_X_y=True), args.repeats)
    wide = make_regression(200, 5000, n_informative=20, noise=10.0, random_state=0)
    rows += _rows("wide 200x5000", *wide, args.wide_repeats, tight=True)
    footer = ["", f"Load after: `{_uptime()}`", ""]
    print("\n".join(footer))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("\n".join(header + rows + footer))


if __name__ == "__main__":
    main()
