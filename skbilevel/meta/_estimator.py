"""HyperRepresentationClassifier: a representation meta-learned bilevel-wise."""

import copy
import math
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from ..datasets._episodes import draw_episodes, episode_pools
from ..utils import resolve_device, resolve_dtype
from ..utils._sklearn import Interval, StrOptions, _fit_context
from ..utils._threads import one_torch_thread
from ..utils._torch import inference_device
from ._heads import train_heads
from ._representations import build_representation, n_output_features
from ._training import (
    MetaTrainer,
    batched_features,
    episode_accuracies,
    episode_embedding,
)


class HyperRepresentationClassifier(ClassifierMixin, TransformerMixin, BaseEstimator):
    """Few-shot classifier on a representation learned by bilevel programming.

    Meta-training draws N-way K-shot episodes from the classes of ``y``. In
    each episode a linear head (softmax regression) is trained from zero for
    ``T`` gradient steps on the support set's features (the inner problem);
    the cross-entropy of the resulting heads on the query sets is the outer
    objective, minimized over the weights of the representation and the
    inner learning rate by Adam on the exact hypergradient (Franceschi et al.,
    2018, Algorithm 1, "hyper-representation"). The heads of a meta-batch are
    trained as one batched tensor computation on features computed once per
    episode. With ``training="joint"`` the same network is instead trained
    classically, with one softmax layer over all training classes at once.

    After meta-training, a head is trained the same way on all of ``(X, y)``,
    so that ``predict`` and ``score`` work on the training classes;
    :meth:`adapt` trains one on new classes.

    Parameters
    ----------
    representation : {"auto", "conv4", "mlp"} or torch.nn.Module, default="auto"
        The representation h: ``"conv4"`` (four 3x3 convolution blocks with 64
        filters, batch norm, ReLU and stride 2; 256 features on 28x28 images),
        ``"mlp"`` (two hidden layers of 64 units, for tabular data), ``"auto"``
        (conv4 for images, mlp for tabular data), or any module mapping a
        batch of samples to a 2D tensor of features (it is copied, never
        changed).
    n_way : int, default=5
        Classes per meta-training episode (at most the number of classes).
    n_shot : int, default=1
        Support examples per class in each episode.
    n_query : int, default=15
        Query examples per class in each episode (reduced to what the
        smallest class allows).
    T : int, default=5
        Gradient steps of the inner problem (the head).
    learning_rate : float, default=0.1
        Initial learning rate of the inner gradient descent.
    learn_learning_rate : bool, default=True
        Whether the inner learning rate is meta-learned with the
        representation, as in the paper's code. It is redundant with the
        scale of the features; on Omniglot a fixed rate was steadier (see
        the user guide).
    alpha : float, default=0.0
        L2 penalty of the head coefficients in the inner problem.
    meta_batch_size : int, default=32
        Episodes per outer step.
    max_iter : int, default=1000
        Maximum number of outer steps (meta-iterations).
    outer_learning_rate : float, default=1e-3
        Initial step size of the outer Adam optimizer.
    outer_lr_decay : float, default=1e-4
        Inverse-time decay: the step size at outer step k is
        ``outer_learning_rate / (1 + outer_lr_decay * k)``.
    training : {"bilevel", "joint"}, default="bilevel"
        ``"bilevel"`` meta-learns the representation; ``"joint"`` is the
        classical baseline (one network trained on all classes at once).
    batch_norm : {"running", "episode"}, default="running"
        How the batch-norm layers of the representation normalize.
        ``"running"``: with the statistics of the whole meta-batch in
        meta-training and with running averages after it, so that a sample's
        features do not depend on the other samples of a batch.
        ``"episode"``: always with the statistics of the set being embedded,
        as in the paper's code (and MAML): in meta-training and in
        :func:`few_shot_score`, each support set and each query set is
        normalized on its own; :meth:`transform`, :meth:`predict` and
        :meth:`adapt` normalize the samples they are given together (in
        chunks of ``batch_size``), so predictions are transductive. The
        running statistics are then removed from the network. On Omniglot,
        ``"episode"`` learns faster and scores higher in the episodic
        protocol (see the user guide). Representations without batch norm
        are unaffected.
    hypergradient : {"reverse", "implicit"}, default="reverse"
        Reverse mode through the ``T`` inner steps, or implicit
        differentiation at the inner optimum by conjugate gradient (then
        ``alpha`` must be positive, ``T`` is the most inner steps the solver
        may take, and the inner learning rate is not learned).
    inner_tol : float, default=1e-5
        Gradient-norm tolerance of the inner solve for
        ``hypergradient="implicit"``.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the classes (or use the
        ``validation_data`` given to :meth:`fit`), stop when the mean episode
        accuracy on them has not improved by ``tol`` for ``n_iter_no_change``
        checks, and keep the best representation.
    validation_fraction : float, default=0.1
        Fraction of the classes held out for early stopping.
    n_iter_no_change : int, default=5
        Validation checks without improvement before stopping.
    tol : float, default=1e-4
        Improvement of the validation accuracy that counts.
    validation_interval : int, default=100
        Outer steps between checkpoints in ``history_``.
    n_validation_episodes : int, default=100
        Episodes (fixed once) of each validation check.
    max_time : float, default=None
        Time budget of meta-training in seconds.
    batch_size : int, default=1024
        Samples per batch when computing features and fitting heads on large
        sets.
    device : str or torch.device, default="auto"
        Where torch computes; ``"auto"`` picks a GPU when there is one.
    dtype : {"float32", "float64"}, default="float32"
        Precision of the network and the heads.
    random_state : int, RandomState instance or None, default=None
        Controls the initialization and the episodes. Pass an int for
        reproducible output across multiple function calls (on the CPU).
    verbose : int, default=0
        Show a progress bar of meta-training when positive; at 2 or more,
        also one line per checkpoint of ``history_`` (outer step, training
        loss, learning rate, validation accuracy when there is one).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels of the current head.
    coef_ : ndarray of shape (n_classes, n_features_out)
        Coefficients of the head on the representation.
    intercept_ : ndarray of shape (n_classes,)
        Intercepts of the head.
    representation_ : torch.nn.Module
        The learned representation, on the CPU and in evaluation mode (with
        ``batch_norm="episode"``, its batch-norm layers keep no running
        statistics).
    learning_rate_ : float
        The (learned) inner learning rate.
    n_features_out_ : int
        Number of features of the representation.
    n_way_, n_query_ : int
        Episode sizes used in meta-training.
    n_iter_ : int
        Number of outer steps run.
    history_ : list of dict
        One record per checkpoint: ``iteration``, ``time`` (seconds),
        ``outer_loss`` (mean since the last checkpoint), ``learning_rate`` and,
        with validation, ``validation_score``.
    n_features_in_ : int
        Size of the second axis of ``X`` during fit.

    See Also
    --------
    few_shot_score : Episodic evaluation on new classes.

    References
    ----------
    .. [1] L. Franceschi, P. Frasconi, S. Salzo, R. Grazzi and M. Pontil,
       "Bilevel Programming for Hyperparameter Optimization and
       Meta-Learning", ICML 2018.
    .. [2] F. Pedregosa, "Hyperparameter optimization with approximate
       gradient", ICML 2016.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from skbilevel.meta import HyperRepresentationClassifier
    >>> X, y = load_digits(return_X_y=True)
    >>> clf = HyperRepresentationClassifier(max_iter=5, meta_batch_size=4,
    ...                                     random_state=0).fit(X / 16, y)
    >>> clf.transform(X[:3]).shape
    (3, 64)
    >>> task = clf.adapt(X[:10] / 16, y[:10])
    >>> task.predict(X[:10] / 16).shape
    (10,)

    With ``batch_norm="episode"`` every set is normalized with its own
    statistics, in meta-training and in the episodic evaluation:

    >>> from skbilevel.meta import few_shot_score
    >>> episodic = HyperRepresentationClassifier(
    ...     batch_norm="episode", max_iter=5, meta_batch_size=4, random_state=0
    ... ).fit(X / 16, y)
    >>> mean, ci95 = few_shot_score(episodic, X / 16, y, n_way=5, n_shot=1,
    ...                             n_episodes=20, random_state=0)
    >>> 0.2 < mean <= 1.0
    True
    """

    _parameter_constraints: dict = {
        "representation": [StrOptions({"auto", "conv4", "mlp"}), torch.nn.Module],
        "n_way": [Interval(Integral, 2, None, closed="left")],
        "n_shot": [Interval(Integral, 1, None, closed="left")],
        "n_query": [Interval(Integral, 1, None, closed="left")],
        "T": [Interval(Integral, 1, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "learn_learning_rate": ["boolean"],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "meta_batch_size": [Interval(Integral, 1, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "outer_learning_rate": [Interval(Real, 0, None, closed="neither")],
        "outer_lr_decay": [Interval(Real, 0, None, closed="left")],
        "training": [StrOptions({"bilevel", "joint"})],
        "batch_norm": [StrOptions({"running", "episode"})],
        "hypergradient": [StrOptions({"reverse", "implicit"})],
        "inner_tol": [Interval(Real, 0, None, closed="neither")],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "validation_interval": [Interval(Integral, 1, None, closed="left")],
        "n_validation_episodes": [Interval(Integral, 1, None, closed="left")],
        "max_time": [Interval(Real, 0, None, closed="neither"), None],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "device": [str, torch.device],
        "dtype": [StrOptions({"float32", "float64"})],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        representation="auto",
        *,
        n_way=5,
        n_shot=1,
        n_query=15,
        T=5,
        learning_rate=0.1,
        learn_learning_rate=True,
        alpha=0.0,
        meta_batch_size=32,
        max_iter=1000,
        outer_learning_rate=1e-3,
        outer_lr_decay=1e-4,
        training="bilevel",
        batch_norm="running",
        hypergradient="reverse",
        inner_tol=1e-5,
        early_stopping=False,
        validation_fraction=0.1,
        n_iter_no_change=5,
        tol=1e-4,
        validation_interval=100,
        n_validation_episodes=100,
        max_time=None,
        batch_size=1024,
        device="auto",
        dtype="float32",
        random_state=None,
        verbose=0,
    ):
        self.representation = representation
        self.n_way = n_way
        self.n_shot = n_shot
        self.n_query = n_query
        self.T = T
        self.learning_rate = learning_rate
        self.learn_learning_rate = learn_learning_rate
        self.alpha = alpha
        self.meta_batch_size = meta_batch_size
        self.max_iter = max_iter
        self.outer_learning_rate = outer_learning_rate
        self.outer_lr_decay = outer_lr_decay
        self.training = training
        self.batch_norm = batch_norm
        self.hypergradient = hypergradient
        self.inner_tol = inner_tol
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.validation_interval = validation_interval
        self.n_validation_episodes = n_validation_episodes
        self.max_time = max_time
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
        self.random_state = random_state
        self.verbose = verbose

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = [self.dtype]
        return tags

    def _validate_X(self, X, y=None, reset=False):
        """Validated samples as float arrays of shape (n, d) or (n, C, H, W)."""
        dtype = np.float64 if self.dtype == "float64" else np.float32
        kwargs = {"allow_nd": True, "dtype": dtype, "reset": reset}
        if y is None:
            X = validate_data(self, X, **kwargs)
        else:
            X, y = validate_data(self, X, y, **kwargs)
        if X.ndim > 4:
            raise ValueError(
                "X must have shape (n_samples, n_features), (n_samples, H, W) or "
                f"(n_samples, C, H, W); got {X.shape}."
            )
        if X.ndim == 3:
            X = X[:, None]
        return X if y is None else (X, y)

    def _features(self, X):
        """Representation of validated samples, as a tensor on the device."""
        device = inference_device(self.device)
        network = self.representation_
        if device.type != "cpu":
            network = copy.deepcopy(network).to(device)
        index = np.arange(X.shape[0])
        return batched_features(
            network, X, index, device, resolve_dtype(self.dtype), self.batch_size
        )

    def _set_head(self, features, y):
        """Train the head on labelled features; set classes_, coef_, intercept_."""
        self.classes_, y_index = np.unique(y, return_inverse=True)
        labels = torch.as_tensor(y_index, device=features.device)[None]
        head = train_heads(
            features[None], labels, len(self.classes_), **self._head_options()
        )
        self.coef_ = head["coef"][0].T.cpu().numpy()
        self.intercept_ = head["intercept"][0].cpu().numpy()
        return self

    def _head_options(self):
        return {
            "T": self.T,
            "learning_rate": self.learning_rate_,
            "alpha": self.alpha,
            "chunk_size": self.batch_size,
        }

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, validation_data=None):
        """Meta-learn the representation, then fit a head on all of ``(X, y)``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), (n_samples, H, W) or \
(n_samples, C, H, W)
            Training samples of the base classes.
        y : array-like of shape (n_samples,)
            Class labels.
        validation_data : tuple (X_val, y_val), default=None
            Samples of held-out classes, evaluated episodically at every
            checkpoint (``history_``) and used for early stopping instead of
            a split of ``(X, y)``.

        Returns
        -------
        self : object
            The fitted classifier.
        """
        if y is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y "
                "is None."
            )
        X, y = self._validate_X(X, y, reset=True)
        check_classification_targets(y)
        if self.hypergradient == "implicit" and self.alpha == 0:
            raise ValueError(
                "hypergradient='implicit' needs a strongly convex inner problem; "
                "set alpha > 0."
            )
        rng = check_random_state(self.random_state)
        device, dtype = resolve_device(self.device), resolve_dtype(self.dtype)
        classes, y_index = np.unique(y, return_inverse=True)
        train_mask, validation = self._split_validation(
            X, y_index, len(classes), validation_data, rng
        )
        pools = self._training_pools(y_index, train_mask)
        seed = int(rng.randint(np.iinfo(np.int32).max))
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            network = build_representation(self.representation, X.shape[1:])
        if self.batch_norm == "episode":
            # Without running statistics, batch norm always normalizes with
            # the statistics of the batch it is given, in eval mode too.
            torch.func.replace_all_batch_norm_modules_(network)
        network.to(device=device, dtype=dtype)
        self.n_features_out_ = n_output_features(network, X.shape[1:], device, dtype)
        trainer = MetaTrainer(self, network, X, pools, validation, rng, device, dtype)
        # The search's small-data rule: on digits, 30 meta-batches of the MLP
        # representation took 0.9 s on one torch thread and 17 s on two (a
        # 2-core machine that other processes loaded).
        with one_torch_thread(X.size, device):
            self.history_, self.n_iter_ = trainer.run()
            self.learning_rate_ = float(trainer.log_lr.detach().exp())
            self.representation_ = network.cpu().eval()
            return self._set_head(self._features(X), y)

    def _training_pools(self, y_index, train_mask):
        """Per-class index pools for episodes; sets n_way_ and n_query_."""
        counts = np.bincount(y_index[train_mask])
        counts = counts[counts > 0]
        if counts.shape[0] < 2:
            raise ValueError(
                "HyperRepresentationClassifier needs at least 2 classes to "
                f"meta-train on; got {counts.shape[0]} class."
            )
        if counts.min() <= self.n_shot:
            raise ValueError(
                f"Every class needs more than n_shot={self.n_shot} samples (support "
                f"and query); the smallest class has {counts.min()}."
            )
        self.n_way_ = min(self.n_way, counts.shape[0])
        self.n_query_ = int(min(self.n_query, counts.min() - self.n_shot))
        index = np.flatnonzero(train_mask)
        pools = episode_pools(y_index[index], 1)
        return np.where(pools >= 0, index[pools], -1)

    def _split_validation(self, X, y_index, n_classes, validation_data, rng):
        """Mask of training samples and the fixed validation episodes, if any."""
        if validation_data is not None:
            X_val, y_val = self._validate_X(*validation_data)
            _, y_val = np.unique(y_val, return_inverse=True)
            return np.ones(X.shape[0], dtype=bool), self._episodes(X_val, y_val, rng)
        if not self.early_stopping:
            return np.ones(X.shape[0], dtype=bool), None
        n_held = max(self.n_way, math.ceil(self.validation_fraction * n_classes))
        if n_classes - n_held < 2:
            raise ValueError(
                f"early_stopping holds out {n_held} of the {n_classes} classes "
                "(at least n_way), leaving fewer than 2 to train on; pass "
                "validation_data or use more classes."
            )
        held = np.isin(y_index, rng.choice(n_classes, n_held, replace=False))
        _, y_held = np.unique(y_index[held], return_inverse=True)
        return ~held, self._episodes(X[held], y_held, rng)

    def _episodes(self, X, y_index, rng):
        """Validation episodes drawn once, as ``(X, support, query)``."""
        n_query = int(min(self.n_query, np.bincount(y_index).min() - self.n_shot))
        pools = episode_pools(y_index, self.n_shot + max(n_query, 1))
        if n_query < 1 or len(pools) < self.n_way:
            raise ValueError(
                f"The validation classes must hold n_way={self.n_way} classes with "
                f"more than n_shot={self.n_shot} samples each."
            )
        episodes = draw_episodes(
            pools, self.n_way, self.n_shot, n_query, self.n_validation_episodes, rng
        )
        return (X, *episodes, self.n_way)

    def transform(self, X):
        """Apply the learned representation.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
            Samples shaped as in :meth:`fit`.

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_features_out)
            The features h(X).
        """
        check_is_fitted(self)
        return self._features(self._validate_X(X)).cpu().numpy()

    def predict_proba(self, X):
        """Class probabilities from the head on the representation.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
            Samples shaped as in :meth:`fit`.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            Probabilities of the classes in ``classes_``.
        """
        logits = self.transform(X) @ self.coef_.T + self.intercept_
        logits -= logits.max(axis=1, keepdims=True)
        proba = np.exp(logits)
        return proba / proba.sum(axis=1, keepdims=True)

    def predict(self, X):
        """Predict class labels.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
            Samples shaped as in :meth:`fit`.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
            Predicted labels.
        """
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    def adapt(self, X_support, y_support):
        """A classifier for new classes: the same representation, a new head.

        The head is trained as in meta-training (``T`` gradient steps from
        zero with the learned learning rate) on the support set. This
        estimator is not changed.

        Parameters
        ----------
        X_support : array-like of shape (n_samples, ...)
            Support samples of the new classes, shaped as in :meth:`fit`.
        y_support : array-like of shape (n_samples,)
            Their labels.

        Returns
        -------
        classifier : HyperRepresentationClassifier
            A fitted copy sharing the (frozen) representation, whose
            ``classes_`` are those of ``y_support``.
        """
        check_is_fitted(self)
        X_support, y_support = self._validate_X(X_support, y_support)
        check_classification_targets(y_support)
        adapted = copy.copy(self)
        return adapted._set_head(self._features(X_support), y_support)

    def _episode_accuracies(self, X, support, query, n_way):
        """Query accuracies of many episodes at once (see few_shot_score)."""
        check_is_fitted(self)
        X = self._validate_X(X)
        device = inference_device(self.device)
        network = self.representation_
        if device.type != "cpu":
            network = copy.deepcopy(network).to(device)
        embedding = episode_embedding(
            network,
            X,
            support,
            query,
            device,
            resolve_dtype(self.dtype),
            self.batch_norm,
            self.batch_size,
        )
        return episode_accuracies(embedding, n_way, self._head_options())
