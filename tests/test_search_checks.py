"""BilevelSearchCV under scikit-learn's estimator checks, with cheap settings."""

import pytest
import torch
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.utils.estimator_checks import parametrize_with_checks

from skbilevel import Real
from skbilevel._search import BilevelSearchCV


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    # The tiny problems here run fastest, and time steadily on a shared
    # machine, on one thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _expected_failures(estimator):
    # No check is expected to fail.
    return {}


@parametrize_with_checks(
    [
        BilevelSearchCV(Ridge(), {"alpha": Real(0.1, 10.0)}, cv=2, max_iter=1),
        BilevelSearchCV(LogisticRegression(), {"C": Real(0.1, 10.0)}, cv=2, max_iter=1),
    ],
    expected_failed_checks=_expected_failures,
)
def test_scikit_learn_checks(estimator, check):
    check(estimator)
