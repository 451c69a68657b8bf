"""The numpy <-> torch boundary helpers."""

import numpy as np
import pytest
import torch

from skbilevel.utils import (
    resolve_device,
    resolve_dtype,
    to_numpy,
    to_tensor,
    torch_generator,
)


def test_resolve_device():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("not-a-device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_request_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")


@pytest.mark.parametrize(
    "dtype, expected",
    [
        ("float32", torch.float32),
        (np.float64, torch.float64),
        (np.dtype("float32"), torch.float32),
        (torch.float64, torch.float64),
    ],
)
def test_resolve_dtype(dtype, expected):
    assert resolve_dtype(dtype) is expected


def test_resolve_dtype_rejects_others():
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype("float16")


def test_round_trip_keeps_values_and_label_dtype():
    X = np.arange(6, dtype=np.float32).reshape(2, 3)
    tensor = to_tensor(X, dtype="float64")
    assert tensor.dtype == torch.float64
    np.testing.assert_array_equal(to_numpy(tensor), X)
    assert to_tensor(np.array([2, 0, 1])).dtype == torch.int64
    as_dict = to_numpy({"a": torch.ones(2, requires_grad=True)})
    np.testing.assert_array_equal(as_dict["a"], np.ones(2, dtype=np.float32))


def test_torch_generator_is_reproducible_from_random_state():
    draw = lambda state: torch.rand(3, generator=torch_generator(state))  # noqa: E731
    assert torch.equal(draw(3), draw(3))
    assert not torch.equal(draw(3), draw(4))
    assert torch.equal(draw(np.random.RandomState(0)), draw(np.random.RandomState(0)))


def test_read_only_arrays_convert_without_warning():
    X = np.arange(4.0)
    X.setflags(write=False)  # e.g. a memory-mapped or joblib-shared array
    np.testing.assert_array_equal(to_numpy(to_tensor(X)), X)


def test_inference_device_falls_back_to_cpu_for_a_missing_gpu():
    from skbilevel.utils._torch import inference_device

    assert inference_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert inference_device("cuda") == torch.device("cpu")


def test_forward_mode_runs_without_torchs_jit_warning():
    """torch's forward mode loads decompositions that call the deprecated
    torch.jit.script once per process; skbilevel's forward-mode calls keep
    that warning about torch's own code from users (a fresh process, every
    warning an error)."""
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from skbilevel.hypergrad import forward, gradient_descent\n"
        "inner = lambda w, h: ((w['x'] - h['c']) ** 2).sum()\n"
        "outer = lambda w, h: (w['x'] ** 2).sum()\n"
        "dynamics = gradient_descent(inner, 0.1)\n"
        "forward({'x': torch.zeros(2)}, {'c': torch.ones(2)}, 5, dynamics, outer)\n"
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
