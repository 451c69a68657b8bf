"""The numpy <-> torch boundary: devices, dtypes, conversions and seeding."""

import warnings
from contextlib import contextmanager
from numbers import Integral

import numpy as np
import torch
from sklearn.utils import check_random_state

_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    np.float32: torch.float32,
    np.float64: torch.float64,
    torch.float32: torch.float32,
    torch.float64: torch.float64,
}


def resolve_device(device="auto"):
    """Return the :class:`torch.device` that ``device`` names.

    Parameters
    ----------
    device : str or torch.device, default="auto"
        ``"auto"`` picks the first CUDA GPU when there is one and the CPU
        otherwise; anything else is passed to :class:`torch.device`.

    Returns
    -------
    device : torch.device
        The resolved device.

    Raises
    ------
    ValueError
        If ``device`` names a CUDA device on a machine without one, or is not
        a device name at all.

    Examples
    --------
    >>> from skbilevel.utils import resolve_device
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device must be 'auto', 'cpu', 'cuda' or a torch.device; got {device!r}."
        ) from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} was requested but CUDA is not available on this "
            "machine; use device='auto' or device='cpu'."
        )
    return resolved


def inference_device(device):
    """The device a fitted model predicts on: ``device``, or the CPU when it
    names a GPU this machine lacks (a model fitted on a GPU and unpickled
    elsewhere still predicts)."""
    try:
        return resolve_device(device)
    except ValueError:
        return torch.device("cpu")


def resolve_dtype(dtype):
    """Return the floating :class:`torch.dtype` that ``dtype`` names.

    Parameters
    ----------
    dtype : {"float32", "float64"}, numpy dtype or torch dtype
        The floating-point precision. ``float64`` is the choice where
        hypergradients must be exact (tests, small problems); ``float32`` where
        speed matters (large data, GPUs).

    Returns
    -------
    dtype : torch.dtype
        ``torch.float32`` or ``torch.float64``.

    Examples
    --------
    >>> from skbilevel.utils import resolve_dtype
    >>> resolve_dtype("float64")
    torch.float64
    """
    key = dtype.type if isinstance(dtype, np.dtype) else dtype
    if key not in _DTYPES:
        raise ValueError(f"dtype must be one of 'float32' or 'float64'; got {dtype!r}.")
    return _DTYPES[key]


def to_tensor(X, *, device="cpu", dtype="float64"):
    """Convert an array-like to a tensor on ``device`` with ``dtype``.

    Parameters
    ----------
    X : array-like or torch.Tensor
        The data. Integer arrays (labels) keep an integer dtype
        (``torch.int64``); everything else becomes floating point.
    device : str or torch.device, default="cpu"
        Where the tensor lives.
    dtype : {"float32", "float64"}, default="float64"
        Floating-point precision of the result.

    Returns
    -------
    tensor : torch.Tensor
        The converted data; no copy is made when nothing changes.

    Examples
    --------
    >>> import numpy as np
    >>> from skbilevel.utils import to_tensor
    >>> to_tensor(np.array([1.0, 2.0]), dtype="float32")
    tensor([1., 2.])
    >>> to_tensor(np.array([0, 1])).dtype
    torch.int64
    """
    device = resolve_device(device)
    if isinstance(X, torch.Tensor):
        tensor = X
    else:
        array = np.asarray(X)
        # torch cannot share memory with a read-only array (it warns instead).
        tensor = torch.as_tensor(array if array.flags.writeable else array.copy())
    if tensor.dtype.is_floating_point or tensor.dtype == torch.bool:
        return tensor.to(device=device, dtype=resolve_dtype(dtype))
    return tensor.to(device=device, dtype=torch.int64)


def to_sparse_tensor(X, *, device="cpu", dtype="float64"):
    """Convert a scipy CSR matrix to a torch sparse CSR tensor.

    Parameters
    ----------
    X : scipy.sparse CSR matrix or array
        The data; its index arrays become int32 (int64 past 2**31 - 1 rows,
        columns or entries).
    device : str or torch.device, default="cpu"
        Where the tensor lives.
    dtype : {"float32", "float64"}, default="float64"
        Floating-point precision of the values.

    Returns
    -------
    tensor : torch.Tensor
        A ``torch.sparse_csr`` tensor of ``X``'s shape, sharing ``X``'s
        memory on the CPU when its dtypes already match.

    Examples
    --------
    >>> import numpy as np
    >>> import scipy.sparse as sp
    >>> from skbilevel.utils import to_sparse_tensor
    >>> X = to_sparse_tensor(sp.csr_matrix(np.eye(2)))
    >>> X.layout, X.values()
    (torch.sparse_csr, tensor([1., 1.], dtype=torch.float64))
    """
    values = to_tensor(X.data, device=device, dtype=dtype)
    large = max(*X.shape, X.nnz) > np.iinfo(np.int32).max
    index = np.int64 if large else np.int32
    indptr, indices = (
        torch.from_numpy(np.require(a, dtype=index, requirements="W"))
        for a in (X.indptr, X.indices)
    )
    with warnings.catch_warnings():
        # torch warns once per process that its CSR support is in beta.
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support")
        return torch.sparse_csr_tensor(
            indptr.to(values.device),
            indices.to(values.device),
            values,
            size=X.shape,
            check_invariants=False,
        )


def to_numpy(tensor):
    """Return a tensor (or a dict of tensors) as numpy on the CPU.

    Parameters
    ----------
    tensor : torch.Tensor or dict of str to torch.Tensor
        What to convert; gradients are detached.

    Returns
    -------
    array : ndarray or dict of str to ndarray
        The values, copied to host memory.

    Examples
    --------
    >>> import torch
    >>> from skbilevel.utils import to_numpy
    >>> to_numpy(torch.tensor([1.0, 2.0], requires_grad=True))
    array([1., 2.], dtype=float32)
    """
    if isinstance(tensor, dict):
        return {name: to_numpy(value) for name, value in tensor.items()}
    return tensor.detach().cpu().numpy()


def torch_generator(random_state, device="cpu"):
    """Return a seeded :class:`torch.Generator` drawn from ``random_state``.

    Parameters
    ----------
    random_state : int, RandomState instance or None
        Seed in scikit-learn's sense, as ``random_state`` of its estimators;
        ``None`` draws a fresh seed from numpy's global state.
    device : str or torch.device, default="cpu"
        Device of the generator.

    Returns
    -------
    generator : torch.Generator
        A generator whose seed is an integer drawn from ``random_state``, so
        the same ``random_state`` always gives the same stream.

    Examples
    --------
    >>> import torch
    >>> from skbilevel.utils import torch_generator
    >>> a = torch.rand(2, generator=torch_generator(0))
    >>> b = torch.rand(2, generator=torch_generator(0))
    >>> bool(torch.equal(a, b))
    True
    """
    if isinstance(random_state, Integral) and not isinstance(random_state, bool):
        seed = int(random_state)
    else:
        seed = int(check_random_state(random_state).randint(np.iinfo(np.int32).max))
    generator = torch.Generator(device=resolve_device(device))
    generator.manual_seed(seed)
    return generator


@contextmanager
def quiet_forward_ad():
    """Forward-mode automatic differentiation without torch's own warning.

    torch's forward mode loads, once per process, decompositions that call the
    deprecated ``torch.jit.script`` (a FutureWarning since torch 2.14, a
    DeprecationWarning before): a warning about torch's code, with the
    machine's paths, that a user of skbilevel can do nothing about.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated")
        yield
