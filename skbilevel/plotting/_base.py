"""Helpers shared by the Display classes: matplotlib, fitted searches, axes."""

from collections.abc import Mapping

import numpy as np
from sklearn.utils.validation import check_is_fitted


def import_pyplot(caller):
    """``matplotlib.pyplot``, or an ImportError naming ``caller``."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError(
            f"{caller} requires matplotlib. You can install matplotlib with "
            "`pip install matplotlib`."
        ) from error
    return plt


def check_fitted_search(search, caller, attribute="best_params_"):
    """Refuse anything but a fitted BilevelSearchCV."""
    from .. import BilevelSearchCV

    if not isinstance(search, BilevelSearchCV):
        raise TypeError(
            f"{caller} expects a fitted BilevelSearchCV; got {type(search).__name__}."
        )
    check_is_fitted(search, attribute)


def keys_of_spec(search, spec_class):
    """Keys of ``search.param_space`` whose spec is a ``spec_class``."""
    spaces = search.param_space
    spaces = [spaces] if isinstance(spaces, Mapping) else spaces
    keys = {
        key
        for space in spaces
        for key, spec in space.items()
        if isinstance(spec, spec_class)
    }
    return sorted(keys)


def learned_array(search, spec_class, caller, param_name=None):
    """The key and learned array of the ``spec_class`` entry of a fitted search."""
    spec_name = spec_class.__name__
    keys = keys_of_spec(search, spec_class)
    if param_name is not None:
        keys = [key for key in keys if key == param_name]
    if len(keys) != 1:
        found = "none" if not keys else ", ".join(keys)
        raise ValueError(
            f"{caller} needs exactly one {spec_name} entry in the search's "
            f"param_space (or param_name naming one); found {found}."
        )
    key = keys[0]
    if key not in search.best_params_ or np.ndim(search.best_params_[key]) != 1:
        raise ValueError(
            f"The best setting of the search has no learned {spec_name} array "
            f"under {key!r}: the best candidate is a setting of other entries."
        )
    return key, np.asarray(search.best_params_[key], dtype=float)


def check_axes(ax, n_axes, caller, *, width=4.5, height=3.5):
    """The figure and an array of ``n_axes`` axes: new ones, or the user's."""
    plt = import_pyplot(caller)
    if ax is None:
        # At most two panels a row, so that a figure stays readable at the
        # width of a page or a notebook cell.
        n_cols = min(n_axes, 2)
        n_rows = -(-n_axes // n_cols)
        figure, axes = plt.subplots(
            n_rows,
            n_cols,
            figsize=(width * n_cols, height * n_rows),
            squeeze=False,
            layout="constrained",
        )
        axes = axes.ravel()
        for unused in axes[n_axes:]:
            unused.remove()
        return figure, axes[:n_axes]
    axes = np.ravel(np.asarray(ax, dtype=object))
    if axes.size != n_axes:
        raise ValueError(
            f"{caller} draws {n_axes} panel(s); ax must hold as many matplotlib "
            f"Axes, got {axes.size}."
        )
    return axes[0].figure, axes
