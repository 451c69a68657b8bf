"""Few-shot classification on Omniglot: hyper-representation vs baselines.

Reproduces the Omniglot part of Table 2 of Franceschi et al. (ICML 2018):
N-way K-shot accuracy on the 323 meta-test characters (in 4 rotations),
600 test episodes, mean and 95% confidence half-width. It compares

* the hyper-representation (bilevel meta-training of conv4 + learned inner
  learning rate); by default one model per setting, meta-trained on episodes
  of that setting as in the paper (``--train-way W`` instead trains one model
  per shot count on W-way episodes and evaluates it on every setting with
  that shot count),
* the classical baseline (the same network trained jointly on all training
  classes, evaluated by the same T-step heads),
* scikit-learn classifiers on raw pixels, cloned per episode (``--pixels``).

All meta-training shares one wall-clock budget, ``--budget`` seconds: the
joint baseline gets ``--joint-share`` of it and the bilevel models split the
rest equally. Meta-validation accuracy (episodes of the model's setting drawn
from the 100 validation characters) is logged every ``--validation-interval``
steps, giving an accuracy-vs-time curve. Tables are written to
``benchmarks/results/bench_few_shot/TAG.md`` (``default.md`` without
``--tag``) and ``TAG_curve.csv``; the folder's README.md says which are
current.

Usage (CPU, one model per shot count trained on 20-way episodes, which
scored higher on 5-way test episodes than 5-way training, the outer step
decaying, the best validated checkpoint kept; the two run side by side, 47
minutes of meta-training on 2 cores; see
``results/bench_few_shot/notes.md``, section 5)::

    common="--threads 1 --train-way 20 --meta-batch-size 4 --fixed-inner-lr \\
        --budget 2900 --early-stopping --n-iter-no-change 8 \\
        --outer-lr-decay 1e-3 --skip-joint --pixels none"
    python benchmarks/bench_few_shot.py --settings 5,1 20,1 $common \\
        --tag cpu_train20way_decay_1shot &
    python benchmarks/bench_few_shot.py --settings 5,5 20,5 $common \\
        --tag cpu_train20way_decay_5shot &

Usage (GPU, the four settings and the joint baseline in about 7 minutes)::

    python benchmarks/bench_few_shot.py --device cuda --budget 300 \\
        --meta-batch-size 32 --validation-interval 500 --tag gpu
"""

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from skbilevel.datasets import load_omniglot, omniglot_few_shot_splits
from skbilevel.meta import HyperRepresentationClassifier, few_shot_score

PAPER = {(5, 1): 98.6, (5, 5): 99.5, (20, 1): 95.5, (20, 5): 98.4}
RESULTS = Path(__file__).parent / "results" / "bench_few_shot"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        default=str(Path(__file__).resolve().parents[2] / "shared/data"),
        help="folder of omniglot.npz (default: ../shared/data beside the checkout)",
    )
    parser.add_argument("--settings", nargs="+", default=["5,1", "5,5", "20,1", "20,5"])
    parser.add_argument(
        "--train-way",
        type=int,
        default=None,
        help="train one model per shot count on this way (default: one per setting)",
    )
    parser.add_argument("--budget", type=float, default=1800.0)
    parser.add_argument("--joint-share", type=float, default=0.15)
    parser.add_argument("--max-iter", type=int, default=1_000_000)
    parser.add_argument("--meta-batch-size", type=int, default=16)
    parser.add_argument("--T", type=int, default=5)
    parser.add_argument("--outer-learning-rate", type=float, default=1e-3)
    parser.add_argument(
        "--outer-lr-decay",
        type=float,
        default=1e-4,
        help="inverse-time decay of the outer step: lr / (1 + decay * step)",
    )
    parser.add_argument(
        "--fixed-inner-lr",
        action="store_true",
        help="keep the inner learning rate at 0.1 instead of learning it",
    )
    parser.add_argument(
        "--batch-norm", default="episode", choices=["episode", "running"]
    )
    parser.add_argument("--validation-interval", type=int, default=250)
    parser.add_argument(
        "--early-stopping",
        action="store_true",
        help="keep the bilevel model of the best meta-validation checkpoint",
    )
    parser.add_argument(
        "--n-iter-no-change",
        type=int,
        default=5,
        help="with --early-stopping, validations without improvement before stopping",
    )
    parser.add_argument("--validation-episodes", type=int, default=100)
    parser.add_argument("--test-episodes", type=int, default=600)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-joint", action="store_true")
    parser.add_argument("--pixels", default="knn", choices=["none", "knn", "all"])
    parser.add_argument("--tag", default="", help="suffix of the result files")
    parser.add_argument("--verbose", type=int, default=1, help="progress bars")
    parser.add_argument(
        "--train-classes",
        type=int,
        default=None,
        help="keep only this many training classes (quick smoke runs)",
    )
    return parser.parse_args()


