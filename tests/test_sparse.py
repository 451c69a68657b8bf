"""Sparse features end to end: the same answers as dense ones, never densified."""

import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp
import sklearn
import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import (
    ElasticNet,
    Lasso,
    LogisticRegression,
    Ridge,
    RidgeClassifier,
    SGDClassifier,
    SGDRegressor,
)
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder

from skbilevel import BilevelSearchCV, PerFeature, Real
from skbilevel.hypergrad import gradient_descent, implicit_cg
from skbilevel.problems import _linear, _sparse, fold_data, make_problem
from skbilevel.problems._sparse import SparseDesign

OPTIONS = {"tol": 1e-11, "max_iter": 200}

ADAPTERS = [
    (Ridge(alpha=1.0), "alpha", 0.7, False),
    (Ridge(fit_intercept=False), "alpha", 0.7, False),
    (RidgeClassifier(), "alpha", 0.7, True),
    (LogisticRegression(), "C", 0.7, True),
    (SGDClassifier(loss="log_loss"), "alpha", 0.01, True),
    (SGDClassifier(loss="modified_huber"), "alpha", 0.01, True),
    (SGDRegressor(loss="huber", epsilon=1.0), "alpha", 0.01, False),
]


# scikit-learn 1.8 deprecates penalty= in favour of l1_ratio=.
NEW_SPELLING = tuple(int(p) for p in sklearn.__version__.split(".")[:2]) >= (1, 8)


def _sparse_data(n_samples, n_features, classifier, n_classes=2, density=0.1, seed=0):
    """A random sparse design with a planted linear model."""
    rng = np.random.RandomState(seed)
    X = sp.random(
        n_samples, n_features, density=density, format="csr", random_state=rng
    )
    # One entry at least in every row: an empty row's score is the intercept
    # alone, whose sign between balanced classes is rounding.
    X = (
        X
        + sp.csr_matrix(
            (
                np.ones(n_samples),
                (np.arange(n_samples), rng.randint(n_features, size=n_samples)),
            ),
            shape=X.shape,
        )
    ).tocsr()
    X.data = rng.uniform(0.5, 2.0, X.nnz)
    scores = X @ rng.randn(n_features, n_classes) + 0.3 * rng.randn(
        n_samples, n_classes
    )
    if not classifier:
        return X, scores[:, 0]
    if n_classes == 2:
        return X, (scores[:, 0] > np.median(scores[:, 0])).astype(int)
    return X, scores.argmax(1)


def _problem(estimator, X, y, name, classifier):
    cv = StratifiedKFold(3) if classifier else KFold(3)
    splits = list(cv.split(X, y))
    final, data = fold_data(estimator, X, y, splits, None, "cpu", "float64")
    return make_problem(final, data, {name: "real"}, OPTIONS), data


def _solution_and_hypergradient(estimator, X, y, name, value, classifier):
    problem, data = _problem(estimator, X, y, name, classifier)
    hparams = {name: torch.tensor(value, dtype=torch.float64)}
    params = problem.solve(problem.init_params(), hparams)
    at = problem.curvature(params, hparams)
    result = implicit_cg(
        params,
        hparams,
        0,
        gradient_descent(problem.inner_loss, 1.0),
        problem.outer_loss,
        cg_tol=1e-13,
        max_iter=500,
        hessian_vector=at.hessian_vector,
        preconditioner=at.precondition,
    )
    return data, params, float(result.grad[name])


def _wide(monkeypatch):
    """Sparse designs past the Gram limit from 10 features on (on the CPU:
    transposed products through scipy's view of X, no stored transpose)."""
    monkeypatch.setattr(_linear, "SPARSE_GRAM_FEATURES", 10)
    monkeypatch.setattr(_sparse, "SPARSE_GRAM_FEATURES", 10)


