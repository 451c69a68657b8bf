"""``param_space``, parsed once into the object the whole search passes along."""

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import ParameterGrid

from .._space import PerFeature, PerLayer, PerStep, Real, SampleWeight

_SPECS = (Real, PerFeature, PerStep, PerLayer, SampleWeight)
# scipy.stats distributions that RandomizedSearchCV users write for a
# continuous entry, and whether each is read on a log scale.
_DISTRIBUTIONS = {"loguniform": True, "reciprocal": True, "uniform": False}


def _from_distribution(key, value):
    """The Real spec of a frozen ``scipy.stats`` distribution, or None."""
    dist = getattr(value, "dist", None)
    if dist is None or not hasattr(value, "support"):
        return None
    name = getattr(dist, "name", None)
    if name not in _DISTRIBUTIONS:
        raise TypeError(
            f"The distribution for {key!r} ({name}) has no continuous search "
            "range; use scipy.stats.loguniform or uniform, or a Real."
        )
    low, high = (float(bound) for bound in value.support())
    return Real(low, high, log=_DISTRIBUTIONS[name])


def _shorthand(key, value):
    """The Real spec of a ``(low, high)`` tuple or an initial float, or None
    for a list of discrete values."""
    if isinstance(value, tuple):
        if len(value) != 2:
            raise ValueError(
                f"A tuple for {key!r} gives the bounds (low, high) of a continuous "
                f"hyperparameter; got {value!r}. Use a list for discrete values."
            )
        return Real(*value)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        if not value > 0:
            raise ValueError(
                f"A float for {key!r} is the initial value of a positive continuous "
                f"hyperparameter; got {value!r}."
            )
        return Real(value * 1e-4, value * 1e4, init=value)
    if isinstance(value, Sequence | np.ndarray) and not isinstance(value, str):
        return None
    raise TypeError(
        f"Parameter space value for {key!r} must be a list of values, a "
        "(low, high) tuple, a float, a scipy.stats loguniform or uniform "
        "distribution, Real, PerFeature, PerStep, PerLayer or "
        f"SampleWeight; got {value!r}."
    )


def _entry(key, value):
    """The spec of a continuous entry, or None for a list of discrete values."""
    if not isinstance(key, str):
        raise TypeError(f"Parameter names must be strings; got {key!r}.")
    spec = value if isinstance(value, _SPECS) else _from_distribution(key, value)
    if spec is None:
        spec = _shorthand(key, value)
    if (key == "sample_weight") != isinstance(spec, SampleWeight):
        raise ValueError(
            'SampleWeight goes, and only goes, under the key "sample_weight"; '
            f"got {key!r}: {value!r}."
        )
    return spec


@dataclass(frozen=True)
class Run:
    """One hypergradient run: a combination of discrete values, the continuous
    specs learned from it (none for a setting of discrete values only), the
    restart number and its seed."""

    combo: dict
    specs: dict
    restart: int
    seed: int


@dataclass(frozen=True)
class SearchSpace:
    """``param_space`` as (discrete grid, continuous specs) pairs.

    Examples
    --------
    >>> from skbilevel import Real
    >>> from skbilevel._search._parse import parse_space
    >>> space = parse_space({"C": Real(1e-2, 1e2), "penalty": ["l2"]})
    >>> import numpy as np
    >>> runs = space.runs(1, np.random.RandomState(0))
    >>> space.continuous, [run.combo for run in runs]
    (True, [{'penalty': 'l2'}])
    """

    subspaces: tuple

    @property
    def continuous(self):
        """Whether any entry is learned by hypergradient."""
        return any(specs for _, specs in self.subspaces)

    @property
    def specs(self):
        """Every continuous entry's key and spec, over all subspaces."""
        return {key: spec for _, specs in self.subspaces for key, spec in specs.items()}

    def mapped(self, change):
        """This space with every continuous spec replaced by ``change(spec)``."""
        return SearchSpace(
            tuple(
                (grid, {key: change(spec) for key, spec in specs.items()})
                for grid, specs in self.subspaces
            )
        )

    def grid(self):
        """The ParameterGrid of a space of discrete entries only."""
        return ParameterGrid([grid for grid, _ in self.subspaces])

    def runs(self, n_restarts, random_state):
        """Every run, in ``cv_results_`` order, with seeds drawn from
        ``random_state`` (a RandomState)."""
        runs = [
            (combo, specs, restart)
            for grid, specs in self.subspaces
            for combo in (ParameterGrid(grid) if grid else [{}])
            for restart in (range(n_restarts) if specs else [0])
        ]
        seeds = random_state.randint(np.iinfo(np.int32).max, size=len(runs))
        return [Run(*run, int(seed)) for run, seed in zip(runs, seeds)]


def parse_space(param_space):
    """The :class:`SearchSpace` of ``param_space`` (a dict or list of dicts)."""
    spaces = [param_space] if isinstance(param_space, Mapping) else param_space
    if not isinstance(spaces, Sequence) or not spaces:
        raise TypeError(
            "param_space must be a dict or a non-empty list of dicts; got "
            f"{param_space!r}."
        )
    parsed = []
    for space in spaces:
        if not isinstance(space, Mapping):
            raise TypeError(f"param_space entries must be dicts; got {space!r}.")
        specs = {key: _entry(key, value) for key, value in space.items()}
        grid = {key: value for key, value in space.items() if specs[key] is None}
        continuous = {key: spec for key, spec in specs.items() if spec is not None}
        if sum(isinstance(spec, PerFeature) for spec in continuous.values()) > 1:
            raise ValueError("At most one PerFeature entry per parameter space.")
        parsed.append((grid, continuous))
    return SearchSpace(tuple(parsed))
