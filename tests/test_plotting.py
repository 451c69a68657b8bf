"""The Display classes of skbilevel.plotting draw what the fitted objects hold."""

import subprocess
import sys

import numpy as np
import pytest
from sklearn.datasets import load_diabetes, load_digits, make_classification
from sklearn.exceptions import NotFittedError
from sklearn.kernel_ridge import KernelRidge
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import precision_recall_curve
from sklearn.model_selection import GridSearchCV

from skbilevel import BilevelSearchCV, PerFeature, PerStep, Real, SampleWeight
from skbilevel.meta import HyperRepresentationClassifier
from skbilevel.neural_network import TorchMLPClassifier
from skbilevel.plotting import (
    LearningRateScheduleDisplay,
    MetaTrainingDisplay,
    PerFeaturePenaltyDisplay,
    SampleWeightDisplay,
    SearchTrajectoryDisplay,
)

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
plt = pytest.importorskip("matplotlib.pyplot")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def diabetes():
    X, y = load_diabetes(return_X_y=True, as_frame=True)
    return X.iloc[:80], y.iloc[:80]


@pytest.fixture(scope="module")
def ridge_search(diabetes):
    """Two runs (fit_intercept True and False) of a learned alpha."""
    space = {"alpha": Real(1e-2, 1e2, init=10.0), "fit_intercept": [True, False]}
    return BilevelSearchCV(Ridge(), space, cv=2, max_iter=3).fit(*diabetes)


@pytest.fixture(scope="module")
def ridge_grid(diabetes):
    grid = {"alpha": np.logspace(-2, 2, 5)}
    return GridSearchCV(Ridge(), grid, cv=2).fit(*diabetes)


@pytest.fixture(scope="module")
def flipped():
    X, y = make_classification(n_samples=40, n_features=5, random_state=0)
    corrupted = np.arange(40) % 4 == 0
    y[corrupted] = 1 - y[corrupted]
    return X, y, corrupted


@pytest.fixture(scope="module")
def weight_search(flipped):
    X, y, _ = flipped
    space = {"sample_weight": SampleWeight()}
    return BilevelSearchCV(LogisticRegression(), space, cv=2, max_iter=3).fit(X, y)


@pytest.fixture(scope="module")
def penalty_search(diabetes):
    space = {"alpha": PerFeature(1e-2, 1e2)}
    return BilevelSearchCV(Ridge(), space, cv=2, max_iter=3).fit(*diabetes)


def _runs(history):
    runs = []
    for entry in history:
        if entry["step"] == 0:
            runs.append([])
        runs[-1].append(entry)
    return runs


def _legend(ax):
    return [text.get_text() for text in ax.get_legend().get_texts()]


def test_importing_skbilevel_does_not_import_matplotlib():
    code = (
        "import sys, skbilevel, skbilevel.plotting; "
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_without_matplotlib_a_display_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match="SampleWeightDisplay.plot requires matpl"):
        SampleWeightDisplay.from_weights([0.2, 0.9])


def test_trajectory_draws_each_run_of_the_history(ridge_search):
    display = SearchTrajectoryDisplay.from_estimator(ridge_search)
    runs = _runs(ridge_search.history_)
    assert len(runs) == 2
    assert len(display.loss_lines_) == len(display.param_lines_["alpha"]) == 2
    for run, loss_line, alpha_line in zip(
        runs, display.loss_lines_, display.param_lines_["alpha"]
    ):
        steps = [entry["step"] for entry in run]
        np.testing.assert_array_equal(loss_line.get_xdata(), steps)
        np.testing.assert_allclose(
            loss_line.get_ydata(), [entry["outer_loss"] for entry in run]
        )
        np.testing.assert_array_equal(alpha_line.get_xdata(), steps)
        np.testing.assert_allclose(
            alpha_line.get_ydata(), [entry["params"]["alpha"] for entry in run]
        )
    assert display.ax_.shape == (2,)
    assert _legend(display.ax_[0]) == ["fit_intercept=True", "fit_intercept=False"]
    assert display.ax_[0].get_xlabel() == "outer step"
    assert display.ax_[0].get_ylabel() == "validation loss"
    assert display.ax_[1].get_ylabel() == "alpha"
    assert display.ax_[1].get_yscale() == "log"
    assert display.figure_ is display.ax_[0].figure
    assert display.grid_lines_ is None and display.visited_ is None