@pytest.mark.parametrize("estimator, name, value, classifier", ADAPTERS)
@pytest.mark.parametrize(
    "n_features, wide",
    [(20, False), (150, False), (40, True)],
    ids=["block-jacobi", "kronecker", "diagonal"],
)
def test_sparse_matches_dense(
    estimator, name, value, classifier, n_features, wide, monkeypatch
):
    X, y = _sparse_data(120, n_features, classifier)
    _, dense, dense_grad = _solution_and_hypergradient(
        estimator, X.toarray(), y, name, value, classifier
    )
    if wide:
        _wide(monkeypatch)
    data, sparse, sparse_grad = _solution_and_hypergradient(
        estimator, X, y, name, value, classifier
    )
    assert isinstance(data.X, SparseDesign)
    for key in dense:
        np.testing.assert_allclose(sparse[key], dense[key], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(sparse_grad, dense_grad, rtol=1e-8, atol=1e-12)


def test_multinomial_sparse_matches_dense(monkeypatch):
    X, y = _sparse_data(150, 30, True, n_classes=3)
    estimator = LogisticRegression()
    _, dense, dense_grad = _solution_and_hypergradient(
        estimator, X.toarray(), y, "C", 0.5, True
    )
    for wide in (False, True):
        if wide:
            _wide(monkeypatch)
        _, sparse, sparse_grad = _solution_and_hypergradient(
            estimator, X, y, "C", 0.5, True
        )
        # A softmax is blind to a common shift of the intercepts.
        for key in dense:
            actual, desired = sparse[key], dense[key]
            if key == "intercept":
                actual = actual - actual.mean(-1, keepdim=True)
                desired = desired - desired.mean(-1, keepdim=True)
            np.testing.assert_allclose(actual, desired, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(sparse_grad, dense_grad, rtol=1e-8)


@pytest.mark.parametrize("estimator", [Ridge(), LogisticRegression()])
@pytest.mark.parametrize("wide", [False, True])
def test_learned_sample_weights_sparse_matches_dense(estimator, wide, monkeypatch):
    """Learned sample weights: the Gram matrices (or the diagonal) are formed
    again at every point, from the weights."""
    classifier = isinstance(estimator, LogisticRegression)
    X, y = _sparse_data(90, 150, classifier)
    weights = np.random.RandomState(1).uniform(0.2, 1.0, 90)
    results = []
    for features in (X.toarray(), X):
        if wide and sp.issparse(features):
            _wide(monkeypatch)
        cv = StratifiedKFold(3) if classifier else KFold(3)
        final, data = fold_data(
            estimator, features, y, list(cv.split(X, y)), None, "cpu", "float64"
        )
        problem = make_problem(final, data, {"sample_weight": "sample_weight"}, OPTIONS)
        hparams = {"sample_weight": torch.tensor(weights, requires_grad=True)}
        params = problem.solve(problem.init_params(), hparams)
        at = problem.curvature(params, hparams)
        result = implicit_cg(
            params,
            hparams,
            0,
            gradient_descent(problem.inner_loss, 1.0),
            problem.outer_loss,
            cg_tol=1e-13,
            max_iter=500,
            hessian_vector=at.hessian_vector,
            preconditioner=at.precondition,
        )
        results.append((params, result.grad["sample_weight"]))
    (dense, dense_grad), (sparse, sparse_grad) = results
    for key in dense:
        np.testing.assert_allclose(sparse[key], dense[key], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(sparse_grad, dense_grad, rtol=1e-7, atol=1e-12)


def test_wide_design_with_unsorted_and_duplicate_indices():
    """A wide X is used as given, not copied to sort it: its products add
    duplicate entries as the dense matrix does."""
    X, y = _sparse_data(60, 1100, True, density=0.01)
    rows = np.repeat(np.arange(60), np.diff(X.indptr))
    order = np.lexsort((-X.indices, rows))  # columns in decreasing order
    half = X.data[order] / 2
    indptr = 2 * X.indptr
    indices = np.repeat(X.indices[order], 2)  # each entry twice, halved
    shuffled = sp.csr_matrix((np.repeat(half, 2), indices, indptr), shape=X.shape)
    assert not shuffled.has_canonical_format
    _, dense, dense_grad = _solution_and_hypergradient(
        LogisticRegression(), X.toarray(), y, "C", 0.7, True
    )
    _, sparse, sparse_grad = _solution_and_hypergradient(
        LogisticRegression(), shuffled, y, "C", 0.7, True
    )
    for key in dense:
        np.testing.assert_allclose(sparse[key], dense[key], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(sparse_grad, dense_grad, rtol=1e-8)


def test_sparse_hypergradient_matches_finite_differences(monkeypatch):
    _wide(monkeypatch)
    X, y = _sparse_data(120, 40, True)
    problem, _ = _problem(LogisticRegression(), X, y, "C", True)
    _, _, grad = _solution_and_hypergradient(LogisticRegression(), X, y, "C", 0.7, True)

    def validation(value):
        hparams = {"C": torch.tensor(value, dtype=torch.float64)}
        params = problem.solve(problem.init_params(), hparams)
        return float(problem.outer_loss(params, hparams))

    step = 1e-4
    expected = (validation(0.7 + step) - validation(0.7 - step)) / (2 * step)
    np.testing.assert_allclose(grad, expected, rtol=1e-5)


@pytest.mark.parametrize(
    "estimator, name, classifier, exact",
    [
        (Ridge(), "alpha", False, True),
        (RidgeClassifier(), "alpha", True, True),
        (LogisticRegression(), "C", True, True),
        (SGDRegressor(), "alpha", False, False),
    ],
)
def test_search_learns_the_dense_values(estimator, name, classifier, exact):
    X, y = _sparse_data(150, 30, classifier)
    space = {name: Real(1e-3, 1e3, init=1.0)}
    cv = StratifiedKFold(3) if classifier else KFold(3)
    dense = BilevelSearchCV(estimator, space, cv=cv).fit(X.toarray(), y)
    sparse = BilevelSearchCV(estimator, space, cv=cv).fit(X, y)
    np.testing.assert_allclose(
        sparse.best_params_[name], dense.best_params_[name], rtol=1e-8
    )
    if exact:
        _assert_same_scores(sparse, dense)


def _assert_same_scores(sparse, dense):
    # The rows are scored from the fold solutions. The refits are
    # scikit-learn's own, whose solvers for sparse and dense data differ
    # (Ridge's sparse_cg stops at tol=1e-4).
    np.testing.assert_allclose(
        sparse.cv_results_["mean_test_score"],
        dense.cv_results_["mean_test_score"],
        rtol=1e-8,
    )


def _to_dense(X):
    return X.toarray()


TEXTS = [
    "the cat sat on the mat",
    "dogs and cats are friends",
    "the stock market fell sharply",
    "investors sold their shares",
    "a dog chased the cat",
    "markets rallied after the report",
    "my cat sleeps all day",
    "bond yields rose on inflation fears",
]


def _text_data(n_samples=120, seed=0):
    rng = np.random.RandomState(seed)
    index = rng.randint(len(TEXTS), size=n_samples)
    noise = ["extra", "words", "here", "and", "there", "news"]
    docs = [
        TEXTS[i] + " " + " ".join(rng.choice(noise, size=rng.randint(4))) for i in index
    ]
    labels = np.array([0, 0, 1, 1, 0, 1, 0, 1])[index]
    # Noisy labels, so that the best C is finite.
    flipped = rng.rand(n_samples) < 0.2
    return docs, np.where(flipped, 1 - labels, labels)


def test_tfidf_pipeline_stays_sparse_and_matches_dense():
    docs, y = _text_data()
    space = {"logisticregression__C": Real(1e-2, 1e2, init=1.0)}
    cv = StratifiedKFold(3)
    sparse = BilevelSearchCV(
        make_pipeline(TfidfVectorizer(), LogisticRegression()), space, cv=cv
    ).fit(docs, y)
    dense = BilevelSearchCV(
        make_pipeline(
            TfidfVectorizer(), FunctionTransformer(_to_dense), LogisticRegression()
        ),
        space,
        cv=cv,
    ).fit(docs, y)
    np.testing.assert_allclose(
        sparse.best_params_["logisticregression__C"],
        dense.best_params_["logisticregression__C"],
        rtol=1e-8,
    )
    assert sparse.score(docs, y) == dense.score(docs, y)


def test_one_hot_pipeline_with_per_feature_penalties():
    rng = np.random.RandomState(0)
    X = rng.randint(6, size=(150, 3)).astype(str)
    y = (X[:, 0] == "1").astype(float) + 0.5 * (X[:, 1] == "2") + rng.randn(150) / 4
    space = {"ridge__alpha": PerFeature(1e-3, 1e3, init=1.0)}
    sparse = BilevelSearchCV(
        make_pipeline(OneHotEncoder(), Ridge()), space, cv=KFold(3), max_iter=10
    ).fit(X, y)
    dense = BilevelSearchCV(
        make_pipeline(OneHotEncoder(sparse_output=False), Ridge()),
        space,
        cv=KFold(3),
        max_iter=10,
    ).fit(X, y)
    np.testing.assert_allclose(
        sparse.best_params_["ridge__alpha"],
        dense.best_params_["ridge__alpha"],
        rtol=1e-8,
    )
    _assert_same_scores(sparse, dense)


def test_per_feature_sparse_matches_dense():
    X, y = _sparse_data(150, 25, True)
    space = {"C": PerFeature(1e-2, 1e2, init=1.0)}
    kwargs = {"cv": StratifiedKFold(3), "max_iter": 10}
    sparse = BilevelSearchCV(LogisticRegression(), space, **kwargs).fit(X, y)
    dense = BilevelSearchCV(LogisticRegression(), space, **kwargs).fit(X.toarray(), y)
    np.testing.assert_allclose(sparse.best_params_["C"], dense.best_params_["C"], 1e-8)
    scaled = sparse.best_estimator_[:-1].transform(X)
    assert sp.issparse(scaled)
    _assert_same_scores(sparse, dense)


@pytest.fixture
def no_densify(monkeypatch):
    """Any dense copy with as many rows as the data raises (n_samples is chosen
    unlike any other size of the problem)."""

    def guard(convert):
        def converted(self, *args, **kwargs):
            if self.shape[0] == N_GUARDED:
                raise AssertionError("the sparse design was densified")
            return convert(self, *args, **kwargs)

        return converted

    formats = (sp.csr_matrix, sp.csr_array, sp.csc_matrix, sp.coo_matrix)
    classes = {cls for fmt in formats for cls in fmt.__mro__}
    for cls in classes:
        for name in ("toarray", "todense"):
            if name in vars(cls):
                monkeypatch.setattr(cls, name, guard(vars(cls)[name]))
    monkeypatch.setattr(torch.Tensor, "to_dense", guard(torch.Tensor.to_dense))


N_GUARDED = 301


def test_the_guard_catches_a_densifying_path(no_densify):
    X, y = _sparse_data(N_GUARDED, 20, True)
    with pytest.raises(AssertionError, match="densified"):
        X.toarray()
    with pytest.raises(AssertionError, match="densified"):
        BilevelSearchCV(
            make_pipeline(FunctionTransformer(_to_dense), LogisticRegression()),
            {"logisticregression__C": Real(1e-2, 1e2)},
            cv=StratifiedKFold(3),
            max_iter=2,
        ).fit(X, y)


def test_per_feature_on_a_hundred_thousand_sparse_features(no_densify):
    X, y = _sparse_data(N_GUARDED, 100_000, True, density=5e-4)
    search = BilevelSearchCV(
        LogisticRegression(),
        {"C": PerFeature(1e-2, 1e2, init=1.0)},
        cv=StratifiedKFold(3),
        max_iter=2,
    ).fit(X, y)
    assert search.best_params_["C"].shape == (100_000,)
    assert np.isfinite(search.best_score_)
    assert sp.issparse(search.best_estimator_[:-1].transform(X))
    assert search.predict(X).shape == (N_GUARDED,)


@pytest.mark.parametrize(
    ("estimator", "space"),
    [
        (Lasso(), {"alpha": Real(1e-3, 1.0, init=0.05)}),
        (
            ElasticNet(),
            {"alpha": Real(1e-3, 1.0, init=0.05), "l1_ratio": Real(0.1, 0.9)},
        ),
        (
            # The L1 spelling of this scikit-learn version (penalty= is
            # deprecated from 1.8).
            LogisticRegression(solver="saga", l1_ratio=1.0, max_iter=10_000)
            if NEW_SPELLING
            else LogisticRegression(solver="saga", penalty="l1", max_iter=10_000),
            {"C": Real(1e-2, 1e2, init=1.0)},
        ),
    ],
)
def test_support_differentiated_searches_stay_sparse(estimator, space, no_densify):
    # The L1 family's adapters take the sparse design as it comes (their
    # records say so): the search never densifies X and learns what the
    # dense search learns.
    classifier = isinstance(estimator, LogisticRegression)
    X, y = _sparse_data(N_GUARDED, 40, classifier)
    cv = StratifiedKFold(3) if classifier else KFold(3)
    coo = X.tocoo()
    dense_X = np.zeros(X.shape)
    dense_X[coo.row, coo.col] = coo.data
    sparse = BilevelSearchCV(estimator, space, cv=cv, max_iter=5).fit(X, y)
    dense = BilevelSearchCV(estimator, space, cv=cv, max_iter=5).fit(dense_X, y)
    for name in space:
        np.testing.assert_allclose(
            sparse.best_params_[name], dense.best_params_[name], rtol=1e-6
        )
    np.testing.assert_allclose(
        sparse.cv_results_["mean_test_score"],
        dense.cv_results_["mean_test_score"],
        rtol=1e-6,
    )


def test_wide_cpu_design_keeps_no_double_copy_of_x(monkeypatch):
    """A wide design on the CPU shares X's memory, takes X^T products from
    scipy's view of X (no stored transpose), and stores one transpose only,
    in single precision, for the first products; every product equals
    scipy's."""
    _wide(monkeypatch)
    X, _ = _sparse_data(80, 40, True)
    X = X.astype(np.float64)
    design = _sparse.sparse_features(X, device="cpu", dtype="float64")
    assert np.shares_memory(design.matrices[0].values().numpy(), X.data)
    (transposed,) = design.transposes
    assert sp.issparse(transposed) and np.shares_memory(transposed.T.data, X.data)
    rng = np.random.RandomState(0)
    coef = torch.from_numpy(rng.randn(3, 40, 2))
    response = torch.from_numpy(rng.randn(3, 80, 2))
    expected = np.stack([X @ coef[k].numpy() for k in range(3)])
    np.testing.assert_allclose(design.matmul(coef), expected, rtol=1e-12)
    expected = np.stack([X.T @ response[k].numpy() for k in range(3)])
    np.testing.assert_allclose(design.transposed_matmul(response), expected, rtol=1e-12)
    single = design.float()
    assert all(XT.dtype == torch.float32 for XT in single.transposes)
    assert all(isinstance(XT, torch.Tensor) for XT in single.transposes)
    np.testing.assert_allclose(
        single.transposed_matmul(response.float()), expected, rtol=1e-5, atol=1e-5
    )
    squares = X.multiply(X).T @ response[0].numpy()
    np.testing.assert_allclose(
        design.squared_transposed_matmul(response)[0], squares, rtol=1e-5
    )


def test_centered_diagonal_preconditioner_inverts_its_model(monkeypatch):
    """With an intercept, the wide designs' preconditioner is the exact
    inverse of ``L^T diag(d, s) L / n`` (``L`` the centering of the rows on
    the curvature-weighted mean, ``d`` the centered diagonal plus the
    penalty, ``s`` the total curvature), built here densely."""
    _wide(monkeypatch)
    X, y = _sparse_data(90, 30, True)
    problem, data = _problem(LogisticRegression(), X, y, "C", True)
    hparams = {"C": torch.tensor(0.7, dtype=torch.float64)}
    params = problem.solve(problem.init_params(), hparams)
    at = problem.curvature(params, hparams)
    dense = np.hstack([X.toarray(), np.ones((90, 1))])
    scores = dense @ np.vstack(
        [params["coef"][0].numpy(), params["intercept"][0].numpy()[None]]
    )
    sigmoid = 1 / (1 + np.exp(-scores[:, 0]))
    b = data.train[0].numpy() * sigmoid * (1 - sigmoid)
    n = data.train[0].sum().item()
    total = b.sum()
    mean = dense.T @ b / total  # the intercept's entry is 1
    centering = np.eye(31)
    centering[-1, :] = mean
    centered = (dense - mean) ** 2
    diagonal = np.append(centered[:, :30].T @ b + 1.0 / 0.7, total)
    model = centering.T @ np.diag(diagonal) @ centering / n
    v = np.random.RandomState(1).randn(31)
    solved = at.precondition(
        {
            "coef": torch.from_numpy(np.tile((model @ v)[:30, None], (3, 1, 1))),
            "intercept": torch.from_numpy(np.full((3, 1), (model @ v)[30])),
        }
    )
    np.testing.assert_allclose(solved["coef"][0, :, 0], v[:30], rtol=1e-5)
    np.testing.assert_allclose(solved["intercept"][0, 0], v[30], rtol=1e-5)


_MEMORY_SCRIPT = """
import resource
import numpy as np, scipy.sparse as sp
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from skbilevel import BilevelSearchCV, Real
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
rng = np.random.RandomState(0)
n, d, nnz = 2000, 100_000, 20
rows = np.repeat(np.arange(n), nnz)
X = sp.csr_matrix(
    (rng.uniform(0.1, 1.0, n * nnz), (rows, rng.randint(d, size=n * nnz))),
    shape=(n, d),
)
y = (X @ rng.randn(d) > 0).astype(int)
BilevelSearchCV(
    LogisticRegression(), {"C": Real(1e-2, 1e2)}, cv=StratifiedKFold(3), max_iter=2
).fit(X, y)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss in KB")
def test_a_wide_sparse_search_takes_a_fraction_of_one_dense_copy():
    """The peak resident memory that a search on a 2,000 x 100,000 CSR
    (40,000 entries) adds to the imports stays far below one dense copy of
    X (1.6 GB; 124 MB measured): a densifying path fails here by memory,
    whatever function it densifies with."""
    run = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", _MEMORY_SCRIPT],
        capture_output=True,
        text=True,
        check=True,
    )
    imports, peak = (int(line) for line in run.stdout.split())
    dense_kb = 2000 * 100_000 * 8 / 1024
    assert peak - imports < 0.2 * dense_kb
