"""Sparse text-like LogisticRegression ``C``: BilevelSearchCV against GridSearchCV.

The data: ``--n-samples`` x ``--n-features`` CSR (default 20,000 x 50,000),
about ``--nnz`` non-zeros per row (default 100) drawn from Zipf-like column
frequencies, log counts times idf and rows L2-normalized as
``TfidfVectorizer`` makes them; the labels come from a planted linear model
on 2% of the features (1,000) plus noise. cv=5 (stratified, shuffled, fixed
seed), n_jobs=1.

Against GridSearchCV over 20 log-spaced C values on the same range, once per
solver of ``--grid-solvers``: 'lbfgs' (scikit-learn's default and the
objective BilevelSearchCV differentiates and refits), 'liblinear' (the solver
scikit-learn's user guide names for small to medium sparse problems, which
also penalizes the intercept) and 'saga' (the one it names for large sparse
data). The best mean CV accuracy of each search; wall times are medians over
``--repeats`` runs (``--baseline-repeats`` for the grids). Peak resident
memory added by each search, against that of one sparse fit
(``LogisticRegression(solver='lbfgs')`` on all the data at the grid's best C).

Each thread setting of ``--threads`` is run in turn: ``1`` (one torch thread,
threadpoolctl limits of 1 for every BLAS/OpenMP pool) and ``default`` (every
tool's own defaults). The machine's load (``os.getloadavg``) is recorded
before and after each setting.

Usage: python -W ignore benchmarks/bench_sparse.py [--repeats 3]
       [--baseline-repeats 1] [--threads 1 default] [--grid-solvers lbfgs
       liblinear saga] [--output FILE]
"""

import argparse
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import sklearn
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.preprocessing import normalize
from threadpoolctl import threadpool_limits

from skbilevel import BilevelSearchCV, Real

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _memory import PeakMemory  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LOW, HIGH = 1e-2, 1e3


