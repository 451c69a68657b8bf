"""Sparse text-like LogisticRegression ``C``: BilevelSearchCV against GridSearchCV.

The data: ``--n-samples`` x ``--n-features`` CSR (default 20,000 x 50,000),
about ``--nnz`` non-zeros per row (default 100) drawn from Zipf-like column
frequencies, log counts times idf and rows L2-normalized as
``TfidfVectorizer`` makes them; the labels come from a planted linear model
on 2% of the features (1,000) plus noise. cv=5 (stratified, shuffled, fixed
seed), n_jobs=1.

BilevelSearchCV with ``n_refine=1`` and ``2`` (the accuracy bisected after
the runs by one or two more settings) and at its default ``n_refine=0`` (the
settings the runs visited only); the notes read the ``n_refine=1`` search.
Against GridSearchCV over 20 log-spaced C values on the same range, once per
solver of ``--grid-solvers``: 'lbfgs' (scikit-learn's default and the
objective BilevelSearchCV differentiates and refits), 'liblinear' (the solver
scikit-learn's user guide names for small to medium sparse problems, which
also penalizes the intercept) and 'saga' (the one it names for large sparse
data). The best mean CV accuracy of each search; wall times are medians over
``--repeats`` runs (``--baseline-repeats`` for the grids). Peak resident
memory added by each search, against that of one sparse fit
(``LogisticRegression(solver='lbfgs')`` on all the data at the grid's best C),
measured two ways: resident memory (what the OS sees, allocator's retained
free memory included) and bytes allocated (glibc's ``mallinfo2``: what the
code holds, every library's allocations included).

scikit-learn's lbfgs stops at its default ``tol=1e-4`` after a few iterations
on this data, well before the minimizer that BilevelSearchCV differentiates;
with ``--converged-grid`` the same grid is also run at ``tol=1e-8`` (once, on
one thread: accuracy only, as a reference), and the table's notes give
scikit-learn's CV accuracy at BilevelSearchCV's best C, fitted to
``tol=1e-8``, beside BilevelSearchCV's own (an oracle for its fold
solutions).

With ``--fine-grid`` the script instead studies where the accuracy goes, on
one thread, untimed: the mean CV accuracy and log-loss of scikit-learn's
lbfgs at ``tol=1e-8`` (converged) and at its default ``tol=1e-4`` over
``--fine-points`` log-spaced C in ``--fine-range``, and the settings one
BilevelSearchCV run visits, with the validation log-loss it descended and
their CV accuracy, at its default ``inner_tol=1e-5`` and at 1e-7.

Each thread setting of ``--threads`` is run in turn: ``1`` (one torch thread,
threadpoolctl limits of 1 for every BLAS/OpenMP pool) and ``default`` (every
tool's own defaults). The machine's load (``os.getloadavg``) is recorded
before and after each setting.

Usage: python -W ignore benchmarks/bench_sparse.py [--repeats 3]
       [--baseline-repeats 1] [--threads 1 default] [--grid-solvers lbfgs
       liblinear saga] [--converged-grid] [--output FILE]
       python -W ignore benchmarks/bench_sparse.py --fine-grid [--fine-range
       1 30] [--fine-points 29] --output FILE
"""

import argparse
import os
import sys
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import sklearn
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import (
    GridSearchCV,
    StratifiedKFold,
    cross_val_score,
    cross_validate,
)
from sklearn.preprocessing import normalize
from threadpoolctl import threadpool_limits

from skbilevel import BilevelSearchCV, Real

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _memory import AllocatedPeak, PeakMemory  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LOW, HIGH = 1e-2, 1e3
CV = StratifiedKFold(5, shuffle=True, random_state=0)


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
    """The fitted search of the last run, the median time and the peak
    resident and allocated memory added (the largest over the runs)."""
    times, peaks, allocated, fitted = [], [], [], None
    for _ in range(repeats):
        fitted = None
        with PeakMemory() as memory, AllocatedPeak() as held:
            start = time.perf_counter()
            fitted = make().fit(X, y)
            times.append(time.perf_counter() - start)
        peaks.append(memory.added_mb)
        allocated.append(held.added_mb)
    return fitted, float(np.median(times)), (max(peaks), max(allocated))


def _threads(setting):
    if setting == "default":
        return nullcontext()
    torch.set_num_threads(int(setting))
    return threadpool_limits(int(setting))


