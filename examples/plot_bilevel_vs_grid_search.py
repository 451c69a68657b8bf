"""
==================================================
BilevelSearchCV against GridSearchCV: noisy labels
==================================================

Data hyper-cleaning (Franceschi et al., 2017, 2018): 30% of the training
labels of the digits dataset are flipped to a wrong class, while a small
validation set is clean. :class:`~sklearn.model_selection.GridSearchCV` can
only tune the regularization ``C`` of a logistic regression on that split;
:class:`~skbilevel.BilevelSearchCV` learns ``C`` together with one weight per
training example, by hypergradient descent on the validation loss. Examples
whose label was flipped get weights near zero, and the refitted model, trained
with the learned weights, is much more accurate on clean test data.
"""

import time
import warnings

import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, PredefinedSplit, train_test_split

from skbilevel import BilevelSearchCV, Real, SampleWeight
from skbilevel.datasets import flip_labels

# %%
# Noisy training labels, a clean validation set, a clean test set
# ----------------------------------------------------------------
X, y = load_digits(return_X_y=True)
X = X / 16.0
X_fit, X_test, y_fit, y_test = train_test_split(
    X, y, test_size=0.3, stratify=y, random_state=0
)
n_train = 700  # the rest of X_fit is the clean validation set
y_fit = y_fit.copy()
y_fit[:n_train], flipped = flip_labels(y_fit[:n_train], 0.3, random_state=0)
split = PredefinedSplit(np.where(np.arange(len(y_fit)) < n_train, -1, 0))
print(
    f"{n_train} training examples ({flipped.sum()} flipped labels), "
    f"{len(y_fit) - n_train} clean validation, {len(y_test)} clean test"
)

# %%
# The two searches, on the same split
# -----------------------------------
estimator = LogisticRegression(max_iter=1000)
start = time.perf_counter()
grid = GridSearchCV(estimator, {"C": np.logspace(-3, 2, 20)}, cv=split)
grid.fit(X_fit, y_fit)
grid_time = time.perf_counter() - start

start = time.perf_counter()
bilevel = BilevelSearchCV(
    estimator,
    {"C": Real(1e-3, 1e2, init=1.0), "sample_weight": SampleWeight()},
    cv=split,
    # A few projected Adam steps on the 1,257 hyperparameters; stopping early
    # keeps the weights from fitting the small validation set too closely.
    max_iter=15,
    outer_optimizer="adam",
    outer_learning_rate=0.2,
)
with warnings.catch_warnings():
    # Both warnings are this protocol's choices: the clean validation part is
    # in no training fold (its examples keep weight 1), and the run stops at
    # max_iter while the validation loss still falls.
    warnings.filterwarnings("ignore", message=".*in no training fold")
    warnings.filterwarnings("ignore", message="The hypergradient run stopped")
    bilevel.fit(X_fit, y_fit)
bilevel_time = time.perf_counter() - start

# %%
# Scores and times side by side
# -----------------------------
weights = bilevel.best_params_["sample_weight"][:n_train]
print(f"{'':24}{'GridSearchCV':>14}{'BilevelSearchCV':>17}")
print(
    f"{'learned C':24}{grid.best_params_['C']:>14.3g}{bilevel.best_params_['C']:>17.3g}"
)
print(
    f"{'validation accuracy':24}{grid.best_score_:>14.3f}{bilevel.best_score_:>17.3f}"
)
print(
    f"{'test accuracy':24}{grid.score(X_test, y_test):>14.3f}"
    f"{bilevel.score(X_test, y_test):>17.3f}"
)
print(f"{'time (s)':24}{grid_time:>14.1f}{bilevel_time:>17.1f}")
print(
    f"mean weight of flipped examples {weights[flipped].mean():.2f}, "
    f"of clean ones {weights[~flipped].mean():.2f}"
)

# %%
# The learned weights
# -------------------
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(6, 3))
ax.hist(
    [weights[~flipped], weights[flipped]],
    bins=20,
    stacked=True,
    label=["clean label", "flipped label"],
)
ax.set_xlabel("learned sample weight")
ax.set_ylabel("training examples")
ax.legend()
fig.tight_layout()
plt.show()
