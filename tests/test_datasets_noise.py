import numpy as np
import pytest

from skbilevel.datasets import flip_labels


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 1.0])
def test_flip_labels_count_and_mask(fraction):
    y = np.repeat(np.arange(4), 25)
    y_noisy, flipped = flip_labels(y, fraction, random_state=0)
    assert flipped.dtype == bool
    assert flipped.sum() == round(fraction * y.shape[0])
    assert np.all(y_noisy[flipped] != y[flipped])
    assert np.array_equal(y_noisy[~flipped], y[~flipped])
    assert y_noisy.dtype == y.dtype


def test_flip_labels_keeps_dtype_and_strings():
    y = np.array(["cat", "dog", "bird"] * 10)
    y_noisy, flipped = flip_labels(y, 0.5, random_state=1)
    assert y_noisy.dtype == y.dtype
    assert set(y_noisy) <= {"cat", "dog", "bird"}
    assert np.all(y_noisy[flipped] != y[flipped])
    y8 = np.array([3, 7] * 5, dtype=np.uint8)
    assert flip_labels(y8, 0.4, random_state=0)[0].dtype == np.uint8


def test_flip_labels_reproducible_and_does_not_mutate():
    y = np.repeat(np.arange(3), 10)
    original = y.copy()
    first = flip_labels(y, 0.3, random_state=42)
    second = flip_labels(y, 0.3, random_state=42)
    assert np.array_equal(first[0], second[0])
    assert np.array_equal(first[1], second[1])
    assert np.array_equal(y, original)


def test_flip_labels_new_class_is_uniform_among_others():
    # With 4 classes, a flipped 0 goes to 1, 2 or 3 with probability 1/3 each.
    y = np.zeros(3000, dtype=int)
    y[:3] = [1, 2, 3]
    y_noisy, flipped = flip_labels(y, 1.0, random_state=0)
    counts = np.bincount(y_noisy[3:], minlength=4)
    assert counts[0] == 0
    np.testing.assert_allclose(counts[1:] / counts[1:].sum(), 1 / 3, atol=0.04)


@pytest.mark.parametrize("fraction", [-0.1, 1.5])
def test_flip_labels_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError, match="fraction"):
        flip_labels(np.arange(4), fraction)


def test_flip_labels_needs_two_classes():
    with pytest.raises(ValueError, match="two classes"):
        flip_labels(np.zeros(5), 0.4)
    y_noisy, flipped = flip_labels(np.zeros(5), 0.0)
    assert not flipped.any()


def test_flip_labels_rejects_2d():
    with pytest.raises(ValueError, match="1-dimensional"):
        flip_labels(np.zeros((3, 2)), 0.5)
