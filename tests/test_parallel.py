"""Scale-out and thread rules: BilevelSearchCV on joblib's Dask and Ray
backends gives loky's search exactly; runs side by side share the cores; the
torch estimators follow the search's small-data thread rule.

The Dask tests run on a real ``distributed.LocalCluster`` of two worker
processes (CI installs distributed with the tests extra); the Ray test skips
where ray is not installed.
"""

import pickle

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression, SGDClassifier
from threadpoolctl import threadpool_info

from skbilevel import BilevelSearchCV, HyperRepresentationClassifier, Real
from skbilevel._search import _search as search_module
from skbilevel._search._evaluate import FoldSolutions, LearnedSettings
from skbilevel.meta import _estimator as meta_estimator
from skbilevel.neural_network import TorchMLPClassifier
from skbilevel.neural_network._base import _BaseTorchMLP
from skbilevel.utils import _threads
from skbilevel.utils._threads import _call_limited, limited, thread_limit

X, Y = make_classification(
    n_samples=40, n_features=4, n_informative=3, n_redundant=0, random_state=0
)


def _logreg():
    # Two values x two restarts: four independent runs; every row assembled
    # from the runs' fold solutions.
    space = {"C": Real(1e-2, 1e2), "fit_intercept": [True, False]}
    return BilevelSearchCV(
        LogisticRegression(), space, cv=2, max_iter=3, n_restarts=2, random_state=0
    )


def _sgd():
    # SGD's rows are fitted by scikit-learn in the evaluation.
    sgd = SGDClassifier(loss="log_loss", max_iter=50, tol=None, random_state=0)
    space = {"alpha": Real(1e-4, 1e-1), "fit_intercept": [True, False]}
    return BilevelSearchCV(sgd, space, cv=2, max_iter=2, random_state=0)


def _mlp():
    mlp = TorchMLPClassifier((4,), max_iter=5, batch_size=8, random_state=0)
    space = {"learning_rate": Real(1e-3, 1.0), "alpha": [1e-4, 1e-2]}
    return BilevelSearchCV(mlp, space, cv=2, max_iter=2, random_state=0)


CASES = {"logreg": _logreg, "sgd": _sgd, "mlp": _mlp}
# Tasks the Dask workers run: the runs, and the evaluation's fits and scores
# (n_candidates x n_splits, batched by joblib) where rows are fitted.
ROWS_FITTED = {"logreg": False, "sgd": True, "mlp": True}


def _assert_same_search(ours, theirs):
    assert ours.best_index_ == theirs.best_index_
    assert ours.best_params_ == theirs.best_params_
    assert ours.cv_results_.keys() == theirs.cv_results_.keys()
    np.testing.assert_array_equal(
        ours.cv_results_["mean_test_score"], theirs.cv_results_["mean_test_score"]
    )
    assert ours.cv_results_["params"] == theirs.cv_results_["params"]
    np.testing.assert_array_equal(
        [h["outer_loss"] for h in ours.history_],
        [h["outer_loss"] for h in theirs.history_],
    )
    np.testing.assert_array_equal(ours.predict_proba(X), theirs.predict_proba(X))


@pytest.fixture(scope="module")
def loky_searches():
    # The runs take threads unless a backend is selected: select loky.
    with joblib.parallel_backend("loky"):
        return {
            case: make().set_params(n_jobs=2).fit(X, Y) for case, make in CASES.items()
        }


@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


@pytest.mark.parametrize("case", sorted(CASES))
def test_dask_backend_gives_the_loky_search(case, dask_client, loky_searches):
    from distributed import get_task_stream

    search = CASES[case]()
    with get_task_stream(dask_client) as stream, joblib.parallel_backend("dask"):
        search.fit(X, Y)
    _assert_same_search(search, loky_searches[case])
    tasks = len(stream.data)
    runs = 4 if case == "logreg" else 2
    assert tasks >= runs, f"{tasks} tasks ran on the workers, fewer than the runs"
    if ROWS_FITTED[case]:
        assert tasks > runs, "the evaluation's fits did not run on the workers"
    else:
        # Assembled rows are only scored: in this process, not on the workers.
        assert tasks == runs, f"{tasks} tasks ran on the workers, not {runs}"


def test_dask_workers_run_on_one_thread(dask_client):
    def threads():
        blas = [p["num_threads"] for p in threadpool_info()]
        return torch.get_num_threads(), max(blas, default=1)

    # What the runs see on Dask's workers (its nanny's OMP_NUM_THREADS) and,
    # on workers without it, what limited() sets.
    seen = dask_client.run(threads)
    assert set(seen.values()) == {(1, 1)}
    future = dask_client.submit(limited(threads, 1), pure=False)
    assert future.result() == (1, 1)


def test_the_documented_dask_recipe_reaches_the_workers(loky_searches, monkeypatch):
    # doc/cluster.rst's configuration for short tasks, set before the
    # cluster starts: its nannies hand it to the workers, which then run the
    # same search. The module's first cluster left its nannies' variables in
    # this process's environment, which a later cluster's workers inherit
    # whatever their configuration says (as the page warns).
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    dask = pytest.importorskip("dask")
    distributed = pytest.importorskip("distributed")
    recipe = {
        "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
        "distributed.worker.profile.enabled": False,
        "distributed.admin.tick.interval": "1s",
    }
    with (
        dask.config.set(recipe),
        distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):

        def seen():
            import os

            import dask

            profile = dask.config.get("distributed.worker.profile.enabled")
            tick = dask.config.get("distributed.admin.tick.interval")
            return profile, tick, os.environ.get("MALLOC_TRIM_THRESHOLD_")

        assert set(client.run(seen).values()) == {(False, "1s", None)}
        search = _logreg()
        with joblib.parallel_backend("dask"):
            search.fit(X, Y)
    _assert_same_search(search, loky_searches["logreg"])


