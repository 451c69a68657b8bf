"""Per-feature L2 penalties (PerFeature) against ARD, the Lasso and scalar searches.

Issue 13, deliverable 5: one L2 penalty per feature, learned by
``BilevelSearchCV`` with ``PerFeature``'s defaults (its prior on the
log-penalties, ``shrinkage="auto"``: ``max(1.5, 2 d / n)``; every penalty
starting where it shrinks the median feature by half, after a descent of
their common value), against the same search at the former default
``shrinkage=2`` and without the prior
(``shrinkage=0``: the cross-validation loss alone), the scalar searches
(GridSearchCV over 30 log-spaced penalties, ``BilevelSearchCV`` with a
``Real``), ``ARDRegression``, ``LassoCV`` and, for classification,
``LogisticRegressionCV``; every search uses cv=5.

Part ``synthetic``: ``make_regression(n + 5000, 200, n_informative=k,
noise=100, random_state=seed)``, the first n examples to train, R^2 on the
5,000 others; the oracle is least squares on the k relevant features. One
table per (n, k), median, lowest and highest R^2 over the seeds, and the
median fit time.

Part ``real``: diabetes (Ridge) and breast_cancer (LogisticRegression), each
behind a StandardScaler, 30% held out (stratified for breast_cancer), one
split per seed: median held-out score (R^2 / accuracy) over the seeds and the
gap of each method to the scalar GridSearchCV, per seed.

``--threads N`` limits torch and the BLAS/OpenMP pools to N threads for every
tool (default: their own defaults). ConvergenceWarnings (a search stopped at
``max_iter``, ARD's and the Lasso's iteration limits) and scikit-learn's
FutureWarnings about LogisticRegressionCV's coming defaults are silenced:
every method runs with its current defaults.

Usage::

    nice -n 10 python benchmarks/bench_per_feature.py --threads 1 \\
        --output benchmarks/results/bench_per_feature/threads1.md
    # smoke run
    python benchmarks/bench_per_feature.py --seeds 0 --configs 100:5 \\
        --real-seeds 0 --output /tmp/smoke.md

How the results were produced: benchmarks/results/bench_per_feature/README.md.
"""

import argparse
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer, load_diabetes, make_regression
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import (
    ARDRegression,
    LassoCV,
    LinearRegression,
    LogisticRegression,
    LogisticRegressionCV,
    Ridge,
)
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from skbilevel import BilevelSearchCV, PerFeature, Real

ROOT = Path(__file__).resolve().parents[1]
GRID = "GridSearchCV (30 scalar)"
PRIOR = "BilevelSearchCV (PerFeature)"
FORMER = "BilevelSearchCV (PerFeature, shrinkage=2)"
FREE = "BilevelSearchCV (PerFeature, shrinkage=0)"
ORACLE = "oracle (least squares on the relevant features)"


def _methods(task, scaled):
    """The methods compared, by name: factories of unfitted models.

    ``task`` is "regression" (Ridge's alpha in [1e-3, 1e4]) or
    "classification" (LogisticRegression's C in [1e-3, 1e3]); ``scaled``
    puts every model behind a StandardScaler.
    """
    regression = task == "regression"
    estimator, param = (Ridge, "alpha") if regression else (LogisticRegression, "C")
    low, high = (1e-3, 1e4) if regression else (1e-3, 1e3)
    values = np.logspace(np.log10(low), np.log10(high), 30)

    def model(make):
        return make_pipeline(StandardScaler(), make()) if scaled else make()

    key = f"{estimator.__name__.lower()}__{param}" if scaled else param

    def bilevel(spec):
        return lambda: BilevelSearchCV(model(estimator), {key: spec}, cv=5)

    methods = {
        PRIOR: bilevel(PerFeature(low, high)),
        FORMER: bilevel(PerFeature(low, high, shrinkage=2.0)),
        FREE: bilevel(PerFeature(low, high, shrinkage=0)),
        "BilevelSearchCV (Real)": bilevel(Real(low, high)),
        GRID: lambda: GridSearchCV(model(estimator), {key: values}, cv=5),
    }
    if regression:
        methods["ARDRegression"] = lambda: model(ARDRegression)
        methods["LassoCV"] = lambda: model(lambda: LassoCV(cv=5))
    else:
        methods["LogisticRegressionCV"] = lambda: model(
            lambda: LogisticRegressionCV(Cs=values, cv=5)
        )
    return methods


def _score(make, X, y, X_test, y_test):
    """Held-out score and fit time (s) of one fresh model."""
    start = time.perf_counter()
    model = make().fit(X, y)
    return model.score(X_test, y_test), time.perf_counter() - start


