"""Data hyper-cleaning on MNIST (Franceschi et al. 2018, section 5.1).

The protocol of issue 13, through the public API only: the first 20,000
MNIST training images, shuffled by the seed and split into 5,000 training,
5,000 validation and 10,000 test examples; 50% of the training labels are
replaced by a uniformly drawn different class
(:func:`skbilevel.datasets.flip_labels`); validation and test stay clean.
``BilevelSearchCV(model, {"sample_weight": SampleWeight(...)},
cv=PredefinedSplit(...))`` learns one weight per training example on the
validation loss, and refits on training + validation examples weighted by the
learned weights (the validation examples keep weight 1): the hyper-cleaned
model. Two models:

- ``logistic``: ``LogisticRegression(C=...)``, hypergradients by implicit
  differentiation (the search's ``method="auto"``);
- ``unrolled``: the softmax regression of the paper's code,
  ``TorchMLPClassifier(hidden_layer_sizes=(), solver="sgd",
  learning_rate=0.1, momentum=0, max_iter=T)``, full batch, hypergradients by
  reverse mode through the T steps.

Each is compared with its baseline (the same model on training + validation
examples, unweighted; for the logistic model an lbfgs fit to convergence, for
the unrolled one T steps of gradient descent, an early-stopped fit) and its
oracle (the clean training examples + validation). Flagging: a training
example is flagged as corrupted when its learned weight is below
``--threshold``; the best F1 over all thresholds is read from
:func:`sklearn.metrics.precision_recall_curve`. Seconds and peak resident
memory added cover the search's ``fit`` (refit included).

``--part T``: the effect of T on the strongly convex problem: the unrolled
model with L2 strength ``--alpha`` (default 1, on the summed weighted loss:
about 1e-4 per example) for each T of ``--T``, and, as the limit
T -> infinity, the logistic model with ``C = 1 / alpha`` (the same L2
strength on the summed loss) and implicit differentiation.

``--part cv``: cross-validated hyper-cleaning: the logistic model's search
on the fixed split, then with ``cv=KFold(5, shuffle=True,
random_state=seed)`` over all training + validation examples, every one
weighted (the validation folds then hold flipped labels too); its table adds
the validation part's mean learned weight and the fraction of it flagged.

``--split trusted`` (protocol part): the search's one fold trains on every
example, the clean validation part included at its learned weight (which
stays near 1), and validates on that part, ``cv=[(all examples, validation
part)]``: the weights are learned for the model that the refit returns, as
the refit trains on the validation part too. The default, ``held-out``, is
the PredefinedSplit above.

``--dataset digits``: the same protocol on scikit-learn's digits (8 x 8
images in [0, 1]) instead of MNIST, e.g. 600 / 600 / 597 of its 1,797.

Every search runs with BilevelSearchCV's defaults for a SampleWeight search
(``outer_optimizer="auto"``: projected Adam, ``outer_learning_rate=0.1``,
``max_iter=30``) unless a flag sets one.

Usage::

    nice -n 10 python benchmarks/bench_hyper_cleaning.py --models logistic
    nice -n 10 python benchmarks/bench_hyper_cleaning.py --dataset digits \\
        --models logistic --n-train 600 --n-val 600 --n-test 597
    nice -n 10 python benchmarks/bench_hyper_cleaning.py --part cv \\
        --n-train 1000 --n-val 1000 --threads 1
    nice -n 19 python benchmarks/bench_hyper_cleaning.py --part T --threads 1 \\
        --T 10 50 200 1000
    # smoke run
    python benchmarks/bench_hyper_cleaning.py --n-train 500 --n-val 500 \\
        --n-test 1000 --seeds 0 --max-iter 3 --output /tmp/smoke.md

How the results were produced: benchmarks/results/bench_hyper_cleaning/README.md.
"""

import argparse
import os
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from _memory import PeakMemory
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, precision_recall_curve
from sklearn.model_selection import KFold, PredefinedSplit
from threadpoolctl import threadpool_limits

from skbilevel import BilevelSearchCV, SampleWeight
from skbilevel.datasets import flip_labels, load_mnist
from skbilevel.neural_network import TorchMLPClassifier

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks/results/bench_hyper_cleaning"


def images(dataset, path, n):
    """The first n images of MNIST (in [0, 1]) or of scikit-learn's digits."""
    if dataset == "digits":
        X, y = load_digits(return_X_y=True)
        if n > len(y):
            raise ValueError(f"digits has {len(y)} images; {n} were asked for.")
        return X[:n] / 16.0, y[:n]
    mnist = load_mnist(path)
    return mnist.X_train[:n].reshape(n, -1) / 255.0, mnist.y_train[:n]


