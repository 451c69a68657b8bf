"""MetaTrainingDisplay: the meta-training curves of a hyper-representation."""

import numpy as np
from sklearn.utils.validation import check_is_fitted

from ._base import check_axes


class MetaTrainingDisplay:
    """Meta-training curves: training loss and validation accuracy.

    The first panel is the training loss (the query-set cross-entropy of the
    episodes' heads, or with ``training="joint"`` the cross-entropy over all
    training classes, averaged since the previous checkpoint) against the
    outer step; the second, when meta-training was
    validated, is the mean episode accuracy on the validation classes.

    It is recommended to use :meth:`from_estimator` to create a
    :class:`MetaTrainingDisplay`. All parameters are stored as attributes.

    Read more in the :ref:`User Guide <plotting>`.

    Parameters
    ----------
    steps : ndarray of shape (n_checkpoints,)
        Outer step of each checkpoint.

    outer_loss : ndarray of shape (n_checkpoints,)
        Mean outer loss since the previous checkpoint.

    validation_score : ndarray of shape (n_checkpoints,), default=None
        Mean episode accuracy on the validation classes; ``None`` draws the
        loss only.

    Attributes
    ----------
    loss_line_ : matplotlib Line2D
        The training loss.

    score_line_ : matplotlib Line2D or None
        The validation accuracy.

    ax_ : ndarray of matplotlib Axes
        The panels: loss, then validation accuracy.

    figure_ : matplotlib Figure
        Figure containing the panels.

    See Also
    --------
    skbilevel.meta.HyperRepresentationClassifier : The meta-learned
        representation.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from sklearn.datasets import load_digits
    >>> from skbilevel.meta import HyperRepresentationClassifier
    >>> from skbilevel.plotting import MetaTrainingDisplay
    >>> X, y = load_digits(return_X_y=True)
    >>> hr = HyperRepresentationClassifier(
    ...     max_iter=4, meta_batch_size=2, validation_interval=2,
    ...     early_stopping=True, validation_fraction=0.3,
    ...     n_validation_episodes=4, random_state=0).fit(X / 16, y)
    >>> display = MetaTrainingDisplay.from_estimator(hr)
    >>> display.steps
    array([2, 4])
    """

    def __init__(self, *, steps, outer_loss, validation_score=None):
        self.steps = steps
        self.outer_loss = outer_loss
        self.validation_score = validation_score

    def plot(self, ax=None):
        """Plot the meta-training curves.

        Parameters
        ----------
        ax : array-like of matplotlib Axes, default=None
            One Axes per panel (two with a validation score, else one);
            ``None`` creates a figure.

        Returns
        -------
        display : :class:`MetaTrainingDisplay`
            Object that stores computed values.
        """
        validated = self.validation_score is not None
        self.figure_, self.ax_ = check_axes(
            ax, 1 + validated, "MetaTrainingDisplay.plot"
        )
        (self.loss_line_,) = self.ax_[0].plot(
            self.steps, self.outer_loss, marker="o", label="training classes"
        )
        self.ax_[0].set(
            xlabel="outer step",
            ylabel="training loss (cross-entropy)",
            title="Meta-training loss",
        )
        self.ax_[0].legend()
        self.score_line_ = None
        if validated:
            (self.score_line_,) = self.ax_[1].plot(
                self.steps,
                self.validation_score,
                marker="o",
                color="C1",
                label="validation episodes",
            )
            self.ax_[1].set(
                xlabel="outer step",
                ylabel="mean episode accuracy",
                title="Validation accuracy",
            )
            self.ax_[1].legend()
        return self

    @classmethod
    def from_estimator(cls, estimator, *, ax=None):
        """Plot the meta-training of a fitted HyperRepresentationClassifier.

        Parameters
        ----------
        estimator : HyperRepresentationClassifier
            A fitted estimator; its ``history_`` holds one record per
            checkpoint (every ``validation_interval`` outer steps).

        ax : array-like of matplotlib Axes, default=None
            One Axes per panel; ``None`` creates a figure.

        Returns
        -------
        display : :class:`MetaTrainingDisplay`
            Object that stores computed values.
        """
        from ..meta import HyperRepresentationClassifier

        if not isinstance(estimator, HyperRepresentationClassifier):
            raise TypeError(
                f"{cls.__name__}.from_estimator expects a fitted "
                f"HyperRepresentationClassifier; got {type(estimator).__name__}."
            )
        check_is_fitted(estimator, "history_")
        history = estimator.history_
        scores = None
        if history and all("validation_score" in record for record in history):
            scores = np.array([record["validation_score"] for record in history])
        display = cls(
            steps=np.array([record["iteration"] for record in history]),
            outer_loss=np.array([record["outer_loss"] for record in history]),
            validation_score=scores,
        )
        return display.plot(ax=ax)