def synthetic(n, k, seeds, n_test=5000, n_features=200):
    """Per method, (R^2, seconds) of each seed on the synthetic family."""
    results = {}
    for seed in seeds:
        X, y, coef = make_regression(
            n + n_test,
            n_features,
            n_informative=k,
            noise=100.0,
            coef=True,
            random_state=seed,
        )
        X, y, X_test, y_test = X[:n], y[:n], X[n:], y[n:]
        for name, make in _methods("regression", scaled=False).items():
            results.setdefault(name, []).append(_score(make, X, y, X_test, y_test))
        relevant = coef != 0
        oracle = LinearRegression().fit(X[:, relevant], y)
        score = oracle.score(X_test[:, relevant], y_test)
        results.setdefault(ORACLE, []).append((score, np.nan))
    return results


def real(name, seeds):
    """Per method, (held-out score, seconds) of each seed's split."""
    load, task = {
        "diabetes": (load_diabetes, "regression"),
        "breast_cancer": (load_breast_cancer, "classification"),
    }[name]
    X, y = load(return_X_y=True)
    results = {}
    for seed in seeds:
        X_train, X_test, y_train, y_test = train_test_split(
            X,
            y,
            test_size=0.3,
            random_state=seed,
            stratify=y if task == "classification" else None,
        )
        for method, make in _methods(task, scaled=True).items():
            results.setdefault(method, []).append(
                _score(make, X_train, y_train, X_test, y_test)
            )
    return results


def _synthetic_table(n, k, results):
    scores = {name: np.array([s for s, _ in rows]) for name, rows in results.items()}
    lines = [
        f"### n = {n} training examples, k = {k} relevant features of 200",
        "",
        "| method | median R^2 | lowest | highest | seeds ahead of it | "
        "median time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for name, rows in results.items():
        times = [t for _, t in rows]
        behind = "" if name == PRIOR else str(int(np.sum(scores[PRIOR] > scores[name])))
        time_cell = "" if np.all(np.isnan(times)) else f"{np.median(times):.2f}"
        lines.append(
            f"| {name} | {np.median(scores[name]):.4f} | {scores[name].min():.4f} "
            f"| {scores[name].max():.4f} | {behind} | {time_cell} |"
        )
    lines += ["", f"'seeds ahead of it': seeds where {PRIOR} scores higher.", ""]
    return lines


def _real_table(name, results):
    scores = {key: np.array([s for s, _ in rows]) for key, rows in results.items()}
    grid = scores[GRID]
    lines = [
        f"### {name}",
        "",
        "| method | median score | median gap to the grid | worst gap | "
        "median time (s) |",
        "|---|---|---|---|---|",
    ]
    for key, rows in results.items():
        gap = 100 * (scores[key] - grid) / grid
        lines.append(
            f"| {key} | {np.median(scores[key]):.4f} | {np.median(gap):+.2f}% "
            f"| {gap.min():+.2f}% | {np.median([t for _, t in rows]):.2f} |"
        )
    lines += [""]
    return lines


def _uptime():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["synthetic", "real"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--configs",
        nargs="+",
        default=["400:20", "400:10", "400:50", "200:20", "800:20"],
        help="n:k, training examples and relevant features",
    )
    parser.add_argument("--real-seeds", nargs="+", type=int, default=list(range(10)))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--output",
        default=str(ROOT / "benchmarks/results/bench_per_feature/results.md"),
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)
    warnings.simplefilter("ignore", ConvergenceWarning)
    warnings.simplefilter("ignore", FutureWarning)
    threads = "default" if args.threads is None else str(args.threads)
    start = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        "# Per-feature L2 penalties: held-out scores",
        "",
        f"torch {torch.__version__}, threads: {threads} for every tool, n_jobs=1, "
        f"cv=5; started {start}, load average {_uptime()} "
        f"({os.cpu_count()} cores).",
        "",
    ]
    if "synthetic" in args.parts:
        lines += [
            "## Synthetic family",
            "",
            "make_regression(n + 5000, 200, n_informative=k, noise=100, "
            f"random_state=seed), seeds {args.seeds}; R^2 on the 5,000 held-out "
            "examples.",
            "",
        ]
        for config in args.configs:
            n, k = (int(v) for v in config.split(":"))
            table = _synthetic_table(n, k, synthetic(n, k, args.seeds))
            print("\n".join(table), flush=True)
            lines += table
    if "real" in args.parts:
        lines += [
            "## Real datasets",
            "",
            "StandardScaler + Ridge (diabetes, R^2) or LogisticRegression "
            "(breast_cancer, accuracy), 30% held out, one split per seed "
            f"(seeds {args.real_seeds}); the gap is to the scalar {GRID}, "
            "relative, per seed.",
            "",
        ]
        for name in ("diabetes", "breast_cancer"):
            lines += _real_table(name, real(name, args.real_seeds))
    lines += [f"Load average at the end: {_uptime()}.", ""]
    text = "\n".join(lines)
    print(text)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)


if __name__ == "__main__":
    main()
