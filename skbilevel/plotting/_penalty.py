"""PerFeaturePenaltyDisplay: one learned L2 penalty per feature."""

from numbers import Real

import numpy as np
from sklearn.model_selection import GridSearchCV, RandomizedSearchCV
from sklearn.utils.validation import check_is_fitted, column_or_1d

from .._space import PerFeature
from ._base import check_axes, check_fitted_search, learned_array


class PerFeaturePenaltyDisplay:
    """Learned per-feature penalties, against the features, on a log scale.

    Each marker is the penalty (``alpha_j`` or ``C_j``) learned for one
    feature; a horizontal line shows a scalar penalty for comparison, such as
    the optimum of a search over one penalty for all features.

    It is recommended to use :meth:`from_estimator` to create a
    :class:`PerFeaturePenaltyDisplay`. All parameters are stored as
    attributes.

    Read more in the :ref:`User Guide <plotting>`.

    Parameters
    ----------
    penalties : ndarray of shape (n_features,)
        The learned penalties.

    param_name : str
        The penalty's name in the search (``"alpha"``, ``"ridge__alpha"``,
        ``"C"``).

    feature_names : ndarray of shape (n_features,), dtype=str, default=None
        Names of the features; ``None`` numbers them.

    scalar : float, default=None
        A scalar penalty drawn as a horizontal line.

    Attributes
    ----------
    order_ : ndarray of shape (n_features,)
        The features in the order drawn.

    line_ : matplotlib Line2D
        The learned penalties.

    scalar_line_ : matplotlib Line2D or None
        The scalar penalty.

    ax_ : matplotlib Axes
        Axes with the penalties.

    figure_ : matplotlib Figure
        Figure containing the penalties.

    See Also
    --------
    SearchTrajectoryDisplay : The trajectory of a scalar penalty.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from sklearn.datasets import load_diabetes
    >>> from sklearn.linear_model import Ridge
    >>> from skbilevel import BilevelSearchCV, PerFeature, Real
    >>> from skbilevel.plotting import PerFeaturePenaltyDisplay
    >>> X, y = load_diabetes(return_X_y=True, as_frame=True)
    >>> search = BilevelSearchCV(Ridge(), {"alpha": PerFeature(1e-3, 1e3)},
    ...                          cv=3, max_iter=5).fit(X, y)
    >>> scalar = BilevelSearchCV(Ridge(), {"alpha": Real(1e-3, 1e3)},
    ...                          cv=3).fit(X, y)
    >>> display = PerFeaturePenaltyDisplay.from_estimator(
    ...     search, sort=True, scalar=scalar)
    >>> len(display.ax_.get_xticklabels())
    10
    """

    def __init__(self, *, penalties, param_name, feature_names=None, scalar=None):
        self.penalties = penalties
        self.param_name = param_name
        self.feature_names = feature_names
        self.scalar = scalar

    def plot(self, ax=None, *, sort=False):
        """Plot the penalties.

        Parameters
        ----------
        ax : matplotlib Axes, default=None
            Axes to plot on; ``None`` creates a figure.

        sort : bool, default=False
            Draw the features from the largest penalty to the smallest.

        Returns
        -------
        display : :class:`PerFeaturePenaltyDisplay`
            Object that stores computed values.
        """
        n_features = self.penalties.size
        self.figure_, (self.ax_,) = check_axes(
            ax, 1, "PerFeaturePenaltyDisplay.plot", width=max(4.5, 0.25 * n_features)
        )
        if sort:
            self.order_ = np.argsort(-self.penalties, kind="stable")
        else:
            self.order_ = np.arange(n_features)
        positions = np.arange(n_features)
        (self.line_,) = self.ax_.plot(
            positions,
            self.penalties[self.order_],
            "o",
            label=f"per-feature {self.param_name}",
        )
        self.scalar_line_ = None
        if self.scalar is not None:
            self.scalar_line_ = self.ax_.axhline(
                self.scalar,
                color="black",
                linestyle="--",
                label=f"scalar {self.param_name} = {self.scalar:.3g}",
            )
        if self.feature_names is not None:
            self.ax_.set_xticks(positions, self.feature_names[self.order_])
            self.ax_.tick_params(axis="x", labelrotation=90)
            xlabel = "feature"
        else:
            xlabel = "feature index"
            if sort:
                self.ax_.set_xticks(positions, self.order_)
        self.ax_.set_yscale("log")
        self.ax_.set(
            xlabel=xlabel + (" (sorted by penalty)" if sort else ""),
            ylabel=f"learned {self.param_name}",
            title="Per-feature penalties",
        )
        self.ax_.legend()
        return self

    @classmethod
    def from_estimator(
        cls,
        search,
        *,
        feature_names=None,
        sort=False,
        scalar=None,
        param_name=None,
        ax=None,
    ):
        """Plot the per-feature penalties learned by a fitted BilevelSearchCV.

        Parameters
        ----------
        search : BilevelSearchCV
            A fitted search with a :class:`~skbilevel.PerFeature` entry.

        feature_names : array-like of str, default=None
            Names of the features; ``None`` takes the search's
            ``feature_names_in_`` when it has them for every penalty, and
            numbers the features otherwise.

        sort : bool, default=False
            Draw the features from the largest penalty to the smallest.

        scalar : float or fitted search, default=None
            A scalar penalty for comparison: a float, or a fitted search
            (BilevelSearchCV, GridSearchCV) whose ``best_params_`` holds a
            scalar value of the same parameter.

        param_name : str, default=None
            The PerFeature entry, when the parameter space has several.

        ax : matplotlib Axes, default=None
            Axes to plot on; ``None`` creates a figure.

        Returns
        -------
        display : :class:`PerFeaturePenaltyDisplay`
            Object that stores computed values.
        """
        caller = f"{cls.__name__}.from_estimator"
        check_fitted_search(search, caller)
        key, penalties = learned_array(search, PerFeature, caller, param_name)
        if feature_names is None:
            names = getattr(search, "feature_names_in_", None)
            feature_names = (
                names if names is not None and names.size == penalties.size else None
            )
        else:
            feature_names = column_or_1d(np.asarray(feature_names, dtype=object))
            if feature_names.size != penalties.size:
                raise ValueError(
                    f"feature_names has {feature_names.size} entries, but the "
                    f"search learned {penalties.size} penalties."
                )
        display = cls(
            penalties=penalties,
            param_name=key,
            feature_names=feature_names,
            scalar=_scalar_penalty(scalar, key),
        )
        return display.plot(ax=ax, sort=sort)


def _scalar_penalty(scalar, key):
    """A float, or the scalar ``key`` in a fitted search's ``best_params_``."""
    if scalar is None or (isinstance(scalar, Real) and not isinstance(scalar, bool)):
        return scalar
    from .. import BilevelSearchCV

    if not isinstance(scalar, BilevelSearchCV | GridSearchCV | RandomizedSearchCV):
        raise TypeError(
            "scalar must be a float or a fitted BilevelSearchCV, GridSearchCV or "
            f"RandomizedSearchCV; got {type(scalar).__name__}."
        )
    check_is_fitted(scalar, "best_params_")
    value = scalar.best_params_.get(key)
    if value is None or np.ndim(value) != 0:
        raise ValueError(
            f"The best_params_ of scalar hold no scalar {key!r}; got "
            f"{scalar.best_params_!r}."
        )
    return float(value)
