"""LearningRateScheduleDisplay: a learned learning-rate schedule."""

import numpy as np

from .._space import PerStep
from ._base import check_axes, check_fitted_search, learned_array


class LearningRateScheduleDisplay:
    """A learned learning-rate schedule against the training step.

    The schedule of B values (blocks) over ``max_iter`` training steps is drawn
    as a step function, step t using block ``floor(t * B / max_iter)``, on a log
    scale, with the initial learning rate for comparison.

    It is recommended to use :meth:`from_estimator` to create a
    :class:`LearningRateScheduleDisplay`. All parameters are stored as
    attributes.

    Read more in the :ref:`User Guide <plotting>`.

    Parameters
    ----------
    learning_rates : ndarray of shape (max_iter,)
        Learning rate of each training step.

    blocks : ndarray of shape (n_blocks,)
        The learned values, one per block of steps.

    param_name : str, default="learning_rate"
        The schedule's name in the search.

    initial : float, default=None
        The initial learning rate, drawn as a horizontal line; ``None`` draws
        none.

    Attributes
    ----------
    line_ : matplotlib Line2D
        The schedule.

    initial_line_ : matplotlib Line2D or None
        The initial learning rate.

    ax_ : matplotlib Axes
        Axes with the schedule.

    figure_ : matplotlib Figure
        Figure containing the schedule.

    See Also
    --------
    SearchTrajectoryDisplay : The trajectory of a scalar learning rate.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from sklearn.datasets import make_classification
    >>> from skbilevel import BilevelSearchCV, PerStep
    >>> from skbilevel.neural_network import TorchMLPClassifier
    >>> from skbilevel.plotting import LearningRateScheduleDisplay
    >>> X, y = make_classification(n_samples=60, random_state=0)
    >>> mlp = TorchMLPClassifier((8,), solver="sgd", max_iter=20, random_state=0)
    >>> space = {"learning_rate": PerStep(1e-4, 1.0, init=0.01, n_blocks=4)}
    >>> search = BilevelSearchCV(mlp, space, max_iter=3, cv=2).fit(X, y)
    >>> display = LearningRateScheduleDisplay.from_estimator(search)
    >>> display.learning_rates.shape
    (20,)
    """

    def __init__(
        self, *, learning_rates, blocks, param_name="learning_rate", initial=None
    ):
        self.learning_rates = learning_rates
        self.blocks = blocks
        self.param_name = param_name
        self.initial = initial

    def plot(self, ax=None):
        """Plot the schedule.

        Parameters
        ----------
        ax : matplotlib Axes, default=None
            Axes to plot on; ``None`` creates a figure.

        Returns
        -------
        display : :class:`LearningRateScheduleDisplay`
            Object that stores computed values.
        """
        self.figure_, (self.ax_,) = check_axes(
            ax, 1, "LearningRateScheduleDisplay.plot"
        )
        # The last step's value drawn up to max_iter, so that every block spans
        # its steps.
        steps = np.arange(self.learning_rates.size + 1)
        (self.line_,) = self.ax_.plot(
            steps,
            np.append(self.learning_rates, self.learning_rates[-1:]),
            drawstyle="steps-post",
            label=f"learned ({self.blocks.size} blocks)",
        )
        self.initial_line_ = None
        if self.initial is not None:
            self.initial_line_ = self.ax_.axhline(
                self.initial,
                color="black",
                linestyle="--",
                label=f"initial {self.initial:.3g}",
            )
        self.ax_.set_yscale("log")
        self.ax_.set(
            xlabel="training step",
            ylabel=self.param_name,
            title="Learned learning-rate schedule",
        )
        self.ax_.legend()
        return self

    @classmethod
    def from_estimator(cls, search, *, param_name=None, ax=None):
        """Plot the schedule learned by a fitted BilevelSearchCV.

        Parameters
        ----------
        search : BilevelSearchCV
            A fitted search with a :class:`~skbilevel.PerStep` entry, over a
            torch MLP trained by ``max_iter`` steps.

        param_name : str, default=None
            The PerStep entry, when the parameter space has several.

        ax : matplotlib Axes, default=None
            Axes to plot on; ``None`` creates a figure.

        Returns
        -------
        display : :class:`LearningRateScheduleDisplay`
            Object that stores computed values.
        """
        caller = f"{cls.__name__}.from_estimator"
        check_fitted_search(search, caller)
        key, blocks = learned_array(search, PerStep, caller, param_name)
        prefix = key.rpartition("__")[0]
        max_iter_key = f"{prefix}__max_iter" if prefix else "max_iter"
        max_iter = search.best_params_.get(
            max_iter_key, search.estimator.get_params()[max_iter_key]
        )
        steps = np.arange(max_iter)
        spec = _spec(search, key)
        # PerStep(init=None) starts at the geometric midpoint of its bounds.
        initial = spec.init if spec.init is not None else np.sqrt(spec.low * spec.high)
        display = cls(
            learning_rates=blocks[steps * blocks.size // max_iter],
            blocks=blocks,
            param_name=key,
            initial=float(initial),
        )
        return display.plot(ax=ax)


def _spec(search, key):
    """The spec of ``key`` in the subspace of the best setting."""
    spaces = search.param_space
    spaces = [spaces] if isinstance(spaces, dict) else spaces
    best = set(search.best_params_)
    return next(s[key] for s in spaces if key in s and set(s) <= best)
