"""SearchTrajectoryDisplay: the outer optimization of a BilevelSearchCV."""

import numpy as np
from sklearn.model_selection import GridSearchCV, RandomizedSearchCV
from sklearn.utils.validation import check_is_fitted

from ._base import check_axes, check_fitted_search


class SearchTrajectoryDisplay:
    """Outer trajectory of a BilevelSearchCV: validation loss and hyperparameters.

    One panel shows the validation loss (the outer objective) against the outer
    step, one panel per scalar hyperparameter shows its value, with one line per
    hypergradient run (a combination of discrete values and a restart). When a
    GridSearchCV over one of the hyperparameters is given, a last panel shows
    its mean test score against that hyperparameter, with the settings the
    runs visited marked on it.

    It is recommended to use :meth:`from_estimator` to create a
    :class:`SearchTrajectoryDisplay`. All parameters are stored as attributes.

    Read more in the :ref:`User Guide <plotting>`.

    Parameters
    ----------
    steps : list of ndarray
        Outer steps of each run.

    outer_losses : list of ndarray
        Validation loss at each outer step of each run.

    params : dict of str to list of ndarray
        Value of each scalar hyperparameter at each outer step of each run
        (NaN in the runs that do not learn it).

    run_names : list of str
        Name of each run, in the legend.

    log_params : list of str, default=None
        Hyperparameters drawn on a log scale (:meth:`from_estimator` takes
        those whose values span a decade or more).

    grid_param : str, default=None
        Hyperparameter of the grid-search panel; ``None`` draws no such panel.

    grid_values : list of ndarray, default=None
        Values of ``grid_param`` of each grid-search curve (one curve per
        combination of the grid's other parameters).

    grid_scores : list of ndarray, default=None
        Mean test score of each grid-search curve.

    grid_names : list of str, default=None
        Name of each grid-search curve, in the legend.

    visited_values : list of ndarray, default=None
        Values of ``grid_param`` that each run evaluated.

    visited_scores : list of ndarray, default=None
        Mean test score of the search at ``visited_values``.

    score_name : str, default="mean test score"
        Label of the scores.

    Attributes
    ----------
    loss_lines_ : list of matplotlib Line2D
        Validation loss of each run.

    param_lines_ : dict of str to list of matplotlib Line2D
        Value of each hyperparameter in each run.

    grid_lines_ : list of matplotlib Line2D or None
        Curves of the grid search.

    visited_ : list of matplotlib PathCollection or None
        Markers of the settings each run visited, on the grid-search panel,
        in the colour of the run.

    ax_ : ndarray of matplotlib Axes
        The panels: loss, each hyperparameter, then the grid search.

    figure_ : matplotlib Figure
        Figure containing the panels.

    See Also
    --------
    sklearn.model_selection.ValidationCurveDisplay : Validation curve of a grid.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from sklearn.datasets import load_diabetes
    >>> from sklearn.linear_model import Ridge
    >>> from skbilevel import BilevelSearchCV, Real
    >>> from skbilevel.plotting import SearchTrajectoryDisplay
    >>> X, y = load_diabetes(return_X_y=True)
    >>> search = BilevelSearchCV(Ridge(), {"alpha": Real(1e-3, 1e3)}, cv=3)
    >>> display = SearchTrajectoryDisplay.from_estimator(search.fit(X, y))
    >>> display.ax_[1].get_ylabel()
    'alpha'
    """

    def __init__(
        self,
        *,
        steps,
        outer_losses,
        params,
        run_names,
        log_params=None,
        grid_param=None,
        grid_values=None,
        grid_scores=None,
        grid_names=None,
        visited_values=None,
        visited_scores=None,
        score_name="mean test score",
    ):
        self.steps = steps
        self.outer_losses = outer_losses
        self.params = params
        self.run_names = run_names
        self.log_params = log_params
        self.grid_param = grid_param
        self.grid_values = grid_values
        self.grid_scores = grid_scores
        self.grid_names = grid_names
        self.visited_values = visited_values
        self.visited_scores = visited_scores
        self.score_name = score_name

    def plot(self, ax=None):
        """Plot the trajectory.

        Parameters
        ----------
        ax : array-like of matplotlib Axes, default=None
            One Axes per panel (1 + the number of hyperparameters, + 1 with a
            grid search); ``None`` creates a figure.

        Returns
        -------
        display : :class:`SearchTrajectoryDisplay`
            Object that stores computed values.
        """
        grid = self.grid_param is not None
        n_axes = 1 + len(self.params) + grid
        self.figure_, self.ax_ = check_axes(ax, n_axes, "SearchTrajectoryDisplay.plot")
        log = set(self.log_params or ())
        loss_ax = self.ax_[0]
        self.loss_lines_ = [
            loss_ax.plot(steps, losses, marker="o", markersize=3, label=name)[0]
            for steps, losses, name in zip(
                self.steps, self.outer_losses, self.run_names
            )
        ]
        loss_ax.set(
            xlabel="outer step", ylabel="validation loss", title="Outer objective"
        )
        loss_ax.legend()
        self.param_lines_ = {}
        for param_ax, (key, runs) in zip(self.ax_[1:], self.params.items()):
            self.param_lines_[key] = [
                param_ax.plot(steps, values, marker="o", markersize=3, label=name)[0]
                for steps, values, name in zip(self.steps, runs, self.run_names)
            ]
            param_ax.set(xlabel="outer step", ylabel=key, title=f"Learned {key}")
            if key in log:
                param_ax.set_yscale("log")
        self.grid_lines_, self.visited_ = None, None
        if grid:
            self._plot_grid(self.ax_[-1], _spans_decades(self.grid_values))
        return self

    def _plot_grid(self, grid_ax, log):
        self.grid_lines_ = [
            grid_ax.plot(values, scores, label=name)[0]
            for values, scores, name in zip(
                self.grid_values, self.grid_scores, self.grid_names
            )
        ]
        self.visited_ = [
            grid_ax.scatter(
                values,
                scores,
                color=line.get_color(),
                marker="x",
                zorder=3,
                label="BilevelSearchCV steps" if number == 0 else "_nolegend_",
            )
            for number, (values, scores, line) in enumerate(
                zip(self.visited_values, self.visited_scores, self.loss_lines_)
            )
        ]
        grid_ax.set(
            xlabel=self.grid_param,
            ylabel=self.score_name,
            title="Against GridSearchCV",
        )
        if log:
            grid_ax.set_xscale("log")
        grid_ax.legend()

    @classmethod
    def from_estimator(cls, search, *, grid_search=None, param_name=None, ax=None):
        """Plot the outer trajectory of a fitted BilevelSearchCV.

        Parameters
        ----------
        search : BilevelSearchCV
            A fitted search with continuous hyperparameters; its ``history_``
            holds the trajectory (a run starts where ``step`` is 0).

        grid_search : GridSearchCV, default=None
            A fitted grid search over one of the search's scalar
            hyperparameters (with the same scoring, to compare the scores);
            its ``mean_test_score`` is drawn on a last panel.

        param_name : str, default=None
            The hyperparameter of the grid-search panel, when the grid
            searches several of the search's hyperparameters.

        ax : array-like of matplotlib Axes, default=None
            One Axes per panel; ``None`` creates a figure.

        Returns
        -------
        display : :class:`SearchTrajectoryDisplay`
            Object that stores computed values.
        """
        caller = f"{cls.__name__}.from_estimator"
        check_fitted_search(search, caller, "history_")
        if not search.history_:
            raise ValueError(
                f"{caller} needs a search with continuous hyperparameters; this "
                "one searched lists of values only (its history_ is empty)."
            )
        runs = _split_runs(search.history_)
        # The scalar hyperparameters of every run, in order of appearance (a
        # list of subspaces may learn different ones).
        keys = list(
            dict.fromkeys(
                key
                for entry in search.history_
                for key, value in entry["params"].items()
                if np.ndim(value) == 0
            )
        )
        grid = {}
        if grid_search is not None:
            grid = _grid_curves(search, runs, grid_search, keys, param_name, caller)
        params = {
            key: [
                np.array([e["params"].get(key, np.nan) for e in run], dtype=float)
                for run in runs
            ]
            for key in keys
        }
        display = cls(
            steps=[np.array([e["step"] for e in run]) for run in runs],
            outer_losses=[np.array([e["outer_loss"] for e in run]) for run in runs],
            params=params,
            run_names=_run_names(search, runs),
            log_params=[
                key for key, values in params.items() if _spans_decades(values)
            ],
            **grid,
        )
        return display.plot(ax=ax)


