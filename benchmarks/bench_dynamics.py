"""Learning sample weights and the learning rate of an MLP with BilevelSearchCV.

The Far-HO data hyper-cleaning demo with a TorchMLPClassifier, through the
public API: MNIST, one third of the training labels flipped
(``skbilevel.datasets.flip_labels``), a small clean validation set (1,400
training and 140 validation examples by default, as in Far-HO's demo; then
5,000/5,000), the two given to each search as one ``PredefinedSplit``.
Compared, all on the same network:

- ``default``: trained with the default learning rate and no weights;
- ``BilevelSearchCV``: one weight per example and the learning rate learned
  together, ``{"learning_rate": Real(1e-4, 1.0, init=lr), "sample_weight":
  SampleWeight(budget=...)}``, ``method="reverse"`` (the hypergradient
  through the T training steps) and projected Adam as the outer optimizer.
  The budget bounds the sum of the weights by 2/3 of the training examples
  (the fraction of clean labels, the L1 constraint of Franceschi et al.,
  2017) plus the validation examples, whose weights the search does not
  move except by that projection. Rows are also reported for intermediate
  outer steps, read from ``history_``: with 140 validation examples for
  1,400 weights, the outer problem overfits the validation set;
- ``GridSearchCV`` over log-spaced learning rates on the same split, with as
  many candidates as fit in the bilevel search's wall time.

As in any scikit-learn search, each best model is refitted on training and
validation examples together (``refit=True``; the bilevel one with its
learned weights), and the default network is fitted on the same examples; all
are scored on the 10,000 MNIST test examples. "F1 flagged" compares the
training examples the search flags as noisy (learned weight < 0.5) with the
flipped ones. "peak MB" is the peak resident memory added during the fit.

A second table gives the time and peak memory of one BilevelSearchCV outer
step (one hypergradient, then the evaluation of the candidate) against T,
for ``method="reverse"`` and ``"truncated_reverse"`` (K = T / 10).

Usage::

    nice python benchmarks/bench_dynamics.py --data /work/shared/data/mnist.npz \\
        --threads 1
    nice python benchmarks/bench_dynamics.py --n-train 5000 --n-val 5000 \\
        --checkpoints 5 10 20 40 --memory-T --threads 1 \\
        --output benchmarks/results/bench_dynamics/n5000.md

How to read the results: benchmarks/results/bench_dynamics/notes.md; which
files are current: the README.md beside it.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from _memory import PeakMemory
from sklearn.base import clone
from sklearn.metrics import f1_score
from sklearn.model_selection import GridSearchCV, PredefinedSplit

from skbilevel import BilevelSearchCV, Real, SampleWeight
from skbilevel.datasets import flip_labels, load_mnist
from skbilevel.neural_network import TorchMLPClassifier

RESULTS = Path(__file__).parent / "results"
COMPARISON_HEADER = (
    "| method | test accuracy | seconds | CPU seconds | peak MB | learning rate "
    "| F1 flagged | validation log-loss |\n|---|---|---|---|---|---|---|---|"
)
MEMORY_HEADER = (
    "| T | method | seconds | CPU seconds | peak MB added |\n|---|---|---|---|---|"
)


def load(path, n_train, n_val, seed):
    mnist = load_mnist(path)
    X = mnist.X_train.reshape(len(mnist.X_train), -1) / 255.0
    rng = np.random.RandomState(seed)
    index = rng.permutation(len(X))[: n_train + n_val]
    X_train, y_train = X[index[:n_train]], mnist.y_train[index[:n_train]]
    X_val, y_val = X[index[n_train:]], mnist.y_train[index[n_train:]]
    y_noisy, flipped = flip_labels(y_train, 1 / 3, random_state=seed)
    X_test = mnist.X_test.reshape(len(mnist.X_test), -1) / 255.0
    split = PredefinedSplit(np.r_[np.full(n_train, -1), np.zeros(n_val)])
    data = (np.vstack([X_train, X_val]), np.r_[y_noisy, y_val], split)
    return data, flipped, (X_test, mnist.y_test)


def network(args, T=None):
    return TorchMLPClassifier(
        hidden_layer_sizes=tuple(args.hidden),
        solver="sgd",
        momentum=0.9,
        learning_rate=args.learning_rate,
        max_iter=args.T if T is None else T,
        random_state=args.seed,
        device="cpu",
    )


def bilevel_search(estimator, split, args, **settings):
    budget = args.budget * args.n_train + args.n_val
    space = {
        "learning_rate": Real(1e-4, 1.0, init=args.learning_rate),
        "sample_weight": SampleWeight(budget=budget),
    }
    # dtype="float32" as the estimator's, so the refit is the trained network.
    return BilevelSearchCV(
        estimator,
        space,
        cv=split,
        outer_optimizer="adam",
        outer_learning_rate=args.outer_lr,
        device="cpu",
        dtype="float32",
        **settings,
    )


def timed_fit(model, X, y, **params):
    """The fitted model, wall and CPU seconds, and the peak memory added (MB)."""
    with PeakMemory() as peak:
        start, cpu_start = time.perf_counter(), time.process_time()
        model.fit(X, y, **params)
        seconds = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
    return model, (seconds, cpu), peak.added_mb


def compare(args):
    (X, y, split), flipped, test = load(args.data, args.n_train, args.n_val, args.seed)
    n_train = args.n_train
    estimator = network(args)
    # A first fit pays torch's one-time costs, so that fit_time sizes the grid.
    clone(estimator).set_params(max_iter=2).fit(X, y)
    default, fit_time, mb = timed_fit(clone(estimator), X, y)
    rows = [("default lr, no weights", default, fit_time, mb, args.learning_rate)]
    rows[0] += ("", "")

    steps = max(args.checkpoints)
    search = bilevel_search(estimator, split, args, method="reverse", max_iter=steps)
    search, bilevel_time, bilevel_mb = timed_fit(search, X, y)
    print(f"BilevelSearchCV: {bilevel_time}s, {bilevel_mb:.0f} MB", flush=True)
    history = search.history_
    for step in sorted(args.checkpoints):
        # history_[k]: the values after k outer steps, the validation loss of
        # the network trained with them; it ends at the learned values.
        params = history[step]["params"]
        loss = f"{history[step]['outer_loss']:.3f}"
        if step < steps:
            model, refit_time, _ = timed_fit(
                clone(estimator).set_params(learning_rate=params["learning_rate"]),
                X,
                y,
                sample_weight=params["sample_weight"],
            )
            # history_ times are wall-clock only.
            seconds = (history[step - 1]["time"] + refit_time[0], None)
        else:
            model, seconds = search.best_estimator_, bilevel_time
        weights = params["sample_weight"][:n_train]
        f1 = f"{f1_score(flipped, weights < 0.5):.3f}"
        name = f"BilevelSearchCV: weights + lr, {step} outer steps"
        rows.append(
            (name, model, seconds, bilevel_mb, params["learning_rate"], f1, loss)
        )

    # CPU time sizes the grid: the machine may be shared, and the wall time of
    # a fit then depends on the load at that moment. A pilot search of two
    # candidates gives the cost of one; the refit costs about a default fit.
    pilot = GridSearchCV(clone(estimator), {"learning_rate": [0.01, 0.1]}, cv=split)
    _, pilot_time, _ = timed_fit(pilot.set_params(refit=False), X, y)
    budget = bilevel_time[1] - fit_time[1]
    n_candidates = max(2, int(2 * budget / pilot_time[1]))
    grid = {"learning_rate": np.geomspace(1e-3, 1.0, n_candidates).tolist()}
    grid_search = GridSearchCV(clone(estimator), grid, cv=split, n_jobs=1)
    grid_search, grid_time, grid_mb = timed_fit(grid_search, X, y)
    name = f"GridSearchCV over {n_candidates} lrs"
    best_lr = grid_search.best_params_["learning_rate"]
    rows.append((name, grid_search, grid_time, grid_mb, best_lr, "", ""))
    return [
        (name, model.score(*test), seconds, mb, lr, f1, loss)
        for name, model, seconds, mb, lr, f1, loss in rows
    ]


def memory_against_T(args):
    """Time and peak memory of one outer step for each T and method."""
    (X, y, split), _, _ = load(args.data, args.n_train, args.n_val, args.seed)
    rows = []
    for T in args.memory_T:
        for method, options in (
            ("reverse", {}),
            ("truncated_reverse", {"K": max(1, T // 10)}),
        ):
            search = bilevel_search(
                network(args, T),
                split,
                args,
                method=method,
                method_params=options,
                max_iter=1,
                refit=False,
            )
            _, seconds, mb = timed_fit(search, X, y)
            name = f"{method} (K={options['K']})" if options else method
            rows.append((T, name, *seconds, mb))
            print(rows[-1], flush=True)
    return rows


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data",
        default=str(Path(__file__).resolve().parents[2] / "shared/data/mnist.npz"),
        help="MNIST file (default: ../shared/data/mnist.npz beside the checkout)",
    )
    parser.add_argument("--n-train", type=int, default=1400)
    parser.add_argument("--n-val", type=int, default=140)
    parser.add_argument("--hidden", type=int, nargs="*", default=[64])
    parser.add_argument("--T", type=int, default=100, help="training steps")
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument(
        "--checkpoints",
        type=int,
        nargs="+",
        default=[5, 10, 20, 40],
        help="outer steps reported; the search runs the largest",
    )
    parser.add_argument("--outer-lr", type=float, default=0.05)
    parser.add_argument(
        "--budget", type=float, default=2 / 3, help="sum of weights / n_train"
    )
    parser.add_argument("--memory-T", type=int, nargs="*", default=[50, 100, 200, 400])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument(
        "--output", default=str(RESULTS / "bench_dynamics" / "default.md")
    )
    return parser.parse_args()


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lines = [COMPARISON_HEADER] + [
        f"| {name} | {acc:.4f} | {wall:.1f} | {'' if cpu is None else f'{cpu:.1f}'} "
        f"| {mb:.0f} | {lr:.4g} | {f1} | {loss} |"
        for name, acc, (wall, cpu), mb, lr, f1, loss in compare(args)
    ]
    print("\n".join(lines) + "\n")
    if args.memory_T:
        print(MEMORY_HEADER)
        lines += ["", MEMORY_HEADER] + [
            f"| {T} | {name} | {wall:.2f} | {cpu:.2f} | {mb:.0f} |"
            for T, name, wall, cpu, mb in memory_against_T(args)
        ]
    intro = (
        f"MNIST, {args.n_train} training examples (1/3 of labels flipped), "
        f"{args.n_val} clean validation examples (one PredefinedSplit), 10,000 "
        f"test examples. TorchMLPClassifier(hidden_layer_sizes="
        f"{tuple(args.hidden)}, solver='sgd', momentum=0.9, learning_rate="
        f"{args.learning_rate}, max_iter={args.T}), full batch, float32. "
        f"BilevelSearchCV(method='reverse', outer_optimizer='adam', "
        f"outer_learning_rate={args.outer_lr}, dtype='float32'), weight budget "
        f"{args.budget:.3g} n_train + n_val. Every model is refitted on training "
        "+ validation examples and scored on the test set; seconds (wall), CPU "
        "seconds (this process) and peak MB (resident memory added) cover the "
        "whole fit of each search (an intermediate row: the hypergradient steps "
        "up to it, read from history_, plus its refit; wall time only). The "
        "grid gets as many candidates as fit in the bilevel search's CPU time. "
        "F1 flagged: learned weight < 0.5 against the flipped training labels. "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads.\n\n"
    )
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(intro + "\n".join(lines) + "\n")
    print(f"\nwritten to {args.output}")


if __name__ == "__main__":
    main()