def _grid(solver, tol=1e-4):
    grid = np.logspace(np.log10(LOW), np.log10(HIGH), 20)
    estimator = LogisticRegression(solver=solver, max_iter=1000, tol=tol)
    return lambda: GridSearchCV(estimator, {"C": grid}, cv=CV)


def _rows(X, y, args):
    """The table's rows (name, accuracy, time, (resident, allocated) peaks),
    the grids by solver with their times, and the notes."""
    rows, grids = [], {}
    for solver in args.grid_solvers:
        search, seconds, peak = _measured(_grid(solver), X, y, args.baseline_repeats)
        grids[solver] = (search, seconds)
        best = search.best_params_["C"]
        name = f"GridSearchCV({solver}, 20 C, best C={best:.3g})"
        rows.append([name, search.best_score_, seconds, peak])
        print(rows[-1], flush=True)
    # The score bisected after the runs by one and two settings, then the
    # default (the visited settings only).
    for n_refine in (1, 2, 0):
        search, seconds, peak = _measured(
            partial(
                BilevelSearchCV,
                LogisticRegression(),
                {"C": Real(LOW, HIGH, init=1.0)},
                cv=CV,
                n_refine=n_refine,
            ),
            X,
            y,
            args.repeats,
        )
        best = search.best_params_["C"]
        settings = len(search.cv_results_["params"])
        name = (
            f"BilevelSearchCV (n_refine={n_refine}: {settings} settings, "
            f"best C={best:.3g})"
        )
        rows.append([name, search.best_score_, seconds, peak])
        print(rows[-1], flush=True)
        if n_refine == 1:
            bilevel = search
    best = bilevel.best_params_["C"]
    _, fit_seconds, fit_peak = _measured(
        lambda: LogisticRegression(C=best), X, y, args.baseline_repeats
    )
    rows.append(
        [f"one sparse fit (lbfgs, C={best:.3g})", np.nan, fit_seconds, fit_peak]
    )
    return rows, grids, _notes(X, y, grids, bilevel, args)


def _notes(X, y, grids, bilevel, args):
    best = bilevel.best_params_["C"]
    notes = [
        f"GridSearchCV({solver})'s best mean CV accuracy minus "
        f"BilevelSearchCV's: {search.best_score_ - bilevel.best_score_:+.4f}"
        for solver, (search, _) in grids.items()
    ]
    oracle = cross_val_score(
        LogisticRegression(C=best, tol=1e-8, max_iter=1000), X, y, cv=CV
    ).mean()
    notes.append(
        f"scikit-learn's mean CV accuracy at BilevelSearchCV's best C={best:.4g}, "
        f"fitted to tol=1e-8: {oracle:.5f} (BilevelSearchCV's: "
        f"{bilevel.best_score_:.5f})"
    )
    if args.converged is not None:
        notes.append(
            "GridSearchCV(lbfgs, tol=1e-8: converged fits), best C="
            f"{args.converged.best_params_['C']:.3g}: best mean CV accuracy "
            f"{args.converged.best_score_:.5f}, minus BilevelSearchCV's: "
            f"{args.converged.best_score_ - bilevel.best_score_:+.4f}"
        )
    return notes


def _table(rows, grids, notes, setting, loads):
    solvers = list(grids)
    header = (
        "| method | best mean CV accuracy | time (s) | "
        + " | ".join(f"time / grid {s}" for s in solvers)
        + " | resident peak added (MB) | / one fit | allocated peak added (MB)"
        " | / one fit |"
    )
    lines = [
        f"### threads: {setting} (load average 1/5/15 min before: {loads[0]}; "
        f"after: {loads[1]})",
        "",
        header,
        "|" + "---|" * (7 + len(solvers)),
    ]
    fit_resident, fit_allocated = rows[-1][3]
    for name, score, seconds, (resident, allocated) in rows:
        ratios = " | ".join(f"{seconds / grids[s][1]:.3f}" for s in solvers)
        accuracy = "" if np.isnan(score) else f"{score:.4f}"
        lines.append(
            f"| {name} | {accuracy} | {seconds:.2f} | {ratios} | {resident:.0f} | "
            f"{resident / fit_resident:.2f} | {allocated:.0f} | "
            f"{allocated / fit_allocated:.2f} |"
        )
    for note in notes:
        lines += ["", note]
    return "\n".join(lines)