def _split_runs(history):
    """The entries of each run: a run starts where ``step`` goes back."""
    runs = []
    for entry in history:
        if not runs or entry["step"] <= runs[-1][-1]["step"]:
            runs.append([])
        runs[-1].append(entry)
    return runs


def _run_names(search, runs):
    """'run 1', or the discrete values and the restart of each run."""
    candidates = search.cv_results_["params"]
    names, restarts = [], {}
    for number, run in enumerate(runs, start=1):
        learned = run[0]["params"]
        discrete = {
            k: v for k, v in candidates[run[0]["candidate"]].items() if k not in learned
        }
        label = ", ".join(f"{k}={v!r}" for k, v in discrete.items())
        restart = restarts[label] = restarts.get(label, 0) + 1
        parts = [label] if label else []
        if search.n_restarts > 1:
            parts.append(f"restart {restart}")
        names.append(", ".join(parts) or f"run {number}")
    return names


def _spans_decades(runs):
    """Whether positive values span a decade or more: a log scale shows them."""
    values = np.concatenate(runs)
    values = values[~np.isnan(values)]
    return values.min() > 0 and values.max() >= 10 * values.min()


def _mean_test_key(fitted):
    if "mean_test_score" in fitted.cv_results_:
        return "mean_test_score"
    return f"mean_test_{fitted.refit}"