def load(path, n_train, n_val, n_test, seed, dataset="mnist"):
    """The protocol's split of the first n_train + n_val + n_test images."""
    n = n_train + n_val + n_test
    X, y = images(dataset, path, n)
    index = np.random.RandomState(seed).permutation(n)
    X, y = X[index], y[index].astype(np.int64)
    y_noisy, flipped = flip_labels(y[:n_train], 0.5, random_state=seed)
    fit = slice(0, n_train + n_val)
    return {
        "X_fit": X[fit],
        "y_fit": np.r_[y_noisy, y[n_train : n_train + n_val]],
        "y_clean": y[fit],
        "flipped": flipped,
        "X_test": X[n_train + n_val :],
        "y_test": y[n_train + n_val :],
        "split": PredefinedSplit(np.r_[np.full(n_train, -1), np.zeros(n_val)]),
        # One fold that trains on every example and validates on the clean
        # part: the model whose validation loss is descended is the refit.
        "trusted": [(np.arange(n_train + n_val), np.arange(n_train, n_train + n_val))],
    }


def logistic(C):
    return LogisticRegression(C=C, max_iter=5000)


def unrolled(T, alpha, seed):
    return TorchMLPClassifier(
        hidden_layer_sizes=(),
        solver="sgd",
        learning_rate=0.1,
        momentum=0.0,
        max_iter=T,
        alpha=alpha,
        random_state=seed,
        device="cpu",
    )


def search(estimator, args):
    space = {"sample_weight": SampleWeight(init=args.init, budget=args.budget)}
    options = {"device": "cpu"}
    if args.max_iter is not None:
        options["max_iter"] = args.max_iter
    if args.outer_optimizer is not None:
        options["outer_optimizer"] = args.outer_optimizer
    if args.outer_lr is not None:
        options["outer_learning_rate"] = args.outer_lr
    if args.inner_steps is not None and not isinstance(estimator, TorchMLPClassifier):
        options["inner_steps"] = args.inner_steps
    return lambda split: BilevelSearchCV(estimator, space, cv=split, **options)


def flagging(weights, flipped, threshold):
    """F1 at the threshold, best F1 of the precision-recall curve, its threshold."""
    precision, recall, thresholds = precision_recall_curve(flipped, -weights)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))[:-1]
    best = int(np.argmax(f1))
    return f1_score(flipped, weights < threshold), f1[best], -thresholds[best]


def fit_plain(estimator, X, y, X_test, y_test):
    start = time.perf_counter()
    with PeakMemory() as memory:
        model = clone(estimator).fit(X, y)
    return {
        "accuracy": model.score(X_test, y_test),
        "seconds": time.perf_counter() - start,
        "peak_mb": memory.added_mb,
    }


def fit_search(make, data, threshold, split=None):
    """The hyper-cleaned row: test accuracy, flagging (of the training part),
    the validation part's weights, time, memory, weights."""
    n_train = data["flipped"].size
    start = time.perf_counter()
    with PeakMemory() as memory:
        split = data["split"] if split is None else split
        fitted = make(split).fit(data["X_fit"], data["y_fit"])
    seconds = time.perf_counter() - start
    learned = np.asarray(fitted.best_params_["sample_weight"])
    weights, validation = learned[:n_train], learned[n_train:]
    f1, best_f1, best_threshold = flagging(weights, data["flipped"], threshold)
    return {
        "val_weight": validation.mean(),
        "val_flagged": np.mean(validation < threshold),
        "accuracy": fitted.score(data["X_test"], data["y_test"]),
        "seconds": seconds,
        "peak_mb": memory.added_mb,
        "f1": f1,
        "best_f1": best_f1,
        "best_threshold": best_threshold,
        "outer_steps": len(fitted.history_),
        "weights": weights,
        "search": fitted,
    }


def clean_part(data):
    """Clean training examples + validation: the oracle's data."""
    n_val = data["y_fit"].size - data["flipped"].size
    keep = np.r_[~data["flipped"], np.ones(n_val, bool)]
    return data["X_fit"][keep], data["y_fit"][keep]


def report(seed, name, row):
    """Print a row as soon as it is measured (a long run shows its progress)."""
    print(
        f"seed {seed} | {name} | accuracy {row['accuracy']:.4f} | "
        f"best F1 {row.get('best_f1', float('nan')):.3f} | "
        f"{row['seconds']:.1f} s",
        flush=True,
    )
    return row


