"""BilevelSearchCV under scikit-learn's estimator checks, with cheap settings."""

from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.utils.estimator_checks import parametrize_with_checks

from skbilevel import Real
from skbilevel._search import BilevelSearchCV


@parametrize_with_checks(
    [
        BilevelSearchCV(Ridge(), {"alpha": Real(0.1, 10.0)}, cv=2, max_iter=1),
        # max_iter=1000: scikit-learn's lbfgs refit needs more than its default
        # 100 iterations on the checks' unscaled data at the learned C.
        BilevelSearchCV(
            LogisticRegression(max_iter=1000), {"C": Real(0.1, 10.0)}, cv=2, max_iter=1
        ),
    ]
)
def test_scikit_learn_checks(estimator, check):
    check(estimator)
