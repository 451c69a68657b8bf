"""The shared base of the torch MLP estimators: fit, predict, the bilevel problem.

``fit`` and :meth:`_BaseTorchMLP._bilevel_problem` build their training
dynamics with the same code (:meth:`_BaseTorchMLP._training`); ``fit`` is the
case of a single fold holding every sample, so refitting on a fold's training
part with the learned hyperparameters reproduces the model the problem
differentiated.
"""

from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils import check_random_state
from sklearn.utils.validation import (
    _check_sample_weight,
    check_is_fitted,
    validate_data,
)

from .._space import SPEC_NAMES
from ..utils import resolve_device, resolve_dtype
from ..utils._sklearn import (
    Interval,
    StrOptions,
    _fit_context,
    validate_estimator_params,
)
from ..utils._threads import one_torch_thread
from ..utils._torch import inference_device, to_numpy
from ._network import forward, init_params, predict_scores, validation_losses
from ._problem import UnrolledProblem
from ._training import batch_schedule, make_dynamics, make_objective

# Learnable name -> the kinds of value it may take in a search.
_LEARNABLE = {
    "learning_rate": ("real", "per_step"),
    "momentum": ("real",),
    "alpha": ("real", "per_layer"),
    "sample_weight": ("sample_weight",),
}


def _draw_seed(random_state) -> int:
    """One integer seed for the initialization and the batch order."""
    if isinstance(random_state, Integral) and not isinstance(random_state, bool):
        return int(random_state)
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


def _positive_vector(name, value, allow_zero):
    """``value`` as a float or a 1-D array of finite (non-)positive floats."""
    array = np.asarray(value, dtype=np.float64)
    low = "non-negative" if allow_zero else "positive"
    if (
        array.ndim > 1
        or array.size == 0
        or not np.all(np.isfinite(array))
        or np.any(array < 0 if allow_zero else array <= 0)
    ):
        raise ValueError(
            f"{name} must be a {low} float or a 1-D array of {low} finite "
            f"floats; got {value!r}."
        )
    return array if array.ndim else float(array)


def _as_tensor(array, dtype, device):
    # torch warns on read-only arrays (memory maps); it never writes, but copy.
    return torch.as_tensor(np.require(array, requirements="W"), dtype=dtype).to(device)


