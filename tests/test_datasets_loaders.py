import numpy as np
import pytest

from skbilevel.datasets import (
    load_mnist,
    load_omniglot,
    omniglot_few_shot_splits,
    sample_episodes,
)


def test_sample_episodes_layout():
    y = np.repeat(np.array(list("abcdefgh")), 12)
    support, query = sample_episodes(y, 4, 2, 5, n_episodes=30, random_state=0)
    assert support.shape == (30, 8) and query.shape == (30, 20)
    for sup, qry in zip(support, query, strict=True):
        assert not set(sup) & set(qry)
        sup_classes = y[sup].reshape(4, 2)
        qry_classes = y[qry].reshape(4, 5)
        assert np.all(sup_classes == sup_classes[:, :1])
        assert np.all(qry_classes == sup_classes[:, :1])
        assert len(set(sup_classes[:, 0])) == 4
    again = sample_episodes(y, 4, 2, 5, n_episodes=30, random_state=0)
    assert np.array_equal(again[0], support) and np.array_equal(again[1], query)


def test_sample_episodes_skips_small_classes_and_errors():
    y = np.array([0] * 10 + [1] * 10 + [2] * 3)
    support, _ = sample_episodes(y, 2, 1, 5, n_episodes=20, random_state=0)
    assert 2 not in y[support]
    with pytest.raises(ValueError, match="n_way=3"):
        sample_episodes(y, 3, 1, 5)
    with pytest.raises(ValueError, match="n_way"):
        sample_episodes(y, 0, 1, 5)


def test_episode_pools_pad_unequal_classes():
    from skbilevel.datasets._episodes import episode_pools

    y = np.array([2, 0, 2, 1, 2, 0, 3])
    pools = episode_pools(y, 2)
    np.testing.assert_array_equal(pools, [[1, 5, -1], [0, 2, 4]])


@pytest.mark.parametrize("n_classes", [6, 400])
def test_episodes_draw_distinct_classes_uniformly(n_classes):
    # 6 classes take the sorted-keys path, 400 the redraw-repeats path.
    y = np.repeat(np.arange(n_classes), 7)
    support, query = sample_episodes(y, 3, 2, 4, n_episodes=4000, random_state=0)
    classes = y[support[:, ::2]]
    assert np.all(np.sort(classes, axis=1)[:, 1:] != np.sort(classes, axis=1)[:, :-1])
    counts = np.bincount(classes.ravel(), minlength=n_classes)
    expected = 4000 * 3 / n_classes
    # Chi-square statistic of a uniform draw: n_classes - 1 +- a few sqrt(2 n).
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < n_classes + 5 * np.sqrt(2 * n_classes)
    drawn = np.concatenate([support, query], axis=1)
    assert np.all(np.sort(drawn, axis=1)[:, 1:] != np.sort(drawn, axis=1)[:, :-1])


def _toy_omniglot(n_characters=6, n_drawers=3):
    rng = np.random.RandomState(0)
    return {
        "images": rng.randint(0, 256, (n_characters * n_drawers, 28, 28)).astype(
            np.uint8
        ),
        "character": np.repeat(np.arange(n_characters), n_drawers).astype(np.int16),
        "alphabet": np.repeat(np.arange(2), n_characters * n_drawers // 2),
        "background": np.repeat([True, False], n_characters * n_drawers // 2),
    }


def test_omniglot_splits_rotations_and_disjoint_characters(tmp_path):
    np.savez(tmp_path / "omniglot.npz", **_toy_omniglot())
    data = load_omniglot(tmp_path)
    splits = omniglot_few_shot_splits(data, n_train=3, n_val=1, random_state=0)
    sizes = {name: len(np.unique(y)) for name, (X, y) in splits.items()}
    assert sizes == {"train": 12, "val": 4, "test": 8}
    characters = [set(np.unique(y) // 4) for _, y in splits.values()]
    assert not (characters[0] & characters[1] or characters[0] & characters[2])
    X, y = splits["train"]
    assert X.dtype == np.float32 and X.max() <= 1
    image = data.images[data.character == y[0] // 4][0] / 255
    for k in range(4):
        rotated = X[y == 4 * (y[0] // 4) + k][0]
        np.testing.assert_allclose(rotated, np.rot90(image, k), rtol=1e-6)
    with pytest.raises(ValueError, match="no test characters"):
        omniglot_few_shot_splits(data, n_train=5, n_val=1)


def test_load_omniglot_png_folders(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    for split, alphabets in [("images_background", 2), ("images_evaluation", 1)]:
        for a in range(alphabets):
            for c in range(2):
                folder = tmp_path / split / f"alpha{a}" / f"character{c + 1:02d}"
                folder.mkdir(parents=True)
                for d in range(3):
                    pixels = np.full((105, 105), 255, dtype=np.uint8)
                    pixels[10 * d : 10 * d + 30, 40:60] = 0
                    Image.fromarray(pixels).convert("1").save(folder / f"x_{d}.png")
    data = load_omniglot(tmp_path)
    assert data.images.shape == (18, 28, 28)
    assert np.array_equal(data.character, np.repeat(np.arange(6), 3))
    assert data.background.sum() == 12
    assert data.images[0].max() == 255 and data.images[0][0, 0] == 0


def test_loaders_use_environment_variable(tmp_path, monkeypatch):
    rng = np.random.RandomState(0)
    arrays = {
        "X_train": rng.randint(0, 256, (5, 28, 28)).astype(np.uint8),
        "y_train": np.arange(5, dtype=np.uint8),
        "X_test": rng.randint(0, 256, (2, 28, 28)).astype(np.uint8),
        "y_test": np.arange(2, dtype=np.uint8),
    }
    np.savez(tmp_path / "mnist.npz", **arrays)
    monkeypatch.setenv("SKBILEVEL_DATA", str(tmp_path))
    mnist = load_mnist()
    for key, value in arrays.items():
        assert np.array_equal(mnist[key], value)
    assert np.array_equal(load_mnist(tmp_path / "mnist.npz").y_test, arrays["y_test"])


def test_loaders_explain_missing_data(tmp_path, monkeypatch):
    monkeypatch.delenv("SKBILEVEL_DATA", raising=False)
    with pytest.raises(ValueError, match="SKBILEVEL_DATA"):
        load_mnist()
    with pytest.raises(FileNotFoundError):
        load_omniglot(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="images_background"):
        load_omniglot(tmp_path)
