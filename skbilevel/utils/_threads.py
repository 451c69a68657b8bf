"""Thread settings: small problems on the CPU, and tasks run side by side.

Small data is thousands of small matrix products, each of which costs more
to split between threads than to compute: the search's hypergradient runs,
the torch MLPs' ``fit`` and ``predict`` and HyperRepresentationClassifier's
``fit`` run on one torch thread there, and scikit-learn's fits and scores of
the evaluation on one BLAS and one OpenMP thread.

Tasks that joblib runs side by side (loky or threading workers, Dask or Ray
workers) share the machine's cores: each hypergradient run dispatched to them
uses at most its share of the cores, in torch and in BLAS/OpenMP, as loky
gives its workers. Every rule restores the settings it found afterwards.
"""

import contextlib
import functools
import os

import torch
from joblib import cpu_count
from threadpoolctl import threadpool_limits

# Largest data run on one CPU thread: entries of X, times the number of folds
# where the folds are solved together.
SMALL_DATA = 2**22


@contextlib.contextmanager
def one_torch_thread(entries, device):
    """One torch thread for ``entries`` of data on the CPU.

    On digits, two threads made the hypergradient descent about 1.2 times
    slower than one.
    """
    previous = torch.get_num_threads()
    if device.type != "cpu" or entries > SMALL_DATA or previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def one_native_thread(X):
    """One BLAS and one OpenMP thread while scikit-learn fits and scores
    small data.

    On digits (1,797 x 64), ``LogisticRegression.fit`` took 0.06 s with one
    OpenBLAS thread and about 1 s with two on a 2-core machine; its loss and
    gradient (scikit-learn's Cython losses) split over OpenMP threads too. As
    in scikit-learn's own ``KMeans``, the limit holds only inside this
    context. Data without a 2-D ``shape`` keeps the user's settings.
    """
    shape = getattr(X, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] * shape[1] > SMALL_DATA:
        yield
        return
    with threadpool_limits(limits=1):
        yield


def task_threads(n_tasks):
    """Threads for each of ``n_tasks`` tasks run at once on this machine.

    Its cores (as :func:`joblib.cpu_count` counts them, within the process's
    CPU affinity and cgroup quota) shared evenly, at least one each: loky's
    rule for its workers. ``None`` for a single task, whose threads stay the
    user's.

    Parameters
    ----------
    n_tasks : int
        Tasks run at once, as :func:`joblib.effective_n_jobs` counts them
        (for Dask and Ray, the workers' threads of the whole cluster).

    Returns
    -------
    threads : int or None
        Threads per task, or None for one task.

    Examples
    --------
    >>> from skbilevel.utils._threads import task_threads
    >>> task_threads(1) is None
    True
    >>> task_threads(10_000)
    1
    """
    if n_tasks <= 1:
        return None
    return max(1, cpu_count() // n_tasks)


@contextlib.contextmanager
def thread_limit(threads):
    """At most ``threads`` torch and BLAS/OpenMP threads in this context.

    Loky workers and the workers Dask's nanny starts already have one
    (``OMP_NUM_THREADS``, read by torch at import); threading backends, Dask
    workers without a nanny or in the client's process, and user-made
    clusters may have all the cores in every task. ``threads=None`` changes
    nothing.

    Examples
    --------
    >>> import torch
    >>> from skbilevel.utils._threads import thread_limit
    >>> before = torch.get_num_threads()
    >>> with thread_limit(1):
    ...     torch.get_num_threads()
    1
    >>> torch.get_num_threads() == before
    True
    """
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(min(previous, threads))
    try:
        with threadpool_limits(limits=threads):
            yield
    finally:
        torch.set_num_threads(previous)


def _call_limited(function, threads, parent, *args, **kwargs):
    if os.getpid() == parent:
        # A thread of the calling process: the caller's own thread_limit
        # holds (thread_limit, entered by tasks side by side, would restore
        # each other's settings out of order).
        return function(*args, **kwargs)
    with thread_limit(threads):
        return function(*args, **kwargs)


def limited(function, threads):
    """``function`` under :func:`thread_limit` (``threads``) in other processes.

    For tasks that a joblib backend may run in worker processes; the caller
    holds the same limit around its ``Parallel`` call for the tasks run in
    its own threads. Picklable when ``function`` is.

    Examples
    --------
    >>> import torch
    >>> from joblib import Parallel, delayed
    >>> from skbilevel.utils._threads import limited, thread_limit
    >>> task = limited(torch.get_num_threads, 1)
    >>> with thread_limit(1):
    ...     Parallel(n_jobs=2, backend="threading")(delayed(task)() for _ in "ab")
    [1, 1]
    """
    if threads is None:
        return function
    return functools.partial(_call_limited, function, threads, os.getpid())
