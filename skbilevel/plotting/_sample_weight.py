"""SampleWeightDisplay: learned sample weights and how well they flag examples."""

import numpy as np
from sklearn.metrics import precision_recall_curve
from sklearn.utils.validation import column_or_1d

from .._space import SampleWeight
from ._base import check_axes, check_fitted_search, learned_array


class SampleWeightDisplay:
    """Learned sample weights: their distribution and the flagging they imply.

    The first panel is a histogram of the weights, split by a boolean mask of
    the examples (for example, the examples whose label was corrupted). With a
    mask, the second panel is the precision-recall curve of flagging the
    examples where ``mask`` is True by a low weight (an example is flagged
    when its weight is at most a threshold), with the threshold of the best
    F1 score marked.

    It is recommended to use :meth:`from_estimator` or :meth:`from_weights`
    to create a :class:`SampleWeightDisplay`. All parameters are stored as
    attributes.

    Read more in the :ref:`User Guide <plotting>`.

    Parameters
    ----------
    weights : ndarray of shape (n_samples,)
        The sample weights.

    mask : ndarray of shape (n_samples,), dtype=bool, default=None
        The examples to flag; ``None`` draws the histogram only.

    precision : ndarray, default=None
        Precision of flagging at each threshold, as returned by
        :func:`sklearn.metrics.precision_recall_curve`.

    recall : ndarray, default=None
        Recall of flagging at each threshold.

    thresholds : ndarray, default=None
        Weight thresholds: the examples of weight at most ``thresholds[i]``
        are flagged at ``precision[i]`` and ``recall[i]``.

    best_f1 : float, default=None
        The best F1 score of flagging.

    best_threshold : float, default=None
        The weight threshold of ``best_f1``.

    mask_names : tuple of str, default=("mask=False", "mask=True")
        Legend names of the examples where the mask is False and True.

    Attributes
    ----------
    hist_ : list of matplotlib BarContainer
        The histograms, one per value of the mask.

    line_ : matplotlib Line2D or None
        The precision-recall curve.

    best_ : matplotlib PathCollection or None
        The marker of the best F1 score.

    ax_ : ndarray of matplotlib Axes
        The panels: histogram, then the precision-recall curve.

    figure_ : matplotlib Figure
        Figure containing the panels.

    See Also
    --------
    sklearn.metrics.PrecisionRecallDisplay : Precision-recall curve of a
        classifier.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import numpy as np
    >>> from skbilevel.plotting import SampleWeightDisplay
    >>> weights = np.array([0.9, 1.0, 0.05, 0.8, 0.1, 0.6])
    >>> corrupted = np.array([False, False, True, False, True, True])
    >>> display = SampleWeightDisplay.from_weights(weights, corrupted)
    >>> float(display.best_f1), float(display.best_threshold)
    (1.0, 0.6)
    """

    def __init__(
        self,
        *,
        weights,
        mask=None,
        precision=None,
        recall=None,
        thresholds=None,
        best_f1=None,
        best_threshold=None,
        mask_names=("mask=False", "mask=True"),
    ):
        self.weights = weights
        self.mask = mask
        self.precision = precision
        self.recall = recall
        self.thresholds = thresholds
        self.best_f1 = best_f1
        self.best_threshold = best_threshold
        self.mask_names = mask_names

    def plot(self, ax=None, *, bins=20):
        """Plot the histogram and, with a mask, the precision-recall curve.

        Parameters
        ----------
        ax : array-like of matplotlib Axes, default=None
            One Axes per panel (two with a mask, else one); ``None`` creates
            a figure.

        bins : int, default=20
            Number of histogram bins over [0, 1].

        Returns
        -------
        display : :class:`SampleWeightDisplay`
            Object that stores computed values.
        """
        with_mask = self.mask is not None
        self.figure_, self.ax_ = check_axes(
            ax, 1 + with_mask, "SampleWeightDisplay.plot"
        )
        hist_ax = self.ax_[0]
        edges = np.linspace(0, 1, bins + 1)
        if with_mask:
            groups = [
                (self.weights[~self.mask], self.mask_names[0]),
                (self.weights[self.mask], self.mask_names[1]),
            ]
        else:
            groups = [(self.weights, "all examples")]
        self.hist_ = [
            hist_ax.hist(w, bins=edges, alpha=0.6, label=f"{name} ({w.size})")[2]
            for w, name in groups
        ]
        hist_ax.set(
            xlabel="learned sample weight",
            ylabel="number of examples",
            title="Sample weights",
        )
        hist_ax.legend()
        self.line_, self.best_ = None, None
        if with_mask:
            self._plot_flagging(self.ax_[1])
        return self

    def _plot_flagging(self, pr_ax):
        (self.line_,) = pr_ax.plot(self.recall, self.precision, drawstyle="steps-post")
        best = np.argmax(_f1(self.precision[:-1], self.recall[:-1]))
        self.best_ = pr_ax.scatter(
            self.recall[best],
            self.precision[best],
            color="black",
            zorder=3,
            label=(f"best F1 {self.best_f1:.2f}: weight <= {self.best_threshold:.3g}"),
        )
        pr_ax.set(
            xlabel=f"recall of {self.mask_names[1]}",
            ylabel=f"precision of {self.mask_names[1]}",
            xlim=(-0.02, 1.02),
            ylim=(-0.02, 1.02),
            title="Flagging by low weight",
        )
        pr_ax.legend(loc="lower left")

    @classmethod
    def from_weights(
        cls, weights, mask=None, *, mask_names=("mask=False", "mask=True"), ax=None
    ):
        """Plot sample weights, split by a mask.

        Parameters
        ----------
        weights : array-like of shape (n_samples,)
            The sample weights, in [0, 1].

        mask : array-like of shape (n_samples,), dtype=bool, default=None
            The examples to flag by a low weight (for example, those whose
            label was corrupted); ``None`` draws the histogram only.

        mask_names : tuple of str, default=("mask=False", "mask=True")
            Legend names of the examples where the mask is False and True.

        ax : array-like of matplotlib Axes, default=None
            One Axes per panel; ``None`` creates a figure.

        Returns
        -------
        display : :class:`SampleWeightDisplay`
            Object that stores computed values.
        """
        weights = column_or_1d(np.asarray(weights, dtype=float))
        curve = {}
        if mask is not None:
            mask = column_or_1d(mask)
            if mask.dtype != bool:
                raise TypeError(f"mask must be boolean; got dtype {mask.dtype}.")
            if mask.shape != weights.shape:
                raise ValueError(
                    f"mask has {mask.size} entries, but there are {weights.size} "
                    "sample weights."
                )
            if mask.all() or not mask.any():
                raise ValueError(
                    "mask must hold both True and False to measure the flagging."
                )
            precision, recall, thresholds = precision_recall_curve(mask, -weights)
            f1 = _f1(precision[:-1], recall[:-1])
            best = np.argmax(f1)
            curve = {
                "precision": precision,
                "recall": recall,
                "thresholds": -thresholds,
                "best_f1": float(f1[best]),
                "best_threshold": float(-thresholds[best]),
            }
        display = cls(weights=weights, mask=mask, mask_names=mask_names, **curve)
        return display.plot(ax=ax)

    @classmethod
    def from_estimator(
        cls, search, *, mask=None, mask_names=("mask=False", "mask=True"), ax=None
    ):
        """Plot the sample weights learned by a fitted BilevelSearchCV.

        Parameters
        ----------
        search : BilevelSearchCV
            A fitted search with a :class:`~skbilevel.SampleWeight` entry; the
            weights are ``best_params_["sample_weight"]``, one per example of
            the data it was fitted on.

        mask : array-like of shape (n_samples,), dtype=bool, default=None
            The examples to flag by a low weight; ``None`` draws the
            histogram only.

        mask_names : tuple of str, default=("mask=False", "mask=True")
            Legend names of the examples where the mask is False and True.

        ax : array-like of matplotlib Axes, default=None
            One Axes per panel; ``None`` creates a figure.

        Returns
        -------
        display : :class:`SampleWeightDisplay`
            Object that stores computed values.

        Examples
        --------
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> import numpy as np
        >>> from sklearn.datasets import make_classification
        >>> from sklearn.linear_model import LogisticRegression
        >>> from skbilevel import BilevelSearchCV, SampleWeight
        >>> from skbilevel.plotting import SampleWeightDisplay
        >>> X, y = make_classification(n_samples=60, random_state=0)
        >>> corrupted = np.arange(60) < 10
        >>> y[corrupted] = 1 - y[corrupted]
        >>> search = BilevelSearchCV(LogisticRegression(),
        ...                          {"sample_weight": SampleWeight()},
        ...                          cv=2, max_iter=3).fit(X, y)
        >>> display = SampleWeightDisplay.from_estimator(search, mask=corrupted)
        >>> display.weights.shape
        (60,)
        """
        caller = f"{cls.__name__}.from_estimator"
        check_fitted_search(search, caller)
        _, weights = learned_array(search, SampleWeight, caller)
        return cls.from_weights(weights, mask, mask_names=mask_names, ax=ax)


def _f1(precision, recall):
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    return np.nan_to_num(f1)
