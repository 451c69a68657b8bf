"""Learning sample weights and the learning rate of an MLP through its training.

The Far-HO data hyper-cleaning demo with a TorchMLPClassifier: MNIST, one
third of the training labels flipped (``skbilevel.datasets.flip_labels``),
a small clean validation set (1,400 training and 140 validation examples by
default, as in Far-HO's demo). Compared, all on the same network:

- ``default``: trained with the default learning rate and no weights;
- ``grid search``: GridSearchCV over learning rates (the validation set as
  the single split), as many candidates as fit in the bilevel run's time;
- ``bilevel``: one weight per training example and the learning rate (log
  space) learned together by projected Adam on the reverse-mode
  hypergradient through the T training steps, computed by the engine on the
  estimator's own problem (``_bilevel_problem``). The weights are projected
  onto [0, 1] with a budget on their sum (``SampleWeight(budget=2/3)``: the
  fraction of clean labels, the L1 constraint of Franceschi et al., 2017).
  A row is reported at several numbers of outer steps: with 140 validation
  examples for 1,400 weights, the outer problem overfits the validation set.

Each is refitted on the training set and scored on the MNIST test set; the
F1 score compares the examples the bilevel run flags (weight < 0.5) with
the flipped ones. The grid search gets the time of the longest bilevel run.
A second table gives the time and the peak memory of one hypergradient
against T, for reverse mode and truncated reverse mode.

Usage::

    python benchmarks/bench_dynamics.py --data /work/shared/data/mnist.npz
    python benchmarks/bench_dynamics.py --n-train 5000 --n-val 5000
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

from skbilevel import SampleWeight
from skbilevel.datasets import flip_labels, load_mnist
from skbilevel.hypergrad import METHODS
from skbilevel.neural_network import TorchMLPClassifier
from skbilevel.problems import FoldData

RESULTS = Path(__file__).parent / "results"
COMPARISON_HEADER = (
    "| method | test accuracy | seconds | learning rate | F1 flagged "
    "| validation loss |\n|---|---|---|---|---|---|"
)
MEMORY_HEADER = "| T | method | seconds | peak MB added |\n|---|---|---|---|"


def load(path, n_train, n_val, seed):
    mnist = load_mnist(path)
    X = mnist.X_train.reshape(len(mnist.X_train), -1) / 255.0
    rng = np.random.RandomState(seed)
    index = rng.permutation(len(X))[: n_train + n_val]
    X_train, y_train = X[index[:n_train]], mnist.y_train[index[:n_train]]
    X_val, y_val = X[index[n_train:]], mnist.y_train[index[n_train:]]
    y_noisy, flipped = flip_labels(y_train, 1 / 3, random_state=seed)
    X_test = mnist.X_test.reshape(len(mnist.X_test), -1) / 255.0
    return X_train, y_noisy, flipped, X_val, y_val, X_test, mnist.y_test


def one_fold_problem(estimator, X_train, y_train, X_val, y_val):
    """The bilevel problem of training on X_train and validating on X_val.

    Its variables are ``log_lr`` and the training weights ``weight`` (the
    validation samples of the data tensor keep weight 1; they are unused).
    """
    is_train = np.r_[np.ones(len(y_train)), np.zeros(len(y_val))][None]

    def tensor(array):
        return torch.as_tensor(np.asarray(array, dtype=np.float64), dtype=torch.float32)

    data = FoldData(
        tensor(np.vstack([X_train, X_val])),
        np.r_[y_train, y_val],
        tensor(is_train),
        tensor(1 - is_train),
        tensor(np.ones(is_train.shape[1])),
    )
    learned = {"learning_rate": "real", "sample_weight": "sample_weight"}
    problem = estimator._bilevel_problem(data, learned, {})
    validation_weights = torch.ones(len(y_val))
    return problem.transformed(
        lambda u: {
            "learning_rate": u["log_lr"].exp(),
            "sample_weight": torch.cat([u["weight"], validation_weights]),
        }
    )


def initial_variables(learning_rate, space, n_train):
    return {
        "log_lr": torch.tensor(np.log(learning_rate), dtype=torch.float32),
        "weight": space.initial((n_train,), dtype=torch.float32),
    }


def bilevel(estimator, X_train, y_train, X_val, y_val, args):
    """Projected Adam on (log lr, weights); a snapshot at each checkpoint.

    Yields ``(outer steps, seconds, learning rate, weights, outer loss)``;
    the seconds count the hypergradient steps only.
    """
    problem = one_fold_problem(estimator, X_train, y_train, X_val, y_val)
    space = SampleWeight(budget=args.budget)
    u = initial_variables(estimator.learning_rate, space, len(y_train))
    optimizer = torch.optim.Adam(
        [value.requires_grad_() for value in u.values()], lr=args.outer_lr
    )
    seconds = 0.0
    for step in range(1, max(args.checkpoints) + 1):
        start = time.perf_counter()
        result = METHODS["reverse"](
            problem.init_params(),
            {name: value.detach() for name, value in u.items()},
            problem.T,
            problem.dynamics,
            problem.outer_loss,
        )
        for name, value in u.items():
            value.grad = result.grad[name]
        optimizer.step()
        with torch.no_grad():
            u["weight"].copy_(space.project(u["weight"]))
        seconds += time.perf_counter() - start
        if step in args.checkpoints:
            learning_rate = float(u["log_lr"].detach().exp())
            weights = u["weight"].detach().numpy().astype(np.float64)
            yield step, seconds, learning_rate, weights, float(result.outer_loss)


def compare(args):
    X_train, y_train, flipped, X_val, y_val, X_test, y_test = load(
        args.data, args.n_train, args.n_val, args.seed
    )
    estimator = TorchMLPClassifier(
        hidden_layer_sizes=tuple(args.hidden),
        solver="sgd",
        momentum=0.9,
        learning_rate=args.learning_rate,
        max_iter=args.T,
        random_state=args.seed,
        device="cpu",
    )
    # A first fit pays torch's one-time costs, so that fit_time sizes the grid.
    clone(estimator).set_params(max_iter=2).fit(X_train, y_train)
    start = time.perf_counter()
    default = clone(estimator).fit(X_train, y_train)
    fit_time = time.perf_counter() - start
    rows = [("default lr, no weights", default, fit_time, args.learning_rate, "", "")]
    for step, seconds, lr, weights, loss in bilevel(
        estimator, X_train, y_train, X_val, y_val, args
    ):
        start = time.perf_counter()
        model = clone(estimator).set_params(learning_rate=lr)
        model.fit(X_train, y_train, sample_weight=weights)
        seconds += time.perf_counter() - start
        f1 = f"{f1_score(flipped, weights < 0.5):.3f}"
        name = f"bilevel: weights + lr, {step} outer steps"
        rows.append((name, model, seconds, lr, f1, f"{loss:.3f}"))
        print(name, f"{seconds:.1f}s", flush=True)
    bilevel_time = seconds
    n_candidates = max(2, int(bilevel_time / fit_time))
    grid = {"learning_rate": np.geomspace(1e-3, 1.0, n_candidates).tolist()}
    split = PredefinedSplit(np.r_[np.full(len(y_train), -1), np.zeros(len(y_val))])
    start = time.perf_counter()
    search = GridSearchCV(clone(estimator), grid, cv=split, refit=False, n_jobs=1)
    search.fit(np.vstack([X_train, X_val]), np.r_[y_train, y_val])
    best_lr = search.best_params_["learning_rate"]
    best = clone(estimator).set_params(learning_rate=best_lr).fit(X_train, y_train)
    rows.append(
        (
            f"grid search over {n_candidates} lrs",
            best,
            time.perf_counter() - start,
            best_lr,
            "",
            "",
        )
    )
    return [
        (name, model.score(X_test, y_test), seconds, lr, f1, loss)
        for name, model, seconds, lr, f1, loss in rows
    ]


def memory_against_T(args):
    """Time and peak memory of one hypergradient for each T and method."""
    X_train, y_train, _, X_val, y_val, _, _ = load(
        args.data, args.n_train, args.n_val, args.seed
    )
    rows = []
    for T in args.memory_T:
        estimator = TorchMLPClassifier(
            tuple(args.hidden),
            solver="sgd",
            learning_rate=args.learning_rate,
            max_iter=T,
            random_state=args.seed,
        )
        problem = one_fold_problem(estimator, X_train, y_train, X_val, y_val)
        u = initial_variables(
            args.learning_rate, SampleWeight(budget=args.budget), len(y_train)
        )
        for method, options in (
            ("reverse", {}),
            ("truncated_reverse", {"K": max(1, T // 10)}),
        ):
            with PeakMemory() as peak:
                start = time.perf_counter()
                METHODS[method](
                    problem.init_params(),
                    u,
                    T,
                    problem.dynamics,
                    problem.outer_loss,
                    **options,
                )
                seconds = time.perf_counter() - start
            name = f"{method} (K={options['K']})" if options else method
            rows.append((T, name, seconds, peak.added_mb))
            print(f"| {T} | {name} | {seconds:.2f} | {peak.added_mb:.0f} |", flush=True)
    return rows


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="/work/shared/data/mnist.npz")
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
        help="outer steps",
    )
    parser.add_argument("--outer-lr", type=float, default=0.05)
    parser.add_argument(
        "--budget", type=float, default=2 / 3, help="sum of weights / n_train"
    )
    parser.add_argument("--memory-T", type=int, nargs="*", default=[50, 100, 200, 400])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--output", default=str(RESULTS / "bench_dynamics.md"))
    return parser.parse_args()


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lines = [COMPARISON_HEADER] + [
        f"| {name} | {acc:.4f} | {seconds:.1f} | {lr:.4g} | {f1} | {loss} |"
        for name, acc, seconds, lr, f1, loss in compare(args)
    ]
    print("\n".join(lines) + "\n")
    if args.memory_T:
        print(MEMORY_HEADER)
        lines += ["", MEMORY_HEADER] + [
            f"| {T} | {name} | {seconds:.2f} | {mb:.0f} |"
            for T, name, seconds, mb in memory_against_T(args)
        ]
    intro = (
        f"MNIST, {args.n_train} training examples (1/3 of labels flipped), "
        f"{args.n_val} clean validation examples, 10,000 test examples. "
        f"TorchMLPClassifier(hidden_layer_sizes={tuple(args.hidden)}, "
        f"solver='sgd', momentum=0.9, max_iter={args.T}), full batch, float32; "
        f"outer: projected Adam, step {args.outer_lr}, weight budget "
        f"{args.budget:.3g} n_train; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads. Seconds: hypergradient steps plus "
        "the refit (bilevel), all fits (grid search).\n\n"
    )
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(intro + "\n".join(lines) + "\n")
    print(f"\nwritten to {args.output}")


if __name__ == "__main__":
    main()