def meta_train(args, splits, n_way, n_shot, training, max_time):
    model = HyperRepresentationClassifier(
        "conv4",
        n_way=n_way,
        n_shot=n_shot,
        T=args.T,
        learn_learning_rate=not args.fixed_inner_lr,
        outer_learning_rate=args.outer_learning_rate,
        outer_lr_decay=args.outer_lr_decay,
        meta_batch_size=args.meta_batch_size,
        max_iter=args.max_iter,
        max_time=max_time,
        validation_interval=args.validation_interval,
        n_validation_episodes=args.validation_episodes,
        early_stopping=args.early_stopping and training == "bilevel",
        n_iter_no_change=args.n_iter_no_change,
        training=training,
        batch_norm=args.batch_norm if training == "bilevel" else "running",
        device=args.device,
        random_state=0,
        verbose=args.verbose,
    )
    start = time.perf_counter()
    model.fit(*splits["train"], validation_data=splits["val"])
    fit_time = time.perf_counter() - start
    name = f"{training} {n_way}-way {n_shot}-shot"
    curve = pd.DataFrame(model.history_).assign(model=name)
    return model, fit_time, curve


def evaluate(name, model, X, y, settings, args, meta_time=np.nan, fit_time=np.nan):
    rows = []
    for n_way, n_shot in settings:
        start = time.perf_counter()
        mean, ci95 = few_shot_score(
            model,
            X,
            y,
            n_way=n_way,
            n_shot=n_shot,
            n_episodes=args.test_episodes,
            random_state=0,
        )
        rows.append(
            {
                "setting": f"{n_way}-way {n_shot}-shot",
                "method": name,
                "accuracy %": f"{100 * mean:.2f} +- {100 * ci95:.2f}",
                "paper %": PAPER.get((n_way, n_shot)),
                "meta-training s": round(float(meta_time), 1),
                "fit s": round(float(fit_time), 1),
                "eval s": round(time.perf_counter() - start, 1),
            }
        )
        print(rows[-1], flush=True)
    return rows


def training_plan(args, settings):
    """``(n_way, n_shot, settings evaluated)`` of each bilevel model."""
    if args.train_way is None:
        return [(n_way, n_shot, [(n_way, n_shot)]) for n_way, n_shot in settings]
    shots = sorted({shot for _, shot in settings})
    return [
        (args.train_way, shot, [s for s in settings if s[1] == shot]) for shot in shots
    ]


def bilevel_rows(args, splits, plan, max_time):
    rows, curves = [], []
    for n_way, n_shot, evaluated in plan:
        try:
            model, fit_time, curve = meta_train(
                args, splits, n_way, n_shot, "bilevel", max_time
            )
        except RuntimeError as error:
            # A one-off GPU run keeps the other rows of the table.
            print(f"{n_way}-way {n_shot}-shot failed: {error!r}", flush=True)
            rows += [failed_row(setting, error) for setting in evaluated]
            continue
        curves.append(curve)
        rows += evaluate(
            f"hyper-representation ({n_way}-way {n_shot}-shot trained, "
            f"{model.n_iter_} steps, lr={model.learning_rate_:.3g})",
            model,
            *splits["test"],
            evaluated,
            args,
            curve["time"].iloc[-1],
            fit_time,
        )
    return rows, curves


