"""The functional hypergradient engine.

Inner parameters and hyperparameters are dicts of tensors; a :class:`Dynamics`
is the inner optimizer (:func:`gradient_descent`, :func:`heavy_ball`,
:func:`adam`) as pure functions over them. Every hypergradient method has the
same signature ``method(params, hparams, T, dynamics, outer_loss, **options)``
and returns a :class:`Hypergradient`; :data:`METHODS` maps their names to them.
"""

from ._dynamics import Dynamics, adam, gradient_descent, heavy_ball, unroll
from ._implicit import implicit_cg, implicit_fixed_point
from ._methods import Hypergradient, forward, reverse, truncated_reverse
from ._tangent import implicit_forward

METHODS = {
    "reverse": reverse,
    "truncated_reverse": truncated_reverse,
    "forward": forward,
    "implicit_cg": implicit_cg,
    "implicit_fixed_point": implicit_fixed_point,
    "implicit_forward": implicit_forward,
}

__all__ = [
    "METHODS",
    "Dynamics",
    "Hypergradient",
    "adam",
    "forward",
    "gradient_descent",
    "heavy_ball",
    "implicit_cg",
    "implicit_fixed_point",
    "implicit_forward",
    "reverse",
    "truncated_reverse",
    "unroll",
]
