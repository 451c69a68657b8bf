"""scikit-learn's own GridSearchCV tests, run on BilevelSearchCV.

scikit-learn's ``sklearn/model_selection/tests/test_search.py`` (shipped with
the installed wheel) is executed as a private copy in which the name
``GridSearchCV`` is bound to :class:`~skbilevel.BilevelSearchCV` itself (which
takes GridSearchCV's ``param_grid`` positionally or by keyword). Its test functions
are re-exported here, so pytest collects them with their own parametrizations,
restricted to GridSearchCV: parameter sets that pass RandomizedSearchCV or the
halving searches are dropped, and tests that never use GridSearchCV are not
collected.

Every test must pass, except those listed in ``DELIBERATE`` (differences
BilevelSearchCV makes on purpose) and
``BUGS`` (defects of BilevelSearchCV, strict xfails: they must start passing
when fixed). Keys are test names as pytest prints them after ``::``; a key
without ``[...]`` covers every parametrization of that test.
"""

import importlib.util
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import sklearn
import sklearn.model_selection
from sklearn.datasets import make_classification
from sklearn.experimental import enable_halving_search_cv  # noqa: F401
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import (
    HalvingGridSearchCV,
    HalvingRandomSearchCV,
    RandomizedSearchCV,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils._testing import _get_warnings_filters_info_list

from skbilevel import BilevelSearchCV, Real

# The copy is registered under the original's name: estimators defined in it
# (MockClassifier, ...) then pickle by reference into loky workers, which
# import the (identical) original.
_MODULE_NAME = "sklearn.model_selection.tests.test_search"
_SOURCE = Path(sklearn.__file__).parent / "model_selection" / "tests" / "test_search.py"
_OTHER_SEARCHES = (RandomizedSearchCV, HalvingGridSearchCV, HalvingRandomSearchCV)
_DROPPED_MARKS = {"thread_unsafe"}  # scikit-learn's own marker, unknown here


_GRID = (BilevelSearchCV,)

# scikit-learn's tests run under its own warning rules (warnings shown, some
# kinds errors), not this project's "every warning is an error". Marks listed
# first take the lowest precedence, so each test's own marks still win.
_SKLEARN_WARNING_FILTERS = [pytest.mark.filterwarnings("default").mark] + [
    pytest.mark.filterwarnings(info.to_filterwarning_str()).mark
    for info in _get_warnings_filters_info_list()
]


def _load_sklearn_tests():
    spec = importlib.util.spec_from_file_location(_MODULE_NAME, _SOURCE)
    module = importlib.util.module_from_spec(spec)
    original = sklearn.model_selection.GridSearchCV
    # The copy's `from sklearn.model_selection import GridSearchCV` must see
    # BilevelSearchCV while it runs: parametrize lists capture the name at import.
    sklearn.model_selection.GridSearchCV = BilevelSearchCV
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
    func.pytestmark = _SKLEARN_WARNING_FILTERS + marks
    return func


_SKLEARN_TESTS = _load_sklearn_tests()
_COLLECTED = []
for _name, _obj in vars(_SKLEARN_TESTS).items():
    if _name.startswith("test_") and callable(_obj):
        _test = _restrict_to_grid_search(_obj)
        if _test is not None:
            globals()[_name] = _test
            _COLLECTED.append(_name)

DELIBERATE = {
    "test_grid_search_bad_param_grid": (
        "a bare number is shorthand for a continuous entry's initial value "
        "(param_space docs), so {'C': 1} on SVC gets the 'cannot be "
        "differentiated' TypeError, not GridSearchCV's 'needs to be a list'; "
        "{'C': '1,2,3'} gets a TypeError in BilevelSearchCV's own words"
    ),
    "test_custom_run_search": (
        "BilevelSearchCV has the documented extra fitted attributes history_ and "
        "n_iter_, which the test expects a plain BaseSearchCV subclass to have "
        "too"
    ),
}

# None open in scikit-learn's tests: the callback API (every
# test_search_callbacks_* test) was one, fixed in ef5ec00. A drop-in gap they
# do not reach, fixed in a905f47, is tested below
# (test_pipeline_fit_params_passed_as_for_grid_search).
BUGS = {}


@pytest.fixture(autouse=True)
def _expected_failures(request):
    name = request.node.name
    base = name.split("[")[0]
    for table, strict in ((DELIBERATE, False), (BUGS, True)):
        reason = table.get(name, table.get(base))
        if reason is not None:
            request.node.add_marker(pytest.mark.xfail(strict=strict, reason=reason))


def test_suite_is_collected_and_tables_are_current():
    # Guards the harness itself: a change in scikit-learn's file, or in the
    # selection above, must not silently leave GridSearchCV's tests out.
    assert len(_COLLECTED) >= 60
    core = {"test_grid_search", "test_refit", "test_pickle", "test_no_refit"}
    assert core <= set(_COLLECTED)
    assert "test_random_search_cv_results" not in _COLLECTED
    for key in {**DELIBERATE, **BUGS}:
        assert key.split("[")[0] in _COLLECTED, key


def test_pipeline_fit_params_passed_as_for_grid_search():
    X, y = make_classification(
        n_samples=40, n_features=3, n_redundant=0, random_state=0
    )
    weights = np.random.RandomState(0).uniform(0.5, 2.0, size=len(y))
    pipe = make_pipeline(StandardScaler(), LogisticRegression())
    space = {"logisticregression__C": Real(1e-2, 1e2)}
    search = BilevelSearchCV(pipe, space, cv=2, max_iter=2, random_state=0)
    search.fit(X, y, logisticregression__sample_weight=weights)
    expected = BilevelSearchCV(pipe, space, cv=2, max_iter=2, random_state=0)
    expected.fit(X, y, sample_weight=weights)
    np.testing.assert_array_equal(search.predict_proba(X), expected.predict_proba(X))
