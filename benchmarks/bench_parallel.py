"""BilevelSearchCV on joblib's backends, and what starting workers costs.

Part ``search``: eight independent hypergradient runs on digits, cv=5, a
Pipeline of StandardScaler and LogisticRegression with ``C`` learned: with
``--case eight`` (the default) the issue's eight discrete combinations
(``fit_intercept`` x ``class_weight`` x the scaler's ``with_mean``), with
``--case restarts`` four combinations (``fit_intercept`` x ``class_weight``)
x two restarts (``n_restarts=2``; a random restart's run can take several
times the steps of the others, and a worker ends alone on it). Each with
``n_jobs=1``, ``n_jobs=2`` (the runs' default backend, threads), loky
``n_jobs=2`` (selected with ``joblib.parallel_backend``) and Dask (a
``LocalCluster`` of two worker processes of one thread each), once with
Dask's default environment for its workers and once with its
``MALLOC_TRIM_THRESHOLD_`` unset (``dask.config`` key
``distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_`` set to None:
the variable, set at all, also fixes glibc's mmap threshold at 128 KB), and
once with doc/cluster.rst's recipe for small tasks (``QUIET``: the variable
unset, the workers' statistical profiler off, 1 s ticks). Each
configuration is measured in a fresh process of its own that holds only its
own machinery (a LocalCluster runs its scheduler in the process that starts
it, and its nannies leave their workers' variables in that process's
environment), the configurations in turn, ``--repeats`` times; times are
medians. Each process fits the search once untimed first (its workers have
then imported torch, scikit-learn and skbilevel, as after any earlier
search), then ``WARM_FITS`` (3) times timed, every timed search of every
repeat in the median (since session 12; one timed search each before); the
cold rows are the first search of a fresh
process (loky) or a fresh cluster (Dask, its start-up timed apart), each in
a subprocess. The machine's own ceiling: in each repeat the ``n_jobs=1``
search is also timed while a second process (warm, paused between these
timings) fits the same search in a loop. Two searches then take the time of
one contended search, so two workers, each slowed as much by the other, can
at best take half that time's ratio to ``n_jobs=1`` alone: on this
machine's two virtual cores, not 0.5.

Part ``small``: the cases of issue 12, each the first search of a fresh
process: a two-value search on breast_cancer (``C`` learned x
``fit_intercept``, cv=5) and ``cross_val_score(BilevelSearchCV(...), cv=3)``
of the same search, with ``n_jobs=1``, ``n_jobs=2`` and loky ``n_jobs=2``.

Part ``startup``: the imports a worker pays before its first task, each in a
fresh process (median of ``--repeats``): torch, then scikit-learn's modules
the search uses, then skbilevel's own modules on top.

``--threads one`` gives every tool one torch and one BLAS/OpenMP thread (this
process by ``torch.set_num_threads`` and threadpoolctl, the subprocesses by
``OMP_NUM_THREADS``; loky's and Dask's workers have one thread each on a
2-core machine in both modes); ``--threads default`` leaves the defaults.
The load average (``uptime``) is read before and after each part: the
machine is shared.

Usage: python -W ignore benchmarks/bench_parallel.py [--parts search small
       startup] [--case eight|restarts] [--repeats 3] [--threads one|default]
       [--label LABEL] [--output FILE]
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
UNTRIMMED = "dask 2 workers, MALLOC_TRIM_THRESHOLD_ unset"
QUIET = "dask 2 workers, the recipe (that variable unset, no profiler, 1 s ticks)"
CONFIGS = (
    "n_jobs=1",
    "n_jobs=2 (threads)",
    "loky n_jobs=2",
    "dask 2 workers",
    UNTRIMMED,
    QUIET,
)
TRIM = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"
# The Dask configuration of each Dask row, set while its cluster starts.
# QUIET's is doc/cluster.rst's recipe for small tasks: besides the variable,
# Dask's statistical profiler (it samples every worker thread's stack every
# 10 ms) and its 20 ms ticks (each server's check for a blocked event loop).
DASK_SETTINGS = {
    "dask 2 workers": {},
    UNTRIMMED: {TRIM: None},
    QUIET: {
        TRIM: None,
        "distributed.worker.profile.enabled": False,
        "distributed.admin.tick.interval": "1s",
    },
}
CEILING = "n_jobs=1, a second process fitting the same search meanwhile"
# Timed searches per fresh process, after its untimed first one.
WARM_FITS = 3


def _search(case, n_jobs=None):
    """The search of ``case`` and its data."""
    from sklearn.datasets import load_breast_cancer, load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from skbilevel import BilevelSearchCV, Real

    model = make_pipeline(StandardScaler(), LogisticRegression())
    space = {
        "logisticregression__C": Real(1e-4, 1e4),
        "logisticregression__fit_intercept": [True, False],
    }
    if case in ("eight", "restarts"):
        X, y = load_digits(return_X_y=True)
        space["logisticregression__class_weight"] = [None, "balanced"]
        restarts = 1
        if case == "eight":
            space["standardscaler__with_mean"] = [True, False]
        else:
            restarts = 2
        search = BilevelSearchCV(
            model, space, cv=5, n_restarts=restarts, random_state=0, n_jobs=n_jobs
        )
        return search, X, y
    X, y = load_breast_cancer(return_X_y=True)
    cv = 3 if case == "nested" else 5
    return BilevelSearchCV(model, space, cv=cv, n_jobs=n_jobs), X, y


def _load():
    return "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def _limit_threads(threads):
    if threads == "one":
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(1)
        threadpool_limits(1)


def _timed(fit):
    start = time.perf_counter()
    fit()
    return time.perf_counter() - start


def _dask_cluster(settings=None):
    """A LocalCluster of two one-thread worker processes and its client,
    started under the Dask configuration ``settings`` (Dask's defaults if
    None).

    Dask's nannies give their workers ``MALLOC_TRIM_THRESHOLD_=65536`` by
    default: set at all, it also fixes glibc's mmap threshold at 128 KB, so
    that every larger temporary is mapped afresh. The variables the nannies
    set in this process's environment (their documented leak) are undone, so
    that loky's workers, started later, do not inherit them.
    """
    import dask
    from distributed import Client, LocalCluster

    environ = dict(os.environ)
    with dask.config.set(settings or {}):
        cluster = LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
        )
    client = Client(cluster, set_as_default=False)
    os.environ.clear()
    os.environ.update(environ)
    return cluster, client


def warm_main(case, name, threads):
    """One warm measurement of configuration ``name`` (or ``CEILING``), in a
    fresh process that holds only that configuration's machinery (a Dask
    LocalCluster runs its scheduler in the process that starts it): one
    untimed search, then ``WARM_FITS`` timed, printed as JSON."""
    import joblib

    warnings.simplefilter("ignore")
    backend, n_jobs, options, cluster = None, (2 if "n_jobs=2" in name else 1), {}, None
    if name.startswith("loky"):
        backend = "loky"
    elif name.startswith("dask"):
        cluster, client = _dask_cluster(DASK_SETTINGS[name])
        backend, n_jobs, options = "dask", None, {"client": client}
    peer = _peer(case, threads) if name == CEILING else None
    search, X, y = _search(case, n_jobs)

    def fit():
        if backend is None:
            search.fit(X, y)
        else:
            with joblib.parallel_backend(backend, **options):
                search.fit(X, y)

    fit()
    if peer is not None:
        peer.send_signal(signal.SIGCONT)
    seconds = [_timed(fit) for _ in range(WARM_FITS)]
    if peer is not None:
        peer.kill()
    if cluster is not None:
        client.close()
        cluster.close()
    rows = len(search.cv_results_["params"])
    print(json.dumps({"times": seconds, "score": search.best_score_, "rows": rows}))


def search_part(case, repeats, threads):
    """Warm medians of every configuration on the eight-run search ``case``,
    each measured in its own fresh process, the configurations in turn."""
    runs = {name: [] for name in CONFIGS + (CEILING,)}
    for _ in range(repeats):
        for name in runs:
            runs[name].append(_measured("--warm", [case, name], threads))
    return {
        name: (
            float(np.median([t for r in measured for t in r["times"]])),
            (measured[0]["score"], measured[0]["rows"]),
        )
        for name, measured in runs.items()
    }


def _this_script(threads, *args):
    """The command and environment that run this script in a fresh process
    under ``threads``."""
    env = dict(os.environ)
    if threads == "one":
        env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    command = [sys.executable, "-W", "ignore", __file__, "--threads", threads]
    return command + list(args), env


def _measured(mode, args, threads):
    """The JSON a fresh process prints for ``--cold`` or ``--warm`` ``args``."""
    command, env = _this_script(threads, mode, *args)
    output = subprocess.run(
        command, env=env, check=True, capture_output=True, text=True
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def cold_main(case, mode):
    """One cold measurement, printed as JSON (run in a fresh process)."""
    from sklearn.model_selection import cross_val_score

    warnings.simplefilter("ignore")
    if mode == "dask":
        import joblib

        start = time.perf_counter()
        cluster, client = _dask_cluster()
        up = time.perf_counter() - start
        search, X, y = _search(case)
        with joblib.parallel_backend("dask", client=client):
            first = _timed(lambda: search.fit(X, y))
        client.close()
        cluster.close()
        print(json.dumps({"cluster": up, "first": first}))
        return
    backend = "loky" if mode.startswith("loky") else None
    n_jobs = int(mode.removeprefix("loky"))
    if backend is not None:
        import joblib

        with joblib.parallel_backend(backend):
            cold_main(case, str(n_jobs))
        return
    if case == "nested":
        search, X, y = _search(case)
        seconds = _timed(lambda: cross_val_score(search, X, y, cv=3, n_jobs=n_jobs))
    else:
        search, X, y = _search(case, n_jobs)
        seconds = _timed(lambda: search.fit(X, y))
    print(json.dumps({"first": seconds}))


def peer_main(case):
    """Fit the ``n_jobs=1`` search of ``case`` in a loop (the ceiling's busy
    peer, paused and resumed by the caller); "ready" once warm."""
    warnings.simplefilter("ignore")
    search, X, y = _search(case)
    search.fit(X, y)
    print("ready", flush=True)
    while True:
        search.fit(X, y)


def _peer(case, threads):
    """The busy peer process, warm and paused."""
    command, env = _this_script(threads, "--peer", case)
    peer = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    peer.stdout.readline()
    peer.send_signal(signal.SIGSTOP)
    return peer


def _median_cold(args, threads, repeats):
    runs = [_measured("--cold", args, threads) for _ in range(repeats)]
    return {key: float(np.median([r[key] for r in runs])) for key in runs[0]}


IMPORTS = (
    ("torch", "import torch"),
    (
        "scikit-learn (base, linear_model, model_selection, pipeline)",
        "import sklearn.base, sklearn.linear_model, sklearn.model_selection, "
        "sklearn.pipeline, scipy.optimize",
    ),
    ("skbilevel's own modules, on top", "import skbilevel._search._run"),
)


def startup_part(repeats):
    """Seconds of each import step in a fresh process (median of repeats)."""
    script = "import time, json, joblib, numpy\nt = []\n"
    for _, statement in IMPORTS:
        script += f"s = time.perf_counter()\n{statement}\n"
        script += "t.append(time.perf_counter() - s)\n"
    script += "import sys\nt.append(len(sys.modules))\nprint(json.dumps(t))\n"
    runs = []
    for _ in range(repeats):
        output = subprocess.run(
            [sys.executable, "-c", script], check=True, capture_output=True, text=True
        ).stdout
        runs.append(json.loads(output))
    return np.median(np.array(runs), axis=0)


def _search_rows(args):
    load = _load()
    warm = search_part(args.case, args.repeats, args.threads)
    cold_loky = _median_cold([args.case, "loky2"], args.threads, args.repeats)
    cold_threads = _median_cold([args.case, "2"], args.threads, args.repeats)
    cold_one = _median_cold([args.case, "1"], args.threads, args.repeats)
    cold_dask = _median_cold([args.case, "dask"], args.threads, args.repeats)
    base = warm["n_jobs=1"][0]
    what = {
        "eight": "fit_intercept x class_weight x with_mean, one run each",
        "restarts": "fit_intercept x class_weight x 2 restarts",
    }[args.case]
    lines = [
        "## Eight runs on digits (LogisticRegression C learned; "
        f"{what}; cv=5), median of {args.repeats} processes x {WARM_FITS} "
        "timed searches (warm rows)",
        "",
        "| configuration | time (s) | time / n_jobs=1 | best CV accuracy | rows |",
        "|---|---|---|---|---|",
    ]
    for name in CONFIGS:
        seconds, (score, rows) = warm[name]
        warmth = " (warm workers)" if name.startswith(("loky", "dask")) else ""
        lines.append(
            f"| {name}{warmth} | {seconds:.2f} | {seconds / base:.2f} | "
            f"{score:.4f} | {rows} |"
        )
    lines += [
        f"| n_jobs=1, fresh process | {cold_one['first']:.2f} | "
        f"{cold_one['first'] / base:.2f} | | |",
        f"| n_jobs=2 (threads), fresh process | {cold_threads['first']:.2f} | "
        f"{cold_threads['first'] / base:.2f} | | |",
        f"| loky n_jobs=2, fresh process (workers start) | {cold_loky['first']:.2f} | "
        f"{cold_loky['first'] / base:.2f} | | |",
        f"| dask 2 workers, first search on a fresh cluster | {cold_dask['first']:.2f} "
        f"| {cold_dask['first'] / base:.2f} | | |",
        f"| (starting that LocalCluster) | {cold_dask['cluster']:.2f} | | | |",
        "",
        "The machine's ceiling: with a second process fitting the same search "
        f"meanwhile, n_jobs=1 took {warm[CEILING][0]:.2f} s, "
        f"{warm[CEILING][0] / base:.2f}x its time alone; two workers, each "
        "slowed as much by the other, can at best take "
        f"{warm[CEILING][0] / (2 * base):.2f}x the time of n_jobs=1 here.",
        "",
        f"Load: {load} before, {_load()} after.",
        "",
    ]
    return lines


def _small_rows(args):
    load = _load()
    lines = [
        "## Issue 12's small cases, first run of a fresh process, median of "
        f"{args.repeats}",
        "",
        "| case | n_jobs=1 (s) | n_jobs=2, threads (s) | ratio | loky n_jobs=2 (s) "
        "| ratio |",
        "|---|---|---|---|---|---|",
    ]
    names = {
        "two": "two-value search, breast_cancer, cv=5",
        "nested": "cross_val_score(search, cv=3), breast_cancer",
    }
    for case, name in names.items():
        one = _median_cold([case, "1"], args.threads, args.repeats)["first"]
        two = _median_cold([case, "2"], args.threads, args.repeats)["first"]
        loky = _median_cold([case, "loky2"], args.threads, args.repeats)["first"]
        lines.append(
            f"| {name} | {one:.2f} | {two:.2f} | {two / one:.1f} | {loky:.2f} "
            f"| {loky / one:.1f} |"
        )
    lines += ["", f"Load: {load} before, {_load()} after.", ""]
    return lines


def _startup_rows(args):
    load = _load()
    medians = startup_part(args.repeats)
    lines = [
        "## Imports before a worker's first task, fresh process, median of "
        f"{args.repeats}",
        "",
        "| import | seconds |",
        "|---|---|",
    ]
    lines += [f"| {name} | {s:.2f} |" for (name, _), s in zip(IMPORTS, medians)]
    lines += [
        f"| total | {sum(medians[:-1]):.2f} |",
        "",
        f"Modules loaded: {int(medians[-1])}. Load: {load} before, {_load()} after.",
        "",
    ]
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["search", "small", "startup"],
        choices=["search", "small", "startup"],
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", choices=["one", "default"], default="default")
    parser.add_argument("--label", default="")
    parser.add_argument(
        "--output", default=str(ROOT / "benchmarks/results/bench_parallel/default.md")
    )
    parser.add_argument("--case", choices=["eight", "restarts"], default="eight")
    parser.add_argument("--cold", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--peer", help=argparse.SUPPRESS)
    parser.add_argument("--warm", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer:
        _limit_threads(args.threads)
        peer_main(args.peer)
        return
    if args.warm:
        _limit_threads(args.threads)
        warm_main(*args.warm, args.threads)
        return
    if args.cold:
        _limit_threads(args.threads)
        cold_main(*args.cold)
        return
    _limit_threads(args.threads)
    warnings.simplefilter("ignore")
    import torch

    lines = [
        f"# bench_parallel {args.label}".rstrip(),
        "",
        f"torch {torch.__version__}, threads: {args.threads}, {os.cpu_count()} cores",
        "",
    ]
    parts = {"search": _search_rows, "small": _small_rows, "startup": _startup_rows}
    for part in args.parts:
        lines += parts[part](args)
        print("\n".join(lines), flush=True)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text("\n".join(lines))


if __name__ == "__main__":
    main()
