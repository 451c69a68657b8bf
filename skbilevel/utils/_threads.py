"""Thread settings for small problems on the CPU.

Small data is thousands of small matrix products, each of which costs more
to split between threads than to compute; both rules below restore the
user's settings afterwards.
"""

import contextlib

import torch
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
def one_blas_thread(X):
    """One BLAS thread while scikit-learn fits and scores small data.

    On digits (1,797 x 64), ``LogisticRegression.fit`` took 0.06 s with one
    OpenBLAS thread and about 1 s with two on a 2-core machine. As in
    scikit-learn's own ``KMeans``, the limit holds only inside this context.
    Data without a 2-D ``shape`` keeps the user's settings.
    """
    shape = getattr(X, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] * shape[1] > SMALL_DATA:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield
