"""Few-shot classification on Omniglot: hyper-representation vs baselines.

Reproduces the Omniglot part of Table 2 of Franceschi et al. (ICML 2018):
N-way K-shot accuracy on the 323 meta-test characters (in 4 rotations),
600 test episodes, mean and 95% confidence half-width. It compares

* the hyper-representation (bilevel meta-training of conv4 + learned inner
  learning rate; one model per shot count, meta-trained on ``--train-way``-way
  episodes and evaluated on every setting with that shot count),
* the classical baseline (the same network trained jointly on all training
  classes, evaluated by the same T-step heads),
* plain scikit-learn classifiers on raw pixels, cloned per episode.

Meta-training is limited by ``--max-time`` seconds (and ``--max-iter`` steps);
meta-validation accuracy (5-way episodes from the 100 validation characters) is
logged every ``--validation-interval`` steps, giving an accuracy-vs-time curve.

Usage::

    python benchmarks/bench_few_shot.py --data /work/shared/data --max-time 1800
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
RESULTS = Path(__file__).parent / "results"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="/work/shared/data")
    parser.add_argument("--settings", nargs="+", default=["5,1", "5,5", "20,1", "20,5"])
    parser.add_argument("--train-way", type=int, default=5)
    parser.add_argument("--max-time", type=float, default=1800.0)
    parser.add_argument("--joint-max-time", type=float, default=None)
    parser.add_argument("--max-iter", type=int, default=100000)
    parser.add_argument("--meta-batch-size", type=int, default=16)
    parser.add_argument("--validation-interval", type=int, default=250)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-joint", action="store_true")
    parser.add_argument("--skip-pixels", action="store_true")
    parser.add_argument("--name", default="bench_few_shot")
    return parser.parse_args()


def meta_train(args, splits, n_shot, training, max_time):
    model = HyperRepresentationClassifier(
        "conv4",
        n_way=args.train_way,
        n_shot=n_shot,
        meta_batch_size=args.meta_batch_size,
        max_iter=args.max_iter,
        max_time=max_time,
        validation_interval=args.validation_interval,
        training=training,
        random_state=0,
        verbose=1,
    )
    start = time.perf_counter()
    model.fit(*splits["train"], validation_data=splits["val"])
    fit_time = time.perf_counter() - start
    curve = pd.DataFrame(model.history_).assign(model=f"{training} {n_shot}-shot")
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
            n_episodes=args.episodes,
            random_state=0,
        )
        rows.append(
            {
                "setting": f"{n_way}-way {n_shot}-shot",
                "method": name,
                "accuracy %": f"{100 * mean:.2f} +- {100 * ci95:.2f}",
                "paper %": PAPER.get((n_way, n_shot)),
                "meta-training s": round(meta_time, 1),
                "fit s": round(fit_time, 1),
                "eval s": round(time.perf_counter() - start, 1),
            }
        )
        print(rows[-1], flush=True)
    return rows


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    settings = [tuple(int(v) for v in s.split(",")) for s in args.settings]
    splits = omniglot_few_shot_splits(load_omniglot(args.data), random_state=0)
    X_test, y_test = splits["test"]
    rows, curves = [], []
    for n_shot in sorted({shot for _, shot in settings}):
        model, fit_time, curve = meta_train(
            args, splits, n_shot, "bilevel", args.max_time
        )
        curves.append(curve)
        wanted = [s for s in settings if s[1] == n_shot]
        rows += evaluate(
            f"hyper-representation ({args.train_way}-way {n_shot}-shot trained, "
            f"{model.n_iter_} steps, lr={model.learning_rate_:.3g})",
            model,
            X_test,
            y_test,
            wanted,
            args,
            curve["time"].iloc[-1],
            fit_time,
        )
    if not args.skip_joint:
        joint_time = args.joint_max_time or args.max_time
        model, fit_time, curve = meta_train(args, splits, 1, "joint", joint_time)
        curves.append(curve)
        rows += evaluate(
            f"classical joint training ({model.n_iter_} steps)",
            model,
            X_test,
            y_test,
            settings,
            args,
            curve["time"].iloc[-1],
            fit_time,
        )
    if not args.skip_pixels:
        flat = X_test.reshape(len(X_test), -1)
        rows += evaluate(
            "1-NN, raw pixels", KNeighborsClassifier(1), flat, y_test, settings, args
        )
        rows += evaluate(
            "LogisticRegression, raw pixels",
            LogisticRegression(max_iter=200),
            flat,
            y_test,
            settings,
            args,
        )
    write(
        args,
        pd.DataFrame(rows).sort_values(["setting", "method"], kind="stable"),
        pd.concat(curves),
    )


def markdown(frame):
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |"]
    lines.append("|" + " --- |" * frame.shape[1])
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in frame.to_numpy()]
    return "\n".join(lines)


def write(args, table, curves):
    header = (
        f"# Omniglot few-shot, {args.episodes} test episodes, "
        f"{torch.get_num_threads()} CPU threads, meta-batch {args.meta_batch_size}, "
        f"budget {args.max_time:.0f} s per meta-training run\n\n"
    )
    text = header + markdown(table) + "\n"
    text += "\n## Meta-validation accuracy vs time (5-way episodes, 100 val chars)\n\n"
    text += markdown(curves.round(4)) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.md").write_text(text)
    curves.to_csv(RESULTS / f"{args.name}_curve.csv", index=False)


if __name__ == "__main__":
    main()
