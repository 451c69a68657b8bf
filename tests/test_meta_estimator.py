import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import load_digits, make_blobs
from sklearn.exceptions import ConvergenceWarning
from sklearn.neighbors import KNeighborsClassifier
from sklearn.utils.estimator_checks import parametrize_with_checks

from skbilevel.datasets import sample_episodes
from skbilevel.meta import HyperRepresentationClassifier, conv4, few_shot_score


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These tensors are tiny: on a busy 2-core machine, OpenMP threads only
    # wait for each other, so every op costs a scheduler slice. Restored after.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


CHEAP = {
    "representation": "mlp",
    "n_way": 3,
    "n_query": 3,
    "T": 2,
    "meta_batch_size": 2,
    "max_iter": 3,
    "batch_size": 64,
    "random_state": 0,
}


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(160, n_features=4, centers=8, random_state=0)
    return X, y


@pytest.fixture(scope="module")
def fitted(blobs):
    return HyperRepresentationClassifier(**CHEAP).fit(*blobs)


@parametrize_with_checks([HyperRepresentationClassifier(**CHEAP)])
def test_sklearn_compatible(estimator, check):
    check(estimator)


@pytest.mark.parametrize("training", ["bilevel", "joint"])
def test_fit_is_reproducible_and_leaves_global_rng_alone(blobs, training):
    params = {**CHEAP, "training": training}
    state = torch.random.get_rng_state()
    first = HyperRepresentationClassifier(**params).fit(*blobs)
    assert torch.equal(torch.random.get_rng_state(), state)
    again = HyperRepresentationClassifier(**params).fit(*blobs)
    np.testing.assert_array_equal(again.transform(blobs[0]), first.transform(blobs[0]))
    np.testing.assert_array_equal(again.coef_, first.coef_)


def test_fitted_attributes(blobs, fitted):
    X, y = blobs
    assert fitted.transform(X).shape == (160, 64)
    assert fitted.coef_.shape == (8, 64) and fitted.intercept_.shape == (8,)
    assert fitted.n_iter_ == 3 and fitted.n_way_ == 3
    assert [r["iteration"] for r in fitted.history_] == [3]
    proba = fitted.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(fitted.predict(X), fitted.classes_[proba.argmax(1)])
    assert next(fitted.representation_.parameters()).device.type == "cpu"


def test_adapt_does_not_change_the_estimator(blobs, fitted):
    X, y = blobs
    before = pickle.dumps(fitted)
    coef, classes = fitted.coef_.copy(), fitted.classes_.copy()
    mask = np.isin(y, [1, 5])
    support = np.r_[np.flatnonzero(y == 1)[:3], np.flatnonzero(y == 5)[:3]]
    task = fitted.adapt(X[support], np.where(y[support] == 1, "one", "five"))
    assert list(task.classes_) == ["five", "one"]
    assert task.coef_.shape == (2, 64)
    assert set(task.predict(X[mask])) <= {"one", "five"}
    np.testing.assert_array_equal(fitted.coef_, coef)
    np.testing.assert_array_equal(fitted.classes_, classes)
    assert pickle.dumps(fitted) == before


def test_pickle_round_trip(blobs, fitted):
    restored = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(
        restored.predict_proba(blobs[0]), fitted.predict_proba(blobs[0])
    )


def test_few_shot_score_reproducible_and_batched_path_matches_adapt(blobs, fitted):
    X, y = blobs
    first = few_shot_score(
        fitted, X, y, n_way=3, n_shot=2, n_query=4, n_episodes=12, random_state=3
    )
    assert first == few_shot_score(
        fitted, X, y, n_way=3, n_shot=2, n_query=4, n_episodes=12, random_state=3
    )
    # The batched path against one adapt() per episode, on the same episodes.
    support, query = sample_episodes(y, 3, 2, 4, 12, random_state=3)
    scores = [
        fitted.adapt(X[s], y[s]).score(X[q], y[q])
        for s, q in zip(support, query, strict=True)
    ]
    assert first[0] == pytest.approx(np.mean(scores), abs=1e-12)
    assert first[1] == pytest.approx(1.96 * np.std(scores, ddof=1) / np.sqrt(12))


