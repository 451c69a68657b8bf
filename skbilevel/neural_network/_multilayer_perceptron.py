"""TorchMLPClassifier and TorchMLPRegressor: MLPs with learnable training dynamics."""

import numpy as np
import torch
from sklearn.base import ClassifierMixin, RegressorMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import validate_data

from ..utils import to_numpy
from ._base import _BaseTorchMLP

_PARAMETERS = """
    Parameters
    ----------
    hidden_layer_sizes : array-like of shape (n_layers - 2,), default=(100,)
        The i-th element is the number of neurons in the i-th hidden layer;
        ``()`` gives a linear model.
    activation : {"identity", "logistic", "tanh", "relu"}, default="relu"
        Activation of the hidden layers.
    solver : {"sgd", "adam"}, default="adam"
        ``"sgd"``: gradient descent with heavy-ball momentum,
        ``v <- momentum * v + grad``, ``w <- w - learning_rate * v`` (the
        convention of :class:`torch.optim.SGD`); ``"adam"``: Adam with bias
        correction, whose denominator is ``sqrt(v_hat + epsilon**2)`` (see
        :func:`skbilevel.hypergrad.adam`).
    alpha : float or array-like of shape (n_layers - 1,), default=1e-4
        Strength of the L2 penalty on the weights (not the intercepts): one
        value, or one per weight matrix. The objective is, with s_i the sample
        weights and S their sum,
        ``(sum_i s_i loss_i + 1/2 sum_l alpha_l ||W_l||^2) / S``, exactly that
        of scikit-learn's MLP. With mini-batches, batch B uses
        ``(n / |B|) sum_{i in B} s_i loss_i`` in place of the sum (an unbiased
        estimate of the full objective).
        :class:`~skbilevel.BilevelSearchCV` learns it as a
        :class:`~skbilevel.Real` or, one value per layer, a
        :class:`~skbilevel.PerLayer`.
    batch_size : int, default=None
        Size of the mini-batches (at most ``n_samples``); ``None`` trains in
        full batch. Mini-batches follow a seeded order (a new permutation at
        every epoch if ``shuffle``), so training is a deterministic function
        of the hyperparameters.
    learning_rate : float or array-like of shape (n_blocks,), default=0.01
        Step size: one value, or a schedule of B <= ``max_iter`` values, step
        t using entry ``floor(t * B / max_iter)`` (B = ``max_iter``: one
        learning rate per step; smaller B: one per block of steps).
        :class:`~skbilevel.BilevelSearchCV` learns it as a
        :class:`~skbilevel.Real` or, as a schedule, a
        :class:`~skbilevel.PerStep`.
    max_iter : int, default=200
        Number T of optimizer steps (not epochs, unlike scikit-learn's MLP):
        ``fit`` runs exactly T steps, without early stopping.
    shuffle : bool, default=True
        Whether mini-batches are drawn from a new permutation at every epoch.
    momentum : float, default=0.9
        Heavy-ball momentum in [0, 1); only for ``solver="sgd"``.
    beta_1 : float, default=0.9
        Decay of Adam's first moment estimate; only for ``solver="adam"``.
    beta_2 : float, default=0.999
        Decay of Adam's second moment estimate; only for ``solver="adam"``.
    epsilon : float, default=1e-8
        Adam's regularizer of the denominator; only for ``solver="adam"``.
    random_state : int, RandomState instance or None, default=None
        Seeds the initialization (Glorot uniform, as scikit-learn's MLP) and
        the mini-batch order. Pass an int for reproducible output across
        multiple function calls.
    device : str or torch.device, default="auto"
        Where torch computes; ``"auto"`` picks a GPU when there is one.
    dtype : {"float32", "float64"}, default="float32"
        Precision of the training and of the fitted weights; predictions
        have the floating-point type of the ``X`` they are made for.
"""

_ATTRIBUTES = """
    loss_ : float
        The full-batch training objective after the last step.
    loss_curve_ : list of float
        The objective of the batch of step t, before step t, for every step.
    coefs_ : list of ndarray of shape (n_layers - 1,)
        The i-th element is the weight matrix of layer i.
    intercepts_ : list of ndarray of shape (n_layers - 1,)
        The i-th element is the intercept vector of layer i + 1.
    n_features_in_ : int
        Number of features seen during ``fit``.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Names of features seen during ``fit``. Defined only when `X`
        has feature names that are all strings.
    n_iter_ : int
        Number of optimizer steps run (always ``max_iter``).
    n_layers_ : int
        Number of layers, input and output included.
    n_outputs_ : int
        Number of outputs.
    out_activation_ : str
        Name of the output activation.
"""

_REFERENCES = """
    References
    ----------
    .. [1] L. Franceschi, M. Donini, P. Frasconi and M. Pontil, "Forward and
       Reverse Gradient-Based Hyperparameter Optimization", ICML 2017.
    .. [2] L. Franceschi, P. Frasconi, S. Salzo, R. Grazzi and M. Pontil,
       "Bilevel Programming for Hyperparameter Optimization and
       Meta-Learning", ICML 2018.
"""


def _docstring(summary, attributes, see_also, examples):
    return (
        summary
        + _PARAMETERS
        + "\n    Attributes\n    ----------"
        + attributes
        + _ATTRIBUTES
        + see_also
        + _REFERENCES
        + examples
    )