def test_trajectory_names_restarts():
    X, y = load_diabetes(return_X_y=True)
    search = BilevelSearchCV(
        Ridge(), {"alpha": Real(1e-2, 1e2)}, cv=2, max_iter=2, n_restarts=2
    ).fit(X[:60], y[:60])
    display = SearchTrajectoryDisplay.from_estimator(search)
    assert _legend(display.ax_[0]) == ["restart 1", "restart 2"]


def test_trajectory_of_subspaces_learning_different_hyperparameters():
    X, y = load_diabetes(return_X_y=True)
    space = [
        {"kernel": ["rbf"], "alpha": Real(1e-2, 1e2), "gamma": Real(1e-2, 1e2)},
        {"kernel": ["linear"], "alpha": Real(1e-2, 1e2)},
    ]
    search = BilevelSearchCV(KernelRidge(), space, cv=2, max_iter=2)
    display = SearchTrajectoryDisplay.from_estimator(search.fit(X[:60], y[:60]))
    assert list(display.params) == ["alpha", "gamma"]
    assert _legend(display.ax_[0]) == ["kernel='rbf'", "kernel='linear'"]
    rbf, linear = _runs(search.history_)
    gamma_rbf, gamma_linear = display.param_lines_["gamma"]
    np.testing.assert_allclose(
        gamma_rbf.get_ydata(), [e["params"]["gamma"] for e in rbf]
    )
    assert np.isnan(gamma_linear.get_ydata()).all()
    assert len(gamma_linear.get_xdata()) == len(linear)


def test_trajectory_overlays_a_grid_search(ridge_search, ridge_grid):
    display = SearchTrajectoryDisplay.from_estimator(
        ridge_search, grid_search=ridge_grid
    )
    assert display.ax_.shape == (3,)
    grid_ax = display.ax_[2]
    (line,) = display.grid_lines_
    results = ridge_grid.cv_results_
    np.testing.assert_allclose(line.get_xdata(), results["param_alpha"].data)
    np.testing.assert_allclose(line.get_ydata(), results["mean_test_score"])
    assert grid_ax.get_xlabel() == "alpha"
    assert grid_ax.get_ylabel() == "mean test score"
    assert grid_ax.get_xscale() == "log"
    assert _legend(grid_ax) == ["GridSearchCV", "BilevelSearchCV steps"]
    # Each step of the implicit runs is a row of cv_results_, with its score.
    scores = ridge_search.cv_results_["mean_test_score"]
    for run, markers in zip(_runs(ridge_search.history_), display.visited_):
        expected = [(e["params"]["alpha"], scores[e["candidate"]]) for e in run]
        np.testing.assert_allclose(markers.get_offsets(), expected)


def test_trajectory_marks_only_scored_settings_of_refitted_runs():
    # A torch MLP's run is refitted at its learned setting only: that setting
    # is its one row of cv_results_, and the one marker on the grid panel.
    X, y = make_classification(n_samples=40, n_features=5, random_state=0)
    mlp = TorchMLPClassifier((4,), solver="sgd", max_iter=5, random_state=0)
    space = {"learning_rate": Real(1e-3, 1.0, init=0.05)}
    search = BilevelSearchCV(mlp, space, cv=2, max_iter=2).fit(X, y)
    grid = GridSearchCV(mlp, {"learning_rate": [0.01, 0.1]}, cv=2).fit(X, y)
    display = SearchTrajectoryDisplay.from_estimator(search, grid_search=grid)
    (markers,) = display.visited_
    learned = search.cv_results_["params"][0]["learning_rate"]
    score = search.cv_results_["mean_test_score"][0]
    np.testing.assert_allclose(markers.get_offsets(), [[learned, score]])
    assert len(display.loss_lines_[0].get_xdata()) == len(search.history_)


def test_trajectory_refuses_what_it_cannot_draw(diabetes, ridge_search, ridge_grid):
    with pytest.raises(NotFittedError):
        SearchTrajectoryDisplay.from_estimator(
            BilevelSearchCV(Ridge(), {"alpha": Real(1e-2, 1e2)})
        )
    with pytest.raises(TypeError, match="expects a fitted BilevelSearchCV; got"):
        SearchTrajectoryDisplay.from_estimator(ridge_grid)
    discrete = BilevelSearchCV(Ridge(), {"alpha": [0.1, 1.0]}, cv=2).fit(*diabetes)
    with pytest.raises(ValueError, match="searched lists of values only"):
        SearchTrajectoryDisplay.from_estimator(discrete)
    with pytest.raises(TypeError, match="grid_search must be a fitted GridSearchCV"):
        SearchTrajectoryDisplay.from_estimator(ridge_search, grid_search=Ridge())
    other = GridSearchCV(Ridge(), {"fit_intercept": [True, False]}, cv=2)
    with pytest.raises(ValueError, match="exactly one of the search's scalar"):
        SearchTrajectoryDisplay.from_estimator(
            ridge_search, grid_search=other.fit(*diabetes)
        )
    with pytest.raises(ValueError, match="ax must hold as many matplotlib Axes"):
        SearchTrajectoryDisplay.from_estimator(ridge_search, ax=plt.gca())