def test_few_shot_score_runs_plain_sklearn_classifier(blobs):
    X, y = blobs
    knn = KNeighborsClassifier(n_neighbors=1)
    mean, ci95 = few_shot_score(
        knn, X, y, n_way=4, n_shot=1, n_query=5, n_episodes=10, random_state=0
    )
    support, query = sample_episodes(y, 4, 1, 5, 10, random_state=0)
    expected = [
        clone(knn).fit(X[s], y[s]).score(X[q], y[q])
        for s, q in zip(support, query, strict=True)
    ]
    assert mean == pytest.approx(np.mean(expected))
    assert mean > 0.9
    assert not hasattr(knn, "classes_")


def test_images_with_conv4():
    X, y = load_digits(return_X_y=True)
    images = X[:300].reshape(-1, 8, 8) / 16
    clf = HyperRepresentationClassifier(**{**CHEAP, "representation": "conv4"})
    clf.fit(images, y[:300])
    assert clf.transform(images[:5]).shape == (5, 64)
    channels = clone(clf).fit(images[:, None], y[:300])
    assert channels.transform(images[:5, None]).shape == (5, 64)
    with pytest.raises(ValueError, match="conv4"):
        clone(clf).fit(X[:300], y[:300])


def test_custom_module_is_copied(blobs):
    module = torch.nn.Sequential(torch.nn.Linear(4, 7), torch.nn.ReLU())
    state = {k: v.clone() for k, v in module.state_dict().items()}
    clf = HyperRepresentationClassifier(**{**CHEAP, "representation": module})
    clf.fit(*blobs)
    assert clf.transform(blobs[0]).shape == (160, 7)
    for name, value in module.state_dict().items():
        torch.testing.assert_close(value, state[name])


def test_meta_training_learns(blobs):
    """More outer steps give a better few-shot score on held-out classes."""
    X, y = blobs
    base, novel = y < 5, y >= 5
    params = {**CHEAP, "max_iter": 25}
    clf = HyperRepresentationClassifier(**params).fit(X[base], y[base])
    short = clone(clf).set_params(max_iter=1).fit(X[base], y[base])
    score = few_shot_score(
        clf, X[novel], y[novel], n_way=3, n_shot=1, n_episodes=30, random_state=0
    )[0]
    assert (
        score
        > few_shot_score(
            short, X[novel], y[novel], n_way=3, n_shot=1, n_episodes=30, random_state=0
        )[0]
    )
    assert clf.learning_rate_ != pytest.approx(0.1)


def test_joint_and_implicit_training(blobs):
    joint = HyperRepresentationClassifier(**{**CHEAP, "training": "joint"})
    joint.fit(*blobs)
    assert joint.learning_rate_ == pytest.approx(0.1)
    implicit = HyperRepresentationClassifier(
        **{**CHEAP, "hypergradient": "implicit", "alpha": 1.0, "max_iter": 1}
    )
    # Five inner steps do not solve the inner problem: the engine says so.
    with pytest.warns(ConvergenceWarning, match="inner problem was not solved"):
        implicit.fit(*blobs)
    assert implicit.predict(blobs[0]).shape == (160,)
    with pytest.raises(ValueError, match="alpha > 0"):
        clone(implicit).set_params(alpha=0.0).fit(*blobs)


def test_early_stopping_and_validation_data(blobs):
    X, y = blobs
    clf = HyperRepresentationClassifier(
        **{
            **CHEAP,
            "max_iter": 50,
            "early_stopping": True,
            "validation_interval": 1,
            "n_iter_no_change": 1,
            "tol": 1.0,
            "n_validation_episodes": 4,
        }
    ).fit(X, y)
    # No improvement of 1.0 is possible: stop at the second check.
    assert clf.n_iter_ == 2
    assert all("validation_score" in record for record in clf.history_)
    held = y >= 5
    clf.set_params(early_stopping=False, max_iter=2).fit(
        X[~held], y[~held], validation_data=(X[held], y[held])
    )
    assert len(clf.history_) == 2 and set(clf.classes_) == set(range(5))


def test_max_time_stops_training(blobs):
    clf = HyperRepresentationClassifier(
        **{**CHEAP, "max_iter": 1000, "max_time": 1e-9}
    ).fit(*blobs)
    assert clf.n_iter_ == 1


