"""
==================================================
Data hyper-cleaning: learning to drop noisy labels
==================================================

Data hyper-cleaning (Franceschi et al., 2017, 2018): 40% of the training labels
of the digits dataset are replaced by a wrong class, while a validation set is
clean. :class:`~skbilevel.BilevelSearchCV` learns one weight in [0, 1] per
training example (:class:`~skbilevel.SampleWeight`) by hypergradient descent
on the validation loss of a logistic regression, then refits the model on
training and validation examples with the learned weights. We compare it with
the model trained on all the noisy data (the baseline) and with the one
trained on the clean examples only (the oracle, which knows which labels were
flipped), and look at how the weights separate the corrupted examples.

The benchmark ``benchmarks/bench_hyper_cleaning.py`` runs the paper's MNIST
protocol (5,000 training examples, half of them corrupted).
"""

import time
import warnings

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import PredefinedSplit, train_test_split

from skbilevel import BilevelSearchCV, SampleWeight
from skbilevel.datasets import flip_labels
from skbilevel.plotting import SampleWeightDisplay, SearchTrajectoryDisplay

# %%
# Noisy training labels, a clean validation set, a clean test set
# ----------------------------------------------------------------
# The first ``n_train`` examples of ``X_fit`` are the training part, with 40%
# of their labels flipped; the rest is the clean validation part. A
# :class:`~sklearn.model_selection.PredefinedSplit` hands that single split
# to the search.
X, y = load_digits(return_X_y=True)
X = X / 16.0
X_fit, X_test, y_fit, y_test = train_test_split(
    X, y, test_size=0.3, stratify=y, random_state=0
)
n_train = 800
y_fit = y_fit.copy()
y_fit[:n_train], flipped = flip_labels(y_fit[:n_train], 0.4, random_state=0)
n_val = len(y_fit) - n_train
split = PredefinedSplit(np.r_[np.full(n_train, -1), np.zeros(n_val)])
print(
    f"{n_train} training examples ({flipped.sum()} flipped labels), "
    f"{n_val} clean validation, {len(y_test)} clean test"
)

# %%
# Baseline, oracle and hyper-cleaned models
# -----------------------------------------
# The baseline and the oracle are fitted on training and validation examples,
# as the search's refit is; the oracle leaves out the flipped ones.
estimator = LogisticRegression(max_iter=1000)
baseline = LogisticRegression(max_iter=1000).fit(X_fit, y_fit)
clean = np.r_[~flipped, np.ones(n_val, dtype=bool)]
oracle = LogisticRegression(max_iter=1000).fit(X_fit[clean], y_fit[clean])

start = time.perf_counter()
# 60 outer steps: at the default 30 the validation loss is still falling
# (the search warns so).
search = BilevelSearchCV(
    estimator, {"sample_weight": SampleWeight()}, cv=split, max_iter=60
)
with warnings.catch_warnings():
    # The validation examples are in no training fold, by design: the search
    # warns that they keep weight 1 in the refit.
    warnings.filterwarnings("ignore", message=".* in no training fold")
    search.fit(X_fit, y_fit)
search_time = time.perf_counter() - start

weights = search.best_params_["sample_weight"][:n_train]
for name, model in [
    ("baseline (all noisy data)", baseline),
    ("hyper-cleaned (learned weights)", search),
    ("oracle (clean examples only)", oracle),
]:
    print(f"{name:34} test accuracy {model.score(X_test, y_test):.3f}")
print(
    f"search: {len(search.history_)} outer steps in {search_time:.1f} s; "
    f"mean weight of flipped examples {weights[flipped].mean():.2f}, "
    f"of clean ones {weights[~flipped].mean():.2f}"
)

# %%
# The learned weights of clean and corrupted examples
# ---------------------------------------------------
# Most flipped examples end at weight 0 and most clean ones at 1. The right
# panel flags an example as corrupted when its weight is at most a threshold:
# its precision-recall curve marks the threshold of the best F1 score.
fig, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
SampleWeightDisplay.from_weights(
    weights, flipped, mask_names=("clean label", "flipped label"), ax=axes
)
fig.suptitle(f"Weights learned on {n_train} digits, 40% of labels flipped")
plt.show()

# %%
# Validation loss and test accuracy against the outer steps
# ---------------------------------------------------------
# ``history_`` holds the weights of every outer step. The validation loss
# (the outer objective, drawn by
# :class:`~skbilevel.plotting.SearchTrajectoryDisplay`) falls in the first few
# steps, then flattens; refitting the model with the weights of each step
# shows the clean test accuracy climbing from the baseline's level towards
# the oracle's.
fig, (loss_ax, accuracy_ax) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
SearchTrajectoryDisplay.from_estimator(search, ax=[loss_ax])
loss_ax.get_legend().remove()
steps = [entry["step"] for entry in search.history_]
accuracy = [
    LogisticRegression(max_iter=1000)
    .fit(X_fit, y_fit, sample_weight=entry["params"]["sample_weight"])
    .score(X_test, y_test)
    for entry in search.history_
]
accuracy_ax.plot(steps, accuracy, marker="o", markersize=3, label="hyper-cleaned")
# The search returns the step of best validation accuracy (ties go to the
# lower validation loss), not necessarily the last one.
best = next(e for e in search.history_ if e["candidate"] == search.best_index_)
accuracy_ax.scatter(
    best["step"],
    accuracy[steps.index(best["step"])],
    s=80,
    facecolors="none",
    edgecolors="red",
    zorder=3,
    label="step returned (best_params_)",
)
for name, model, style in [("baseline", baseline, ":"), ("oracle", oracle, "--")]:
    accuracy_ax.axhline(
        model.score(X_test, y_test), color="k", linestyle=style, label=name
    )
accuracy_ax.set(
    xlabel="outer step",
    ylabel="test accuracy",
    title="Refitted with the weights of each step",
)
accuracy_ax.legend(loc="lower right", bbox_to_anchor=(1.0, 0.05))
plt.show()