def test_trajectory_draws_on_given_axes(ridge_search):
    figure, axes = plt.subplots(2, 1)
    display = SearchTrajectoryDisplay.from_estimator(ridge_search, ax=axes)
    assert display.figure_ is figure
    assert list(display.ax_) == list(axes)


def test_sample_weights_histogram_and_flagging(weight_search, flipped):
    corrupted = flipped[2]
    display = SampleWeightDisplay.from_estimator(
        weight_search, mask=corrupted, mask_names=("clean", "flipped")
    )
    weights = weight_search.best_params_["sample_weight"]
    np.testing.assert_array_equal(display.weights, weights)
    clean, flagged = display.hist_
    assert sum(p.get_height() for p in clean) == (~corrupted).sum()
    assert sum(p.get_height() for p in flagged) == corrupted.sum()
    assert _legend(display.ax_[0]) == ["clean (30)", "flipped (10)"]
    precision, recall, thresholds = precision_recall_curve(corrupted, -weights)
    np.testing.assert_allclose(display.line_.get_xdata(), recall)
    np.testing.assert_allclose(display.line_.get_ydata(), precision)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-300)
    best = np.argmax(f1[:-1])
    assert display.best_f1 == pytest.approx(f1[best])
    assert display.best_threshold == pytest.approx(-thresholds[best])
    assert (weights <= display.best_threshold).sum() >= 1
    assert display.ax_[1].get_xlabel() == "recall of flipped"
    assert display.ax_[0].get_xlabel() == "learned sample weight"


def test_sample_weights_from_weights():
    weights = np.array([0.9, 1.0, 0.05, 0.8, 0.1, 0.6])
    corrupted = np.array([False, False, True, False, True, True])
    display = SampleWeightDisplay.from_weights(weights, corrupted)
    assert display.best_f1 == 1.0 and display.best_threshold == 0.6
    alone = SampleWeightDisplay.from_weights(weights)
    assert alone.ax_.shape == (1,) and alone.line_ is None
    assert _legend(alone.ax_[0]) == ["all examples (6)"]


def test_sample_weights_refuse_bad_input(weight_search, ridge_search):
    with pytest.raises(ValueError, match="mask has 3 entries, but there are 40"):
        SampleWeightDisplay.from_estimator(weight_search, mask=[True, False, True])
    with pytest.raises(TypeError, match="mask must be boolean"):
        SampleWeightDisplay.from_estimator(weight_search, mask=np.arange(40) % 2)
    with pytest.raises(ValueError, match="both True and False"):
        SampleWeightDisplay.from_weights([0.1, 0.2], [True, True])
    with pytest.raises(ValueError, match="exactly one SampleWeight entry"):
        SampleWeightDisplay.from_estimator(ridge_search)


def test_per_feature_penalties(penalty_search, diabetes):
    X, _ = diabetes
    penalties = penalty_search.best_params_["alpha"]
    display = PerFeaturePenaltyDisplay.from_estimator(
        penalty_search, feature_names=X.columns, sort=True, scalar=3.0
    )
    order = np.argsort(-penalties, kind="stable")
    np.testing.assert_array_equal(display.order_, order)
    np.testing.assert_allclose(display.line_.get_ydata(), penalties[order])
    ticks = [label.get_text() for label in display.ax_.get_xticklabels()]
    assert ticks == list(X.columns[order])
    assert display.ax_.get_yscale() == "log"
    assert display.ax_.get_ylabel() == "learned alpha"
    assert display.ax_.get_xlabel() == "feature (sorted by penalty)"
    np.testing.assert_allclose(display.scalar_line_.get_ydata(), [3.0, 3.0])
    assert _legend(display.ax_) == ["per-feature alpha", "scalar alpha = 3"]


def test_per_feature_penalties_scalar_from_a_search(penalty_search, ridge_grid):
    display = PerFeaturePenaltyDisplay.from_estimator(penalty_search, scalar=ridge_grid)
    np.testing.assert_array_equal(display.order_, np.arange(10))
    np.testing.assert_array_equal(display.line_.get_xdata(), np.arange(10))
    assert display.scalar == ridge_grid.best_params_["alpha"]
    assert display.ax_.get_xlabel() in ("feature", "feature index")