def protocol_rows(data, args, seed):
    """Baseline, oracle and hyper-cleaned rows of each model, one seed."""
    X, y, X_test, y_test = data["X_fit"], data["y_fit"], data["X_test"], data["y_test"]
    X_clean, y_clean = clean_part(data)
    models = {
        "logistic": (
            logistic(args.C),
            "LogisticRegression, lbfgs to convergence",
            "implicit",
        ),
        "unrolled": (
            unrolled(args.T[0], args.alpha, seed),
            f"softmax regression, gradient descent T={args.T[0]}",
            "reverse",
        ),
    }
    rows = {}
    for model in args.models:
        estimator, training, method = models[model]
        name = f"baseline: {training}"
        rows[name] = report(seed, name, fit_plain(estimator, X, y, X_test, y_test))
        name = f"oracle: {training}"
        row = fit_plain(estimator, X_clean, y_clean, X_test, y_test)
        rows[name] = report(seed, name, row)
        name = f"hyper-cleaned: {training} ({method} hypergradient)"
        split = None
        if args.split == "trusted":
            name = f"hyper-cleaned, validation part also trained on: {training}"
            split = data["trusted"]
        row = fit_search(search(estimator, args), data, args.threshold, split)
        rows[name] = report(seed, name, row)
    return rows


def cv_rows(data, args, seed):
    """LogisticRegression hyper-cleaned on the fixed split, then with cv=5
    over all training + validation examples, every one weighted."""
    X, y, X_test, y_test = data["X_fit"], data["y_fit"], data["X_test"], data["y_test"]
    estimator = logistic(args.C)
    rows = {
        "baseline": fit_plain(estimator, X, y, X_test, y_test),
        "oracle": fit_plain(estimator, *clean_part(data), X_test, y_test),
    }
    folds = KFold(5, shuffle=True, random_state=seed)
    for name, split in [
        ("hyper-cleaned, fixed split (training part weighted)", None),
        ("hyper-cleaned, cv=5 over training + validation (all weighted)", folds),
    ]:
        row = fit_search(search(estimator, args), data, args.threshold, split)
        rows[name] = row
    for name, row in rows.items():
        report(seed, name, row)
    return rows


def t_rows(data, args, seed):
    """The unrolled search for each T, then implicit differentiation (T = inf)."""
    rows = {}
    models = {
        f"unrolled GD, T={T} (reverse)": unrolled(T, args.alpha, seed) for T in args.T
    }
    models["LogisticRegression, T=inf (implicit)"] = logistic(1.0 / args.alpha)
    for name, estimator in models.items():
        row = fit_search(search(estimator, args), data, args.threshold)
        rows[name] = report(seed, name, row)
    return rows


def summary(values, fmt):
    values = [v for v in values if v is not None]
    if not values:
        return ""
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(np.mean(values), fmt)} ± {format(np.std(values), fmt)}"


def table(results):
    """One markdown row per method, mean ± std over the seeds; with the
    validation part's weights where some were learned (part cv)."""
    extra = [("val_weight", ".3f"), ("val_flagged", ".3f")]
    validation = any(r.get("val_weight", 1) < 1 for r in results[0].values())
    lines = [
        "| method | test accuracy | F1 at threshold | best F1 (PR curve) "
        "| its weight threshold | outer evaluations | seconds | peak MB added |"
        + (" validation part: mean weight | its fraction flagged |" * validation),
        "|---|---|---|---|---|---|---|---|" + "---|---|" * validation,
    ]
    for name in results[0]:
        runs = [seed_rows[name] for seed_rows in results]
        cells = [summary([r["accuracy"] for r in runs], ".4f")]
        for key, fmt in [
            ("f1", ".3f"),
            ("best_f1", ".3f"),
            ("best_threshold", ".3g"),
            ("outer_steps", ".0f"),
        ]:
            cells.append(summary([r.get(key) for r in runs], fmt))
        cells += [
            summary([r["seconds"] for r in runs], ".1f"),
            summary([r["peak_mb"] for r in runs], ".0f"),
        ]
        for key, fmt in extra * validation:
            cells.append(summary([r.get(key) for r in runs], fmt))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def plot_weights(rows, data, path):
    """SampleWeightDisplay of each search of one seed, one row of panels each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from skbilevel.plotting import SampleWeightDisplay

    searches = {k: r for k, r in rows.items() if "weights" in r}
    fig, axes = plt.subplots(
        len(searches), 2, figsize=(10, 3.6 * len(searches)), squeeze=False
    )
    for ax, (name, row) in zip(axes, searches.items()):
        SampleWeightDisplay.from_weights(
            row["weights"],
            data["flipped"],
            mask_names=("clean label", "flipped label"),
            ax=ax,
        )
        title = textwrap.fill(f"{name}, test accuracy {row['accuracy']:.4f}", 50)
        ax[0].set_title(title, fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_t(results, args, path):
    """Accuracy and best F1 against T, the implicit limit as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results[0])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, label in [
        (axes[0], "accuracy", "test accuracy"),
        (axes[1], "best_f1", "best F1 of flagging"),
    ]:
        values = np.array([[r[n][key] for n in names] for r in results])
        mean, std = values.mean(axis=0), values.std(axis=0)
        ax.errorbar(args.T, mean[:-1], yerr=std[:-1], marker="o", label="unrolled GD")
        ax.axhline(mean[-1], color="k", ls="--", label="implicit (T = inf)")
        ax.set(xscale="log", xlabel="T (unrolled inner steps)", ylabel=label)
        ax.set_title(f"{label} against T ({len(results)} seed(s))")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def header(args, n_seeds):
    threads = "default" if args.threads is None else str(args.threads)
    space = f"SampleWeight(init={args.init}, budget={args.budget})"
    cv, folds = "PredefinedSplit", ""
    if args.split == "trusted" and args.part == "protocol":
        cv = "[(every example, the validation part)]"
    if args.part == "cv":
        folds = " and KFold(5, shuffle=True, random_state=seed) over all"
    outer = (
        f"max_iter={args.max_iter or 'default'}, outer_optimizer="
        f"{args.outer_optimizer or 'default'}, outer_learning_rate="
        f"{args.outer_lr or 'default'}, inner_steps (logistic)="
        f"{args.inner_steps or 'default'}"
    )
    return [
        f"{'MNIST' if args.dataset == 'mnist' else 'scikit-learn digits'}, first "
        f"{args.n_train + args.n_val + args.n_test} images "
        f"shuffled by the seed: {args.n_train} training (50% of labels flipped), "
        f"{args.n_val} clean validation, {args.n_test} clean test. "
        f"Seeds {args.seeds} (mean ± std over {n_seeds}). "
        f"BilevelSearchCV(model, {{'sample_weight': {space}}}, "
        f"cv={cv}{folds}, {outer}). "
        f"LogisticRegression(C={args.C}) "
        f"(part T: C = 1/alpha); TorchMLPClassifier(hidden_layer_sizes=(), "
        f"solver='sgd', learning_rate=0.1, momentum=0, alpha={args.alpha}, "
        f"max_iter=T). Flagged: weight < {args.threshold}. torch "
        f"{torch.__version__}, threads: {threads}, 1-minute load average "
        f"(`uptime`) at start {args.load_at_start:.2f}, when written "
        f"{os.getloadavg()[0]:.2f}.",
        "",
    ]


