"""scikit-learn's MLPs: why they are refused, and their torch equivalents.

scikit-learn's ``MLPClassifier`` and ``MLPRegressor`` train with numpy and
stop early on a tolerance, so their fit is neither an argmin nor a fixed
sequence of differentiable steps. :class:`~skbilevel.neural_network.
TorchMLPClassifier` and ``TorchMLPRegressor`` minimize the same objective (the
same ``alpha``) in exactly ``max_iter`` differentiable torch steps, which the
search differentiates.
"""

from sklearn.neural_network import MLPClassifier, MLPRegressor

# scikit-learn's name -> what it becomes on the torch estimators.
PARAMETER_MAPPING = (
    "hidden_layer_sizes, activation, alpha (the same objective), batch_size, "
    "shuffle, beta_1, beta_2, epsilon and random_state carry over; "
    "learning_rate_init is learning_rate; solver is 'sgd' (heavy-ball "
    "momentum, without Nesterov) or 'adam' ('lbfgs' has no equivalent); "
    "max_iter counts optimizer steps, not epochs, and runs them all "
    "(tol, n_iter_no_change and early_stopping have no equivalent); the "
    "learning_rate schedules ('invscaling', 'adaptive') become a learned "
    "PerStep schedule"
)


def scikit_learn_mlp(estimator):
    """The TypeError for scikit-learn's MLPs, or None for anything else."""
    if not isinstance(estimator, MLPClassifier | MLPRegressor):
        return None
    name = type(estimator).__name__
    return TypeError(
        f"{name} cannot be differentiated (its fit runs numpy epochs until a "
        "tolerance), so its hyperparameters can only be given as lists of "
        f"values. Use skbilevel.neural_network.Torch{name} instead, whose fit "
        "is max_iter differentiable torch steps and whose learning_rate, "
        f"momentum and alpha can be learned: {PARAMETER_MAPPING}."
    )
