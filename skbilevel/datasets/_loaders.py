"""Loaders for the MNIST and Omniglot files and the paper's Omniglot protocol."""

import os
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch, check_random_state

ENV_VARIABLE = "SKBILEVEL_DATA"


def _locate(path, filename):
    """The file or folder to read: ``path``, or ``$SKBILEVEL_DATA``."""
    if path is None:
        path = os.environ.get(ENV_VARIABLE)
        if path is None:
            raise ValueError(
                f"No data path given: pass path= or set the environment variable "
                f"{ENV_VARIABLE} to the folder that holds {filename}."
            )
    path = Path(path)
    if path.is_dir() and (path / filename).is_file():
        return path / filename
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist.")
    return path


def load_mnist(path=None):
    """Load MNIST from an ``mnist.npz`` file.

    Parameters
    ----------
    path : str or path-like, default=None
        The file, or a folder holding ``mnist.npz``; by default the folder
        named by the environment variable ``SKBILEVEL_DATA``.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        ``X_train`` (60000, 28, 28) and ``X_test`` (10000, 28, 28) uint8
        images (0 is background), ``y_train`` and ``y_test`` labels 0..9.

    Examples
    --------
    >>> from skbilevel.datasets import load_mnist
    >>> mnist = load_mnist("../shared/data")  # doctest: +SKIP
    >>> mnist.X_train.shape  # doctest: +SKIP
    (60000, 28, 28)
    """
    with np.load(_locate(path, "mnist.npz"), allow_pickle=False) as z:
        return Bunch(
            **{key: z[key] for key in ("X_train", "y_train", "X_test", "y_test")}
        )


def load_omniglot(path=None):
    """Load Omniglot: 1,623 characters drawn by 20 people, as 28x28 images.

    Parameters
    ----------
    path : str or path-like, default=None
        An ``omniglot.npz`` file, a folder holding one, or a folder in the
        original layout (``images_background/`` and ``images_evaluation/``,
        then alphabet and character folders of 105x105 PNGs, which are
        inverted and resized to 28x28 with Lanczos filtering; this needs
        Pillow). By default the folder named by ``SKBILEVEL_DATA``.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        ``images`` (32460, 28, 28) uint8 with 255 for ink, ``character``
        (global class 0..1622), ``alphabet`` and ``background`` (True for
        ``images_background``), one entry per image.

    References
    ----------
    .. [1] B. M. Lake, R. Salakhutdinov and J. B. Tenenbaum, "Human-level
       concept learning through probabilistic program induction", Science,
       2015.

    Examples
    --------
    >>> from skbilevel.datasets import load_omniglot
    >>> omniglot = load_omniglot("../shared/data")  # doctest: +SKIP
    >>> omniglot.images.shape  # doctest: +SKIP
    (32460, 28, 28)
    """
    location = _locate(path, "omniglot.npz")
    if location.is_dir():
        return _read_omniglot_folders(location)
    with np.load(location, allow_pickle=False) as z:
        return Bunch(
            **{k: z[k] for k in ("images", "character", "alphabet", "background")}
        )


def _read_omniglot_folders(root):
    """Read the original PNG layout into the arrays of :func:`load_omniglot`."""
    splits = ("images_background", "images_evaluation")
    for split in splits:
        if not (root / split).is_dir():
            raise FileNotFoundError(
                f"{root} holds neither omniglot.npz nor the folder {split}/."
            )
    try:
        from PIL import Image
    except ImportError as exc:
        raise ImportError(
            "Reading the Omniglot PNG folders needs Pillow: pip install pillow."
        ) from exc
    images, character, alphabet, background = [], [], [], []
    for split in splits:
        for alphabet_dir in sorted(p for p in (root / split).iterdir() if p.is_dir()):
            alphabet_id = len(set(alphabet))
            for char_dir in sorted(p for p in alphabet_dir.iterdir() if p.is_dir()):
                char_id = len(set(character))
                for png in sorted(char_dir.glob("*.png")):
                    with Image.open(png) as image:
                        small = Image.eval(image.convert("L"), lambda v: 255 - v)
                        small = small.resize((28, 28), Image.Resampling.LANCZOS)
                    images.append(np.asarray(small, dtype=np.uint8))
                    character.append(char_id)
                    alphabet.append(alphabet_id)
                    background.append(split == "images_background")
    return Bunch(
        images=np.stack(images),
        character=np.array(character, dtype=np.int16),
        alphabet=np.array(alphabet, dtype=np.int16),
        background=np.array(background),
    )


def omniglot_few_shot_splits(omniglot, *, n_train=1200, n_val=100, random_state=0):
    """The paper's few-shot protocol on Omniglot.

    The characters are shuffled and split into ``n_train`` meta-training,
    ``n_val`` meta-validation and the remaining (323) meta-test characters;
    every character appears in 4 rotations (0, 90, 180, 270 degrees), each a
    class of its own (Santoro et al., 2016; Vinyals et al., 2016; Franceschi
    et al., 2018). Pixels are scaled to [0, 1].

    Parameters
    ----------
    omniglot : Bunch
        As returned by :func:`load_omniglot`.
    n_train : int, default=1200
        Number of meta-training characters.
    n_val : int, default=100
        Number of meta-validation characters.
    random_state : int, RandomState instance or None, default=0
        Controls the shuffle of the characters.

    Returns
    -------
    splits : dict
        ``"train"``, ``"val"`` and ``"test"`` map to ``(X, y)``: float32
        images of shape (n, 28, 28) and class labels ``4 * character +
        rotation``.

    References
    ----------
    .. [1] L. Franceschi, P. Frasconi, S. Salzo, R. Grazzi and M. Pontil,
       "Bilevel Programming for Hyperparameter Optimization and
       Meta-Learning", ICML 2018.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.utils import Bunch
    >>> from skbilevel.datasets import omniglot_few_shot_splits
    >>> toy = Bunch(images=np.zeros((40, 28, 28), dtype=np.uint8),
    ...             character=np.repeat(np.arange(4), 10))
    >>> splits = omniglot_few_shot_splits(toy, n_train=2, n_val=1)
    >>> splits["train"][0].shape, len(np.unique(splits["test"][1]))
    ((80, 28, 28), 4)
    """
    characters = np.unique(omniglot.character)
    if n_train + n_val >= characters.shape[0]:
        raise ValueError(
            f"n_train + n_val = {n_train + n_val} leaves no test characters out of "
            f"{characters.shape[0]}."
        )
    order = check_random_state(random_state).permutation(characters)
    parts = np.split(order, [n_train, n_train + n_val])
    return {
        name: _rotated(omniglot, part)
        for name, part in zip(("train", "val", "test"), parts, strict=True)
    }


def _rotated(omniglot, characters):
    """Images of ``characters`` in 4 rotations, each rotation its own class."""
    mask = np.isin(omniglot.character, characters)
    images = omniglot.images[mask].astype(np.float32) / 255
    labels = omniglot.character[mask].astype(np.int64)
    X = np.concatenate([np.rot90(images, k, axes=(1, 2)) for k in range(4)])
    y = np.concatenate([4 * labels + k for k in range(4)])
    return np.ascontiguousarray(X), y