def _grid_curves(search, runs, grid_search, keys, param_name, caller):
    """The grid-search panel's curves and the runs' visited settings."""
    if not isinstance(grid_search, GridSearchCV | RandomizedSearchCV):
        raise TypeError(
            f"grid_search must be a fitted GridSearchCV; got "
            f"{type(grid_search).__name__}."
        )
    check_is_fitted(grid_search, "cv_results_")
    results = grid_search.cv_results_
    common = [key for key in keys if f"param_{key}" in results]
    if param_name is not None:
        common = [key for key in common if key == param_name]
    if len(common) != 1:
        raise ValueError(
            f"{caller} needs grid_search to search exactly one of the search's "
            f"scalar hyperparameters {keys} (or param_name naming one); "
            f"found {common}."
        )
    key, score_key = common[0], _mean_test_key(grid_search)
    curves = {}
    for params, score in zip(results["params"], results[score_key]):
        others = ", ".join(f"{k}={v!r}" for k, v in params.items() if k != key)
        curves.setdefault(others, []).append((params[key], score))
    curves = {name: np.array(sorted(points)) for name, points in curves.items()}
    search_scores = search.cv_results_[_mean_test_key(search)]
    candidates = search.cv_results_["params"]
    # A run evaluated by refitting has one row, its learned setting: only the
    # steps at that setting have a score.
    visited = [
        np.array(
            [
                (entry["params"][key], search_scores[entry["candidate"]])
                for entry in run
                if key in entry["params"]
                and np.isclose(
                    candidates[entry["candidate"]][key], entry["params"][key]
                )
            ]
        ).reshape(-1, 2)
        for run in runs
    ]
    return {
        "grid_param": key,
        "grid_values": [points[:, 0] for points in curves.values()],
        "grid_scores": [points[:, 1] for points in curves.values()],
        "grid_names": [
            f"GridSearchCV, {name}" if name else "GridSearchCV" for name in curves
        ],
        "visited_values": [points[:, 0] for points in visited],
        "visited_scores": [points[:, 1] for points in visited],
        "score_name": score_key.replace("_", " "),
    }
