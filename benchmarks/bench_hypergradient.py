"""Cost of each hypergradient method relative to the training it differentiates.

Softmax regression on 5,000 MNIST training images (validation: the next
5,000), T in {10, 100, 1000} inner steps, for every hypergradient method and
every kind of hyperparameter the engine handles:

- ``l2``: one L2 penalty (log space);
- ``per_feature``: one L2 penalty per pixel (784 hyperparameters);
- ``sample_weight``: one weight per training example (5,000, through a sigmoid);
- ``learning_rate``: the step size of the inner gradient descent (log space);
- ``momentum``: the momentum of heavy-ball dynamics (logit space).

For each (T, kind, method) the script reports the median time of the
hypergradient over the median time of the plain T-step training (no graph),
measured in the same run, and the peak resident memory the call added. The
implicit methods are compared with one inner solve to tolerance instead
(their T is a cap on the solver's steps).

Usage::

    python benchmarks/bench_hypergradient.py --data ../shared/data/mnist.npz
"""

import argparse
import statistics
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _memory import PeakMemory

from skbilevel.hypergrad import (
    METHODS,
    gradient_descent,
    heavy_ball,
    unroll,
)

KINDS = ("l2", "per_feature", "sample_weight", "learning_rate", "momentum")
RESULTS = Path(__file__).parent / "results"


def load_mnist(path, n_train=5000, n_val=5000, dtype=torch.float32):
    with np.load(path) as data:
        X = data["X_train"][: n_train + n_val].reshape(n_train + n_val, -1) / 255.0
        y = data["y_train"][: n_train + n_val].astype(np.int64)
    X, y = torch.as_tensor(X, dtype=dtype), torch.as_tensor(y)
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:]


def make_problem(kind, X, y, X_val, y_val):
    """Inner dynamics, outer loss, hyperparameters and w_0 for one kind."""
    n, d = X.shape
    zero = torch.zeros((), dtype=X.dtype)
    hparams = {
        "l2": {"log_alpha": zero - 6.0},
        "per_feature": {"log_alpha": torch.full((d,), -6.0, dtype=X.dtype)},
        "sample_weight": {"logit_weight": torch.full((n,), 3.0, dtype=X.dtype)},
        "learning_rate": {"log_lr": zero + np.log(0.5)},
        "momentum": {"logit_momentum": zero},
    }[kind]

    def inner(w, h):
        logits = X @ w["W"] + w["b"]
        if "logit_weight" in h:
            losses = F.cross_entropy(logits, y, reduction="none")
            loss = (h["logit_weight"].sigmoid() * losses).mean()
        else:
            loss = F.cross_entropy(logits, y)
        alpha = h["log_alpha"].exp() if "log_alpha" in h else 1e-3
        alpha = alpha[:, None] if kind == "per_feature" else alpha
        return loss + 0.5 * (alpha * w["W"] ** 2).sum()

    def outer(w, h):
        return F.cross_entropy(X_val @ w["W"] + w["b"], y_val)

    if kind == "learning_rate":
        dynamics = gradient_descent(inner, lambda h, t: h["log_lr"].exp())
    elif kind == "momentum":
        dynamics = heavy_ball(inner, 0.1, lambda h, t: h["logit_momentum"].sigmoid())
    else:
        dynamics = gradient_descent(inner, 0.5)
    w0 = {"W": torch.zeros(d, 10, dtype=X.dtype), "b": torch.zeros(10, dtype=X.dtype)}
    return dynamics, outer, hparams, w0


def no_graph_unroll(dynamics, w0, hparams, T, tol=None):
    with torch.no_grad():
        unroll(dynamics, w0, hparams, T, tol=tol)


def measure(call, repeats):
    """Median wall time and the largest peak memory over ``repeats`` calls."""
    times, memory = [], 0.0
    for _ in range(repeats):
        with PeakMemory() as peak:
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        memory = max(memory, peak.added_mb)
    return statistics.median(times), memory