class _BaseTorchMLP(BaseEstimator):
    """Multilayer perceptron trained by exactly ``max_iter`` torch optimizer steps."""

    _parameter_constraints: dict = {
        "hidden_layer_sizes": [
            "array-like",
            Interval(Integral, 1, None, closed="left"),
        ],
        "activation": [StrOptions({"identity", "logistic", "tanh", "relu"})],
        "solver": [StrOptions({"sgd", "adam"})],
        "alpha": [Interval(Real, 0, None, closed="left"), "array-like"],
        "batch_size": [Interval(Integral, 1, None, closed="left"), None],
        "learning_rate": [Interval(Real, 0, None, closed="neither"), "array-like"],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "shuffle": ["boolean"],
        "momentum": [Interval(Real, 0, 1, closed="left")],
        "beta_1": [Interval(Real, 0, 1, closed="left")],
        "beta_2": [Interval(Real, 0, 1, closed="left")],
        "epsilon": [Interval(Real, 0, None, closed="neither")],
        "random_state": ["random_state"],
        "device": [str, torch.device],
        "dtype": [StrOptions({"float32", "float64"})],
    }

    def __init__(
        self,
        hidden_layer_sizes=(100,),
        *,
        activation="relu",
        solver="adam",
        alpha=1e-4,
        batch_size=None,
        learning_rate=0.01,
        max_iter=200,
        shuffle=True,
        momentum=0.9,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        random_state=None,
        device="auto",
        dtype="float32",
    ):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.momentum = momentum
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.random_state = random_state
        self.device = device
        self.dtype = dtype

    def _hidden_sizes(self):
        sizes = np.atleast_1d(np.asarray(self.hidden_layer_sizes))
        if sizes.ndim != 1 or (
            sizes.size and (sizes.dtype.kind not in "iu" or np.any(sizes < 1))
        ):
            raise ValueError(
                "hidden_layer_sizes must be a positive int or a sequence of positive "
                f"ints (empty for a linear model); got {self.hidden_layer_sizes!r}."
            )
        return [int(size) for size in sizes]

    def _hyperparameters(self, like):
        """The estimator's learning rate, momentum and alpha as tensors."""
        n_layers = len(self._hidden_sizes()) + 1
        learning_rate = _positive_vector("learning_rate", self.learning_rate, False)
        if np.size(learning_rate) > self.max_iter:
            raise ValueError(
                "A learning_rate schedule holds at most one value per step; got "
                f"{np.size(learning_rate)} values for max_iter={self.max_iter}."
            )
        alpha = _positive_vector("alpha", self.alpha, allow_zero=True)
        if np.ndim(alpha) and np.size(alpha) != n_layers:
            raise ValueError(
                f"alpha must be a float or hold one value per weight layer "
                f"({n_layers}); got {np.size(alpha)} values."
            )
        values = {
            "learning_rate": learning_rate,
            "momentum": self.momentum,
            "alpha": alpha,
        }
        return {
            name: torch.as_tensor(value, dtype=like.dtype, device=like.device)
            for name, value in values.items()
        }

    def _training(self, X, targets, kind, n_outputs, train, fixed_weight, seed):
        """Initial weights, objective and dynamics on the folds of ``train``.

        ``targets`` and ``kind`` are as in
        :func:`~skbilevel.neural_network._network.sample_losses`, ``train`` is
        a (K, n) boolean array of training masks, ``fixed_weight`` the (n,)
        weights given to ``fit``; a learned ``sample_weight`` multiplies them.
        """
        defaults = self._hyperparameters(X)
        masks = torch.as_tensor(train, dtype=X.dtype, device=X.device) * fixed_weight

        def value(hparams, name):
            return hparams[name] if name in hparams else defaults[name]

        def weights(hparams):
            if "sample_weight" in hparams:
                return masks * hparams["sample_weight"]
            return masks

        sizes = [X.shape[-1], *self._hidden_sizes(), n_outputs]
        schedule = batch_schedule(
            train, self.batch_size, self.max_iter, self.shuffle, seed, X.device
        )
        objective = make_objective(
            X, targets, kind, self.activation, weights, value, schedule
        )
        dynamics = make_dynamics(
            objective,
            value,
            solver=self.solver,
            T=self.max_iter,
            betas=(self.beta_1, self.beta_2),
            epsilon=self.epsilon,
        )

        def initial():
            return init_params(
                sizes,
                self.activation,
                len(train),
                seed,
                dtype=X.dtype,
                device=X.device,
            )

        return initial, objective, dynamics

    def _numpy_dtype(self):
        return np.float64 if self.dtype == "float64" else np.float32

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None):
        """Train the network by exactly ``max_iter`` optimizer steps.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Target values (class labels for classification).
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative per-sample weights; a zero weight removes the sample
            from the objective (exactly so in full batch).

        Returns
        -------
        self : object
            The fitted estimator.
        """
        X, targets, kind, n_outputs = self._validate_fit_data(X, y)
        sample_weight = _check_sample_weight(
            sample_weight, X, dtype=X.dtype, ensure_non_negative=True
        )
        if not sample_weight.sum() > 0:
            raise ValueError("Sample weights must contain at least one positive value.")
        device, dtype = resolve_device(self.device), resolve_dtype(self.dtype)
        X_t = _as_tensor(X, dtype, device)
        initial, objective, dynamics = self._training(
            X_t,
            _as_tensor(targets, None, device),
            kind,
            n_outputs,
            np.ones((1, X.shape[0]), dtype=bool),
            _as_tensor(sample_weight, dtype, device),
            _draw_seed(self.random_state),
        )
        # The search's small-data rule: on breast_cancer, 50 steps took 0.4 s
        # on one torch thread and 6 to 16 s on two (a 2-core machine that
        # other processes loaded; issue 12 measured 2.2 s unloaded).
        with one_torch_thread(X_t.numel(), X_t.device):
            params, curve, final = self._run(initial(), objective, dynamics)
        self.coefs_ = [
            to_numpy(params[f"coef_{i}"][0]) for i in range(len(params) // 2)
        ]
        self.intercepts_ = [
            to_numpy(params[f"intercept_{i}"][0]) for i in range(len(params) // 2)
        ]
        self.n_iter_ = self.max_iter
        self.n_layers_ = len(self.coefs_) + 1
        self.n_outputs_ = self.coefs_[-1].shape[1]
        self.loss_curve_ = curve
        self.loss_ = final
        return self

    def _run(self, params, objective, dynamics):
        """``max_iter`` steps without a graph; the loss curve; divergence check."""
        state = dynamics.init(params)
        losses = []
        with torch.no_grad():
            for t in range(self.max_iter):
                losses.append(objective(state[0], {}, t))
                state = dynamics.step(state, {}, t)
            losses.append(objective(state[0], {}))
        curve = to_numpy(torch.stack(losses)).astype(np.float64)
        finite = np.isfinite(curve)
        if not finite.all():
            step = int(np.argmin(finite))
            raise FloatingPointError(
                f"The training loss of {type(self).__name__} is {curve[step]} at "
                f"step {step} of {self.max_iter}: the training diverged. Lower the "
                "learning_rate (or the momentum), or standardize X."
            )
        return state[0], curve[:-1].tolist(), float(curve[-1])

    def _scores(self, X):
        """Output scores (before the output activation), in the precision of ``X``.

        The network computes in ``dtype``; as scikit-learn's MLP, the result
        has the floating-point type of ``X`` (float64 for other input types).
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
        device, dtype = inference_device(self.device), resolve_dtype(self.dtype)

        def tensors(arrays):
            return [torch.as_tensor(a, dtype=dtype, device=device) for a in arrays]

        with torch.no_grad(), one_torch_thread(X.size, device):
            scores = predict_scores(
                tensors(self.coefs_),
                tensors(self.intercepts_),
                _as_tensor(X, dtype, device),
                self.activation,
            )
        return to_numpy(scores).astype(X.dtype, copy=False)

    def _bilevel_problem(self, data, learned, options):
        """The differentiable K-fold problem of this estimator's training.

        For each fold, the problem's dynamics are exactly the ``max_iter``
        steps that ``fit`` runs on that fold's training part (same seed,
        initialization and batch order); it computes in the dtype and on the
        device of ``data.X``.

        Parameters
        ----------
        data : FoldData
            The data (``X`` (n, d) or (K, n, d), ``y``), the 0/1 training and
            validation masks (K, n) and the fixed ``fit`` weights (n,); every
            tensor in the dtype and on the device of the problem.
        learned : dict of str to str
            The learned hyperparameters and their kinds: ``"learning_rate"``
            (``"real"``, or ``"per_step"``: a vector of B <= ``max_iter``
            values, step t using entry ``floor(t B / max_iter)``),
            ``"momentum"`` (``"real"``, with ``solver="sgd"``), ``"alpha"``
            (``"real"``, or ``"per_layer"``: one value per weight matrix) and
            ``"sample_weight"`` (``"sample_weight"``: one weight in [0, 1] per
            sample of ``data``, multiplying the fixed weights; those of
            validation samples have no effect).
        options : dict
            Inner solver options of the search; unused, since the inner
            solution is defined by the estimator's own ``max_iter`` steps.

        Returns
        -------
        problem : UnrolledProblem
            The problem; see :class:`~skbilevel.neural_network.UnrolledProblem`
            for how the hypergradient methods consume it.
        """
        validate_estimator_params(self)
        self._check_learned(learned)
        targets, kind, n_outputs = self._problem_targets(data)
        train = to_numpy(data.train) > 0
        initial, objective, dynamics = self._training(
            data.X,
            targets,
            kind,
            n_outputs,
            train,
            data.sample_weight,
            _draw_seed(self.random_state),
        )
        validation = data.test * data.sample_weight

        def outer_loss(params, hparams):
            losses = validation_losses(
                forward(params, data.X, self.activation), targets, kind
            )
            return ((validation * losses).sum(1) / validation.sum(1)).mean()

        def fitted_attributes(params):
            n_layers = len(params) // 2
            return [
                {
                    "coefs_": [
                        to_numpy(params[f"coef_{i}"][k]) for i in range(n_layers)
                    ],
                    "intercepts_": [
                        to_numpy(params[f"intercept_{i}"][k]) for i in range(n_layers)
                    ],
                }
                for k in range(len(train))
            ]

        return UnrolledProblem(
            initial,
            objective,
            outer_loss,
            dynamics,
            self.max_iter,
            fitted_attributes,
            len(self._hidden_sizes()) + 1,
        )

    def _check_learned(self, learned):
        name = type(self).__name__
        for param, kind in learned.items():
            if kind not in _LEARNABLE.get(param, ()):
                supported = "; ".join(
                    f"{p} ({' or '.join(SPEC_NAMES[k] for k in kinds)})"
                    for p, kinds in _LEARNABLE.items()
                )
                raise ValueError(
                    f"{param!r} cannot be learned as {SPEC_NAMES.get(kind, kind)} "
                    f"for {name}; supported: {supported}."
                )
        if "momentum" in learned and self.solver != "sgd":
            raise ValueError(
                f"momentum is a hyperparameter of solver='sgd' only; {name} has "
                f"solver={self.solver!r}."
            )