def failed_row(setting, error):
    n_way, n_shot = setting
    return {
        "setting": f"{n_way}-way {n_shot}-shot",
        "method": "hyper-representation",
        "accuracy %": f"failed: {str(error).splitlines()[0][:80]}",
        "paper %": PAPER.get(setting),
    }


def baseline_rows(args, splits, settings, max_time):
    rows, curves = [], []
    if not args.skip_joint:
        model, fit_time, curve = meta_train(args, splits, 5, 1, "joint", max_time)
        curves.append(curve)
        rows += evaluate(
            f"classical joint training ({model.n_iter_} steps)",
            model,
            *splits["test"],
            settings,
            args,
            curve["time"].iloc[-1],
            fit_time,
        )
    X_test, y_test = splits["test"]
    flat = X_test.reshape(len(X_test), -1)
    pixels = {"knn": [("1-NN", KNeighborsClassifier(1))]}
    pixels["all"] = pixels["knn"] + [
        ("LogisticRegression", LogisticRegression(max_iter=200))
    ]
    for name, estimator in pixels.get(args.pixels, []):
        rows += evaluate(f"{name}, raw pixels", estimator, flat, y_test, settings, args)
    return rows, curves


def main():
    args = parse_args()
    start = time.perf_counter()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = True
    settings = [tuple(int(v) for v in s.split(",")) for s in args.settings]
    splits = omniglot_few_shot_splits(load_omniglot(args.data), random_state=0)
    if args.train_classes is not None:
        X, y = splits["train"]
        keep = np.isin(y, np.unique(y)[: args.train_classes])
        splits["train"] = (X[keep], y[keep])
    print(f"data loaded in {time.perf_counter() - start:.1f} s", flush=True)
    plan = training_plan(args, settings)
    joint_time = 0.0 if args.skip_joint else args.joint_share * args.budget
    per_model = (args.budget - joint_time) / len(plan)
    rows, curves = bilevel_rows(args, splits, plan, per_model)
    more_rows, more_curves = baseline_rows(args, splits, settings, joint_time or None)
    table = pd.DataFrame(rows + more_rows)
    table = table.sort_values(["setting", "method"], kind="stable")
    write(args, table, pd.concat(curves + more_curves), per_model, start)


def markdown(frame):
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |"]
    lines.append("|" + " --- |" * frame.shape[1])
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in frame.to_numpy()]
    return "\n".join(lines)


def write(args, table, curves, per_model, start):
    device = torch.device("cuda" if args.device == "auto" else args.device)
    if device.type == "cuda" and torch.cuda.is_available():
        where = torch.cuda.get_device_name(device)
    else:
        where = f"CPU, {torch.get_num_threads()} threads"
    header = (
        f"# Omniglot few-shot, {args.test_episodes} test episodes ({where})\n\n"
        f"Meta-batch {args.meta_batch_size}, T={args.T}, batch norm "
        f"{args.batch_norm!r} (bilevel), inner learning rate "
        f"{'fixed' if args.fixed_inner_lr else 'learned'}, outer Adam "
        f"{args.outer_learning_rate:g} with inverse-time decay "
        f"{args.outer_lr_decay:g}, budget {per_model:.0f} s per bilevel "
        f"model; whole run {time.perf_counter() - start:.0f} s.\n\n"
    )
    if args.early_stopping:
        header += (
            "Early stopping: each bilevel model is the one of its best "
            "meta-validation checkpoint (curve below), not its last step; "
            f"training stops after {args.n_iter_no_change} validations without "
            "improvement.\n\n"
        )
    if args.train_way is not None:
        header += (
            f"Protocol differs from the paper's: every bilevel model is "
            f"meta-trained on {args.train_way}-way episodes (of its shot count) "
            "and tested on the settings of the table; the paper trains on each "
            "setting's own way.\n\n"
        )
    text = header + markdown(table) + "\n"
    text += (
        "\n## Meta-validation accuracy vs time (100 validation characters, "
        "episodes of each model's training setting)\n\n"
    )
    text += markdown(curves.round(4)) + "\n"
    print(text)
    name = args.tag or "default"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.md").write_text(text)
    curves.to_csv(RESULTS / f"{name}_curve.csv", index=False)


if __name__ == "__main__":
    main()
