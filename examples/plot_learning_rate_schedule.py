"""
=====================================================
Learning a learning-rate schedule by hypergradient
=====================================================

A :class:`~skbilevel.neural_network.TorchMLPClassifier` trains by exactly
``max_iter`` steps of heavy-ball gradient descent, and its ``learning_rate``
may be a schedule: one value per step. Training is then a differentiable
function of the T learning rates, so the validation loss of the trained
network has a gradient with respect to all of them at once (reverse mode
through the T steps, Franceschi et al., 2017): a setting where the number of
hyperparameters grows with T and grid search is out of the question.

:class:`~skbilevel.BilevelSearchCV` learns such a schedule from the
:class:`~skbilevel.PerStep` entry of its parameter space, exactly as it would
learn a scalar :class:`~skbilevel.Real`; ``best_params_["learning_rate"]`` is
the learned array and ``best_estimator_`` a network refitted with it.
"""

import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import PredefinedSplit, train_test_split

from skbilevel import BilevelSearchCV, PerStep
from skbilevel.neural_network import TorchMLPClassifier
from skbilevel.plotting import LearningRateScheduleDisplay, SearchTrajectoryDisplay

# The network is tiny: one torch thread beats several, whose synchronization
# at every one of the T steps costs more than it saves.
torch.set_num_threads(1)

X, y = load_digits(return_X_y=True)
X = X / 16.0
X_fit, X_test, y_fit, y_test = train_test_split(
    X, y, train_size=1000, stratify=y, random_state=0
)

# %%
# The search
# ----------
# One fixed split, as in the paper: the network trains on the first 600
# examples and its log-loss is measured on the last 400. The T = 40 learning
# rates start at 0.01 and are learned in log space, within [1e-4, 1], by
# projected Adam on the hypergradient (``method="auto"`` differentiates
# through the training steps of this estimator). ``dtype="float64"`` matches
# the estimator's, so the refit reproduces the differentiated network.
T = 40
estimator = TorchMLPClassifier(
    hidden_layer_sizes=(32,),
    solver="sgd",
    learning_rate=0.01,
    momentum=0.9,
    max_iter=T,
    random_state=0,
    dtype="float64",
)
split = PredefinedSplit(np.r_[np.full(600, -1), np.zeros(400)])
search = BilevelSearchCV(
    estimator,
    {"learning_rate": PerStep(1e-4, 1.0, init=0.01)},
    cv=split,
    outer_optimizer="adam",
    outer_learning_rate=0.15,
    max_iter=25,
    dtype="float64",
)
search.fit(X_fit, y_fit)
losses = [entry["outer_loss"] for entry in search.history_]
print(f"validation log-loss: {losses[0]:.3f} -> {losses[-1]:.3f}")

# %%
# The refitted network
# --------------------
# ``best_estimator_`` is a plain TorchMLPClassifier whose ``learning_rate``
# is the learned schedule, refitted on all 1,000 examples; it is compared
# with the same network at the initial constant learning rate.
constant = TorchMLPClassifier(**estimator.get_params()).fit(X_fit, y_fit)
print(f"constant 0.01:    test accuracy {constant.score(X_test, y_test):.3f}")
print(f"learned schedule: test accuracy {search.score(X_test, y_test):.3f}")

# %%
# The learned schedule
# --------------------
# :class:`~skbilevel.plotting.LearningRateScheduleDisplay` draws the learned
# rate of each training step against the initial constant;
# :class:`~skbilevel.plotting.SearchTrajectoryDisplay` the validation log-loss
# against the outer step.
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5), layout="constrained")
LearningRateScheduleDisplay.from_estimator(search, ax=left)
SearchTrajectoryDisplay.from_estimator(search, ax=[right])
right.get_legend().remove()
plt.show()