def method_options(name, T, tol):
    if name == "truncated_reverse":
        return {"K": max(1, T // 10)}
    if name.startswith("implicit"):
        return {"tol": tol}
    return {}


def skip_reason(kind, name, n_hparams, T, args):
    if name not in args.methods:
        return "not requested"
    if name.startswith("implicit") and kind in ("learning_rate", "momentum"):
        return "n/a: w* does not depend on the dynamics"
    if name.startswith("implicit") and T != args.T[0]:
        return "independent of T: see the first T"
    if name == "forward" and n_hparams * T > args.max_forward:
        return f"skipped: cost ~{n_hparams + 1}x training"
    return None


def measure_kind(kind, T, data, args):
    """Rows of the table for one hyperparameter kind and horizon T."""
    dynamics, outer, hparams, w0 = make_problem(kind, *data)
    n_hparams = sum(v.numel() for v in hparams.values())
    baselines = {
        "training (baseline)": partial(no_graph_unroll, dynamics, w0, hparams, T),
        "solve to tol (baseline)": partial(
            no_graph_unroll, dynamics, w0, hparams, args.solve_steps, tol=args.tol
        ),
    }
    implicit_runs = not skip_reason(kind, "implicit_cg", n_hparams, T, args)
    if not implicit_runs:  # the implicit methods run once, and not for dynamics
        del baselines["solve to tol (baseline)"]
    rows, seconds_of = [], {}
    for name, call in baselines.items():
        seconds, memory = measure(call, args.repeats)
        seconds_of[name] = seconds
        rows.append((T, kind, n_hparams, name, seconds, 1.0, memory, ""))
        print(format_row(rows[-1]), flush=True)
    for name, method in METHODS.items():
        reason = skip_reason(kind, name, n_hparams, T, args)
        if reason == "not requested":
            continue
        if reason:
            rows.append((T, kind, n_hparams, name, None, None, None, reason))
            print(format_row(rows[-1]), flush=True)
            continue
        implicit = name.startswith("implicit")
        steps = args.solve_steps if implicit else T
        options = method_options(name, T, args.tol)
        call = partial(method, w0, hparams, steps, dynamics, outer, **options)
        seconds, memory = measure(call, args.repeats)
        baseline = seconds_of[
            "solve to tol (baseline)" if implicit else "training (baseline)"
        ]
        rows.append((T, kind, n_hparams, name, seconds, seconds / baseline, memory, ""))
        print(format_row(rows[-1]), flush=True)
    return rows


def run(args):
    torch.manual_seed(0)
    data = load_mnist(args.data)
    return [
        row
        for T in args.T
        for kind in args.kinds
        for row in measure_kind(kind, T, data, args)
    ]


def format_row(row):
    T, kind, n_hparams, name, seconds, ratio, memory, note = row
    if seconds is None:
        return f"| {T} | {kind} | {n_hparams} | {name} | | | | {note} |"
    return (
        f"| {T} | {kind} | {n_hparams} | {name} | {seconds:.3f} | {ratio:.2f} "
        f"| {memory:.0f} | {note} |"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/mnist.npz")
    parser.add_argument("--T", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tol", type=float, default=2e-3)
    parser.add_argument("--solve-steps", type=int, default=5000)
    parser.add_argument("--max-forward", type=int, default=5000)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument(
        "--methods", nargs="+", default=list(METHODS), choices=list(METHODS)
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument(
        "--output", default=str(RESULTS / "bench_hypergradient" / "default.md")
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    header = (
        "| T | hyperparameter | n_hparams | method | seconds | x baseline "
        "| peak MB added | note |\n|---|---|---|---|---|---|---|---|"
    )
    print(header)
    rows = run(args)
    table = "\n".join([header] + [format_row(row) for row in rows])
    intro = (
        f"Softmax regression, 5,000 MNIST images, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, median of {args.repeats} repeats. "
        "Baseline: plain T-step training; for the implicit methods, one inner "
        f"solve to gradient norm {args.tol} (at most {args.solve_steps} steps), "
        "which they include.\n\n"
    )
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(intro + table + "\n")
    print(f"\nwritten to {args.output}")


if __name__ == "__main__":
    main()