@pytest.mark.parametrize(
    "params, y, message",
    [
        ({}, np.zeros(160), "at least 2 classes"),
        ({"n_shot": 30}, None, "more than n_shot=30"),
        ({"early_stopping": True, "validation_fraction": 0.9}, None, "fewer than 2"),
    ],
)
def test_bad_input(blobs, params, y, message):
    X, y_blobs = blobs
    clf = HyperRepresentationClassifier(**{**CHEAP, **params})
    with pytest.raises(ValueError, match=message):
        clf.fit(X, y_blobs if y is None else y)


def test_bad_module_output(blobs):
    clf = HyperRepresentationClassifier(
        **{**CHEAP, "representation": torch.nn.Unflatten(1, (2, 2))}
    )
    with pytest.raises(ValueError, match="2D tensor"):
        clf.fit(*blobs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("batch_norm", ["running", "episode"])
def test_gpu_fit_pickles_to_cpu(blobs, batch_norm):
    params = {**CHEAP, "device": "cuda", "batch_norm": batch_norm}
    clf = HyperRepresentationClassifier(**params).fit(*blobs)
    restored = pickle.loads(pickle.dumps(clf))
    assert next(restored.representation_.parameters()).device.type == "cpu"
    np.testing.assert_allclose(
        restored.predict_proba(blobs[0]), clf.predict_proba(blobs[0]), rtol=1e-5
    )
    # The GPU embeds the episodes' sets with torch.vmap, the CPU with a loop.
    support, query = sample_episodes(blobs[1], 3, 2, 4, 24, random_state=0)
    on_gpu = clf._episode_accuracies(blobs[0], support, query, 3)
    on_cpu = restored.set_params(device="cpu")._episode_accuracies(
        blobs[0], support, query, 3
    )
    assert on_gpu.mean() == pytest.approx(on_cpu.mean(), abs=0.05)


@pytest.fixture(scope="module")
def fitted_episode(blobs):
    params = {**CHEAP, "batch_norm": "episode"}
    return HyperRepresentationClassifier(**params).fit(*blobs)


def test_episode_batch_norm_uses_the_statistics_of_each_set(blobs, fitted_episode):
    X, _ = blobs
    network = fitted_episode.representation_
    assert all(
        module.running_mean is None
        for module in network.modules()
        if isinstance(module, torch.nn.BatchNorm1d)
    )
    # Independent check: a batch norm layer normalizes with the batch's mean
    # and (biased) variance; the features of a set depend on the whole set.
    first = network[0](torch.as_tensor(X[:20], dtype=torch.float32))
    normalized = network[1](first)
    expected = (first - first.mean(0)) / torch.sqrt(first.var(0, unbiased=False) + 1e-5)
    expected = expected * network[1].weight + network[1].bias
    torch.testing.assert_close(normalized, expected, rtol=1e-4, atol=1e-5)
    alone = fitted_episode.transform(X[:10])
    assert not np.allclose(fitted_episode.transform(X[:20])[:10], alone)
    np.testing.assert_array_equal(fitted_episode.transform(X[:10]), alone)


def test_episode_scores_match_adapt_and_are_per_episode(blobs, fitted_episode):
    X, y = blobs
    support, query = sample_episodes(y, 3, 2, 4, 12, random_state=3)
    batched = fitted_episode._episode_accuracies(X, support, query, 3)
    # adapt() embeds the support set as one batch, score() the query set.
    expected = [
        fitted_episode.adapt(X[s], y[s]).score(X[q], y[q])
        for s, q in zip(support, query, strict=True)
    ]
    np.testing.assert_allclose(batched, expected, atol=1e-12)
    # An episode's score does not depend on the episodes beside it.
    alone = [
        fitted_episode._episode_accuracies(X, s[None], q[None], 3)[0]
        for s, q in zip(support, query, strict=True)
    ]
    np.testing.assert_array_equal(batched, alone)


def test_vmap_embeds_each_set_as_its_own_batch():
    """The GPU path of set_features (torch.vmap) equals one call per set."""
    from skbilevel.meta._training import set_features

    network = conv4(n_filters=4)
    torch.func.replace_all_batch_norm_modules_(network)
    images = torch.randn(3, 5, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    looped = set_features(network, images)
    torch.testing.assert_close(
        torch.vmap(network, randomness="different")(images), looped
    )
    torch.testing.assert_close(looped[1], network(images[1]))
