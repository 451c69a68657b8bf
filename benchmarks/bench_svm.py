"""BilevelSearchCV against GridSearchCV for SVC(kernel="rbf") C and gamma on digits.

GridSearchCV searches a 10 x 10 log grid (``C`` in [1e-2, 1e3], ``gamma`` in
[1e-5, 1e-1]); BilevelSearchCV learns both as ``Real`` entries on the same
ranges, with its default settings (start at the geometric middle of each
range, L-BFGS-B, implicit hypergradients of the validation squared hinge
loss). Both use the same ``StratifiedKFold(5)`` splits and accuracy; the
search's best mean CV accuracy is the best row of its ``cv_results_``.

Each tool is timed in this process under the same thread settings, first one
thread for all (``torch.set_num_threads(1)`` and ``threadpool_limits(1)`` for
BLAS and OpenMP), then the default threads for all; times are medians over
``--repeats`` runs and the ratios come from the same run of the script. The
machine's load (``os.getloadavg``) is recorded before and after each part.

Usage: python benchmarks/bench_svm.py [--repeats 3] [--output FILE]
"""

import argparse
import os
import warnings
from pathlib import Path

import numpy as np
import sklearn
import torch
from _timing import timed_fit as _timed
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.svm import SVC
from threadpoolctl import threadpool_limits

from skbilevel import BilevelSearchCV, Real

ROOT = Path(__file__).resolve().parents[1]
C_RANGE = (1e-2, 1e3)
GAMMA_RANGE = (1e-5, 1e-1)


def _searches(cv):
    grid = {
        "C": np.logspace(np.log10(C_RANGE[0]), np.log10(C_RANGE[1]), 10),
        "gamma": np.logspace(np.log10(GAMMA_RANGE[0]), np.log10(GAMMA_RANGE[1]), 10),
    }
    space = {"C": Real(*C_RANGE), "gamma": Real(*GAMMA_RANGE)}
    return {
        "GridSearchCV (10 x 10)": lambda: GridSearchCV(SVC(), grid, cv=cv),
        "BilevelSearchCV": lambda: BilevelSearchCV(SVC(), space, cv=cv),
    }


def _load():
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def _part(threads, X, y, repeats):
    """Rows (threads, method, score, C, gamma, time, ratio) and the loads."""
    loads = [_load()]
    previous = torch.get_num_threads()
    results = {}
    with threadpool_limits(limits=threads):
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            for name, make in _searches(StratifiedKFold(5)).items():
                results[name] = _timed(make, X, y, repeats)
        finally:
            torch.set_num_threads(previous)
    loads.append(_load())
    grid_time = results["GridSearchCV (10 x 10)"][1]
    label = "default" if threads is None else str(threads)
    rows = [
        (
            label,
            name,
            search.best_score_,
            search.best_params_["C"],
            search.best_params_["gamma"],
            seconds,
            seconds / grid_time,
            len(search.cv_results_["params"]),
        )
        for name, (search, seconds) in results.items()
    ]
    return rows, loads


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--output", default=str(ROOT / "benchmarks/results/bench_svm/digits.md")
    )
    args = parser.parse_args()
    warnings.simplefilter("ignore", ConvergenceWarning)
    X, y = load_digits(return_X_y=True)
    lines = [
        f"torch {torch.__version__}, scikit-learn {sklearn.__version__}, n_jobs=1, "
        f"median of {args.repeats} runs",
        "",
        "| threads | method | best mean CV accuracy | C | gamma | time (s) "
        "| time / grid | rows |",
        "|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for threads in (1, None):
        rows, loads = _part(threads, X, y, args.repeats)
        for row in rows:
            line = "| {} | {} | {:.4f} | {:.4g} | {:.4g} | {:.2f} | {:.2f} | {} |"
            lines.append(line.format(*row))
            print(lines[-1], flush=True)
        label = "default" if threads is None else str(threads)
        notes.append(
            f"- threads {label}: load average before {loads[0]}, after {loads[1]}"
        )
    lines += ["", "Load (1, 5, 15 minutes) around each part:", ""] + notes
    text = "\n".join(lines) + "\n"
    print(text)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)


if __name__ == "__main__":
    main()
