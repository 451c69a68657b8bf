"""Helpers at the numpy <-> torch boundary: device, dtype, conversion, seeding."""

from ._torch import (
    resolve_device,
    resolve_dtype,
    to_numpy,
    to_sparse_tensor,
    to_tensor,
    torch_generator,
)

__all__ = [
    "resolve_device",
    "resolve_dtype",
    "to_numpy",
    "to_sparse_tensor",
    "to_tensor",
    "torch_generator",
]