def text_like(n_samples, n_features, nnz, seed=0):
    """A TF-IDF-like CSR design and labels from a planted sparse linear model."""
    rng = np.random.RandomState(seed)
    frequency = 1.0 / (np.arange(n_features) + 10.0) ** 0.9
    columns = rng.choice(
        n_features, size=n_samples * nnz, p=frequency / frequency.sum()
    )
    rows = np.repeat(np.arange(n_samples), nnz)
    counts = sp.csr_matrix(
        (np.ones(rows.size), (rows, columns)), shape=(n_samples, n_features)
    )
    counts.sum_duplicates()
    counts.data = np.log1p(counts.data)
    df = np.bincount(counts.indices, minlength=n_features)
    idf = np.log((1.0 + n_samples) / (1.0 + df)) + 1.0
    X = normalize(counts @ sp.diags(idf)).tocsr()
    coef = np.zeros(n_features)
    support = rng.choice(n_features // 10, size=n_features // 50, replace=False)
    coef[support] = rng.randn(support.size)
    margin = X @ coef
    margin = (margin - margin.mean()) / margin.std()
    y = (margin + 0.5 * rng.randn(n_samples) > 0).astype(int)
    return X, y


def _measured(make, X, y, repeats):
    """The fitted search of the last run, the median time and the peak memory
    added (the largest over the runs)."""
    times, peaks, fitted = [], [], None
    for _ in range(repeats):
        fitted = None
        with PeakMemory() as memory:
            start = time.perf_counter()
            fitted = make().fit(X, y)
            times.append(time.perf_counter() - start)
        peaks.append(memory.added_mb)
    return fitted, float(np.median(times)), max(peaks)


def _threads(setting):
    if setting == "default":
        return nullcontext()
    torch.set_num_threads(int(setting))
    return threadpool_limits(int(setting))


def _rows(X, y, cv, args):
    grid = np.logspace(np.log10(LOW), np.log10(HIGH), 20)
    rows, grids = [], {}
    for solver in args.grid_solvers:
        search, seconds, peak = _measured(
            lambda s=solver: GridSearchCV(
                LogisticRegression(solver=s, max_iter=1000), {"C": grid}, cv=cv
            ),
            X,
            y,
            args.baseline_repeats,
        )
        grids[solver] = (search, seconds)
        best = search.best_params_["C"]
        rows.append(
            [
                f"GridSearchCV({solver}, 20 C, best C={best:.3g})",
                search.best_score_,
                seconds,
                peak,
            ]
        )
        print(rows[-1], flush=True)
    bilevel, seconds, peak = _measured(
        lambda: BilevelSearchCV(
            LogisticRegression(), {"C": Real(LOW, HIGH, init=1.0)}, cv=cv
        ),
        X,
        y,
        args.repeats,
    )
    best = bilevel.best_params_["C"]
    rows.append(
        [
            f"BilevelSearchCV ({len(bilevel.cv_results_['params'])} settings, "
            f"best C={best:.3g})",
            bilevel.best_score_,
            seconds,
            peak,
        ]
    )
    print(rows[-1], flush=True)
    _, fit_seconds, fit_peak = _measured(
        lambda: LogisticRegression(C=best), X, y, args.baseline_repeats
    )
    rows.append(
        [f"one sparse fit (lbfgs, C={best:.3g})", np.nan, fit_seconds, fit_peak]
    )
    return rows, grids, fit_peak


def _table(rows, grids, fit_peak, setting, loads):
    solvers = list(grids)
    header = (
        "| method | best mean CV accuracy | time (s) | "
        + " | ".join(f"time / grid {s}" for s in solvers)
        + " | peak memory added (MB) | peak / one fit |"
    )
    lines = [
        f"### threads: {setting} (load average before / after: {loads[0]} / "
        f"{loads[1]})",
        "",
        header,
        "|" + "---|" * (5 + len(solvers)),
    ]
    for name, score, seconds, peak in rows:
        ratios = " | ".join(f"{seconds / grids[s][1]:.3f}" for s in solvers)
        accuracy = "" if np.isnan(score) else f"{score:.4f}"
        lines.append(
            f"| {name} | {accuracy} | {seconds:.2f} | {ratios} | {peak:.0f} | "
            f"{peak / fit_peak:.2f} |"
        )
    bilevel = rows[-2][1]
    for solver in solvers:
        lines.append("")
        lines.append(
            f"GridSearchCV({solver})'s best mean CV accuracy minus "
            f"BilevelSearchCV's: {grids[solver][0].best_score_ - bilevel:+.4f}"
        )
    return "\n".join(lines)


def _load():
    return f"{os.getloadavg()[0]:.2f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=20_000)
    parser.add_argument("--n-features", type=int, default=50_000)
    parser.add_argument("--nnz", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline-repeats", type=int, default=1)
    parser.add_argument("--threads", nargs="+", default=["1", "default"])
    parser.add_argument(
        "--grid-solvers", nargs="+", default=["lbfgs", "liblinear", "saga"]
    )
    parser.add_argument(
        "--output",
        default=str(ROOT / "benchmarks/results/bench_sparse/results.md"),
    )
    args = parser.parse_args()
    X, y = text_like(args.n_samples, args.n_features, args.nnz)
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    sections = [
        "## LogisticRegression C on sparse text-like data, cv=5, n_jobs=1",
        "",
        f"{X.shape[0]:,} x {X.shape[1]:,} CSR, {X.nnz / X.shape[0]:.1f} "
        f"non-zeros per row; torch {torch.__version__}, scikit-learn "
        f"{sklearn.__version__}; BilevelSearchCV median of {args.repeats} "
        f"runs, grids and the single fit of {args.baseline_repeats}.",
    ]
    default_threads = torch.get_num_threads()
    for setting in args.threads:
        before = _load()
        with _threads(setting):
            rows, grids, fit_peak = _rows(X, y, cv, args)
        torch.set_num_threads(default_threads)
        sections += ["", _table(rows, grids, fit_peak, setting, (before, _load()))]
    table = "\n".join(sections) + "\n"
    print(table)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(table)


if __name__ == "__main__":
    main()