def test_per_feature_penalties_default_to_the_feature_names(penalty_search, diabetes):
    display = PerFeaturePenaltyDisplay.from_estimator(penalty_search)
    ticks = [label.get_text() for label in display.ax_.get_xticklabels()]
    assert ticks == list(diabetes[0].columns)
    assert display.ax_.get_xlabel() == "feature"


def test_per_feature_penalties_refuse_bad_input(penalty_search, ridge_search):
    with pytest.raises(ValueError, match="exactly one PerFeature entry"):
        PerFeaturePenaltyDisplay.from_estimator(ridge_search)
    with pytest.raises(ValueError, match="feature_names has 2 entries"):
        PerFeaturePenaltyDisplay.from_estimator(
            penalty_search, feature_names=["a", "b"]
        )
    with pytest.raises(TypeError, match="scalar must be a float or a fitted"):
        PerFeaturePenaltyDisplay.from_estimator(penalty_search, scalar="1.0")
    with pytest.raises(ValueError, match="hold no scalar 'alpha'"):
        PerFeaturePenaltyDisplay.from_estimator(penalty_search, scalar=penalty_search)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:400] / 16, y[:400]


def test_meta_training_curves(digits):
    hr = HyperRepresentationClassifier(
        max_iter=4,
        meta_batch_size=2,
        n_query=2,
        validation_interval=2,
        early_stopping=True,
        validation_fraction=0.3,
        n_validation_episodes=2,
        random_state=0,
    ).fit(*digits)
    display = MetaTrainingDisplay.from_estimator(hr)
    steps = [record["iteration"] for record in hr.history_]
    np.testing.assert_array_equal(display.loss_line_.get_xdata(), steps)
    np.testing.assert_allclose(
        display.loss_line_.get_ydata(), [r["outer_loss"] for r in hr.history_]
    )
    np.testing.assert_allclose(
        display.score_line_.get_ydata(),
        [r["validation_score"] for r in hr.history_],
    )
    assert display.ax_[0].get_xlabel() == "outer step"
    assert display.ax_[1].get_ylabel() == "mean episode accuracy"
    assert _legend(display.ax_[1]) == ["validation episodes"]


def test_meta_training_without_validation(digits):
    hr = HyperRepresentationClassifier(
        max_iter=2, meta_batch_size=2, n_query=2, validation_interval=1, random_state=0
    ).fit(*digits)
    display = MetaTrainingDisplay.from_estimator(hr)
    assert display.ax_.shape == (1,) and display.score_line_ is None
    np.testing.assert_array_equal(display.loss_line_.get_xdata(), [1, 2])
    with pytest.raises(NotFittedError):
        MetaTrainingDisplay.from_estimator(HyperRepresentationClassifier())
    with pytest.raises(TypeError, match="HyperRepresentationClassifier; got Ridge"):
        MetaTrainingDisplay.from_estimator(Ridge())


def test_learning_rate_schedule():
    X, y = make_classification(n_samples=40, n_features=5, random_state=0)
    mlp = TorchMLPClassifier((4,), solver="sgd", max_iter=10, random_state=0)
    space = {"learning_rate": PerStep(1e-3, 1.0, init=0.05, n_blocks=4)}
    search = BilevelSearchCV(mlp, space, cv=2, max_iter=3).fit(X, y)
    display = LearningRateScheduleDisplay.from_estimator(search)
    blocks = search.best_params_["learning_rate"]
    expected = blocks[[0, 0, 0, 1, 1, 2, 2, 2, 3, 3]]  # floor(t * 4 / 10)
    np.testing.assert_allclose(display.learning_rates, expected)
    # Drawn as steps up to max_iter, the last value repeated at step 10.
    np.testing.assert_allclose(display.line_.get_ydata(), [*expected, blocks[3]])
    np.testing.assert_array_equal(display.line_.get_xdata(), np.arange(11))
    np.testing.assert_allclose(display.initial_line_.get_ydata(), [0.05, 0.05])
    assert display.ax_.get_xlabel() == "training step"
    assert display.ax_.get_ylabel() == "learning_rate"
    assert display.ax_.get_yscale() == "log"
    assert _legend(display.ax_) == ["learned (4 blocks)", "initial 0.05"]


def test_learning_rate_schedule_refuses_other_searches(ridge_search):
    with pytest.raises(ValueError, match="exactly one PerStep entry"):
        LearningRateScheduleDisplay.from_estimator(ridge_search)
    with pytest.raises(TypeError, match="expects a fitted BilevelSearchCV"):
        LearningRateScheduleDisplay.from_estimator(Ridge())
