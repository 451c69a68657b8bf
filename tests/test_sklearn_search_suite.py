"""scikit-learn's own GridSearchCV tests, run on BilevelSearchCV.

scikit-learn's ``sklearn/model_selection/tests/test_search.py`` (shipped with
the installed wheel) is executed as a private copy in which the name
``GridSearchCV`` is bound to :func:`grid_search_cv`, a factory that builds a
plain :class:`~skbilevel.BilevelSearchCV` and maps GridSearchCV's
``param_grid`` (positional or keyword) to ``param_space``. Its test functions
are re-exported here, so pytest collects them with their own parametrizations,
restricted to GridSearchCV: parameter sets that pass RandomizedSearchCV or the
halving searches are dropped, and tests that never use GridSearchCV are not
collected.

Every test must pass, except those listed in ``DELIBERATE`` (differences
BilevelSearchCV makes on purpose, or that only the adapter causes) and
``BUGS`` (defects of BilevelSearchCV, strict xfails: they must start passing
when fixed). Keys are test names as pytest prints them after ``::``; a key
without ``[...]`` covers every parametrization of that test.
"""

import importlib.util
import sys
import types
import warnings
from pathlib import Path

import pytest
import sklearn
import sklearn.model_selection
from sklearn.experimental import enable_halving_search_cv  # noqa: F401
from sklearn.model_selection import (
    HalvingGridSearchCV,
    HalvingRandomSearchCV,
    RandomizedSearchCV,
)

from skbilevel import BilevelSearchCV

# The copy is registered under the original's name: estimators defined in it
# (MockClassifier, ...) then pickle by reference into loky workers, which
# import the (identical) original.
_MODULE_NAME = "sklearn.model_selection.tests.test_search"
_SOURCE = Path(sklearn.__file__).parent / "model_selection" / "tests" / "test_search.py"
_OTHER_SEARCHES = (RandomizedSearchCV, HalvingGridSearchCV, HalvingRandomSearchCV)
_DROPPED_MARKS = {"thread_unsafe"}  # scikit-learn's own marker, unknown here


def grid_search_cv(estimator, param_grid=None, **kwargs):
    """GridSearchCV's signature, building a BilevelSearchCV."""
    if param_grid is not None:
        kwargs["param_space"] = param_grid
    return BilevelSearchCV(estimator, **kwargs)


_GRID = (grid_search_cv, BilevelSearchCV)


def _load_sklearn_tests():
    spec = importlib.util.spec_from_file_location(_MODULE_NAME, _SOURCE)
    module = importlib.util.module_from_spec(spec)
    original = sklearn.model_selection.GridSearchCV
    # The copy's `from sklearn.model_selection import GridSearchCV` must see the
    # adapter while it runs: parametrize lists capture the name at import.
    sklearn.model_selection.GridSearchCV = grid_search_cv
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
            spec.loader.exec_module(module)
    finally:
        sklearn.model_selection.GridSearchCV = original
    sys.modules[_MODULE_NAME] = module
    return module


def _names_used(code):
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names_used(const)
    return names


def _mentions(value, targets):
    if isinstance(value, tuple | list):
        return any(_mentions(v, targets) for v in value)
    return any(
        value is t or (isinstance(t, type) and isinstance(value, t)) for t in targets
    )


def _restrict_to_grid_search(func):
    """Drop parameter sets that run another search; None if none is left or
    the test never uses GridSearchCV."""
    marks, uses_grid = [], "GridSearchCV" in _names_used(func.__code__)
    for mark in getattr(func, "pytestmark", []):
        if mark.name in _DROPPED_MARKS:
            continue
        if mark.name == "parametrize":
            argnames, argvalues = mark.args[0], list(mark.args[1])
            ids = mark.kwargs.get("ids")
            kept = [
                i
                for i, v in enumerate(argvalues)
                if not _mentions(getattr(v, "values", v), _OTHER_SEARCHES)
            ]
            if not kept:
                return None
            uses_grid |= any(
                _mentions(getattr(argvalues[i], "values", argvalues[i]), _GRID)
                for i in kept
            )
            kwargs = dict(mark.kwargs)
            if isinstance(ids, list | tuple):
                kwargs["ids"] = [ids[i] for i in kept]
            mark = pytest.mark.parametrize(
                argnames, [argvalues[i] for i in kept], **kwargs
            ).mark
        marks.append(mark)
    if not uses_grid:
        return None
    func.pytestmark = marks
    return func


_SKLEARN_TESTS = _load_sklearn_tests()
for _name, _obj in vars(_SKLEARN_TESTS).items():
    if _name.startswith("test_") and callable(_obj):
        _test = _restrict_to_grid_search(_obj)
        if _test is not None:
            globals()[_name] = _test

DELIBERATE = {}

BUGS = {}


@pytest.fixture(autouse=True)
def _expected_failures(request):
    name = request.node.name
    base = name.split("[")[0]
    for table, strict in ((DELIBERATE, False), (BUGS, True)):
        reason = table.get(name, table.get(base))
        if reason is not None:
            request.node.add_marker(pytest.mark.xfail(strict=strict, reason=reason))