class TorchMLPClassifier(ClassifierMixin, _BaseTorchMLP):
    __doc__ = _docstring(
        """Multilayer perceptron classifier trained by T differentiable torch steps.

    ``fit`` is exactly ``max_iter`` steps of heavy-ball gradient descent or
    Adam on the log-loss (sigmoid output for two classes, softmax otherwise)
    from a seeded initialization. Training is a deterministic, differentiable
    function of ``learning_rate``, ``momentum``, ``alpha`` and the sample
    weights, so these are hyperparameters the hypergradient engine
    (:mod:`skbilevel.hypergrad`) can learn through the training steps (reverse
    or forward mode, Franceschi et al. 2017, 2018).

    Read more in the :ref:`User Guide <neural_network>`.
""",
        """
    classes_ : ndarray of shape (n_classes,)
        Class labels.""",
        """
    See Also
    --------
    TorchMLPRegressor : The same network for regression.
    sklearn.neural_network.MLPClassifier : scikit-learn's MLP (numpy).
""",
        """
    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> from sklearn.preprocessing import StandardScaler
    >>> from skbilevel.neural_network import TorchMLPClassifier
    >>> X, y = load_iris(return_X_y=True)
    >>> X = StandardScaler().fit_transform(X)
    >>> clf = TorchMLPClassifier(hidden_layer_sizes=(16,), max_iter=100,
    ...                          random_state=0).fit(X, y)
    >>> clf.predict_proba(X[:2]).shape
    (2, 3)
    >>> clf.score(X, y) > 0.9
    True
    """,
    )

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = False
        return tags

    def _validate_fit_data(self, X, y):
        X, y = validate_data(self, X, y, dtype=self._numpy_dtype())
        check_classification_targets(y)
        self.classes_, codes = np.unique(y, return_inverse=True)
        if self.classes_.size < 2:
            raise ValueError(
                f"{type(self).__name__} needs samples of at least 2 classes in the "
                f"data, but the data contains only one class: {self.classes_[0]!r}."
            )
        if self.classes_.size == 2:
            self.out_activation_ = "logistic"
            return X, codes.astype(X.dtype), "binary", 1
        self.out_activation_ = "softmax"
        return X, codes, "multiclass", self.classes_.size

    def _problem_targets(self, data):
        y = np.asarray(data.y)
        check_classification_targets(y)
        classes, codes = np.unique(y, return_inverse=True)
        train = to_numpy(data.train) > 0
        for k, mask in enumerate(train):
            if np.unique(codes[mask]).size < classes.size:
                raise ValueError(
                    f"The training part of fold {k} does not contain every class; "
                    "fitting on it would give a different network. Use a "
                    "stratified splitter (e.g. StratifiedKFold)."
                )
        if classes.size < 2:
            raise ValueError("The target needs at least two classes.")
        device = data.X.device
        if classes.size == 2:
            targets = torch.as_tensor(codes, dtype=data.X.dtype, device=device)
            return targets, "binary", 1
        return torch.as_tensor(codes, device=device), "multiclass", classes.size

    def predict_proba(self, X):
        """Probability estimates.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The input data.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            The probability of each class in ``classes_``.
        """
        scores = torch.as_tensor(self._scores(X))
        if self.classes_.size == 2:
            positive = torch.sigmoid(scores[:, 0])
            return to_numpy(torch.stack([1 - positive, positive], dim=1))
        return to_numpy(torch.softmax(scores, dim=1))

    def predict(self, X):
        """Predict class labels.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The input data.

        Returns
        -------
        y : ndarray of shape (n_samples,)
            The predicted classes.
        """
        scores = self._scores(X)
        if self.classes_.size == 2:
            return self.classes_[(scores[:, 0] > 0).astype(int)]
        return self.classes_[np.argmax(scores, axis=1)]


class TorchMLPRegressor(RegressorMixin, _BaseTorchMLP):
    __doc__ = _docstring(
        """Multilayer perceptron regressor trained by T differentiable torch steps.

    ``fit`` is exactly ``max_iter`` steps of heavy-ball gradient descent or
    Adam on half the squared error (identity output) from a seeded
    initialization. Training is a deterministic, differentiable function of
    ``learning_rate``, ``momentum``, ``alpha`` and the sample weights, so
    these are hyperparameters the hypergradient engine
    (:mod:`skbilevel.hypergrad`) can learn through the training steps (reverse
    or forward mode, Franceschi et al. 2017, 2018).

    Read more in the :ref:`User Guide <neural_network>`.
""",
        "",
        """
    See Also
    --------
    TorchMLPClassifier : The same network for classification.
    sklearn.neural_network.MLPRegressor : scikit-learn's MLP (numpy).
""",
        """
    Examples
    --------
    >>> import numpy as np
    >>> from skbilevel.neural_network import TorchMLPRegressor
    >>> X = np.linspace(-1, 1, 50)[:, None]
    >>> y = np.sin(3 * X).ravel()
    >>> reg = TorchMLPRegressor(hidden_layer_sizes=(32,), activation="tanh",
    ...                         max_iter=300, random_state=0).fit(X, y)
    >>> reg.predict(X[:3]).shape
    (3,)
    >>> reg.score(X, y) > 0.9
    True
    """,
    )

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def _validate_fit_data(self, X, y):
        X, y = validate_data(
            self, X, y, dtype=self._numpy_dtype(), multi_output=True, y_numeric=True
        )
        self.out_activation_ = "identity"
        targets = y.reshape(y.shape[0], -1).astype(X.dtype)
        return X, targets, "regression", targets.shape[1]

    def _problem_targets(self, data):
        y = np.asarray(data.y, dtype=np.float64)
        targets = torch.as_tensor(y.reshape(y.shape[0], -1), dtype=data.X.dtype)
        return targets.to(data.X.device), "regression", targets.shape[1]

    def predict(self, X):
        """Predict with the multilayer perceptron.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The input data.

        Returns
        -------
        y : ndarray of shape (n_samples,) or (n_samples, n_outputs)
            The predicted values.
        """
        scores = self._scores(X)
        return scores.ravel() if self.n_outputs_ == 1 else scores
