"""BilevelSearchCV against GridSearchCV, LogisticRegressionCV and RandomizedSearchCV.

Part 1, LogisticRegression ``C``, cv=5, n_jobs=1: the best mean CV score of
GridSearchCV over 20 log-spaced C values, LogisticRegressionCV(Cs=20) on the
same values and BilevelSearchCV(Real) on the same range; wall times are
medians over ``--repeats`` runs in this process.

Each part also times the limit of any search: one 5-fold ``cross_validate``
of the estimator at BilevelSearchCV's answer plus the refit on all the data
(a search must at least check what it returns).

Part 1b, Ridge ``alpha`` on ``make_regression(5000, 500, n_informative=50,
noise=50)``, cv=5: BilevelSearchCV against RidgeCV (efficient leave-one-out
over 50 alphas) and GridSearchCV over the same 50 alphas (neg. MSE).

Part 2, per-feature L2 (PerFeature) on two scikit-learn datasets: held-out test
score of BilevelSearchCV against GridSearchCV over the scalar penalty and
RandomizedSearchCV over the scalar penalty given the same wall time as
BilevelSearchCV.

Every setting BilevelSearchCV's run evaluates is a row of its ``cv_results_``
(scored from the run's exact fold solutions), so its best mean CV accuracy is
the best of the settings its descent visited, as GridSearchCV's is the best of
its grid.

Usage: python benchmarks/bench_search.py [--mnist PATH] [--repeats 3]
       [--threads N] [--parts digits mnist ridge per_feature]
       [--n-refine K] [--output FILE]

``--n-refine K`` is the LogisticRegression searches' ``n_refine`` (default
0, BilevelSearchCV's own: the settings the runs visit only).

``--threads N`` limits torch and the BLAS/OpenMP pools of numpy and
scikit-learn to N threads (default: their own defaults); on a shared, loaded
machine one thread gives stable ratios.
"""

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from _timing import limit_time as _limit
from _timing import timed_fit as _timed
from scipy.stats import loguniform
from sklearn.datasets import (
    load_breast_cancer,
    load_diabetes,
    load_digits,
    make_regression,
)
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import (
    LogisticRegression,
    LogisticRegressionCV,
    Ridge,
    RidgeCV,
)
from sklearn.model_selection import (
    GridSearchCV,
    KFold,
    RandomizedSearchCV,
    StratifiedKFold,
    cross_validate,
    train_test_split,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from skbilevel import BilevelSearchCV, PerFeature, Real

ROOT = Path(__file__).resolve().parents[1]


def _mnist(path, n_samples):
    data = np.load(path)
    rng = np.random.RandomState(0)
    index = rng.choice(len(data["y_train"]), n_samples, replace=False)
    X = data["X_train"][index].reshape(n_samples, -1) / 255.0
    return X, data["y_train"][index]


def logistic_c(name, X, y, repeats, baseline_repeats, n_refine=0):
    """One row per method: best mean CV accuracy and median time."""
    Cs = np.logspace(-4, 2, 20)
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    estimator = LogisticRegression()
    grid, grid_time = _timed(
        lambda: GridSearchCV(estimator, {"C": Cs}, cv=cv, n_jobs=1),
        X,
        y,
        baseline_repeats,
    )
    path, path_time = _timed(
        lambda: LogisticRegressionCV(Cs=Cs, cv=cv, n_jobs=1), X, y, baseline_repeats
    )
    bilevel, bilevel_time = _timed(
        lambda: BilevelSearchCV(
            estimator,
            {"C": Real(1e-4, 1e2, init=1.0)},
            cv=cv,
            n_jobs=1,
            n_refine=n_refine,
        ),
        X,
        y,
        repeats,
    )
    path_scores = np.mean([s.mean(axis=0) for s in path.scores_.values()], axis=0)
    n_rows = len(bilevel.cv_results_["params"])
    limit_time = _limit(estimator, bilevel.best_params_, X, y, cv, repeats)
    rows = [
        (
            name,
            f"GridSearchCV (20 C, best C={grid.best_params_['C']:.3g})",
            grid.best_score_,
            grid_time,
            grid_time,
        ),
        (
            name,
            "LogisticRegressionCV (same 20 C)",
            path_scores.max(),
            path_time,
            grid_time,
        ),
        (
            name,
            f"BilevelSearchCV (n_refine={n_refine}: {n_rows} settings, best C="
            f"{bilevel.best_params_['C']:.3g})",
            bilevel.best_score_,
            bilevel_time,
            grid_time,
        ),
        (
            name,
            f"limit: cross_validate at C={bilevel.best_params_['C']:.3g} + refit "
            f"(bilevel / limit = {bilevel_time / limit_time:.2f})",
            bilevel.best_score_,
            limit_time,
            grid_time,
        ),
    ]
    print(*rows, sep="\n", flush=True)
    return rows


def ridge_alpha(repeats, baseline_repeats):
    """Ridge alpha on a 5000 x 500 regression: rows as in :func:`logistic_c`."""
    X, y = make_regression(5000, 500, n_informative=50, noise=50, random_state=0)
    alphas = np.logspace(-3, 4, 50)
    cv = KFold(5, shuffle=True, random_state=0)
    scoring = "neg_mean_squared_error"
    grid, grid_time = _timed(
        lambda: GridSearchCV(Ridge(), {"alpha": alphas}, cv=cv, scoring=scoring),
        X,
        y,
        baseline_repeats,
    )
    loo, loo_time = _timed(lambda: RidgeCV(alphas=alphas), X, y, repeats)
    bilevel, bilevel_time = _timed(
        lambda: BilevelSearchCV(
            Ridge(), {"alpha": Real(1e-3, 1e4, init=1.0)}, cv=cv, scoring=scoring
        ),
        X,
        y,
        repeats,
    )
    loo_cv = cross_validate(Ridge(alpha=loo.alpha_), X, y, cv=cv, scoring=scoring)
    limit_time = _limit(Ridge(), bilevel.best_params_, X, y, cv, repeats, scoring)
    name = "regression 5000x500"
    return [
        (
            name,
            f"GridSearchCV (50 alphas, best {grid.best_params_['alpha']:.3g})",
            grid.best_score_,
            grid_time,
            grid_time,
        ),
        (
            name,
            f"RidgeCV leave-one-out (same 50, alpha {loo.alpha_:.3g}; its "
            "5-fold score)",
            loo_cv["test_score"].mean(),
            loo_time,
            grid_time,
        ),
        (
            name,
            f"BilevelSearchCV ({len(bilevel.cv_results_['params'])} settings, "
            f"alpha {bilevel.best_params_['alpha']:.3g})",
            bilevel.best_score_,
            bilevel_time,
            grid_time,
        ),
        (
            name,
            f"limit: cross_validate + refit (bilevel / limit = "
            f"{bilevel_time / limit_time:.2f}, bilevel / RidgeCV = "
            f"{bilevel_time / loo_time:.2f})",
            bilevel.best_score_,
            limit_time,
            grid_time,
        ),
    ]


def per_feature(name, estimator, param, low, high, X, y):
    """Held-out test score of the three searches over an L2 penalty."""
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.3, random_state=0
    )
    model = make_pipeline(StandardScaler(), estimator)
    key = f"{model.steps[-1][0]}__{param}"
    start = time.perf_counter()
    bilevel = BilevelSearchCV(model, {key: PerFeature(low, high)}, cv=5)
    bilevel.fit(X_train, y_train)
    budget = time.perf_counter() - start
    start = time.perf_counter()
    grid = GridSearchCV(model, {key: np.logspace(np.log10(low), np.log10(high), 20)})
    grid.fit(X_train, y_train)
    grid_time = time.perf_counter() - start
    # As many random candidates as fit in BilevelSearchCV's wall time.
    n_iter = max(1, int(budget / (grid_time / 20)))
    start = time.perf_counter()
    random = RandomizedSearchCV(
        model, {key: loguniform(low, high)}, n_iter=n_iter, random_state=0
    ).fit(X_train, y_train)
    random_time = time.perf_counter() - start
    return [
        (name, "BilevelSearchCV (PerFeature)", bilevel.score(X_test, y_test), budget),
        (name, "GridSearchCV (20 scalar)", grid.score(X_test, y_test), grid_time),
        (
            name,
            f"RandomizedSearchCV ({n_iter} scalar)",
            random.score(X_test, y_test),
            random_time,
        ),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", default=str(ROOT / "../shared/data/mnist.npz"))
    parser.add_argument("--n-samples", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--baseline-repeats",
        type=int,
        default=None,
        help="repeats of GridSearchCV and LogisticRegressionCV (default --repeats)",
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--n-refine", type=int, default=0)
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["digits", "mnist", "per_feature"],
        choices=["digits", "mnist", "ridge", "per_feature"],
    )
    parser.add_argument(
        "--output",
        default=str(ROOT / "benchmarks/results/bench_search/default.md"),
    )
    args = parser.parse_args()
    baseline = args.baseline_repeats or args.repeats
    warnings.simplefilter("ignore", ConvergenceWarning)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)
    threads = "default" if args.threads is None else str(args.threads)
    lines = [
        f"torch {torch.__version__}, threads: {threads}, n_jobs=1",
        "",
    ]
    rows = []
    if "digits" in args.parts:
        X_digits, y_digits = load_digits(return_X_y=True)
        rows += logistic_c(
            "digits", X_digits / 16.0, y_digits, args.repeats, baseline, args.n_refine
        )
    if "mnist" in args.parts:
        rows += logistic_c(
            f"MNIST {args.n_samples}",
            *_mnist(args.mnist, args.n_samples),
            args.repeats,
            baseline,
            args.n_refine,
        )
    if "ridge" in args.parts:
        rows += ridge_alpha(args.repeats, baseline)
    if rows:
        lines += [
            f"## LogisticRegression C and Ridge alpha, cv=5 (median of "
            f"{args.repeats} runs; GridSearchCV, LogisticRegressionCV and RidgeCV "
            f"of {baseline})",
            "",
            "| data | method | best mean CV score (accuracy / neg. MSE) | time (s) "
            "| time / grid |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {d} | {m} | {s:.4f} | {t:.2f} | {t / g:.2f} |" for d, m, s, t, g in rows
        ]
    if "per_feature" in args.parts:
        X_d, y_d = load_diabetes(return_X_y=True)
        X_b, y_b = load_breast_cancer(return_X_y=True)
        rows = per_feature("diabetes", Ridge(), "alpha", 1e-3, 1e4, X_d, y_d)
        rows += per_feature(
            "breast_cancer", LogisticRegression(), "C", 1e-3, 1e3, X_b, y_b
        )
        lines += [
            "",
            "## Per-feature L2, held-out test score (R2 / accuracy), 30% test",
            "",
            "| data | method | test score | time (s) |",
            "|---|---|---|---|",
        ]
        lines += [f"| {d} | {m} | {s:.4f} | {t:.2f} |" for d, m, s, t in rows]
    table = "\n".join(lines) + "\n"
    print(table)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(table)


if __name__ == "__main__":
    main()
