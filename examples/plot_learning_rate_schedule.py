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

This example learns the schedule of a small MLP on the digits dataset by
Adam on that hypergradient, plots it, and refits the estimator with it.
"""

import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from skbilevel.hypergrad import METHODS
from skbilevel.neural_network import TorchMLPClassifier
from skbilevel.problems import FoldData

X, y = load_digits(return_X_y=True)
X = X / 16.0
X_fit, X_test, y_fit, y_test = train_test_split(
    X, y, train_size=1000, stratify=y, random_state=0
)
X_train, X_val, y_train, y_val = train_test_split(
    X_fit, y_fit, test_size=0.4, stratify=y_fit, random_state=0
)

T = 60
estimator = TorchMLPClassifier(
    hidden_layer_sizes=(32,),
    solver="sgd",
    learning_rate=0.01,
    momentum=0.9,
    max_iter=T,
    random_state=0,
    dtype="float64",
)

# %%
# The bilevel problem
# -------------------
# One "fold": the network trains on the training part and is evaluated
# (log-loss) on the validation part of the same data tensor. The outer
# variable is the logarithm of the T learning rates, so they stay positive.
is_train = np.r_[np.ones(len(y_train)), np.zeros(len(y_val))][None]


def tensor(array):
    return torch.as_tensor(np.asarray(array, dtype=np.float64))


data = FoldData(
    tensor(np.vstack([X_train, X_val])),
    np.r_[y_train, y_val],
    tensor(is_train),
    tensor(1 - is_train),
    tensor(np.ones(is_train.shape[1])),
)
problem = estimator._bilevel_problem(data, {"learning_rate": "per_step"}, {})
problem = problem.transformed(lambda u: {"learning_rate": u["log_lr"].exp()})

log_lr = torch.full((T,), np.log(estimator.learning_rate), dtype=torch.float64)
log_lr.requires_grad_()
outer = torch.optim.Adam([log_lr], lr=0.1)
history = []
for _ in range(30):
    result = METHODS["reverse"](
        problem.init_params(),
        {"log_lr": log_lr.detach()},
        problem.T,
        problem.dynamics,
        problem.outer_loss,
    )
    history.append(float(result.outer_loss))
    log_lr.grad = result.grad["log_lr"]
    outer.step()
schedule = log_lr.detach().exp().numpy()
print(f"validation log-loss: {history[0]:.3f} -> {history[-1]:.3f}")

# %%
# Refit with the learned schedule
# -------------------------------
# The learned schedule is a plain value of ``learning_rate``: fitting on the
# training part reproduces the network whose validation loss was minimized.
learned = estimator.set_params(learning_rate=schedule)
initial = TorchMLPClassifier(**{**learned.get_params(), "learning_rate": 0.01})
for name, model in (("constant 0.01", initial), ("learned schedule", learned)):
    model.fit(X_train, y_train)
    print(f"{name:>16}: test accuracy {model.score(X_test, y_test):.3f}")

# %%
# The learned schedule
# --------------------
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
left.plot(np.arange(T), schedule, marker=".", label="learned")
left.axhline(0.01, color="gray", linestyle="--", label="initial (constant)")
left.set_xlabel("training step t")
left.set_ylabel("learning rate")
left.set_yscale("log")
left.legend()
right.plot(history)
right.set_xlabel("outer iteration")
right.set_ylabel("validation log-loss")
fig.tight_layout()
plt.show()