def parse():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT / "../shared/data/mnist.npz"))
    parser.add_argument("--part", choices=["protocol", "T", "cv"], default="protocol")
    parser.add_argument("--dataset", choices=["mnist", "digits"], default="mnist")
    parser.add_argument(
        "--split",
        choices=["held-out", "trusted"],
        default="held-out",
        help="protocol part: the clean validation part held out of training "
        "(PredefinedSplit) or also trained on (one fold training on every example)",
    )
    parser.add_argument("--n-train", type=int, default=5000)
    parser.add_argument("--n-val", type=int, default=5000)
    parser.add_argument("--n-test", type=int, default=10000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--models",
        nargs="+",
        default=["logistic", "unrolled"],
        choices=["logistic", "unrolled"],
    )
    parser.add_argument(
        "--max-iter", type=int, default=None, help="outer steps (default: the search's)"
    )
    parser.add_argument(
        "--T",
        type=int,
        nargs="+",
        default=None,
        help="unrolled steps (protocol: the first; default 1000; part T: "
        "10 50 200 1000)",
    )
    parser.add_argument("--C", type=float, default=1.0)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--init", type=float, default=1.0)
    parser.add_argument("--budget", type=float, default=None)
    parser.add_argument("--outer-optimizer", choices=["lbfgs", "adam"], default=None)
    parser.add_argument("--outer-lr", type=float, default=None)
    parser.add_argument("--inner-steps", type=int, default=None)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    args.load_at_start = os.getloadavg()[0]
    if args.T is None:
        args.T = [1000] if args.part == "protocol" else [10, 50, 200, 1000]
    if args.output is None:
        name = {"protocol": "protocol.md", "T": "effect_of_T.md", "cv": "cv.md"}
        name = name[args.part]
        args.output = str(RESULTS / name)
    return args


def main():
    args = parse()
    warnings.simplefilter("ignore", ConvergenceWarning)
    # The validation examples are in no training fold by design.
    warnings.filterwarnings("ignore", message=".* in no training fold")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)
    lines = header(args, len(args.seeds))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in args.seeds:
        data = load(
            args.data, args.n_train, args.n_val, args.n_test, seed, args.dataset
        )
        part = {"protocol": protocol_rows, "T": t_rows, "cv": cv_rows}[args.part]
        rows = part(data, args, seed)
        if seed == args.seeds[0]:
            plot_weights(rows, data, output.with_name(output.stem + "_weights.png"))
        results.append(rows)
        # Write after every seed so that a run cut short keeps its seeds.
        done = header(args, len(results)) + table(results)
        output.write_text("\n".join(done) + "\n")
    if args.part == "T":
        plot_t(results, args, output.with_name(output.stem + ".png"))
    print("\n".join(lines[1:] + table(results)))


if __name__ == "__main__":
    main()