def _fine_grid(X, y, args):
    """The accuracy study of ``--fine-grid``: a markdown section."""
    lines = [
        "### Where the accuracy goes (one thread, untimed; load average 1/5/15 "
        f"min before: {_load()})",
        "",
        "| C | accuracy, tol=1e-8 | log-loss, tol=1e-8 | accuracy, tol=1e-4 "
        "| log-loss, tol=1e-4 |",
        "|---|---|---|---|---|",
    ]
    low, high = args.fine_range
    for C in np.logspace(np.log10(low), np.log10(high), args.fine_points):
        row = [f"{C:.4g}"]
        for tol in (1e-8, 1e-4):
            scores = cross_validate(
                LogisticRegression(C=C, tol=tol, max_iter=1000),
                X,
                y,
                cv=CV,
                scoring=["accuracy", "neg_log_loss"],
            )
            accuracy = scores["test_accuracy"].mean()
            row += [f"{accuracy:.5f}", f"{-scores['test_neg_log_loss'].mean():.6f}"]
        lines.append("| " + " | ".join(row) + " |")
        print(lines[-1], flush=True)
    for inner_tol in (1e-5, 1e-7):
        lines += ["", _visited(X, y, inner_tol)]
    lines += ["", f"Load average after: {_load()}"]
    return "\n".join(lines)


def _visited(X, y, inner_tol):
    """The settings one BilevelSearchCV run visits at ``inner_tol`` (1e-5 is
    its default), as a markdown table."""
    search = BilevelSearchCV(
        LogisticRegression(),
        {"C": Real(LOW, HIGH, init=1.0)},
        cv=CV,
        inner_tol=inner_tol,
    ).fit(X, y)
    lines = [
        f"BilevelSearchCV(inner_tol={inner_tol:g})'s visited settings, in order "
        "(validation log-loss as descended; mean CV accuracy as scored):",
        "",
        "| step | C | validation log-loss | mean CV accuracy |",
        "|---|---|---|---|",
    ]
    results = search.cv_results_
    for step, (entry, params, accuracy) in enumerate(
        zip(search.history_, results["params"], results["mean_test_score"])
    ):
        C, loss = entry["params"]["C"], entry["outer_loss"]
        assert np.isclose(C, params["C"]), "cv_results_ rows out of step order"
        lines.append(f"| {step} | {C:.4g} | {loss:.6f} | {accuracy:.5f} |")
    return "\n".join(lines)


def _load():
    return " / ".join(f"{load:.2f}" for load in os.getloadavg())


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
    parser.add_argument("--converged-grid", action="store_true")
    parser.add_argument("--fine-grid", action="store_true")
    parser.add_argument("--fine-range", nargs=2, type=float, default=[1.0, 30.0])
    parser.add_argument("--fine-points", type=int, default=29)
    parser.add_argument(
        "--output",
        default=str(ROOT / "benchmarks/results/bench_sparse/results.md"),
    )
    args = parser.parse_args()
    X, y = text_like(args.n_samples, args.n_features, args.nnz)
    sections = [
        "## LogisticRegression C on sparse text-like data, cv=5, n_jobs=1",
        "",
        f"{X.shape[0]:,} x {X.shape[1]:,} CSR, {X.nnz / X.shape[0]:.1f} "
        f"non-zeros per row; torch {torch.__version__}, scikit-learn "
        f"{sklearn.__version__}"
        + (
            "."
            if args.fine_grid
            else f"; BilevelSearchCV median of {args.repeats} runs, grids and "
            f"the single fit of {args.baseline_repeats}."
        ),
    ]
    if args.fine_grid:
        with _threads("1"):
            sections += ["", _fine_grid(X, y, args)]
        _write(sections, args.output)
        return
    default_threads = torch.get_num_threads()
    # Accuracy only, the same at any thread setting: run once, on one thread.
    args.converged = None
    if args.converged_grid:
        with _threads("1"):
            args.converged = _grid("lbfgs", tol=1e-8)().fit(X, y)
        torch.set_num_threads(default_threads)
    for setting in args.threads:
        before = _load()
        with _threads(setting):
            rows, grids, notes = _rows(X, y, args)
        torch.set_num_threads(default_threads)
        sections += ["", _table(rows, grids, notes, setting, (before, _load()))]
    _write(sections, args.output)


def _write(sections, output):
    table = "\n".join(sections) + "\n"
    print(table)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(table)


if __name__ == "__main__":
    main()
