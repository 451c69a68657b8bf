"""
=============================================
One L2 penalty per feature, learned together
=============================================

A grid search tunes one penalty for all features; with 30 features, a grid
over one penalty per feature would have ``10**30`` points at ten values each.
:class:`~skbilevel.BilevelSearchCV` learns all of them at once from the
hypergradient of the cross-validation loss, at the cost of a few scalar
searches.

The data: the 10 features of the diabetes dataset, plus 20 features of pure
noise. A ridge regression with one penalty per feature
(:class:`~skbilevel.PerFeature`) penalizes the noise features far more than
the diabetes ones (the medians differ by a factor of about 70). It also shows
the limit of the approach on small data: 30 penalties learned from 265
training examples fit the validation folds better (a higher cross-validation
score) without predicting held-out data better than the best single penalty.
"""

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_diabetes
from sklearn.linear_model import Ridge
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from skbilevel import BilevelSearchCV, PerFeature, Real
from skbilevel.plotting import PerFeaturePenaltyDisplay

X, y = load_diabetes(return_X_y=True)
rng = np.random.RandomState(0)
X = np.hstack([X, rng.randn(X.shape[0], 20)])
X = StandardScaler().fit_transform(X)
names = [f"diabetes {j}" for j in range(10)] + [f"noise {j}" for j in range(20)]
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.4, random_state=0)

# %%
# One penalty for all features, then one per feature
# --------------------------------------------------
scalar = BilevelSearchCV(Ridge(), {"alpha": Real(1e-3, 1e4)}, cv=5)
scalar.fit(X_train, y_train)
per_feature = BilevelSearchCV(
    Ridge(),
    {"alpha": PerFeature(1e-3, 1e4, init=scalar.best_params_["alpha"])},
    cv=5,
)
per_feature.fit(X_train, y_train)
alphas = per_feature.best_params_["alpha"]
print(f"scalar alpha: {scalar.best_params_['alpha']:.3g}")
print(
    f"median learned alpha, diabetes features {np.median(alphas[:10]):.3g}, "
    f"noise features {np.median(alphas[10:]):.3g}"
)
print(f"{'':14}{'CV R^2':>8}{'test R^2':>10}")
for name, search in [("one alpha", scalar), ("per feature", per_feature)]:
    print(f"{name:14}{search.best_score_:>8.3f}{search.score(X_test, y_test):>10.3f}")

# %%
# The learned penalties
# ---------------------
# :class:`~skbilevel.plotting.PerFeaturePenaltyDisplay` draws the learned
# penalty of each feature, sorted from the largest, with the scalar search's
# optimum as a line. Half of the noise features end at the upper bound, but
# the ranking is not clean: a few noise features keep small penalties, and some
# diabetes features (age, and two of the six blood serum measurements, which
# correlate with the others) are shrunk away instead. With this little data
# the 30 penalties partly fit the noise of the validation folds, which is why
# the cross-validation score rises while the test score does not; a scalar
# penalty, or more data per hyperparameter, is the safer choice here.
fig, ax = plt.subplots(figsize=(10, 4), layout="constrained")
PerFeaturePenaltyDisplay.from_estimator(
    per_feature, feature_names=names, sort=True, scalar=scalar, ax=ax
)
plt.show()
