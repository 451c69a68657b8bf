"""Progress output: silent by default, one bar at verbose=1, one line per outer
step at verbose=2, written by the main process also with joblib workers."""

import pickle
import re

import numpy as np
import pytest
from joblib import parallel_backend
from sklearn.datasets import make_classification, make_regression
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge

from skbilevel import BilevelSearchCV, HyperRepresentationClassifier, Real, SampleWeight
from skbilevel._search._progress import SearchProgress, StepHook, describe

X, y = make_regression(n_samples=60, n_features=4, noise=5.0, random_state=0)
LINE = re.compile(
    r"^\[BilevelSearchCV\] step (\d+): (.*)outer loss (\S+), "
    r"hypergradient norm \S+, run (\d+), \S+s$"
)


def ridge_search(**params):
    """Two runs (one per fit_intercept value) that converge before max_iter."""
    return BilevelSearchCV(
        Ridge(),
        {"alpha": Real(1e-3, 1e3), "fit_intercept": [True, False]},
        cv=3,
        **params,
    )


def step_lines(out):
    return [line for line in out.splitlines() if line.startswith("[BilevelSearchCV]")]


def without_times(lines):
    return [line.rsplit(", ", 1)[0] for line in lines]


def test_silent_by_default(capfd):
    search = ridge_search().fit(X, y)
    assert len(search.history_) > 2
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_verbose_1_one_bar(capfd):
    search = ridge_search(verbose=1).fit(X, y)
    out, err = capfd.readouterr()
    assert out == ""
    # One bar: its description, both runs completed, the best loss of them all.
    assert err.count("BilevelSearchCV:") >= 1
    assert "2/2" in err and "0/2" in err
    best = min(entry["outer_loss"] for entry in search.history_)
    final = err.rstrip().split("\r")[-1]
    assert final.startswith("BilevelSearchCV: 100%")
    assert f"best loss={best:.4g}" in final
    # Neither joblib's "Done" lines nor scikit-learn's fit lines.
    assert "Done" not in err and "Fitting" not in out + err


def check_step_lines(lines, search):
    """One line per outer step, in run order, with the learned alpha."""
    assert len(lines) == len(search.history_)
    runs = []
    for line, entry in zip(lines, search.history_):
        match = LINE.match(line)
        assert match is not None, line
        step, values, loss, run = match.groups()
        runs.append(int(run))
        assert int(step) == entry["step"]
        assert values == f"alpha={entry['params']['alpha']:.4g}, "
        assert float(loss) == pytest.approx(entry["outer_loss"], rel=1e-5)
    assert runs == sorted(runs) and set(runs) == {1, 2}


def test_verbose_2_one_line_per_step(capfd):
    search = ridge_search(verbose=2).fit(X, y)
    out, err = capfd.readouterr()
    check_step_lines(step_lines(out), search)
    assert "[CV]" not in out + err and "Fitting" not in out + err


def test_verbose_2_with_two_workers(capfd):
    """Runs in worker processes: the parent prints each run's lines when it
    completes (the same lines as a sequential search), nothing else."""
    sequential = ridge_search(verbose=2).fit(X, y)
    expected = without_times(step_lines(capfd.readouterr()[0]))
    with parallel_backend("loky"):
        search = ridge_search(verbose=2, n_jobs=2).fit(X, y)
    out, err = capfd.readouterr()
    lines = step_lines(out)
    assert without_times(lines) == expected
    check_step_lines(lines, search)
    assert len(sequential.history_) == len(search.history_)
    assert out.count("\n") == len(lines)
    assert "2/2" in err and "Done" not in err


def test_verbose_2_with_two_threads(capfd):
    """Runs in threads (the default with n_jobs): each step is printed as it
    is taken, every run's lines in its order, nothing else."""
    sequential = ridge_search(verbose=2).fit(X, y)
    expected = without_times(step_lines(capfd.readouterr()[0]))
    search = ridge_search(verbose=2, n_jobs=2).fit(X, y)
    out, err = capfd.readouterr()
    lines = step_lines(out)
    assert sorted(without_times(lines)) == sorted(expected)
    for run in ("run 1", "run 2"):
        ours = [line for line in without_times(lines) if line.endswith(run)]
        assert ours == [line for line in expected if line.endswith(run)]
    # history_ holds run 1's steps, then run 2's.
    check_step_lines(sorted(lines, key=lambda line: "run 2" in line), search)
    assert len(sequential.history_) == len(search.history_)
    assert out.count("\n") == len(lines)
    assert "2/2" in err and "Done" not in err