def test_ray_backend_gives_the_loky_search(loky_searches):
    ray = pytest.importorskip("ray")
    from ray.util.joblib import register_ray

    register_ray()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with joblib.parallel_backend("ray"):
            search = _logreg().fit(X, Y)
    finally:
        ray.shutdown()
    _assert_same_search(search, loky_searches["logreg"])


def test_runs_side_by_side_share_the_cores(monkeypatch):
    # Four cores, two threads of this process running runs at once: two
    # torch and BLAS threads each, and the user's settings back afterwards.
    monkeypatch.setattr(_threads, "cpu_count", lambda: 4)
    seen = []
    original = search_module.run

    def recording_run(*args, **kwargs):
        blas = [p["num_threads"] for p in threadpool_info()]
        seen.append((torch.get_num_threads(), max(blas, default=1)))
        return original(*args, **kwargs)

    monkeypatch.setattr(search_module, "run", recording_run)
    previous = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        with joblib.parallel_backend("threading", n_jobs=2):
            _logreg().fit(X, Y)
        assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(previous)
    assert len(seen) == 4
    assert all(threads <= 2 and blas <= 2 for threads, blas in seen), seen


def test_one_job_keeps_the_user_threads(monkeypatch):
    monkeypatch.setattr(_threads, "cpu_count", lambda: 4)
    monkeypatch.setattr(_threads, "SMALL_DATA", 0)  # no small-data rule
    seen = []
    original = search_module.run

    def recording_run(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(search_module, "run", recording_run)
    previous = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        _logreg().fit(X, Y)
    finally:
        torch.set_num_threads(previous)
    assert seen == [3] * 4


def test_limited_limits_only_other_processes():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        # As in a worker process: the limit holds inside, not after.
        assert _call_limited(torch.get_num_threads, 1, -1) == 1
        assert torch.get_num_threads() == 2
        # A thread of the calling process: the caller's own limit holds.
        assert limited(torch.get_num_threads, 1)() == 2
        with thread_limit(1):
            assert limited(torch.get_num_threads, 1)() == 1
        assert limited(torch.get_num_threads, None) is torch.get_num_threads
    finally:
        torch.set_num_threads(previous)


def test_a_task_carries_its_own_fold_solutions():
    splits = [(np.arange(10, 20), np.arange(10)), (np.arange(10), np.arange(10, 20))]
    store = FoldSolutions(splits)
    for row in range(3):
        store.add(row, [{"coef_": np.full(5, row)}] * 2, None)
    store.fail(3, "diverged")
    wrapper = LearnedSettings(LogisticRegression(), specs={}, fold_solutions=store)
    task = pickle.loads(pickle.dumps(clone(wrapper).set_params(candidate=1)))
    assert set(task.fold_solutions.entries) == {1}
    assert not task.fold_solutions.failures
    assert task.fold_solutions.split(np.arange(10)) == 1
    failed = pickle.loads(pickle.dumps(clone(wrapper).set_params(candidate=3)))
    assert failed.fold_solutions.failures == {3: "diverged"}
    # The search's own store is unchanged, and shared by clones.
    assert set(store.entries) == {0, 1, 2}
    assert clone(wrapper).fold_solutions is store


def _record_threads(monkeypatch, owner, name):
    seen = []
    original = getattr(owner, name)

    def recording(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, recording)
    return seen


@pytest.mark.parametrize("small", [True, False])
def test_torch_mlp_fit_follows_the_small_data_rule(monkeypatch, small):
    if not small:
        monkeypatch.setattr(_threads, "SMALL_DATA", 0)
    seen = _record_threads(monkeypatch, _BaseTorchMLP, "_run")
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        TorchMLPClassifier((4,), max_iter=3, random_state=0).fit(X, Y)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)
    assert seen == [1 if small else 2]


@pytest.mark.parametrize("small", [True, False])
def test_hyper_representation_fit_follows_the_small_data_rule(monkeypatch, small):
    if not small:
        monkeypatch.setattr(_threads, "SMALL_DATA", 0)
    seen = _record_threads(monkeypatch, meta_estimator.MetaTrainer, "run")
    X_few, y_few = make_classification(
        n_samples=60, n_features=6, n_informative=4, n_classes=3, random_state=0
    )
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        HyperRepresentationClassifier(
            n_way=3, n_shot=1, n_query=2, max_iter=2, meta_batch_size=2, random_state=0
        ).fit(X_few, y_few)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)
    assert seen == [1 if small else 2]


def test_runs_take_the_data_as_arguments_of_their_own(monkeypatch):
    # joblib's Dask backend scatters each large, weak-referenceable argument
    # once per Parallel call: the runs must get X as such an argument (not
    # inside a tuple, which is pickled into every task).
    seen = []
    original = search_module.run

    def recording(estimator, space, X, *args):
        seen.append(X)
        return original(estimator, space, X, *args)

    monkeypatch.setattr(search_module, "run", recording)
    search = CASES["logreg"]()
    with joblib.parallel_backend("sequential"):
        search.fit(X, Y)
    assert len(seen) == 4
    assert all(x is seen[0] for x in seen)
    np.testing.assert_array_equal(seen[0], X)
    joblib_dask = pytest.importorskip("joblib._dask")
    assert joblib_dask.is_weakrefable(seen[0])
    assert joblib_dask.sizeof(seen[0]) > 1e3