def test_verbose_2_with_threads(capsys):
    """Runs in threads of the main process report each step as it is taken."""
    with parallel_backend("threading", n_jobs=2):
        search = ridge_search(verbose=2, n_jobs=2).fit(X, y)
    lines = step_lines(capsys.readouterr()[0])
    assert sorted(without_times(lines)) == sorted(
        without_times(step_lines(_sequential_lines(capsys)))
    )
    assert len(lines) == len(search.history_)


def _sequential_lines(capsys):
    ridge_search(verbose=2).fit(X, y)
    return capsys.readouterr()[0]


def test_verbose_2_never_prints_whole_arrays(capsys):
    """Learned sample weights: each line summarizes them by size and range."""
    Xc, yc = make_classification(n_samples=80, n_features=4, random_state=0)
    search = BilevelSearchCV(
        LogisticRegression(),
        {"sample_weight": SampleWeight()},
        cv=4,
        max_iter=3,
        verbose=2,
    )
    with pytest.warns(ConvergenceWarning, match="max_iter"):
        search.fit(Xc, yc)
    out, err = capsys.readouterr()
    lines = step_lines(out)
    assert len(lines) == len(search.history_) >= 3
    for line, entry in zip(lines, search.history_):
        weights = entry["params"]["sample_weight"]
        summary = (
            f"sample_weight[{weights.size}] in "
            f"[{weights.min():.3g}, {weights.max():.3g}]"
        )
        assert summary in line and len(line) < 160
    assert len(out) + len(err) < 5000


def test_describe():
    assert describe({"C": 2.0, "w": np.array([0.5, 1.0, 0.25])}) == (
        "C=2, w[3] in [0.25, 1]"
    )


def test_hook_is_a_no_op_once_pickled():
    progress = SearchProgress(1, 1)
    hook = pickle.loads(pickle.dumps(progress.hook(0)))
    assert isinstance(hook, StepHook) and hook.progress is None and hook.run == 0
    assert SearchProgress(0, 1).hook(0).progress is None


def test_meta_training_verbose(capsys):
    rng = np.random.RandomState(0)
    Xm = rng.randn(60, 5).astype(np.float32)
    ym = np.repeat(np.arange(6), 10)
    params = dict(
        representation="mlp",
        n_way=3,
        n_shot=1,
        n_query=2,
        max_iter=4,
        meta_batch_size=2,
        validation_interval=2,
        random_state=0,
    )
    HyperRepresentationClassifier(**params).fit(Xm, ym)
    out, err = capsys.readouterr()
    assert out == "" and err == ""
    HyperRepresentationClassifier(verbose=1, **params).fit(Xm, ym)
    out, err = capsys.readouterr()
    assert out == "" and "meta-fit" in err and "4/4" in err
    clf = HyperRepresentationClassifier(verbose=2, **params).fit(Xm, ym)
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == len(clf.history_) == 2
    for line, record in zip(lines, clf.history_):
        assert line.startswith(
            f"[HyperRepresentationClassifier] step {record['iteration']}: "
            f"training loss {record['outer_loss']:.4g}, learning rate "
            f"{record['learning_rate']:.4g}"
        )


NOTEBOOK_WITHOUT_WIDGETS = """
import sys, types, warnings
shell = type("ZMQInteractiveShell", (), {"config": {}})
ipython = types.ModuleType("IPython")
ipython.get_ipython = shell
display = types.ModuleType("IPython.display")
display.display = print
sys.modules.update({"IPython": ipython, "IPython.display": display,
                    "ipykernel.zmqshell": types.ModuleType("ipykernel.zmqshell")})
warnings.simplefilter("error")
import skbilevel
from tqdm.auto import tqdm
print(tqdm.__module__)
"""


def test_no_tqdm_warning_in_a_notebook_without_ipywidgets():
    """tqdm.auto warns at import in a notebook without ipywidgets (and falls
    back to its text bar): importing skbilevel there shows no warning."""
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("ipywidgets") is not None:
        pytest.skip("ipywidgets is installed: tqdm.auto draws its widget")
    result = subprocess.run(
        [sys.executable, "-c", NOTEBOOK_WITHOUT_WIDGETS],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "tqdm.asyncio" and result.stderr == ""
